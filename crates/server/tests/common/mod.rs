//! One real PostgreSQL (from the test kit) and one in-process gateway per test binary, shared
//! by the tests; each test uses its own dbward users, roles and db resources so they can run in
//! parallel.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dbward_model::Config;
use dbward_pki::{CertUsage, DbRoute, Identity};
use dbward_server::{Gateway, Started};
use dbward_store::PutMode;
use dbward_testkit::{DbServerCerts, MariaServer, PgServer};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub gw: Arc<Gateway>,
    /// The gateway's PostgreSQL listener (PostgreSQL harness only).
    pub pg_addr: SocketAddr,
    /// The gateway's MySQL listener (MariaDB harness only).
    pub mysql_addr: SocketAddr,
    pg_server: Option<PgServer>,
    maria_server: Option<MariaServer>,
    pub dir: PathBuf,
    pub host_ca: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    Mariadb,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
static MARIA_HARNESS: OnceLock<Harness> = OnceLock::new();

/// A real PostgreSQL and a gateway with its PostgreSQL listener.
pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| start(Engine::Postgres).expect("starting PostgreSQL and the gateway"))
}

/// A real MariaDB and a gateway with its MySQL listener.
pub fn maria_harness() -> &'static Harness {
    MARIA_HARNESS.get_or_init(|| start(Engine::Mariadb).expect("starting MariaDB and the gateway"))
}

fn start(engine: Engine) -> anyhow::Result<Harness> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "dbward_server=info".to_string()),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::Builder::new()
        .prefix("dwgw")
        .tempdir_in("/tmp")?
        .keep();
    // The harness lives in a static, never dropped: its files go when the process exits.
    dbward_testkit::remove_at_exit(&dir);
    let config_path = dir.join("dbward.yaml");
    std::fs::write(
        &config_path,
        format!(
            "version: v1\ncluster_name: test\ndata_dir: {}\naudit_file: {}\nweb_listen_addr: 127.0.0.1:0\nmetrics_listen_addr: 127.0.0.1:0\npostgres_listen_addr: {}\nmysql_listen_addr: {}\n",
            dir.join("data").display(),
            dir.join("audit.jsonl").display(),
            if engine == Engine::Postgres { "127.0.0.1:0" } else { "\"\"" },
            if engine == Engine::Mariadb { "127.0.0.1:0" } else { "\"\"" },
        ),
    )?;
    let config = Config::load(&config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The CAs exist before the database, whose certificates they sign.
    let cas = rt.block_on(async {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = dbward_server::open_store(&config).await?;
        anyhow::Ok(dbward_server::bootstrap::load_or_create_cas(&store, "test").await?)
    })?;
    let certs_dir = dir.join("db-certs");
    std::fs::create_dir_all(&certs_dir)?;
    let certs = DbServerCerts::from_cas(&cas, &certs_dir)?;
    let (pg_server, maria_server) = match engine {
        Engine::Postgres => (Some(PgServer::start(&certs)?), None),
        Engine::Mariadb => (None, Some(MariaServer::start(&certs)?)),
    };
    let started = rt.block_on(Started::bind(config))?;
    let gw = started.gateway.clone();
    let endpoints = rt.block_on(async { gw.endpoints.read().await.clone() });
    let unbound: SocketAddr = "0.0.0.0:0".parse()?;
    let pg_addr = match endpoints.postgres {
        Some(addr) => addr.parse()?,
        None => unbound,
    };
    let mysql_addr = match endpoints.mysql {
        Some(addr) => addr.parse()?,
        None => unbound,
    };
    rt.spawn(started.run(CancellationToken::new()));
    let host_ca = dir.join("host-ca.crt");
    std::fs::write(&host_ca, &gw.cas.host.cert_pem)?;
    Ok(Harness {
        rt,
        gw,
        pg_addr,
        mysql_addr,
        pg_server,
        maria_server,
        dir,
        host_ca,
    })
}

impl Harness {
    pub fn pg(&self) -> &PgServer {
        self.pg_server.as_ref().expect("a PostgreSQL harness")
    }

    pub fn maria(&self) -> &MariaServer {
        self.maria_server.as_ref().expect("a MariaDB harness")
    }

    /// SQL as MariaDB's root, through its socket.
    pub fn maria_sql(&self, sql: &str) -> String {
        self.maria()
            .sql_root(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"))
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Stores resources given as YAML (replacing existing ones).
    pub fn apply(&self, yaml: &str) {
        let parsed = dbward_model::parse_resources(yaml, "test.yaml").expect("test YAML parses");
        self.block_on(async {
            for r in &parsed.resources {
                let body = serde_json::to_string(r).unwrap();
                self.gw
                    .store
                    .put_resource(r.kind(), r.name(), &body, PutMode::Upsert)
                    .await
                    .unwrap();
            }
        });
    }

    pub fn delete(&self, kind: &str, name: &str) {
        self.block_on(self.gw.store.delete_resource(kind, name))
            .unwrap();
    }

    /// SQL as the superuser, through the server's socket.
    pub fn sql(&self, sql: &str) -> String {
        self.pg()
            .psql_super(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"))
    }

    /// A `db` resource pointing at the test PostgreSQL.
    pub fn db_yaml(&self, name: &str, labels: &str, admin: Option<&str>) -> String {
        let admin = admin
            .map(|a| format!("  admin_user: {{name: {a:?}, default_database: postgres}}\n"))
            .unwrap_or_default();
        format!(
            "kind: db\nversion: v3\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{}\n{admin}",
            self.pg().port
        )
    }

    /// A `db` resource pointing at the test MariaDB.
    pub fn maria_db_yaml(&self, name: &str, labels: &str, admin: Option<&str>) -> String {
        let admin = admin
            .map(|a| format!("  admin_user: {{name: {a:?}}}\n"))
            .unwrap_or_default();
        format!(
            "kind: db\nversion: v3\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  protocol: mysql\n  uri: 127.0.0.1:{}\n{admin}",
            self.maria().port
        )
    }

    /// Runs the `mariadb` client through the gateway.
    pub fn mariadb(&self, files: &ClientFiles, user: &str, sql: &str) -> PsqlResult {
        let out = self.mariadb_command(files, user, sql).output().unwrap();
        PsqlResult::from(out)
    }

    pub fn mariadb_command(&self, files: &ClientFiles, user: &str, sql: &str) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.mysql_addr.port()))
            .arg(format!("--ssl-ca={}", files.ca.display()))
            .arg(format!("--ssl-cert={}", files.crt.display()))
            .arg(format!("--ssl-key={}", files.key.display()))
            .arg("--ssl-verify-server-cert")
            .arg(format!("--user={user}"))
            .args(["-N", "-B", "-e", sql]);
        cmd
    }

    /// Creates an admin user with the privileges provisioning needs and the given db roles.
    pub fn create_admin(&self, admin: &str, roles: &[&str]) {
        let mut sql = format!("CREATE ROLE {} LOGIN CREATEROLE;", q(admin));
        for role in roles {
            sql.push_str(&format!(
                "DO $$BEGIN CREATE ROLE {r} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$; GRANT {r} TO {a} WITH ADMIN OPTION;",
                r = q(role),
                a = q(admin)
            ));
        }
        // PostgreSQL 16+: CREATEROLE no longer grants a role someone else created, so every
        // admin but the marker's creator holds the marker WITH ADMIN OPTION (setup guide).
        if self.pg().major_version() >= 16 {
            sql.push_str(&format!(
                "DO $$BEGIN CREATE ROLE \"dbward-auto-user\"; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$; GRANT \"dbward-auto-user\" TO {} WITH ADMIN OPTION;",
                q(admin)
            ));
        }
        self.sql(&sql);
    }

    /// A database certificate for `user` with a route, as `dbward db login` issues it.
    pub fn db_cert(&self, user: &str, route: DbRoute) -> ClientFiles {
        self.db_cert_valid_for(user, route, Duration::from_secs(3600))
    }

    /// Like [`Harness::db_cert`], expiring after `ttl`.
    pub fn db_cert_valid_for(&self, user: &str, route: DbRoute, ttl: Duration) -> ClientFiles {
        self.db_cert_with(user, route, ttl, None)
    }

    /// Like [`Harness::db_cert`], pinned to `ip` as login and `db login` pin it for users
    /// whose roles set `pin_source_ip`.
    pub fn db_cert_pinned(&self, user: &str, route: DbRoute, ip: std::net::IpAddr) -> ClientFiles {
        self.db_cert_with(user, route, Duration::from_secs(3600), Some(ip))
    }

    fn db_cert_with(
        &self,
        user: &str,
        route: DbRoute,
        ttl: Duration,
        pinned_ip: Option<std::net::IpAddr>,
    ) -> ClientFiles {
        let dir = self
            .dir
            .join("clients")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let (key, csr) = dbward_pki::new_key_and_csr(user).unwrap();
        let identity = Identity {
            username: user.to_string(),
            cluster: self.gw.cluster.clone(),
            usage: CertUsage::Db,
            expires: OffsetDateTime::now_utc() + ttl,
            route: Some(route),
            pinned_ip,
            mfa_session_until: None,
        };
        let cert = dbward_pki::issue_user_cert(&self.gw.cas.user, &identity, &csr).unwrap();
        let files = ClientFiles {
            crt: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: self.host_ca.clone(),
        };
        std::fs::write(&files.crt, cert).unwrap();
        dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
        files
    }

    /// Runs psql through the gateway; returns (success, stdout, stderr).
    pub fn psql(&self, files: &ClientFiles, user: &str, dbname: &str, sql: &str) -> PsqlResult {
        let out = self
            .psql_command(files, user, dbname, sql)
            .output()
            .unwrap();
        PsqlResult::from(out)
    }

    pub fn psql_command(
        &self,
        files: &ClientFiles,
        user: &str,
        dbname: &str,
        sql: &str,
    ) -> Command {
        let mut cmd = Command::new("psql");
        cmd.arg(conninfo(self.pg_addr, files, user, dbname))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "60");
        cmd
    }

    /// Waits until `check` returns true (teardown runs after the client left).
    pub fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for: {what}");
    }

    pub fn can_login(&self, role: &str) -> Option<bool> {
        let out = self.sql(&format!(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
            lit(role)
        ));
        match out.as_str() {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        }
    }

    /// The roles `role` is a direct member of, sorted, comma separated.
    pub fn memberships(&self, role: &str) -> String {
        self.sql(&format!(
            "SELECT coalesce(string_agg(r.rolname, ',' ORDER BY r.rolname), '') FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {}",
            lit(role)
        ))
    }

    pub fn audit_events(&self, user: &str) -> Vec<serde_json::Value> {
        self.block_on(self.gw.audit.flush());
        self.block_on(self.gw.store.search_audit(dbward_store::AuditQuery {
            user: Some(user.to_string()),
            limit: 1000,
            ..Default::default()
        }))
        .unwrap()
        .into_iter()
        .map(|s| serde_json::from_str(&s).unwrap())
        .collect()
    }
}

pub fn conninfo(addr: SocketAddr, files: &ClientFiles, user: &str, dbname: &str) -> String {
    format!(
        "host=127.0.0.1 port={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} user={} dbname={}",
        addr.port(),
        files.ca.display(),
        files.crt.display(),
        files.key.display(),
        conn_value(user),
        conn_value(dbname)
    )
}

/// Quotes a libpq connection-string value.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub crt: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug)]
pub struct PsqlResult {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for PsqlResult {
    fn from(out: Output) -> Self {
        PsqlResult {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}

/// A quoted SQL identifier, for test setup.
pub fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A quoted SQL literal, for test setup.
pub fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 10000)
}

pub fn route(service: &str, db_user: &str, db_name: &str, roles: &[&str]) -> DbRoute {
    DbRoute {
        service: service.to_string(),
        db_user: (!db_user.is_empty()).then(|| db_user.to_string()),
        db_name: (!db_name.is_empty()).then(|| db_name.to_string()),
        db_roles: roles.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An interactive client (psql or mariadb reading statements from stdin) kept open until
/// closed, for observing the database while a session is live.
pub struct OpenSession {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl OpenSession {
    /// Spawns `cmd` (a client reading statements from stdin, one output line per
    /// single-value query) and waits until it answers.
    pub fn start(mut cmd: Command) -> Result<OpenSession, String> {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut s = OpenSession { child, out };
        match s.query("SELECT 'ready'") {
            Some(line) if line == "ready" => Ok(s),
            _ => {
                let mut err = String::new();
                if let Some(stderr) = s.child.stderr.as_mut() {
                    let _ = std::io::Read::read_to_string(stderr, &mut err);
                }
                let _ = s.child.wait();
                Err(err)
            }
        }
    }

    /// Runs one single-row, single-column query and returns its output line.
    pub fn query(&mut self, sql: &str) -> Option<String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut()?;
        writeln!(stdin, "{sql};").ok()?;
        stdin.flush().ok()?;
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }

    pub fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
