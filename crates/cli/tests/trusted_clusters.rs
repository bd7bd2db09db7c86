//! Trusted clusters end to end, with real processes: a root gateway and a leaf gateway
//! (`dbward start`, each with its own SQLite data dir), a PostgreSQL and a MariaDB behind the
//! leaf. A leaf joins with a token made on the root; a root user lists and reaches the leaf's
//! databases through the root's address only, as `remote-alice-root` with the leaf roles the
//! role map gives; the leaf refuses other names, other CAs and other cluster names; disabling
//! the trust ends the live session and refuses new ones.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dbward_pki::{CaSet, CertUsage, ClusterClaims, DbRoute, Identity};
use dbward_testkit::{DbServerCerts, MariaServer, PgServer};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

struct Cluster {
    name: &'static str,
    dir: PathBuf,
    config: PathBuf,
    web: String,
    pg: u16,
    my: u16,
}

impl Cluster {
    fn new(root: &Path, name: &'static str) -> Cluster {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let web = format!("127.0.0.1:{}", dbward_testkit::listen_port());
        let pg = dbward_testkit::listen_port();
        let my = dbward_testkit::listen_port();
        let config = dir.join("dbward.yaml");
        std::fs::write(
            &config,
            format!(
                "version: v1\ncluster_name: {name}\ndata_dir: {data}\npublic_addr: localhost\n\
                 web_listen_addr: {web}\npostgres_listen_addr: 127.0.0.1:{pg}\n\
                 mysql_listen_addr: 127.0.0.1:{my}\n",
                data = dir.join("data").display(),
            ),
        )
        .expect("config");
        Cluster {
            name,
            dir,
            config,
            web,
            pg,
            my,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The cluster's CAs, created in its store before it starts (or read back).
    fn cas(&self) -> CaSet {
        let config = dbward_model::Config::load(&self.config).expect("config loads");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            std::fs::create_dir_all(&config.data_dir)?;
            let store = dbward_server::open_store(&config).await?;
            anyhow::Ok(dbward_server::bootstrap::load_or_create_cas(&store, self.name).await?)
        })
        .expect("CAs")
    }

    fn run(&self, home: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = self.command(home, args).spawn().expect("run dbward");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("dbward output")
    }

    fn command(&self, home: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        // The config before the words: after `--` everything goes to the database client.
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .env("DBWARD_HOME", self.path(home))
            .env_remove("DBWARD_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn ok(&self, home: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(home, args, stdin);
        assert!(
            out.status.success(),
            "{}: dbward {args:?} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, home: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(home, args, stdin);
        assert!(
            !out.status.success(),
            "{}: dbward {args:?} should fail: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn create(&self, yaml: &str) -> Output {
        self.run("admin-home", &["create", "-f", "-", "--force"], yaml)
    }

    fn start(&self) -> Running {
        let log = std::fs::File::create(self.path("gateway.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("start")
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "dbward_server=info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("dbward start");
        let running = Running(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .run("admin-home", &["get", "roles"], "")
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not come up: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    fn audit(&self, event: &str) -> Vec<serde_json::Value> {
        let out = self.ok(
            "admin-home",
            &["audit", "search", "--type", event, "--format", "json"],
            "",
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// Stops a gateway when the test ends, also on panic.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn trusted_cluster(token: &str, root_web: &str, enabled: bool) -> String {
    format!(
        "kind: trusted_cluster\nversion: v2\nmetadata: {{name: root}}\nspec:\n  enabled: {enabled}\n  token: \"{token}\"\n  web_proxy_addr: {root_web}\n  role_map:\n    - remote: dev\n      local: [leaf-dev]\n    - remote: \"^ops-.*$\"\n      local: [leaf-ops]\n"
    )
}

fn stderr_and_stdout(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A certificate and key as the given CA would issue them, written next to the host CA the
/// client verifies the leaf with.
fn write_cert(
    dir: &Path,
    name: &str,
    cas: &CaSet,
    identity: &Identity,
    claims: &ClusterClaims,
) -> (PathBuf, PathBuf) {
    let (key, csr) = dbward_pki::new_key_and_csr(&identity.username).expect("csr");
    let cert = dbward_pki::issue_user_cert_with_claims(&cas.user, identity, claims, &csr)
        .expect("certificate");
    let crt_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&crt_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    let mut perms = std::fs::metadata(&key_path).expect("key").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&key_path, perms).expect("key mode");
    (crt_path, key_path)
}

/// psql straight to the leaf's PostgreSQL listener with a hand-made certificate.
fn psql_to_leaf(leaf: &Cluster, ca: &Path, crt: &Path, key: &Path, user: &str) -> Output {
    Command::new("psql")
        .arg(format!(
            "host=localhost port={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} user={user} dbname=postgres connect_timeout=10",
            leaf.pg,
            ca.display(),
            crt.display(),
            key.display()
        ))
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .output()
        .expect("psql")
}

#[test]
fn root_users_reach_leaf_databases_with_mapped_roles_until_the_trust_is_disabled() {
    dbward_testkit::require_binaries().expect("database binaries");
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = Cluster::new(tmp.path(), "root");
    let leaf = Cluster::new(tmp.path(), "leaf");

    // The leaf's databases trust the leaf's CAs.
    let leaf_cas = leaf.cas();
    let certs_dir = tmp.path().join("db-certs");
    std::fs::create_dir_all(&certs_dir).expect("certs dir");
    let certs = DbServerCerts::from_cas(&leaf_cas, &certs_dir).expect("db certs");
    let pg = PgServer::start(&certs).expect("PostgreSQL");
    let maria = MariaServer::start(&certs).expect("MariaDB");
    let mut admin_sql = "CREATE ROLE leafadm LOGIN CREATEROLE; CREATE ROLE leaf_reader NOLOGIN; CREATE ROLE leaf_writer NOLOGIN; CREATE ROLE leaf_ops_role NOLOGIN; GRANT leaf_reader, leaf_writer, leaf_ops_role TO leafadm WITH ADMIN OPTION;".to_string();
    if pg.major_version() >= 16 {
        admin_sql.push_str("CREATE ROLE \"dbward-auto-user\"; GRANT \"dbward-auto-user\" TO leafadm WITH ADMIN OPTION;");
    }
    pg.psql_super(&admin_sql).expect("PostgreSQL admin");
    maria
        .sql_root(
            "CREATE USER 'leafadm'@'%' REQUIRE SUBJECT '/CN=leafadm';
             GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO 'leafadm'@'%';
             GRANT SELECT ON mysql.roles_mapping TO 'leafadm'@'%';
             GRANT UPDATE ON mysql.* TO 'leafadm'@'%';
             GRANT SELECT ON *.* TO 'leafadm'@'%';
             CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
             GRANT `dbward-auto-user` TO 'leafadm'@'%' WITH ADMIN OPTION;
             CREATE DATABASE IF NOT EXISTS dbward;
             GRANT ALL ON dbward.* TO 'leafadm'@'%' WITH GRANT OPTION;
             CREATE ROLE `leaf_reader` WITH ADMIN 'leafadm'@'%';
             CREATE ROLE `leaf_writer` WITH ADMIN 'leafadm'@'%';",
        )
        .expect("MariaDB admin");

    let _root_gw = root.start();
    let _leaf_gw = leaf.start();

    // Leaf: roles that the role map names, one database of each engine.
    let leaf_resources = format!(
        "kind: role\nversion: v7\nmetadata: {{name: leaf-dev}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [leaf_reader, \"{{{{internal.db_roles}}}}\"]\n---\n\
         kind: role\nversion: v7\nmetadata: {{name: leaf-ops}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_roles: [leaf_ops_role]\n---\n\
         kind: db\nversion: v3\nmetadata: {{name: pgdb, labels: {{env: leaf}}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{pg}\n  admin_user: {{name: leafadm, default_database: postgres}}\n---\n\
         kind: db\nversion: v3\nmetadata: {{name: mydb, labels: {{env: leaf}}}}\nspec:\n  protocol: mysql\n  uri: 127.0.0.1:{my}\n  admin_user: {{name: leafadm}}\n",
        pg = pg.port,
        my = maria.port,
    );
    let out = leaf.create(&leaf_resources);
    assert!(out.status.success(), "{}", stderr_and_stdout(&out));

    // Root: alice holds `dev` (mapped) with a trait the leaf's role template reads; bob holds
    // only a role the leaf does not map.
    let root_resources = "kind: role\nversion: v7\nmetadata: {name: dev}\nspec:\n  allow: {}\n---\nkind: role\nversion: v7\nmetadata: {name: unmapped}\nspec:\n  allow: {}\n";
    let out = root.create(root_resources);
    assert!(out.status.success(), "{}", stderr_and_stdout(&out));
    root.ok(
        "admin-home",
        &[
            "users",
            "add",
            "alice",
            "--roles",
            "dev",
            "--traits",
            "db_roles=leaf_writer",
            "--password-stdin",
        ],
        "alice password\n",
    );
    root.ok(
        "admin-home",
        &[
            "users",
            "add",
            "bob",
            "--roles",
            "unmapped",
            "--password-stdin",
        ],
        "bob password\n",
    );

    // --- Join: wrong, expired and reused tokens are refused; a fresh one joins.
    let wrong = leaf.create(&trusted_cluster(&"ab".repeat(32), &root.web, true));
    assert!(!wrong.status.success());
    let text = stderr_and_stdout(&wrong);
    assert!(
        text.contains("the join token is invalid, expired or already used"),
        "{text}"
    );
    assert!(leaf
        .fails("admin-home", &["get", "trusted_cluster/root"], "")
        .contains("not found"));

    let short = root.ok(
        "admin-home",
        &["tokens", "add", "--type", "trusted_cluster", "--ttl", "1s"],
        "",
    );
    let short_token = short.lines().last().expect("token line").trim().to_string();
    std::thread::sleep(Duration::from_millis(2200));
    let expired = leaf.create(&trusted_cluster(&short_token, &root.web, true));
    assert!(!expired.status.success());
    assert!(
        stderr_and_stdout(&expired).contains("invalid, expired or already used"),
        "{}",
        stderr_and_stdout(&expired)
    );

    let made = root.ok(
        "admin-home",
        &["tokens", "add", "--type", "trusted_cluster", "--ttl", "30m"],
        "",
    );
    let token = made.lines().last().expect("token line").trim().to_string();
    assert_eq!(token.len(), 64, "{made}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{made}");
    let joined = leaf.create(&trusted_cluster(&token, &root.web, true));
    assert!(joined.status.success(), "{}", stderr_and_stdout(&joined));
    // Used once: after the trust is deleted, the same token cannot join again.
    leaf.ok("admin-home", &["rm", "trusted_cluster/root"], "");
    let reused = leaf.create(&trusted_cluster(&token, &root.web, true));
    assert!(!reused.status.success());
    assert!(
        stderr_and_stdout(&reused).contains("invalid, expired or already used"),
        "{}",
        stderr_and_stdout(&reused)
    );
    let made = root.ok(
        "admin-home",
        &["tokens", "add", "--type", "trusted_cluster"],
        "",
    );
    let token = made.lines().last().expect("token line").trim().to_string();
    let joined = leaf.create(&trusted_cluster(&token, &root.web, true));
    assert!(joined.status.success(), "{}", stderr_and_stdout(&joined));

    // Another cluster calling itself "leaf", with a valid token of its own, cannot take the
    // joined leaf's place at the root.
    let impostor = Cluster::new(&tmp.path().join("impostor"), "leaf");
    let _impostor_gw = impostor.start();
    let made = root.ok(
        "admin-home",
        &["tokens", "add", "--type", "trusted_cluster"],
        "",
    );
    let second = made.lines().last().expect("token line").trim().to_string();
    let taken = impostor.create(&trusted_cluster(&second, &root.web, true));
    assert!(!taken.status.success(), "the impostor joined");
    let text = stderr_and_stdout(&taken);
    assert!(
        text.contains("has already joined with another host CA"),
        "{text}"
    );

    // --- alice logs in to the root only, and sees the leaf's databases there.
    let root_ca = root.path("root-host-ca.pem");
    std::fs::write(
        &root_ca,
        root.ok("admin-home", &["auth", "export", "--type", "host"], ""),
    )
    .expect("root host CA");
    let ca_arg = root_ca.display().to_string();
    for (home, user, password) in [
        ("alice-home", "alice", "alice password\n"),
        ("bob-home", "bob", "bob password\n"),
    ] {
        root.ok(
            home,
            &[
                "login",
                "--proxy",
                &root.web,
                "--user",
                user,
                "--password-stdin",
                "--ca",
                &ca_arg,
            ],
            password,
        );
    }
    let listed = root.ok("alice-home", &["db", "ls", "--cluster", "leaf"], "");
    assert!(
        listed.contains("pgdb") && listed.contains("mydb"),
        "{listed}"
    );
    assert!(listed.contains("remote-alice-root"), "{listed}");
    // bob's roles map to nothing on the leaf: he sees nothing there.
    let listed = root.ok("bob-home", &["db", "ls", "--cluster", "leaf"], "");
    assert!(!listed.contains("pgdb"), "{listed}");

    // --- PostgreSQL through the root's address, as remote-alice-root with the mapped roles.
    let login = root.ok(
        "alice-home",
        &[
            "db",
            "login",
            "pgdb",
            "--cluster",
            "leaf",
            "--db-name",
            "postgres",
        ],
        "",
    );
    assert!(login.contains("remote-alice-root"), "{login}");
    let config: serde_json::Value = serde_json::from_str(&root.ok(
        "alice-home",
        &["db", "config", "pgdb", "--format", "json"],
        "",
    ))
    .expect("db config json");
    assert_eq!(config["user"], "remote-alice-root", "{config}");
    assert_eq!(
        config["port"].as_u64(),
        Some(u64::from(root.pg)),
        "the client is sent to the root's listener: {config}"
    );
    // Seen from inside the session (keep mode revokes the roles when it ends).
    let connected = root.ok(
        "alice-home",
        &[
            "db",
            "connect",
            "pgdb",
            "--",
            "-X",
            "-A",
            "-t",
            "-c",
            "select current_user || ' ' || (select string_agg(r.rolname, ',' order by r.rolname) from pg_auth_members m join pg_roles r on r.oid = m.roleid join pg_roles u on u.oid = m.member where u.rolname = current_user)",
        ],
        "",
    );
    assert_eq!(
        connected.trim(),
        "remote-alice-root dbward-auto-user,leaf_reader,leaf_writer",
        "role_map gave leaf-dev, whose template reads the root's trait"
    );

    // The wrong name, word for word.
    let ca = config["ca"].as_str().expect("ca").to_string();
    let crt = config["cert"].as_str().expect("cert").to_string();
    let key = config["key"].as_str().expect("key").to_string();
    let wrong_name = Command::new("psql")
        .arg(format!(
            "host=localhost port={} sslmode=verify-full sslrootcert={ca} sslcert={crt} sslkey={key} user=bob dbname=postgres",
            root.pg
        ))
        .args(["-X", "-c", "select 1"])
        .output()
        .expect("psql");
    assert!(!wrong_name.status.success());
    let text = stderr_and_stdout(&wrong_name);
    assert!(
        text.contains(
            "please use your mapped remote username (\"remote-alice-root\") to connect instead of \"bob\""
        ),
        "{text}"
    );

    // Audit: the leaf names the root user and cluster, the root records the forward.
    let leaf_starts = leaf.audit("db.session.start");
    assert!(
        leaf_starts.iter().any(|e| e["user"] == "alice"
            && e["user_cluster"] == "root"
            && e["db_user"] == "remote-alice-root"
            && e["success"] == true),
        "{leaf_starts:?}"
    );
    let root_starts = root.audit("db.session.start");
    assert!(
        root_starts
            .iter()
            .any(|e| e["user"] == "alice" && e["leaf_cluster"] == "leaf" && e["success"] == true),
        "{root_starts:?}"
    );

    // --- Straight to the leaf: only the trusted root's CA *and* its cluster name pass.
    let leaf_ca = tmp.path().join("leaf-host-ca.pem");
    std::fs::write(&leaf_ca, &leaf_cas.host.cert_pem).expect("leaf host CA");
    let root_cas = root.cas();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let vouched = ClusterClaims {
        route_cluster: None,
        roles: vec!["dev".into()],
        traits: Default::default(),
    };
    let identity = |cluster: &str| Identity {
        username: "alice".into(),
        cluster: cluster.into(),
        usage: CertUsage::Db,
        expires,
        route: Some(DbRoute {
            service: "pgdb".into(),
            db_user: Some("remote-alice-root".into()),
            db_name: Some("postgres".into()),
            db_roles: Vec::new(),
        }),
        pinned_ip: None,
        mfa_session_until: None,
    };
    let (crt, key) = write_cert(
        tmp.path(),
        "genuine",
        &root_cas,
        &identity("root"),
        &vouched,
    );
    let genuine = psql_to_leaf(&leaf, &leaf_ca, &crt, &key, "remote-alice-root");
    assert_eq!(
        String::from_utf8_lossy(&genuine.stdout).trim(),
        "remote-alice-root",
        "{}",
        stderr_and_stdout(&genuine)
    );
    let (crt, key) = write_cert(
        tmp.path(),
        "othername",
        &root_cas,
        &identity("other"),
        &vouched,
    );
    let other_name = psql_to_leaf(&leaf, &leaf_ca, &crt, &key, "remote-alice-other");
    assert!(!other_name.status.success());
    let forged_cas = CaSet::generate("root").expect("CAs");
    let (crt, key) = write_cert(
        tmp.path(),
        "otherca",
        &forged_cas,
        &identity("root"),
        &vouched,
    );
    let other_ca = psql_to_leaf(&leaf, &leaf_ca, &crt, &key, "remote-alice-root");
    assert!(!other_ca.status.success());
    // Refused by the TLS handshake itself, not by a later check.
    for refused in [&other_name, &other_ca] {
        let text = stderr_and_stdout(refused);
        assert!(
            text.contains("SSL") && !text.contains("client certificate refused"),
            "{text}"
        );
    }

    // Roles in a certificate of the leaf's own CA are never believed: a user the leaf does
    // not know stays refused whatever roles the certificate claims.
    let local = Identity {
        username: "mallory".into(),
        ..identity("leaf")
    };
    let (crt, key) = write_cert(tmp.path(), "local", &leaf_cas, &local, &vouched);
    let claimed = psql_to_leaf(&leaf, &leaf_ca, &crt, &key, "mallory");
    assert!(!claimed.status.success());
    assert!(
        stderr_and_stdout(&claimed).contains("access to db denied"),
        "{}",
        stderr_and_stdout(&claimed)
    );
    let mallory = pg
        .psql_super("select count(*) from pg_roles where rolname = 'mallory'")
        .expect("pg_roles");
    assert_eq!(mallory.trim(), "0");

    // A local user named like the root's users never gets their database user.
    leaf.ok(
        "admin-home",
        &[
            "users",
            "add",
            "remote-alice-root",
            "--roles",
            "leaf-dev",
            "--password-stdin",
        ],
        "impostor password\n",
    );
    let leaf_ca_arg = leaf_ca.display().to_string();
    leaf.ok(
        "impostor-home",
        &[
            "login",
            "--proxy",
            &leaf.web,
            "--user",
            "remote-alice-root",
            "--password-stdin",
            "--ca",
            &leaf_ca_arg,
        ],
        "impostor password\n",
    );
    let impostor = leaf.run(
        "impostor-home",
        &[
            "db",
            "connect",
            "pgdb",
            "--db-name",
            "postgres",
            "--",
            "-X",
            "-A",
            "-t",
            "-c",
            "select current_user",
        ],
        "",
    );
    assert!(
        !impostor.status.success(),
        "{}",
        stderr_and_stdout(&impostor)
    );
    assert!(
        stderr_and_stdout(&impostor).contains("access to db denied"),
        "{}",
        stderr_and_stdout(&impostor)
    );
    leaf.ok("admin-home", &["users", "rm", "remote-alice-root"], "");

    // --- MariaDB through the root too.
    root.ok(
        "alice-home",
        &["db", "login", "mydb", "--cluster", "leaf"],
        "",
    );
    let current = root.ok(
        "alice-home",
        &[
            "db",
            "connect",
            "mydb",
            "--",
            "-N",
            "-B",
            "-e",
            "select current_user(), (select group_concat(ROLE_NAME order by ROLE_NAME) from information_schema.APPLICABLE_ROLES)",
        ],
        "",
    );
    let mut fields = current.trim().split('\t');
    assert_eq!(fields.next(), Some("remote-alice-root@%"), "{current}");
    let granted = fields.next().unwrap_or_default();
    assert!(
        granted.contains("leaf_reader") && granted.contains("leaf_writer"),
        "{current}"
    );
    let config: serde_json::Value = serde_json::from_str(&root.ok(
        "alice-home",
        &["db", "config", "mydb", "--format", "json"],
        "",
    ))
    .expect("db config json");
    let wrong_name = Command::new("mariadb")
        .arg("--no-defaults")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={}", root.my))
        .arg(format!("--ssl-ca={}", config["ca"].as_str().expect("ca")))
        .arg(format!(
            "--ssl-cert={}",
            config["cert"].as_str().expect("cert")
        ))
        .arg(format!(
            "--ssl-key={}",
            config["key"].as_str().expect("key")
        ))
        .arg("--ssl-verify-server-cert")
        .arg("--user=bob")
        .args(["-e", "select 1"])
        .output()
        .expect("mariadb");
    assert!(!wrong_name.status.success());
    let text = stderr_and_stdout(&wrong_name);
    assert!(
        text.contains(
            "please use your mapped remote username (\"remote-alice-root\") to connect instead of \"bob\""
        ),
        "{text}"
    );

    // A root user whose remote name is too long for the databases (92 characters: more than
    // PostgreSQL's 63 bytes and MariaDB's 80 characters): the leaf provisions the usual hashed
    // name (dw- and 27 characters), the same on both engines.
    let long = "l".repeat(80);
    root.ok(
        "admin-home",
        &["users", "add", &long, "--roles", "dev", "--password-stdin"],
        "long password\n",
    );
    root.ok(
        "long-home",
        &[
            "login",
            "--proxy",
            &root.web,
            "--user",
            &long,
            "--password-stdin",
            "--ca",
            &ca_arg,
        ],
        "long password\n",
    );
    root.ok(
        "long-home",
        &[
            "db",
            "login",
            "pgdb",
            "--cluster",
            "leaf",
            "--db-name",
            "postgres",
        ],
        "",
    );
    let pg_name = root.ok(
        "long-home",
        &[
            "db",
            "connect",
            "pgdb",
            "--",
            "-X",
            "-A",
            "-t",
            "-c",
            "select current_user",
        ],
        "",
    );
    let pg_name = pg_name.trim();
    assert!(
        pg_name.starts_with("dw-") && pg_name.len() == 30,
        "{pg_name}"
    );
    root.ok(
        "long-home",
        &["db", "login", "mydb", "--cluster", "leaf"],
        "",
    );
    let my_name = root.ok(
        "long-home",
        &[
            "db",
            "connect",
            "mydb",
            "--",
            "-N",
            "-B",
            "-e",
            "select current_user()",
        ],
        "",
    );
    assert_eq!(
        my_name.trim(),
        format!("{pg_name}@%"),
        "the same hash on both engines"
    );

    // A leaf role that requires a one-time code per session: the leaf cannot check one given
    // to the root, so root users are refused rather than let in without it.
    let mfa_role = "kind: role\nversion: v7\nmetadata: {name: leaf-dev}\nspec:\n  options: {create_db_user_mode: keep, require_session_mfa: true}\n  allow:\n    db_labels: {\"*\": \"*\"}\n    db_names: [\"*\"]\n    db_roles: [leaf_reader, \"{{internal.db_roles}}\"]\n";
    let out = leaf.run("admin-home", &["create", "--force", "-f", "-"], mfa_role);
    assert!(out.status.success(), "{}", stderr_and_stdout(&out));
    let refused = root.run(
        "alice-home",
        &[
            "db", "connect", "pgdb", "--", "-X", "-A", "-t", "-c", "select 1",
        ],
        "",
    );
    assert!(
        !refused.status.success(),
        "session MFA on the leaf let a root user in"
    );
    let text = stderr_and_stdout(&refused);
    assert!(text.contains("require_session_mfa"), "{text}");
    let restore = mfa_role.replace(", require_session_mfa: true", "");
    let out = leaf.run("admin-home", &["create", "--force", "-f", "-"], &restore);
    assert!(out.status.success(), "{}", stderr_and_stdout(&out));

    // --- A role or trait changed on the root ends the forwarded session: the leaf judged it
    // with the ones the minted certificate carried.
    let live = live_session(&root, &pg);
    root.ok(
        "admin-home",
        &["create", "--force", "-f", "-"],
        "kind: user\nversion: v2\nmetadata: {name: alice}\nspec:\n  roles: [dev]\n  traits: {db_roles: []}\n",
    );
    ends_soon(
        live,
        "the session survived a change of the user's traits on the root",
    );

    // --- Revocation: disabling the trust ends a live session and refuses new ones.
    let live = live_session(&root, &pg);
    let disabled = leaf.create(&trusted_cluster("", &root.web, false));
    assert!(
        disabled.status.success(),
        "{}",
        stderr_and_stdout(&disabled)
    );
    ends_soon(live, "the live session survived the revocation");
    let refused = root.run(
        "alice-home",
        &["db", "connect", "pgdb", "--", "-X", "-c", "select 1"],
        "",
    );
    assert!(!refused.status.success());
    let text = stderr_and_stdout(&refused);
    assert!(
        text.contains(
            "the trusted cluster \"leaf\" could not be reached or refused the connection"
        ),
        "{text}"
    );
    // Straight to the leaf, the root's certificate no longer passes the handshake either.
    let (crt, key) = write_cert(tmp.path(), "after", &root_cas, &identity("root"), &vouched);
    let after = psql_to_leaf(&leaf, &leaf_ca, &crt, &key, "remote-alice-root");
    assert!(!after.status.success(), "{}", stderr_and_stdout(&after));
}

/// alice's `select pg_sleep(60)` through the root, once the leaf's PostgreSQL runs it.
fn live_session(root: &Cluster, pg: &PgServer) -> Child {
    let mut live = root
        .command(
            "alice-home",
            &[
                "db",
                "connect",
                "pgdb",
                "--",
                "-X",
                "-A",
                "-t",
                "-c",
                "select pg_sleep(60)",
            ],
        )
        .spawn()
        .expect("live session");
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = || loop {
        let active = pg
            .psql_super("select count(*) from pg_stat_activity where usename = 'remote-alice-root' and query like '%pg_sleep%'")
            .unwrap_or_default();
        if active.trim() == "1" {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !running() {
        let _ = live.kill();
        let _ = live.wait();
        panic!("the live session did not start");
    }
    live
}

/// Waits for the gateway to end `live` (not for its query to finish).
fn ends_soon(mut live: Child, what: &str) {
    let started = Instant::now();
    loop {
        if let Some(status) = live.try_wait().expect("wait") {
            assert!(!status.success(), "the session was ended, not finished");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
