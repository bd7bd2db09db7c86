//! Single sign-on end to end: a real OpenID provider (the `oidc-provider` package, run by
//! `crates/testkit/oidc/provider.mjs`), `dbward start`, a PostgreSQL and a MariaDB whose
//! certificates come from `dbward auth sign`, and the `dbward` command line. The browser's
//! part (the provider's login and consent pages, the redirects) is driven over HTTP with curl.
//!
//! The database roles a person gets come from the provider's `groups` claim through
//! `{{external.groups}}` (filtered by a `regexp.replace` template); they are observed inside the session, in each database's own view of
//! the session's roles.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dbward_testkit::{listen_port, DbServerCerts, MariaServer, PgServer};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");
const CLIENT_ID: &str = "dbward-gateway";
const CLIENT_SECRET: &str = "client-secret-for-tests";

/// A child process killed when the test ends, also on panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    web: String,
    host_ca: PathBuf,
    idp_port: u16,
    idp_config: PathBuf,
    pg: PgServer,
    maria: MariaServer,
    _gateway: Killed,
    _idp: Killed,
}

impl World {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `dbward ARGS` as the admin (the gateway's config file).
    fn admin(&self, args: &[&str], stdin: &str) -> String {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.to_str().unwrap();
        all.extend(["-c", config]);
        expect_ok(&all, run(&all, &self.path("admin-home"), stdin))
    }

    /// `dbward ARGS` as a person whose client state is in `home`.
    fn user(&self, home: &str, args: &[&str]) -> Output {
        run(args, &self.path(home), "")
    }

    /// The provider's accounts: login name → claims. Read again by the provider on every
    /// claims lookup.
    fn set_accounts(&self, accounts: serde_json::Value) {
        let config = serde_json::json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("https://localhost:{}/v1/sso/oidc/callback", self.web_port())],
            "accounts": accounts,
        });
        std::fs::write(&self.idp_config, config.to_string()).unwrap();
    }

    fn web_port(&self) -> u16 {
        self.web.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `dbward login --auth test-idp --browser none` for `home`, with the browser's part
    /// played by curl logging in at the provider as `login`. Returns the command's output.
    fn sso_login(&self, home: &str, login: &str) -> Output {
        let mut child = Command::new(BIN)
            .args([
                "login",
                "--proxy",
                &self.web,
                "--auth",
                "test-idp",
                "--browser",
                "none",
            ])
            .arg("--ca")
            .arg(&self.host_ca)
            .env("DBWARD_HOME", self.path(home))
            .env_remove("DBWARD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dbward login --auth");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let url = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "dbward login --auth printed no URL: {printed}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            printed.push_str(&line);
            // The URL is alone on its line.
            if line.starts_with("http") {
                break line.trim().to_string();
            }
        };
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{}/auth?", self.idp_port)),
            "{url}"
        );
        for param in [
            "code_challenge_method=S256",
            "code_challenge=",
            "nonce=",
            "state=",
        ] {
            assert!(url.contains(param), "{param} missing from {url}");
        }
        Browser::new(&self.path(&format!("{home}-cookies")), &self.host_ca).log_in(&url, login);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let mut out = child.wait_with_output().unwrap();
        out.stdout = format!("{printed}{rest}").into_bytes();
        out
    }

    /// The database roles the session of `home` has in PostgreSQL, as the session sees them.
    fn pg_session_roles(&self, home: &str) -> String {
        let login = self.user(home, &["db", "login", "pg-db", "--db-name", "postgres"]);
        assert_success("db login pg-db", &login);
        let out = self.user(
            home,
            &[
                "db",
                "connect",
                "pg-db",
                "--",
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT current_user || ':' || coalesce(string_agg(rolname, ',' ORDER BY rolname), '') \
                 FROM pg_roles WHERE rolname LIKE 'db-%' AND pg_has_role(current_user, oid, 'member')",
            ],
        );
        assert_success("db connect pg-db", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The same for MariaDB: the roles granted to the session's user.
    fn maria_session_roles(&self, home: &str) -> String {
        let login = self.user(home, &["db", "login", "maria-db"]);
        assert_success("db login maria-db", &login);
        let out = self.user(
            home,
            &[
                "db",
                "connect",
                "maria-db",
                "--",
                "-N",
                "-B",
                "-e",
                "SELECT CONCAT(SUBSTRING_INDEX(CURRENT_USER(), '@', 1), ':', IFNULL(GROUP_CONCAT(ROLE_NAME ORDER BY ROLE_NAME), '')) \
                 FROM information_schema.APPLICABLE_ROLES WHERE ROLE_NAME LIKE 'db-%'",
            ],
        );
        assert_success("db connect maria-db", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn run(args: &[&str], home: &Path, stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("DBWARD_HOME", home)
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

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn expect_ok(args: &[&str], out: Output) -> String {
    assert_success(&format!("dbward {args:?}"), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a browser does during a login, with curl: follow redirects, keep cookies, submit the
/// provider's development login form (any name, any password) and its consent form, trust the
/// gateway's host CA on the callback.
struct Browser {
    jar: PathBuf,
    ca: PathBuf,
}

impl Browser {
    fn new(jar: &Path, ca: &Path) -> Browser {
        let _ = std::fs::remove_file(jar);
        Browser {
            jar: jar.to_path_buf(),
            ca: ca.to_path_buf(),
        }
    }

    /// One request; returns (status, Location, body).
    fn request(&self, url: &str, form: Option<&str>) -> (u16, Option<String>, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "--max-time", "30", "-D", "-"])
            .arg("-c")
            .arg(&self.jar)
            .arg("-b")
            .arg(&self.jar)
            .arg("--cacert")
            .arg(&self.ca);
        if let Some(form) = form {
            cmd.args(["--data", form]);
        }
        let out = cmd.arg(url).output().expect("curl");
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let location = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_string())
        });
        (status, location, body.to_string())
    }

    /// From the authorization URL to the CLI's loopback callback.
    fn log_in(&self, start: &str, login: &str) {
        let mut url = start.to_string();
        let mut form: Option<String> = None;
        for _ in 0..20 {
            let (status, location, body) = self.request(&url, form.as_deref());
            form = None;
            if let Some(next) = location {
                url = absolute(&url, &next);
                continue;
            }
            assert_eq!(status, 200, "{url}: {body}");
            if url.contains("/callback?") && !url.contains("/v1/sso/") {
                // The CLI's loopback page: the end of the journey.
                assert!(body.contains("You can close this window"), "{body}");
                return;
            }
            // A provider page with a form: login, then consent.
            let action = between(&body, "action=\"", "\"")
                .unwrap_or_else(|| panic!("no form at {url}: {body}"));
            url = absolute(&url, &action.replace("&amp;", "&"));
            form = Some(if body.contains("name=\"prompt\" value=\"login\"") {
                format!("prompt=login&login={login}&password=any")
            } else {
                "prompt=consent".to_string()
            });
        }
        panic!("the login did not reach the CLI's callback");
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// `next` resolved against `base` (absolute URLs and absolute paths).
fn absolute(base: &str, next: &str) -> String {
    if next.starts_with("http://") || next.starts_with("https://") {
        return next.to_string();
    }
    let scheme_end = base.find("://").unwrap() + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!("{}{next}", &base[..host_end])
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `crates/testkit/oidc`, with its npm packages installed (the test command installs them;
/// `npm ci` here covers a run of this test alone).
fn provider_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/oidc");
    if !dir.join("node_modules/oidc-provider").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm (Node.js is needed for the test OpenID provider)");
        assert!(
            out.status.success(),
            "npm ci in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", listen_port());
    let config = dir.path().join("dbward.yaml");
    std::fs::write(
        &config,
        format!(
            "version: v1\ncluster_name: ssotest\ndata_dir: {}\npublic_addr: localhost\n\
             web_listen_addr: {web}\npostgres_listen_addr: 127.0.0.1:{}\nmysql_listen_addr: 127.0.0.1:{}\n",
            dir.path().join("data").display(),
            listen_port(),
            listen_port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let gateway = Killed(
        Command::new(BIN)
            .args(["start", "-c"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dbward start"),
    );
    let admin_home = dir.path().join("admin-home");
    wait_for("the gateway", || {
        run(
            &["get", "roles", "-c", config.to_str().unwrap()],
            &admin_home,
            "",
        )
        .status
        .success()
    });

    // The databases trust the gateway's db-client CA, as the setup guides do it.
    let prefix = dir.path().join("db");
    let signed = run(
        &[
            "auth",
            "sign",
            "--format",
            "db",
            "--host",
            "localhost,127.0.0.1",
            "--out",
            prefix.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
        ],
        &admin_home,
        "",
    );
    assert_success("auth sign", &signed);
    let certs = DbServerCerts {
        crt: dir.path().join("db.crt"),
        key: dir.path().join("db.key"),
        cas: dir.path().join("db.cas"),
    };
    let pg = PgServer::start(&certs).expect("PostgreSQL");
    let maria = MariaServer::start(&certs).expect("MariaDB");
    let mut admin_sql = String::from(
        "CREATE ROLE \"dbward-admin\" LOGIN CREATEROLE; \
         CREATE ROLE \"db-readers\"; CREATE ROLE \"db-writers\"; \
         GRANT \"db-readers\", \"db-writers\" TO \"dbward-admin\" WITH ADMIN OPTION;",
    );
    if pg.major_version() >= 16 {
        admin_sql.push_str(
            "CREATE ROLE \"dbward-auto-user\"; GRANT \"dbward-auto-user\" TO \"dbward-admin\" WITH ADMIN OPTION;",
        );
    }
    pg.psql_super(&admin_sql).expect("PostgreSQL admin");
    maria
        .sql_root(
            "CREATE USER 'dbward-admin'@'%' REQUIRE SUBJECT '/CN=dbward-admin';
             GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO 'dbward-admin'@'%';
             GRANT SELECT ON mysql.roles_mapping TO 'dbward-admin'@'%';
             GRANT UPDATE ON mysql.* TO 'dbward-admin'@'%';
             GRANT SELECT ON *.* TO 'dbward-admin'@'%';
             CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
             GRANT `dbward-auto-user` TO 'dbward-admin'@'%' WITH ADMIN OPTION;
             CREATE DATABASE IF NOT EXISTS dbward;
             GRANT ALL ON dbward.* TO 'dbward-admin'@'%' WITH GRANT OPTION;
             CREATE ROLE `db-readers` WITH ADMIN 'dbward-admin'@'%';
             CREATE ROLE `db-writers` WITH ADMIN 'dbward-admin'@'%';",
        )
        .expect("MariaDB admin");

    let host_ca = dir.path().join("host-ca.pem");
    std::fs::write(
        &host_ca,
        expect_ok(
            &["auth", "export"],
            run(
                &[
                    "auth",
                    "export",
                    "--type",
                    "host",
                    "-c",
                    config.to_str().unwrap(),
                ],
                &admin_home,
                "",
            ),
        ),
    )
    .unwrap();

    let idp_port = listen_port();
    let idp_config = dir.path().join("idp.json");
    // The client is registered from the start; each test writes its accounts.
    let registration = serde_json::json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("https://localhost:{}/v1/sso/oidc/callback", web.rsplit(':').next().unwrap())],
        "accounts": {},
    });
    std::fs::write(&idp_config, registration.to_string()).unwrap();
    let provider = provider_dir();
    let idp_log = std::fs::File::create(dir.path().join("idp.log")).unwrap();
    let idp = Killed(
        Command::new("node")
            .arg(provider.join("provider.mjs"))
            .arg(idp_port.to_string())
            .arg(&idp_config)
            .stdout(idp_log.try_clone().unwrap())
            .stderr(idp_log)
            .spawn()
            .expect("node (Node.js runs the test OpenID provider)"),
    );
    wait_for("the OpenID provider", || {
        std::net::TcpStream::connect(("127.0.0.1", idp_port)).is_ok()
    });

    let world = World {
        dir,
        config,
        web,
        host_ca,
        idp_port,
        idp_config,
        pg,
        maria,
        _gateway: gateway,
        _idp: idp,
    };
    let resources = format!(
        r#"kind: role
version: v7
metadata: {{name: sso-db}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{"*": "*"}}
    db_names: ["*"]
    db_roles: ['{{{{regexp.replace(external.groups, "^(db-.*)$", "$1")}}}}']
---
kind: oidc
version: v3
metadata: {{name: test-idp}}
spec:
  issuer_url: http://127.0.0.1:{idp_port}
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
  redirect_url: https://localhost:{web_port}/v1/sso/oidc/callback
  scope: [email, groups, profile]
  username_claim: preferred_username
  max_age: 1h
  claims_to_roles:
    - {{claim: groups, value: "db-*", roles: [sso-db]}}
---
kind: db
version: v3
metadata: {{name: pg-db, labels: {{env: dev}}}}
spec:
  protocol: postgres
  uri: 127.0.0.1:{pg_port}
  admin_user: {{name: dbward-admin, default_database: postgres}}
---
kind: db
version: v3
metadata: {{name: maria-db, labels: {{env: dev}}}}
spec:
  protocol: mysql
  uri: 127.0.0.1:{maria_port}
  admin_user: {{name: dbward-admin}}
"#,
        web_port = world.web_port(),
        pg_port = world.pg.port,
        maria_port = world.maria.port,
    );
    world.admin(&["create", "-f", "-"], &resources);
    world
}

#[test]
fn sso_login_creates_the_user_and_the_groups_claim_becomes_database_roles() {
    let w = world();
    w.set_accounts(serde_json::json!({
        "alice": {"preferred_username": "alice", "email": "alice@example.com",
                  "email_verified": true, "groups": ["db-readers", "staff"]},
    }));

    let out = w.sso_login("alice", "alice");
    assert_success("dbward login --auth", &out);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("Logged in as alice to cluster ssotest"),
        "{printed}"
    );

    // The user exists from its first login, marked as the connector's, with the claims as
    // traits and the mapped role; `get oidc` never shows the secret.
    let user = w.admin(&["get", "user/alice", "--format", "json"], "");
    let user: serde_json::Value = serde_json::from_str(&user).unwrap();
    let user = if user.is_array() {
        user[0].clone()
    } else {
        user
    };
    assert_eq!(
        user["metadata"]["labels"]["dbward.dev/created-by"],
        "oidc/test-idp"
    );
    assert_eq!(user["spec"]["roles"], serde_json::json!(["sso-db"]));
    assert_eq!(
        user["spec"]["traits"]["groups"],
        serde_json::json!(["db-readers", "staff"])
    );
    assert_eq!(
        user["spec"]["traits"]["email"],
        serde_json::json!(["alice@example.com"])
    );
    let connector = w.admin(&["get", "oidc/test-idp", "--format", "yaml"], "");
    assert!(
        connector.contains("client_id: dbward-gateway"),
        "{connector}"
    );
    assert!(
        !connector.contains(CLIENT_SECRET) && !connector.contains("client_secret"),
        "{connector}"
    );

    // external.groups = [db-readers, staff]; the role keeps the groups named db-*.
    assert_eq!(w.pg_session_roles("alice"), "alice:db-readers");
    assert_eq!(w.maria_session_roles("alice"), "alice:db-readers");

    // The claim changes at the provider; the next login brings the new roles to the next
    // connection.
    w.set_accounts(serde_json::json!({
        "alice": {"preferred_username": "alice", "email": "alice@example.com",
                  "email_verified": true, "groups": ["db-writers"]},
    }));
    assert_success("second dbward login --auth", &w.sso_login("alice", "alice"));
    let user = w.admin(&["get", "user/alice", "--format", "json"], "");
    assert!(
        user.contains("db-writers") && !user.contains("db-readers"),
        "{user}"
    );
    assert_eq!(w.pg_session_roles("alice"), "alice:db-writers");
    assert_eq!(w.maria_session_roles("alice"), "alice:db-writers");

    // Out of every mapped group: the login is refused and the user loses its roles, so the
    // database certificate alice still holds opens nothing.
    w.set_accounts(serde_json::json!({
        "alice": {"preferred_username": "alice", "email_verified": true, "groups": ["sales"]},
    }));
    let out = w.sso_login("alice", "alice");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("none of your claims maps to a role"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = w.admin(&["get", "user/alice", "--format", "json"], "");
    assert!(!user.contains("sso-db"), "roles removed: {user}");
    let out = w.user(
        "alice",
        &[
            "db", "connect", "pg-db", "--", "-X", "-A", "-t", "-c", "select 1",
        ],
    );
    assert!(
        !out.status.success(),
        "the old certificate must open nothing"
    );

    // Each login is audited with its outcome.
    let audit = w.admin(
        &[
            "audit",
            "search",
            "--type",
            "user.login",
            "--format",
            "json",
        ],
        "",
    );
    let events: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("audit JSON");
    let outcomes: Vec<(String, bool)> = events
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or_default().to_string(),
                e["success"] == true,
            )
        })
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|(u, ok)| u == "alice" && *ok)
            .count(),
        2,
        "{audit}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|(u, ok)| u == "alice" && !*ok)
            .count(),
        1,
        "{audit}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["method"] == "oidc" && e["connector"] == "test-idp"),
        "{audit}"
    );
}

#[test]
fn sso_never_takes_over_a_local_user_and_refuses_people_without_a_role() {
    let w = world();
    w.admin(
        &[
            "users",
            "add",
            "bob",
            "--roles",
            "sso-db",
            "--traits",
            "groups=db-readers",
            "--password-stdin",
        ],
        "bob-local-password\n",
    );
    let before = w.admin(&["get", "user/bob", "--format", "json"], "");
    w.set_accounts(serde_json::json!({
        "bob": {"preferred_username": "bob", "email_verified": true, "groups": ["db-writers"]},
        "carol": {"preferred_username": "carol", "email_verified": true, "groups": ["sales"]},
        "dave": {"preferred_username": "dave", "email": "dave@example.com",
                 "email_verified": false, "groups": ["db-readers"]},
        "erin": {"preferred_username": "erin", "email_verified": true, "groups": ["db-readers"]},
        "mallory": {"preferred_username": "erin", "email_verified": true, "groups": ["db-writers"]},
    }));

    let out = w.sso_login("bob", "bob");
    assert!(
        !out.status.success(),
        "a local user's name must not log in through SSO"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "already exists and was not created by the single sign-on connector \"test-idp\""
        ),
        "{err}"
    );
    assert_eq!(
        w.admin(&["get", "user/bob", "--format", "json"], ""),
        before,
        "bob is unchanged"
    );
    assert!(!w.path("bob/cert.pem").exists(), "no certificate was saved");

    // An SSO user belongs to the person (issuer and subject) who created it, not to whoever
    // the provider lets claim the same name later.
    assert_success("erin's login", &w.sso_login("erin", "erin"));
    let erin = w.admin(&["get", "user/erin", "--format", "json"], "");
    let out = w.sso_login("mallory", "mallory");
    assert!(!out.status.success(), "mallory must not become erin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to another person at the identity provider"),
        "{err}"
    );
    assert_eq!(
        w.admin(&["get", "user/erin", "--format", "json"], ""),
        erin,
        "erin is unchanged"
    );

    let out = w.sso_login("carol", "carol");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none of your claims maps to a role"), "{err}");
    let users = w.admin(&["get", "users", "--format", "json"], "");
    assert!(
        !users.contains("carol"),
        "no user is created without a role: {users}"
    );

    let out = w.sso_login("dave", "dave");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("email address is not verified"), "{err}");

    // The local user still logs in with its password.
    let login = run(
        &[
            "login",
            "--proxy",
            &w.web,
            "--user",
            "bob",
            "--password-stdin",
            "--ca",
            w.host_ca.to_str().unwrap(),
        ],
        &w.path("bob"),
        "bob-local-password\n",
    );
    assert_success("password login of bob", &login);
}

#[test]
fn a_forged_or_replayed_callback_gets_no_certificate() {
    let w = world();
    // A state the gateway never sealed.
    let browser = Browser::new(&w.path("forger-cookies"), &w.host_ca);
    let (status, location, body) = browser.request(
        &format!("https://localhost:{}/v1/sso/oidc/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", w.web_port()),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(location.is_none());
    assert!(body.contains("unknown to the gateway"), "{body}");

    // A real state with a code the provider never issued: the CLI is told, no certificate.
    w.set_accounts(serde_json::json!({
        "erin": {"preferred_username": "erin", "email_verified": true, "groups": ["db-readers"]},
    }));
    let mut child = Command::new(BIN)
        .args([
            "login",
            "--proxy",
            &w.web,
            "--auth",
            "test-idp",
            "--browser",
            "none",
        ])
        .arg("--ca")
        .arg(&w.host_ca)
        .env("DBWARD_HOME", w.path("erin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no URL printed");
        if line.starts_with("http") {
            break line.trim().to_string();
        }
    };
    let state = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_string();
    let (status, location, _) = browser.request(
        &format!(
            "https://localhost:{}/v1/sso/oidc/callback?code=not-a-code&state={state}",
            w.web_port()
        ),
        None,
    );
    assert_eq!(status, 303);
    let location = location.unwrap();
    assert!(location.contains("error="), "{location}");
    let (status, _, _) = browser.request(&location, None);
    assert_eq!(status, 200);
    // The same state again: refused before anything is sent to the provider.
    let (status, location, body) = browser.request(
        &format!(
            "https://localhost:{}/v1/sso/oidc/callback?code=another-code&state={state}",
            w.web_port()
        ),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(location.is_none());
    assert!(body.contains("already completed or refused"), "{body}");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the identity provider refused the code"),
        "{err}"
    );
    assert!(!w.path("erin/cert.pem").exists());
}

/// `POST /v1/sso/oidc/login` for `connector` with curl; returns the HTTP status.
fn start_login(web_port: u16, ca: &Path, connector: &str) -> String {
    let (_, csr_pem) = dbward_pki::new_key_and_csr("someone").unwrap();
    let body = serde_json::json!({
        "connector": connector,
        "csr_pem": csr_pem,
        "client_redirect_url": "http://127.0.0.1:9/callback",
        "client_state": "s",
    });
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "120",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", "content-type: application/json", "--data"])
        .arg(body.to_string())
        .arg(format!("https://localhost:{web_port}/v1/sso/oidc/login"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_provider_that_never_answers_holds_up_only_its_own_connector() {
    let w = world();
    // A provider that accepts connections and never answers.
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tarpit_port = tarpit.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in tarpit.incoming().flatten() {
            held.push(stream);
        }
    });
    w.admin(
        &["create", "-f", "-"],
        &format!(
            "kind: oidc\nversion: v3\nmetadata: {{name: slow-idp}}\nspec:\n  issuer_url: http://127.0.0.1:{tarpit_port}\n  client_id: x\n  client_secret: y\n  redirect_url: https://localhost:{}/v1/sso/oidc/callback\n  claims_to_roles: [{{claim: groups, value: '*', roles: [sso-db]}}]\n",
            w.web_port()
        ),
    );
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let finished = finished.clone();
            let web_port = w.web_port();
            let ca = w.host_ca.clone();
            std::thread::spawn(move || {
                let status = start_login(web_port, &ca, "slow-idp");
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                status
            })
        })
        .collect();
    // Let the slow requests reach the gateway and start waiting on the tarpit.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(start_login(w.web_port(), &w.host_ca, "test-idp"), "200");
    assert_eq!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the working connector answered only after the stuck one gave up"
    );
    // The stuck provider is reported as unavailable, the later requests from the remembered
    // failure.
    for handle in slow {
        assert_eq!(handle.join().unwrap(), "503");
    }
}
