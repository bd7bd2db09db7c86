//! The `dbward` binary against a gateway it started itself (`dbward start` in the
//! background, SQLite store in a temp dir): admin commands, password login, resources
//! round-tripping through YAML, and data surviving a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

const DESIGN_EXAMPLES: &str = r#"kind: role
version: v7
metadata: {name: auto-db-users}
spec:
  options:
    create_db_user_mode: keep
    max_session_ttl: 8h
  allow:
    db_labels: {"*": "*"}
    db_names: ["*"]
    db_users: ["{{internal.db_users}}"]
    db_roles: [reader, "{{internal.db_roles}}", "{{external.db_roles}}"]
    db_permissions:
      - match: {object_kind: table, schema: public}
        permissions: [SELECT]
  deny:
    db_labels: {env: prod}
    db_roles: [admin]
---
kind: user
version: v2
metadata: {name: alice}
spec:
  roles: [auto-db-users]
  traits: {db_roles: [writer], db_users: [app]}
---
kind: db
version: v3
metadata: {name: example, labels: {env: dev}}
spec:
  protocol: postgres
  uri: localhost:5432
  admin_user: {name: teleport-admin, default_database: teleport}
"#;

fn free_port() -> u16 {
    dbward_testkit::listen_port()
}

struct Sandbox {
    dir: tempfile::TempDir,
    config: PathBuf,
    web: String,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let web = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("dbward.yaml");
        let text = format!(
            "version: v1\ncluster_name: clitest\ndata_dir: {data}\npublic_addr: localhost\n\
             web_listen_addr: {web}\npostgres_listen_addr: 127.0.0.1:{pg}\n\
             mysql_listen_addr: 127.0.0.1:{my}\n",
            data = dir.path().join("data").display(),
            pg = free_port(),
            my = free_port(),
        );
        std::fs::write(&config, text).expect("write config");
        Sandbox { dir, config, web }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `dbward ARGS -c CONFIG` with `$DBWARD_HOME` set to `home` and `stdin` fed in.
    fn run(&self, home: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .env("DBWARD_HOME", self.path(home))
            .env_remove("DBWARD_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dbward");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("dbward output")
    }

    fn ok(&self, home: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(home, args, stdin);
        assert!(
            out.status.success(),
            "dbward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self) -> Gateway {
        let log = std::fs::File::create(self.path("gateway.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("start")
            .arg("-c")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("dbward start");
        let gateway = Gateway(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .run("admin-home", &["get", "roles"], "")
                .status
                .success()
            {
                return gateway;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not come up: {}",
                std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Stops the gateway when the test ends, also on panic.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has_file(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

#[test]
fn admin_login_resources_and_restart_work_through_the_binary() {
    let sandbox = Sandbox::new();
    let gateway = sandbox.start();

    // Resources from DESIGN §4 load, and their YAML output loads back unchanged.
    let examples = sandbox.path("examples.yaml");
    std::fs::write(&examples, DESIGN_EXAMPLES).expect("write examples");
    let created = sandbox.ok(
        "admin-home",
        &["create", "-f", &examples.display().to_string()],
        "",
    );
    assert!(created.contains("role/auto-db-users"), "{created}");
    let again = sandbox.run(
        "admin-home",
        &["create", "-f", &examples.display().to_string()],
        "",
    );
    assert!(
        !again.status.success(),
        "creating twice without --force must fail"
    );

    let mut exported = String::new();
    for kind in ["roles", "users", "dbs"] {
        exported.push_str("---\n");
        exported.push_str(&sandbox.ok("admin-home", &["get", kind, "--format", "yaml"], ""));
    }
    sandbox.ok("admin-home", &["create", "-f", "-", "--force"], &exported);
    let mut reexported = String::new();
    for kind in ["roles", "users", "dbs"] {
        reexported.push_str("---\n");
        reexported.push_str(&sandbox.ok("admin-home", &["get", kind, "--format", "yaml"], ""));
    }
    assert_eq!(exported, reexported);
    let text = sandbox.ok("admin-home", &["get", "db/example"], "");
    assert!(
        text.contains("example") && text.contains("protocol=postgres"),
        "{text}"
    );

    // Password login with a pinned host CA stores a certificate that `status` reads.
    sandbox.ok(
        "admin-home",
        &[
            "users",
            "add",
            "bob",
            "--roles",
            "auto-db-users",
            "--password-stdin",
        ],
        "correct horse\n",
    );
    let host_ca = sandbox.path("host-ca.pem");
    let ca_pem = sandbox.ok("admin-home", &["auth", "export", "--type", "host"], "");
    std::fs::write(&host_ca, &ca_pem).expect("write host CA");
    let ca_arg = host_ca.display().to_string();
    let login = [
        "login",
        "--proxy",
        sandbox.web.as_str(),
        "--user",
        "bob",
        "--password-stdin",
        "--ca",
        ca_arg.as_str(),
    ];
    sandbox.ok("bob-home", &login, "correct horse\n");
    assert!(has_file(&sandbox.path("bob-home"), "cert.pem"));
    let status = sandbox.ok("bob-home", &["status"], "");
    assert!(
        status.contains("bob") && status.contains("clitest"),
        "{status}"
    );
    assert!(status.contains("Valid until"), "{status}");

    // A wrong password is refused clearly and leaves no certificate behind.
    let wrong = sandbox.run("eve-home", &login, "wrong horse\n");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("invalid user name or password"), "{stderr}");
    assert!(!has_file(&sandbox.path("eve-home"), "cert.pem"));
    assert!(!sandbox.run("eve-home", &["status"], "").status.success());

    // After a restart the resources, the user's password and the host CA are still there.
    drop(gateway);
    let _gateway = sandbox.start();
    let users = sandbox.ok("admin-home", &["get", "users", "--format", "json"], "");
    assert!(
        users.contains("\"bob\"") && users.contains("\"alice\""),
        "{users}"
    );
    assert_eq!(
        sandbox.ok("admin-home", &["auth", "export", "--type", "host"], ""),
        ca_pem
    );
    sandbox.ok("bob-home", &login, "correct horse\n");
    sandbox.ok("bob-home", &["logout"], "");
    assert!(!has_file(&sandbox.path("bob-home"), "cert.pem"));
}

/// `db ls -v` shows exactly the databases each user may reach, with the roles provisioning
/// would grant: two users, three databases with different labels.
#[test]
fn db_ls_lists_reachable_databases_with_granted_roles() {
    let sandbox = Sandbox::new();
    let _gateway = sandbox.start();
    let resources = r#"
kind: role
version: v7
metadata: {name: dev-auto}
spec:
  options: {create_db_user_mode: best_effort_drop}
  allow:
    db_labels: {env: dev}
    db_names: ["*"]
    db_roles: [reader, "{{internal.db_roles}}"]
  deny:
    db_labels: {"*": "*"}
    db_roles: [admin]
---
kind: role
version: v7
metadata: {name: everything-view}
spec:
  allow:
    db_labels: {"*": "*"}
    db_users: [app, "{{internal.db_users}}"]
---
kind: role
version: v7
metadata: {name: no-prod}
spec:
  deny:
    db_labels: {env: prod}
---
kind: role
version: v7
metadata: {name: staging-only}
spec:
  allow:
    db_labels: {env: "stag*"}
    db_users: ["*"]
  deny:
    db_labels: {"*": "*"}
    db_users: [root]
---
kind: db
version: v3
metadata: {name: dev-db, labels: {env: dev}}
spec: {protocol: postgres, uri: "127.0.0.1:5999", admin_user: {name: adm}}
---
kind: db
version: v3
metadata: {name: staging-db, labels: {env: staging}}
spec: {protocol: mysql, uri: "127.0.0.1:3999"}
---
kind: db
version: v3
metadata: {name: prod-db, labels: {env: prod}}
spec: {protocol: postgres, uri: "127.0.0.1:5998"}
"#;
    sandbox.ok("admin-home", &["create", "-f", "-"], resources);
    sandbox.ok(
        "admin-home",
        &[
            "users",
            "add",
            "alice",
            "--roles",
            "dev-auto,everything-view,no-prod",
            "--traits",
            "db_roles=writer,admin",
            "--traits",
            "db_users=bob",
            "--password-stdin",
        ],
        "alice-password-1\n",
    );
    sandbox.ok(
        "admin-home",
        &[
            "users",
            "add",
            "bob",
            "--roles",
            "staging-only",
            "--password-stdin",
        ],
        "bob-password-1\n",
    );
    let ca = sandbox.path("host-ca.pem");
    let host_ca = sandbox.ok("admin-home", &["auth", "export", "--type", "host"], "");
    std::fs::write(&ca, host_ca).unwrap();
    let ca = ca.to_str().unwrap();

    let list = |user: &str, password: &str| -> serde_json::Value {
        sandbox.ok(
            user,
            &[
                "login",
                "--proxy",
                &sandbox.web,
                "--user",
                user,
                "--ca",
                ca,
                "--password-stdin",
            ],
            &format!("{password}\n"),
        );
        let out = sandbox.ok(user, &["db", "ls", "-v", "--format", "json"], "");
        serde_json::from_str(&out).expect("db ls json")
    };

    let alice = list("alice", "alice-password-1");
    let names: Vec<&str> = alice
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["dev-db", "staging-db"],
        "prod is denied outright"
    );
    let dev = &alice[0];
    assert_eq!(dev["allowed_users"], "[alice] (Auto-provisioned)");
    assert_eq!(
        dev["db_roles"],
        serde_json::json!(["reader", "writer"]),
        "admin is denied"
    );
    let staging = &alice[1];
    assert_eq!(staging["allowed_users"], "[app, bob]");
    assert_eq!(staging["db_roles"], serde_json::json!([]));

    let bob = list("bob", "bob-password-1");
    let names: Vec<&str> = bob
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["staging-db"]);
    assert_eq!(bob[0]["allowed_users"], "[*], except: [root]");

    // The text table carries the same facts, with -v columns.
    let text = sandbox.ok("alice", &["db", "ls", "-v"], "");
    assert!(text.contains("Database Roles") && text.contains("Protocol") && text.contains("URI"));
    assert!(text.contains("[alice] (Auto-provisioned)"));
    assert!(!text.contains("prod-db"));
}

/// Malformed YAML and unknown fields are refused with file:line messages, and nothing of the
/// file is stored.
#[test]
fn create_reports_file_and_line_and_stores_nothing() {
    let sandbox = Sandbox::new();
    let _gateway = sandbox.start();
    let unknown = sandbox.path("roles.yaml");
    std::fs::write(
        &unknown,
        "kind: role\nversion: v7\nmetadata: {name: good-one}\nspec:\n  allow: {db_names: [\"*\"]}\n---\nkind: role\nversion: v7\nmetadata: {name: bad-one}\nspec:\n  allow:\n    db_lables: {env: dev}\n",
    )
    .unwrap();
    let out = sandbox.run(
        "admin-home",
        &["create", "-f", unknown.to_str().unwrap()],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("roles.yaml:12:"), "{stderr}");
    assert!(stderr.contains("db_lables"), "{stderr}");
    let listed = sandbox.ok("admin-home", &["get", "roles", "--format", "json"], "");
    assert!(
        !listed.contains("good-one"),
        "a failed file stores nothing: {listed}"
    );

    let malformed = sandbox.path("broken.yaml");
    std::fs::write(
        &malformed,
        "kind: role\nversion: v7\nmetadata: {name: x\nspec: {}\n",
    )
    .unwrap();
    let out = sandbox.run(
        "admin-home",
        &["create", "-f", malformed.to_str().unwrap()],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:"), "{stderr}");
}

#[test]
fn teleport_exports_load_checked_and_users_from_files_get_a_password() {
    let sandbox = Sandbox::new();
    let _gateway = sandbox.start();
    let create = |name: &str, text: &str| {
        let path = sandbox.path(name);
        std::fs::write(&path, text).unwrap();
        sandbox.run("admin-home", &["create", "-f", path.to_str().unwrap()], "")
    };

    // A user naming a role that exists nowhere is refused, as `users add` refuses it.
    let out = create(
        "users.yaml",
        "kind: user\nversion: v2\nmetadata:\n  name: bob\nspec:\n  roles: [ghost]\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("users.yaml:3: user \"bob\": role \"ghost\" does not exist"),
        "{stderr}"
    );

    // A broken template is refused at create time, with file and line.
    let out = create(
        "broken.yaml",
        "kind: role\nversion: v7\nmetadata:\n  name: broken\nspec:\n  allow:\n    db_roles: ['{{internal.db_roles']\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:3:"), "{stderr}");
    assert!(stderr.contains("allow.db_roles"), "{stderr}");

    // A `tctl get all`-style export: known kinds load, the others are skipped with a warning.
    let out = create(
        "all.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {type: local}\n---\nkind: role\nversion: v7\nmetadata: {name: dev}\nspec:\n  allow:\n    db_labels: {'*': '*'}\n    db_users: ['*']\n---\nkind: user\nversion: v2\nmetadata: {name: bob}\nspec:\n  roles: [dev]\n  traits: {logins: null, db_users: [app]}\n",
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("kind \"cluster_auth_preference\" is not supported by dbward"),
        "{all}"
    );

    // bob came from a file: he has no password until an admin resets it.
    let host_ca = sandbox.path("host-ca.pem");
    let ca_pem = sandbox.ok("admin-home", &["auth", "export", "--type", "host"], "");
    std::fs::write(&host_ca, &ca_pem).unwrap();
    let ca_arg = host_ca.display().to_string();
    let login = [
        "login",
        "--proxy",
        sandbox.web.as_str(),
        "--user",
        "bob",
        "--password-stdin",
        "--ca",
        ca_arg.as_str(),
    ];
    let reset = sandbox.ok("admin-home", &["users", "reset", "bob"], "");
    let generated = reset
        .lines()
        .find_map(|l| l.strip_prefix("Password (shown only once): "))
        .unwrap_or_else(|| panic!("no generated password printed: {reset}"))
        .to_string();
    sandbox.ok("bob-home", &login, &format!("{generated}\n"));
    assert!(has_file(&sandbox.path("bob-home"), "cert.pem"));

    sandbox.ok(
        "admin-home",
        &["users", "reset", "bob", "--password-stdin"],
        "battery staple\n",
    );
    assert!(!sandbox
        .run("bob2-home", &login, &format!("{generated}\n"))
        .status
        .success());
    sandbox.ok("bob3-home", &login, "battery staple\n");
    let out = sandbox.run("admin-home", &["users", "reset", "nobody"], "");
    assert!(!out.status.success());
}

/// `db ls -v` and `db login` tell a user with `db_permissions` which table permissions a
/// session will get (PROVISIONING.md §6), allow rules first, then deny rules.
#[test]
fn db_ls_and_db_login_show_the_table_permissions_a_session_gets() {
    let sandbox = Sandbox::new();
    let _gateway = sandbox.start();
    let resources = r#"
kind: role
metadata:
  name: read_all_tables
spec:
  options:
    create_db_user_mode: keep
  allow:
    db_labels:
      '*': '*'
    db_names:
    - '*'
    db_permissions:
    - match:
        object_kind: table
        schema: public
      permissions:
      - SELECT
  deny:
    db_labels: {'*': '*'}
    db_permissions:
    - match: {name: secrets}
      permissions: ['*']
version: v7
---
kind: db
version: v3
metadata: {name: shop, labels: {env: dev}}
spec: {protocol: postgres, uri: "127.0.0.1:5999", admin_user: {name: adm}}
"#;
    sandbox.ok("admin-home", &["create", "-f", "-"], resources);
    sandbox.ok(
        "admin-home",
        &[
            "users",
            "add",
            "carol",
            "--roles",
            "read_all_tables",
            "--password-stdin",
        ],
        "carol-password-1\n",
    );
    let ca = sandbox.path("host-ca.pem");
    let host_ca = sandbox.ok("admin-home", &["auth", "export", "--type", "host"], "");
    std::fs::write(&ca, host_ca).unwrap();
    sandbox.ok(
        "carol",
        &[
            "login",
            "--proxy",
            &sandbox.web,
            "--user",
            "carol",
            "--ca",
            ca.to_str().unwrap(),
            "--password-stdin",
        ],
        "carol-password-1\n",
    );

    let json: serde_json::Value =
        serde_json::from_str(&sandbox.ok("carol", &["db", "ls", "-v", "--format", "json"], ""))
            .expect("db ls json");
    assert_eq!(
        json[0]["db_permissions"],
        serde_json::json!([
            "SELECT on object_kind=table, schema=public",
            "deny * on name=secrets"
        ])
    );
    let text = sandbox.ok("carol", &["db", "ls", "-v"], "");
    assert!(text.contains("Database Permissions"), "{text}");
    assert!(
        text.contains("SELECT on object_kind=table, schema=public; deny * on name=secrets"),
        "{text}"
    );

    let login = sandbox.ok("carol", &["db", "login", "shop", "--db-name", "app"], "");
    assert!(
        login.contains("Table permissions granted for the session:")
            && login.contains("  SELECT on object_kind=table, schema=public")
            && login.contains("  deny * on name=secrets"),
        "{login}"
    );
}

/// The `otpauth://` line of a command's output, which must stand alone on its line.
fn otpauth_line(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("otpauth://")).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("otpauth://totp/"), "{out}");
    assert_eq!(lines[0].trim(), lines[0], "{out}");
    lines[0].to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn users_add_mfa_login_otp_and_mfa_add_through_the_binary() {
    let sandbox = Sandbox::new();
    let _gateway = sandbox.start();
    let roles = sandbox.path("roles.yaml");
    std::fs::write(
        &roles,
        "kind: role\nversion: v7\nmetadata: {name: dev}\nspec:\n  options: {create_db_user_mode: keep, require_session_mfa: true}\n  allow:\n    db_labels: {env: dev}\n    db_names: [\"*\"]\n---\nkind: db\nversion: v3\nmetadata: {name: shop, labels: {env: dev}}\nspec: {protocol: postgres, uri: \"127.0.0.1:5999\", admin_user: {name: adm}}\n",
    )
    .expect("write role");
    sandbox.ok(
        "admin-home",
        &["create", "-f", &roles.display().to_string()],
        "",
    );
    let added = sandbox.ok(
        "admin-home",
        &[
            "users",
            "add",
            "dave",
            "--roles",
            "dev",
            "--password-stdin",
            "--mfa",
        ],
        "pass word\n",
    );
    let uri = otpauth_line(&added);
    let device = totp_rs::TOTP::from_url(&uri).expect("an otpauth URI totp-rs reads");
    // The secret is shown once and is not part of the user resource.
    let secret = uri
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("a secret parameter")
        .to_string();
    for format in ["yaml", "json", "text"] {
        let user = sandbox.ok("admin-home", &["get", "user/dave", "--format", format], "");
        assert!(!user.contains(&secret), "{user}");
    }

    let host_ca = sandbox.path("host-ca.pem");
    let ca_pem = sandbox.ok("admin-home", &["auth", "export", "--type", "host"], "");
    std::fs::write(&host_ca, &ca_pem).expect("write host CA");
    let ca_arg = host_ca.display().to_string();
    let login = |otp: Option<&str>| {
        let mut args = vec![
            "login",
            "--proxy",
            sandbox.web.as_str(),
            "--user",
            "dave",
            "--password-stdin",
            "--ca",
            ca_arg.as_str(),
        ];
        if let Some(otp) = otp {
            args.extend(["--otp", otp]);
        }
        sandbox.run("dave-home", &args, "pass word\n")
    };

    // Without a code (and no terminal to ask on) the login is refused and says why.
    let out = login(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a one-time code is required"), "{stderr}");
    assert!(!has_file(&sandbox.path("dave-home"), "cert.pem"));
    // With the code it succeeds; the same code a second time is refused.
    let code = device.generate(unix_now());
    let out = login(Some(&code));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = login(Some(&code));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid or already used one-time code"),
        "{stderr}"
    );
    // A refused login leaves the certificate of the earlier one in place.
    assert!(has_file(&sandbox.path("dave-home"), "cert.pem"));

    // Replacing the device needs a current code of it.
    let out = sandbox.run("dave-home", &["mfa", "add"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--otp"), "{stderr}");
    let next = device.generate(unix_now() + 30);
    let replaced = sandbox.ok("dave-home", &["mfa", "add", "--otp", &next], "");
    let new_device =
        totp_rs::TOTP::from_url(otpauth_line(&replaced)).expect("an otpauth URI totp-rs reads");
    let out = login(Some(&new_device.generate(unix_now())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // require_session_mfa: `db login` needs a fresh code and says how to give it.
    let out = sandbox.run("dave-home", &["db", "login", "shop"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a one-time code is required") && stderr.contains("--otp"),
        "{stderr}"
    );
    let fresh = new_device.generate(unix_now() + 30);
    let db_login = sandbox.ok("dave-home", &["db", "login", "shop", "--otp", &fresh], "");
    assert!(
        db_login.contains("Logged in to database \"shop\""),
        "{db_login}"
    );
    let config: serde_json::Value = serde_json::from_str(&sandbox.ok(
        "dave-home",
        &["db", "config", "shop", "--format", "json"],
        "",
    ))
    .expect("db config json");
    let cert_pem = std::fs::read_to_string(config["cert"].as_str().expect("a cert path"))
        .expect("the database certificate");
    let der = dbward_pki::parse_cert_pem(&cert_pem)
        .expect("PEM")
        .remove(0);
    let identity = dbward_pki::read_identity(der.as_ref()).expect("an identity");
    assert!(identity.mfa_session_until.is_some());
    let left = identity.expires - time::OffsetDateTime::now_utc();
    assert!(left <= time::Duration::seconds(60), "{left}");

    // Removing the user removes the device: the name added again has none.
    sandbox.ok("admin-home", &["rm", "user/dave"], "");
    let added = sandbox.ok(
        "admin-home",
        &["users", "add", "dave", "--roles", "dev", "--password-stdin"],
        "pass word\n",
    );
    assert!(!added.contains("otpauth://"), "{added}");
    let out = login(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A first device needs the password again: the login certificate alone is not enough.
    let out = sandbox.run("dave-home", &["mfa", "add"], "");
    assert!(!out.status.success(), "a first device without the password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password") && stderr.contains("--password-stdin"),
        "{stderr}"
    );
    let out = sandbox.run(
        "dave-home",
        &["mfa", "add", "--password-stdin"],
        "not his\n",
    );
    assert!(
        !out.status.success(),
        "a first device with a wrong password"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid password"));
    let added = sandbox.ok(
        "dave-home",
        &["mfa", "add", "--password-stdin"],
        "pass word\n",
    );
    totp_rs::TOTP::from_url(otpauth_line(&added)).expect("a device registered with the password");
}
