//! Crashes, outages and two `db` resources on one server, against a gateway that runs as a
//! process of its own (this test binary started again in "gateway mode"), so a test can
//! `kill -9` it and start it again over the same data directory.
//!
//! Every test starts its own gateway (own SQLite store in its own data directory) in front of
//! the binary's one PostgreSQL server, and uses its own names.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{conninfo, lit, q, ClientFiles, OpenSession};
use dbward_pki::{CaKind, CertUsage, DbRoute, Identity};
use dbward_store::{PutMode, Store};
use time::OffsetDateTime;

/// Set in the environment of a child started as a gateway: the config file to run.
const GATEWAY_CONFIG_ENV: &str = "DBWARD_CRASH_TEST_GATEWAY_CONFIG";
/// The cluster name of the shared test CAs.
const CLUSTER: &str = "dbward-test";

/// Not a test: the entry point of a gateway child process, which the tests start with
/// `--include-ignored`.
#[test]
#[ignore = "the gateway child process of the other tests"]
fn gateway_child_process() {
    let Ok(config) = std::env::var(GATEWAY_CONFIG_ENV) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("dbward_server=debug,dbward_provision=debug,dbward_store=info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let config = dbward_model::Config::load(Path::new(&config)).expect("gateway config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(err) = rt.block_on(dbward_server::run(config)) {
        eprintln!("gateway failed: {err}");
        std::process::exit(1);
    }
}

fn free_port() -> u16 {
    dbward_testkit::listen_port()
}

fn pg() -> &'static dbward_testkit::PgServer {
    dbward_testkit::shared_pg().expect("shared PostgreSQL")
}

fn maria() -> &'static dbward_testkit::MariaServer {
    dbward_testkit::shared_maria().expect("shared MariaDB")
}

fn maria_sql(statement: &str) -> String {
    maria()
        .sql_root(statement)
        .unwrap_or_else(|e| panic!("{statement}: {e:#}"))
}

/// `account_locked` of 'user'@'%': Some(true/false), None when the account does not exist.
fn maria_locked(user: &str) -> Option<bool> {
    match maria_sql(&format!(
        "SELECT IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') FROM mysql.global_priv WHERE User = {} AND Host = '%'",
        lit(user)
    ))
    .as_str()
    {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn sql(statement: &str) -> String {
    pg().psql_super(statement)
        .unwrap_or_else(|e| panic!("{statement}: {e:#}"))
}

/// `rolcanlogin` of a role; `None` when the role does not exist.
fn can_login(role: &str) -> Option<bool> {
    match sql(&format!(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
        lit(role)
    ))
    .as_str()
    {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    }
}

fn backends_of(role: &str) -> i64 {
    sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
        lit(role)
    ))
    .parse()
    .unwrap_or(-1)
}

fn memberships(role: &str) -> String {
    sql(&format!(
        "SELECT coalesce(string_agg(r.rolname, ',' ORDER BY r.rolname), '') FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {}",
        lit(role)
    ))
}

/// Polls `check` every 100 ms for at most `limit`; returns how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within {limit:?}: {what}");
}

/// One gateway's data directory, config and client material.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    pg_port: u16,
    mysql_port: u16,
    rt: tokio::runtime::Runtime,
    store: Store,
}

/// A running gateway process; killed (SIGKILL) when dropped.
struct GatewayProcess {
    child: Child,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// `kill -9`: the process gets no chance to tear anything down.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    fn new() -> Site {
        Site::with_store(None)
    }

    /// A gateway whose store is the PostgreSQL database `dsn` names (shared with others), or
    /// SQLite in its data directory.
    fn with_store(dsn: Option<&str>) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("dwcrash")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let data = dir.path().join("data");
        let (pg_port, mysql_port) = (free_port(), free_port());
        let config = dir.path().join("dbward.yaml");
        let storage = dsn
            .map(|dsn| format!("storage:\n  backend: postgres\n  dsn: {dsn:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "version: v1\ncluster_name: {CLUSTER}\ndata_dir: {}\nweb_listen_addr: 127.0.0.1:{}\npostgres_listen_addr: 127.0.0.1:{pg_port}\nmysql_listen_addr: 127.0.0.1:{mysql_port}\n{storage}",
                data.display(),
                free_port(),
            ),
        )
        .expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // The gateway finds the binary's shared CAs in its store, so the shared PostgreSQL
        // (whose certificates they signed) trusts it.
        let store = match dsn {
            Some(dsn) => Store::open_postgres(dsn).expect("store"),
            None => Store::open_sqlite(&data).expect("store"),
        };
        let cas = dbward_testkit::shared_cas().expect("shared CAs");
        rt.block_on(async {
            for kind in [CaKind::User, CaKind::Host, CaKind::Db, CaKind::DbClient] {
                let ca = cas.get(kind);
                store
                    .put_ca_if_absent(kind.as_str(), &ca.cert_pem, &ca.key_pem)
                    .await
                    .expect("store CA");
            }
        });
        std::fs::write(dir.path().join("host-ca.crt"), &cas.host.cert_pem).expect("host CA");
        Site {
            dir,
            config,
            data,
            pg_port,
            mysql_port,
            rt,
            store,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    /// Starts the gateway and waits until its PostgreSQL listener accepts connections.
    fn start(&self) -> GatewayProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("gateway.log"))
            .expect("log file");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "gateway_child_process",
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(GATEWAY_CONFIG_ENV, &self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start the gateway");
        let gateway = GatewayProcess { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        let endpoints = dbward_server::AdminFiles::new(&self.data).endpoints();
        loop {
            // The endpoints file is rewritten by each start, after binding; its pid says
            // which start wrote it.
            let ready = std::fs::read_to_string(&endpoints)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
                == Some(u64::from(gateway.child.id()));
            if ready && std::net::TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok() {
                return gateway;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stores resources given as YAML (replacing existing ones).
    fn apply(&self, yaml: &str) {
        let parsed = dbward_model::parse_resources(yaml, "test.yaml").expect("test YAML parses");
        self.rt.block_on(async {
            for r in &parsed.resources {
                let body = serde_json::to_string(r).expect("resource JSON");
                self.store
                    .put_resource(r.kind(), r.name(), &body, PutMode::Upsert)
                    .await
                    .expect("store resource");
            }
        });
    }

    /// A `db` resource on the shared PostgreSQL.
    fn db_yaml(&self, name: &str, labels: &str, admin: &str, admin_db: &str) -> String {
        db_yaml_on(pg().port, name, labels, admin, admin_db)
    }

    /// A `db` resource on the shared MariaDB.
    fn maria_db_yaml(&self, name: &str, labels: &str, admin: &str) -> String {
        format!(
            "kind: db\nversion: v3\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  protocol: mysql\n  uri: 127.0.0.1:{}\n  admin_user: {{name: {admin:?}}}\n",
            maria().port
        )
    }

    fn mariadb(&self, files: &ClientFiles, user: &str, statement: &str) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.mysql_port))
            .arg(format!("--ssl-ca={}", files.ca.display()))
            .arg(format!("--ssl-cert={}", files.crt.display()))
            .arg(format!("--ssl-key={}", files.key.display()))
            .arg("--ssl-verify-server-cert")
            .arg(format!("--user={user}"))
            .args(["-N", "-B", "-e", statement]);
        cmd
    }

    /// A database certificate for `user` routed to `service`.
    fn db_cert(&self, user: &str, service: &str) -> ClientFiles {
        self.db_cert_for(user, service, Some("postgres"))
    }

    fn db_cert_for(&self, user: &str, service: &str, db_name: Option<&str>) -> ClientFiles {
        let dir = self.path(&format!("client-{user}-{service}"));
        std::fs::create_dir_all(&dir).expect("client dir");
        let cas = dbward_testkit::shared_cas().expect("shared CAs");
        let (key, csr) = dbward_pki::new_key_and_csr(user).expect("key");
        let identity = Identity {
            username: user.to_string(),
            cluster: CLUSTER.to_string(),
            usage: CertUsage::Db,
            expires: OffsetDateTime::now_utc() + Duration::from_secs(3600),
            route: Some(DbRoute {
                service: service.to_string(),
                db_user: Some(user.to_string()),
                db_name: db_name.map(str::to_string),
                db_roles: Vec::new(),
            }),
            pinned_ip: None,
            mfa_session_until: None,
        };
        let cert = dbward_pki::issue_user_cert(&cas.user, &identity, &csr).expect("cert");
        let files = ClientFiles {
            crt: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: self.path("host-ca.crt"),
        };
        std::fs::write(&files.crt, cert).expect("cert file");
        dbward_pki::write_private_file(&files.key, key.as_bytes()).expect("key file");
        files
    }

    fn psql(&self, files: &ClientFiles, user: &str, statement: &str) -> Command {
        let addr = format!("127.0.0.1:{}", self.pg_port)
            .parse()
            .expect("address");
        let mut cmd = Command::new("psql");
        cmd.arg(conninfo(addr, files, user, "postgres"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "60");
        if !statement.is_empty() {
            cmd.args(["-c", statement]);
        }
        cmd
    }

    fn audit_bodies(&self) -> Vec<String> {
        self.rt
            .block_on(self.store.search_audit(dbward_store::AuditQuery {
                limit: 100_000,
                ..Default::default()
            }))
            .expect("audit search")
    }
}

/// A `db` resource on the PostgreSQL at `port`.
fn db_yaml_on(port: u16, name: &str, labels: &str, admin: &str, admin_db: &str) -> String {
    format!(
        "kind: db\nversion: v3\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{port}\n  admin_user: {{name: {admin:?}, default_database: {admin_db}}}\n"
    )
}

/// An admin (LOGIN CREATEROLE) holding `reader` WITH ADMIN OPTION, and from PostgreSQL 16 on
/// the marker role too (CREATEROLE no longer lets it grant a role another admin created).
fn create_admin(admin: &str, reader: &str) {
    sql(&format!(
        "CREATE ROLE {a} LOGIN CREATEROLE; CREATE ROLE {r} NOLOGIN; GRANT {r} TO {a} WITH ADMIN OPTION; \
         DO $$BEGIN IF pg_catalog.current_setting('server_version_num')::int >= 160000 THEN \
           BEGIN CREATE ROLE \"dbward-auto-user\"; \
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
           GRANT \"dbward-auto-user\" TO {a} WITH ADMIN OPTION; \
         END IF; END$$;",
        a = q(admin),
        r = q(reader)
    ));
}

fn role_yaml(name: &str, mode: &str, labels: &str, reader: &str) -> String {
    format!(
        "kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec:\n  options: {{create_db_user_mode: {mode}}}\n  allow:\n    db_labels: {labels}\n    db_names: [\"*\"]\n    db_roles: [{reader:?}]\n"
    )
}

fn user_yaml(name: &str, roles: &[&str]) -> String {
    format!(
        "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\nspec: {{roles: [{}]}}\n",
        roles
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn unique(prefix: &str) -> String {
    dbward_testkit::unique_name(prefix)
}

/// PROVISIONING §8, crashes: with a `keep` and a `best_effort_drop` resource on one server,
/// a user made active through the `keep` one is locked after a `kill -9` and a restart, never
/// dropped (the mode is the activation's, and the weakest one wins).
#[test]
fn killed_gateway_never_drops_a_user_activated_in_keep_mode() {
    let site = Site::new();
    let n = unique("k");
    let (admin, reader, alice) = (format!("adm_{n}"), format!("rd_{n}"), format!("alice_{n}"));
    create_admin(&admin, &reader);
    // The drop resource sorts first, as in the acceptance setup.
    let (drop_db, keep_db) = (format!("a-drop-{n}"), format!("b-keep-{n}"));
    site.apply(&format!(
        "{}---\n{}---\n{}---\n{}---\n{}",
        site.db_yaml(
            &drop_db,
            &format!("{{tier: drop, t: {n}}}"),
            &admin,
            "postgres"
        ),
        site.db_yaml(
            &keep_db,
            &format!("{{tier: keep, t: {n}}}"),
            &admin,
            "postgres"
        ),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{tier: keep, t: {n}}}"),
            &reader
        ),
        role_yaml(
            &format!("drop-{n}"),
            "best_effort_drop",
            &format!("{{tier: drop, t: {n}}}"),
            &reader
        ),
        user_yaml(&alice, &[&format!("keep-{n}"), &format!("drop-{n}")]),
    ));

    let gateway = site.start();
    let files = site.db_cert(&alice, &keep_db);
    let session = OpenSession::start(site.psql(&files, &alice, "")).expect("session");
    assert_eq!(can_login(&alice), Some(true), "active during the session");

    gateway.kill9();
    drop(session);
    let _gateway = site.start();
    let took = within(
        Duration::from_secs(30),
        "alice locked after restart",
        || can_login(&alice) != Some(true),
    );
    eprintln!("user locked {took:?} after the restart");
    assert_eq!(
        can_login(&alice),
        Some(false),
        "a keep user is locked, never dropped: {}",
        site.log()
    );
    assert_eq!(memberships(&alice), "dbward-auto-user");
}

/// PROVISIONING §8, crashes: a session busy in a long statement when the gateway is killed
/// is ended (its backend terminated) and its user locked soon after the restart, not when
/// the statement finishes.
#[test]
fn killed_gateway_ends_a_busy_session_after_restart() {
    let site = Site::new();
    let n = unique("b");
    let (admin, reader, bob) = (format!("adm_{n}"), format!("rd_{n}"), format!("bob_{n}"));
    create_admin(&admin, &reader);
    let db = format!("busy-{n}");
    site.apply(&format!(
        "{}---\n{}---\n{}",
        site.db_yaml(&db, &format!("{{t: {n}}}"), &admin, "postgres"),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&bob, &[&format!("keep-{n}")]),
    ));

    let gateway = site.start();
    let files = site.db_cert(&bob, &db);
    let mut busy = site
        .psql(&files, &bob, "SELECT pg_sleep(240)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    within(Duration::from_secs(30), "pg_sleep running", || {
        sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND query LIKE '%pg_sleep%'",
            lit(&bob)
        )) == "1"
    });

    gateway.kill9();
    let _gateway = site.start();
    let took = within(
        Duration::from_secs(30),
        "backend terminated and user locked after restart",
        || backends_of(&bob) == 0 && can_login(&bob) == Some(false),
    );
    eprintln!("busy session ended and user locked {took:?} after the restart");
    assert_eq!(memberships(&bob), "dbward-auto-user");
    let _ = busy.kill();
    let _ = busy.wait();
}

/// PROVISIONING §3: two `db` resources that point at one server share the provisioning lock
/// of a database user, so an activation through one waits for the other's.
#[test]
fn two_resources_on_one_server_serialise_provisioning_of_a_user() {
    let site = Site::new();
    let n = unique("s");
    let (admin, reader, carol) = (format!("adm_{n}"), format!("rd_{n}"), format!("carol_{n}"));
    create_admin(&admin, &reader);
    let (first, second) = (format!("first-{n}"), format!("second-{n}"));
    site.apply(&format!(
        "{}---\n{}---\n{}---\n{}",
        site.db_yaml(&first, &format!("{{t: {n}}}"), &admin, "postgres"),
        site.db_yaml(&second, &format!("{{t: {n}}}"), &admin, "postgres"),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&carol, &[&format!("keep-{n}")]),
    ));
    let _gateway = site.start();
    // Carol exists (locked) after a first session.
    let files_first = site.db_cert(&carol, &first);
    let files_second = site.db_cert(&carol, &second);
    let out = site
        .psql(&files_first, &carol, "SELECT 1")
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(Duration::from_secs(20), "carol locked", || {
        can_login(&carol) == Some(false)
    });

    // Hold carol's catalog row so an activation blocks inside the database, with the
    // provisioning lock held.
    let mut holder = Command::new(pg().psql_bin().expect("psql"))
        .arg(pg().super_conninfo("postgres"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut holder_in = holder.stdin.take().expect("stdin");
    writeln!(
        holder_in,
        "BEGIN; ALTER ROLE {} CONNECTION LIMIT 100;",
        q(&carol)
    )
    .expect("write");
    holder_in.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));

    let one = site
        .psql(&files_first, &carol, "SELECT 1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let two = site
        .psql(&files_second, &carol, "SELECT 1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let waiting = || {
        sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND wait_event_type = 'Lock'",
            lit(&admin)
        ))
        .parse::<i64>()
        .unwrap_or(-1)
    };
    within(Duration::from_secs(20), "one activation waiting", || {
        waiting() >= 1
    });
    // Give the other session time to reach the database if nothing holds it back.
    std::thread::sleep(Duration::from_secs(3));
    let waiting_now = waiting();

    // Rolled back: the blocked ALTER ROLE then proceeds (a commit would fail it).
    writeln!(holder_in, "ROLLBACK;").expect("write");
    drop(holder_in);
    let _ = holder.wait();
    let one = one.wait_with_output().expect("psql");
    let two = two.wait_with_output().expect("psql");
    assert_eq!(
        waiting_now, 1,
        "the second activation waited for the provisioning lock instead of running beside the first"
    );
    assert!(
        one.status.success() && two.status.success(),
        "both sessions ran afterwards: {} / {}\n{}",
        String::from_utf8_lossy(&one.stderr),
        String::from_utf8_lossy(&two.stderr),
        site.log()
    );
}

/// PROVISIONING §8, outages: while the SQLite store is write-locked past the lock wait, a
/// session ends; its teardown retries until the store is back, and its audit events are
/// stored afterwards, none lost.
#[test]
fn store_outage_delays_teardown_and_audit_but_loses_neither() {
    // A server of its own: the reconcilers of the other tests' gateways would lock the user
    // while this gateway cannot.
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = dbward_testkit::DbServerCerts::from_cas(
        dbward_testkit::shared_cas().expect("shared CAs"),
        certs_dir.path(),
    )
    .expect("server certificates");
    let own = dbward_testkit::PgServer::start(&certs).expect("PostgreSQL");
    let own_sql = |statement: &str| {
        own.psql_super(statement)
            .unwrap_or_else(|e| panic!("{statement}: {e:#}"))
    };
    let can_login = |role: &str| match own_sql(&format!(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
        lit(role)
    ))
    .as_str()
    {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    };
    let site = Site::new();
    let n = unique("o");
    let (admin, reader, dave) = (format!("adm_{n}"), format!("rd_{n}"), format!("dave_{n}"));
    own_sql(&format!(
        "CREATE ROLE {a} LOGIN CREATEROLE; CREATE ROLE {r} NOLOGIN; GRANT {r} TO {a} WITH ADMIN OPTION;",
        a = q(&admin),
        r = q(&reader)
    ));
    let db = format!("outage-{n}");
    site.apply(&format!(
        "{}---\n{}---\n{}",
        db_yaml_on(own.port, &db, &format!("{{t: {n}}}"), &admin, "postgres"),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&dave, &[&format!("keep-{n}")]),
    ));
    let _gateway = site.start();
    let files = site.db_cert(&dave, &db);
    let mut session = OpenSession::start(site.psql(&files, &dave, "")).expect("session");
    assert_eq!(can_login(&dave), Some(true));

    // Another process holds the store's write lock for longer than any wait inside the
    // gateway.
    let locker = rusqlite::Connection::open(site.data.join(dbward_store::DB_FILE_NAME))
        .expect("open the store file");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("write lock");
    let marker = format!("during_outage_{n}");
    assert_eq!(
        session.query(&format!("SELECT '{marker}'")).as_deref(),
        Some(marker.as_str())
    );
    session.close();
    // Store calls queue behind one another, each waiting up to the SQLite busy timeout
    // (10 s): long enough for the audit write and then the teardown's lock to give up.
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(
        can_login(&dave),
        Some(true),
        "no teardown is possible while the store is locked: {}",
        site.log()
    );
    locker.execute_batch("COMMIT").expect("unlock");
    drop(locker);

    let took = within(
        Duration::from_secs(20),
        "dave locked after the outage",
        || can_login(&dave) == Some(false),
    );
    eprintln!("teardown done {took:?} after the store came back");
    within(
        Duration::from_secs(20),
        "audit events of the outage stored",
        || {
            let bodies = site.audit_bodies();
            bodies.iter().any(|b| b.contains(&marker))
                && bodies
                    .iter()
                    .any(|b| b.contains("db.session.end") && b.contains(&dave))
        },
    );
}

/// PROVISIONING §8, what clients are told: a provisioning failure caused by the admin's
/// privileges gives the client the generic message and the session id; the admin's name and
/// the GRANT that fixes it go to the gateway log only.
#[test]
fn provisioning_failure_tells_the_client_only_the_session_id() {
    let site = Site::new();
    let n = unique("m");
    let (admin, reader, erin) = (format!("adm_{n}"), format!("rd_{n}"), format!("erin_{n}"));
    create_admin(&admin, &reader);
    // The admin's database lacks TEMPORARY for it.
    let admin_db = format!("admdb_{n}");
    sql(&format!(
        "CREATE DATABASE {d};\nREVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC;",
        d = q(&admin_db)
    ));
    let db = format!("msg-{n}");
    site.apply(&format!(
        "{}---\n{}---\n{}",
        site.db_yaml(&db, &format!("{{t: {n}}}"), &admin, &admin_db),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&erin, &[&format!("keep-{n}")]),
    ));
    let _gateway = site.start();
    let files = site.db_cert(&erin, &db);
    let out = site.psql(&files, &erin, "SELECT 1").output().expect("psql");
    let told = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(!told.contains(&admin), "names the admin: {told}");
    assert!(
        !told.to_uppercase().contains("GRANT"),
        "tells the fix: {told}"
    );
    let sid = told
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|word| word.len() == 36 && uuid::Uuid::parse_str(word).is_ok())
        .unwrap_or_else(|| panic!("no session id in: {told}"))
        .to_string();
    let log = site.log();
    assert!(
        log.lines()
            .any(|line| line.contains(&sid) && line.contains("GRANT TEMPORARY")),
        "the log has the detail with the session id {sid}: {log}"
    );
}

/// PROVISIONING §8, crashes, on MariaDB: a session busy in `SELECT SLEEP(240)` when the
/// gateway is killed is ended (`KILL CONNECTION`) and its account locked after the restart.
#[test]
fn killed_gateway_ends_a_busy_mariadb_session_after_restart() {
    let site = Site::new();
    let n = unique("mb");
    let (admin, reader, frank) = (format!("adm_{n}"), format!("rd_{n}"), format!("frank_{n}"));
    maria_sql(&format!(
        "CREATE USER '{a}'@'%' REQUIRE SUBJECT '/CN={a}';
         GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{a}'@'%';
         GRANT SELECT ON mysql.roles_mapping TO '{a}'@'%';
         GRANT UPDATE ON mysql.* TO '{a}'@'%';
         GRANT SELECT ON *.* TO '{a}'@'%';
         CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
         GRANT `dbward-auto-user` TO '{a}'@'%' WITH ADMIN OPTION;
         CREATE DATABASE IF NOT EXISTS dbward;
         GRANT ALL ON dbward.* TO '{a}'@'%' WITH GRANT OPTION;
         CREATE ROLE `{r}` WITH ADMIN '{a}'@'%';",
        a = admin,
        r = reader
    ));
    let db = format!("mbusy-{n}");
    site.apply(&format!(
        "{}---\n{}---\n{}",
        site.maria_db_yaml(&db, &format!("{{t: {n}}}"), &admin),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&frank, &[&format!("keep-{n}")]),
    ));

    let gateway = site.start();
    let files = site.db_cert_for(&frank, &db, None);
    let mut busy = site
        .mariadb(&files, &frank, "SELECT SLEEP(240)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadb");
    let sleeping = || {
        maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {}",
            lit(&frank)
        ))
    };
    within(Duration::from_secs(30), "SLEEP running", || {
        sleeping() == "1"
    });
    assert_eq!(maria_locked(&frank), Some(false));

    gateway.kill9();
    let _gateway = site.start();
    let took = within(
        Duration::from_secs(30),
        "connection killed and account locked after restart",
        || sleeping() == "0" && maria_locked(&frank) == Some(true),
    );
    eprintln!("busy MariaDB session ended and account locked {took:?} after the restart");
    let _ = busy.kill();
    let _ = busy.wait();
}

/// PROVISIONING §8, crashes, several gateways: when one of two gateways sharing a store is
/// killed, the other ends its busy session and locks the user within seconds, without any
/// restart, and forgets the killed one's cancel keys.
#[test]
fn surviving_gateway_ends_the_sessions_of_a_killed_one() {
    let n = unique("sh");
    let store_db = format!("store_{n}");
    sql(&format!("CREATE DATABASE {}", q(&store_db)));
    let dsn = format!("{} sslmode=disable", pg().super_conninfo(&store_db));
    let (first, second) = (Site::with_store(Some(&dsn)), Site::with_store(Some(&dsn)));
    let (admin, reader, gina) = (format!("adm_{n}"), format!("rd_{n}"), format!("gina_{n}"));
    create_admin(&admin, &reader);
    let db = format!("shared-{n}");
    first.apply(&format!(
        "{}---\n{}---\n{}",
        first.db_yaml(&db, &format!("{{t: {n}}}"), &admin, "postgres"),
        role_yaml(
            &format!("keep-{n}"),
            "keep",
            &format!("{{t: {n}}}"),
            &reader
        ),
        user_yaml(&gina, &[&format!("keep-{n}")]),
    ));
    let doomed = first.start();
    let _survivor = second.start();
    let files = first.db_cert(&gina, &db);
    let mut busy = first
        .psql(&files, &gina, "SELECT pg_sleep(240)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    within(Duration::from_secs(30), "pg_sleep running", || {
        sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND query LIKE '%pg_sleep%'",
            lit(&gina)
        )) == "1"
    });

    let cancel_keys = || {
        pg().psql_super_in(&store_db, "SELECT count(*) FROM cancel_keys")
            .expect("store query")
    };
    assert_eq!(
        cancel_keys(),
        "1",
        "the session's cancel key is in the store"
    );

    doomed.kill9();
    let took = within(
        Duration::from_secs(30),
        "backend terminated and user locked by the surviving gateway",
        || backends_of(&gina) == 0 && can_login(&gina) == Some(false),
    );
    eprintln!(
        "the surviving gateway ended the session and locked the user {took:?} after the kill"
    );
    assert_eq!(memberships(&gina), "dbward-auto-user");
    within(
        Duration::from_secs(30),
        "the killed gateway's cancel key forgotten",
        || cancel_keys() == "0",
    );
    let _ = busy.kill();
    let _ = busy.wait();
}
