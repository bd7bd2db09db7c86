//! `dbward quickstart`: a one-command sandbox for trying dbward. A local PostgreSQL (and a
//! MariaDB when installed) configured for certificate authentication from dbward's CAs, an
//! admin user with the least privileges provisioning needs, db roles `reader`/`writer` over a
//! sample table, a dbward role that provisions users (`keep`), a user with a printed password,
//! and the gateway in the foreground.
//!
//! Developer tooling, not part of the gateway: it uses the gateway's library like any other
//! caller and starts its databases with `dbward-localdb`. Whatever it started is stopped when it
//! ends, however it ends short of SIGKILL (Ctrl-C or SIGTERM while starting or serving, an
//! error, a panic), and a directory it picked itself is deleted.

mod error;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbward_localdb::{pg_versions, LocalMariaDb, LocalPostgres, PgShutdown, ServerTls};
use dbward_model::Config;
use dbward_server::{bootstrap, passwords, Started};
use dbward_store::PutMode;
use tokio_util::sync::CancellationToken;

pub use error::QuickstartError;

pub const QUICKSTART_USER: &str = "alice";
pub const QUICKSTART_DB: &str = "quickstart";
pub const QUICKSTART_MARIADB: &str = "quickstart-mariadb";
pub const ADMIN_USER: &str = "dbward-admin-user";

/// Everything `quickstart` set up, for printing and for tests.
pub struct Sandbox {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub password: String,
    pub web_addr: String,
    /// Stopped on drop.
    pub postgres: LocalPostgres,
    /// Started when MariaDB's binaries are installed; stopped on drop.
    pub mariadb: Option<LocalMariaDb>,
}

impl Sandbox {
    /// Stops the databases now (dropping the sandbox does the same; the gateway stops on its
    /// own).
    pub fn stop(&self) {
        if let Some(mariadb) = &self.mariadb {
            mariadb.stop();
        }
        self.postgres.stop();
    }
}

fn free_port(preferred: u16) -> Result<u16, QuickstartError> {
    if StdListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    let listener =
        StdListener::bind("127.0.0.1:0").map_err(QuickstartError::io("binding a port"))?;
    let addr = listener
        .local_addr()
        .map_err(QuickstartError::io("reading a bound port"))?;
    Ok(addr.port())
}

/// Fails with [`QuickstartError::Interrupted`] once `shutdown` is cancelled: checked between
/// the steps of [`prepare`], whose started databases then stop as they are dropped.
fn check(shutdown: &CancellationToken) -> Result<(), QuickstartError> {
    if shutdown.is_cancelled() {
        return Err(QuickstartError::Interrupted);
    }
    Ok(())
}

/// Prepares the sandbox in `dir` (created when missing; reused when it exists). Stops early,
/// stopping what it started, when `shutdown` is cancelled.
pub async fn prepare(dir: &Path, shutdown: &CancellationToken) -> Result<Sandbox, QuickstartError> {
    std::fs::create_dir_all(dir)
        .map_err(QuickstartError::io(format!("creating {}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(QuickstartError::io(format!("resolving {}", dir.display())))?;
    let web_port = free_port(3080)?;
    let pg_port = free_port(3432)?;
    let with_mariadb = LocalMariaDb::available();
    let mysql_listen = if with_mariadb {
        format!("127.0.0.1:{}", free_port(3036)?)
    } else {
        "\"\"".to_string()
    };
    let config_path = dir.join("dbward.yaml");
    let config_text = format!(
        "version: v1\ncluster_name: quickstart\ndata_dir: {}\npublic_addr: localhost\nweb_listen_addr: 127.0.0.1:{web_port}\npostgres_listen_addr: 127.0.0.1:{pg_port}\nmysql_listen_addr: {mysql_listen}\ncert_ttl: 12h\n",
        dir.join("data").display()
    );
    std::fs::write(&config_path, &config_text)
        .map_err(QuickstartError::io("writing dbward.yaml"))?;
    let config = Config::load(&config_path)?;

    // CAs first: the database's certificates come from them.
    std::fs::create_dir_all(&config.data_dir)
        .map_err(QuickstartError::io("creating the gateway's data directory"))?;
    let store = dbward_server::open_store(&config).await?;
    let cas = bootstrap::load_or_create_cas(&store, "quickstart").await?;
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (crt, key) =
        dbward_pki::issue_db_server_cert(&cas.db, &hosts, Duration::from_secs(90 * 24 * 3600))?;
    let tls_dir = dir.join("db-certs");
    std::fs::create_dir_all(&tls_dir).map_err(QuickstartError::io("creating db-certs"))?;
    let tls = ServerTls {
        crt: tls_dir.join("server.crt"),
        key: tls_dir.join("server.key"),
        cas: tls_dir.join("server.cas"),
    };
    std::fs::write(&tls.crt, crt).map_err(QuickstartError::io("writing server.crt"))?;
    dbward_pki::write_private_file(&tls.key, key.as_bytes())
        .map_err(QuickstartError::io("writing server.key"))?;
    std::fs::write(&tls.cas, &cas.db_client.cert_pem)
        .map_err(QuickstartError::io("writing server.cas"))?;
    check(shutdown)?;

    // Each database stops when dropped: on any error or interruption below, what has started
    // is stopped on the way out.
    let postgres = LocalPostgres::start(
        &dir.join("pg"),
        &pg_versions::newest_system_bin_dir()?,
        &tls,
        PgShutdown::Fast,
    )?;
    check(shutdown)?;
    postgres.psql("postgres", &setup_sql())?;
    check(shutdown)?;

    let mariadb = if with_mariadb {
        let db = LocalMariaDb::start(&dir.join("mariadb"), &tls)?;
        check(shutdown)?;
        db.sql(&mariadb_setup_sql())?;
        check(shutdown)?;
        Some(db)
    } else {
        None
    };
    let mariadb_resource = match &mariadb {
        Some(db) => format!(
            r#"---
kind: db
version: v3
metadata:
  name: {QUICKSTART_MARIADB}
  description: Local MariaDB started by dbward quickstart
  labels: {{env: quickstart}}
spec:
  protocol: mysql
  uri: 127.0.0.1:{port}
  admin_user:
    name: {ADMIN_USER}
"#,
            port = db.port
        ),
        None => String::new(),
    };

    let resources = format!(
        r#"kind: role
version: v7
metadata:
  name: quickstart-db-users
  description: Auto-provisioned database users for the quickstart database
spec:
  options:
    create_db_user_mode: keep
    max_session_ttl: 8h
  allow:
    db_labels: {{"env": "quickstart"}}
    db_names: ["*"]
    db_roles: [reader, writer]
---
kind: user
version: v2
metadata:
  name: {QUICKSTART_USER}
spec:
  roles: [quickstart-db-users]
---
kind: db
version: v3
metadata:
  name: {QUICKSTART_DB}
  description: Local PostgreSQL started by dbward quickstart
  labels: {{env: quickstart}}
spec:
  protocol: postgres
  uri: 127.0.0.1:{pg_db_port}
  admin_user:
    name: {ADMIN_USER}
    default_database: postgres
{mariadb_resource}
"#,
        pg_db_port = postgres.port
    );
    let parsed = dbward_model::parse_resources(&resources, "quickstart.yaml")?;
    for resource in &parsed.resources {
        let body = serde_json::to_string(resource)?;
        store
            .put_resource(resource.kind(), resource.name(), &body, PutMode::Upsert)
            .await?;
    }
    let password = passwords::generate_password();
    store
        .set_password_hash(
            QUICKSTART_USER,
            &passwords::hash_password(&password).map_err(QuickstartError::Password)?,
        )
        .await?;
    drop(store);
    check(shutdown)?;
    Ok(Sandbox {
        dir,
        config_path,
        password,
        web_addr: format!("127.0.0.1:{web_port}"),
        postgres,
        mariadb,
    })
}

/// The least privileges provisioning needs (PROVISIONING.md §4), and sample data.
fn setup_sql() -> String {
    format!(
        r#"DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ADMIN_USER}') THEN
    CREATE ROLE "{ADMIN_USER}" LOGIN CREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reader') THEN
    CREATE ROLE reader NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'writer') THEN
    CREATE ROLE writer NOLOGIN;
  END IF;
END $$;
CREATE TABLE IF NOT EXISTS public.notes (id serial PRIMARY KEY, body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO public.notes (body) SELECT 'hello from dbward quickstart' WHERE NOT EXISTS (SELECT 1 FROM public.notes);
GRANT SELECT ON public.notes TO reader;
GRANT INSERT, UPDATE, DELETE ON public.notes TO writer;
GRANT USAGE ON SEQUENCE public.notes_id_seq TO writer;
GRANT reader, writer TO "{ADMIN_USER}" WITH ADMIN OPTION;
"#
    )
}

/// The MariaDB side: an admin with the privileges of PROVISIONING.md §5, the same db roles
/// and a sample table.
fn mariadb_setup_sql() -> String {
    format!(
        "CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'%' REQUIRE SUBJECT '/CN={ADMIN_USER}';
GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{ADMIN_USER}'@'%';
GRANT SELECT ON mysql.roles_mapping TO '{ADMIN_USER}'@'%';
GRANT UPDATE ON mysql.* TO '{ADMIN_USER}'@'%';
GRANT SELECT ON *.* TO '{ADMIN_USER}'@'%';
CREATE DATABASE IF NOT EXISTS dbward;
GRANT ALL ON dbward.* TO '{ADMIN_USER}'@'%';
CREATE ROLE IF NOT EXISTS `dbward-auto-user` WITH ADMIN '{ADMIN_USER}'@'%';
CREATE ROLE IF NOT EXISTS reader WITH ADMIN '{ADMIN_USER}'@'%';
CREATE ROLE IF NOT EXISTS writer WITH ADMIN '{ADMIN_USER}'@'%';
CREATE DATABASE IF NOT EXISTS quickstart;
CREATE TABLE IF NOT EXISTS quickstart.notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL);
INSERT INTO quickstart.notes (body) SELECT 'hello from dbward quickstart' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM quickstart.notes);
GRANT SELECT ON quickstart.* TO reader;
GRANT INSERT, UPDATE, DELETE ON quickstart.* TO writer;"
    )
}

/// Prints what to run next.
pub fn instructions(sandbox: &Sandbox) -> String {
    let home = sandbox.dir.join("client");
    let ca = sandbox.dir.join("data").join("admin").join("host-ca.crt");
    format!(
        "\ndbward quickstart is running.\n\n  gateway config: {config}\n  user:           {user}\n  password:       {password}\n\nIn another terminal:\n\n  export DBWARD_HOME={home}\n  echo '{password}' | dbward login --proxy {web} --user {user} --ca {ca} --password-stdin\n  dbward db ls -v\n  dbward db connect {db} --db-name postgres\n{maria}\n`dbward db connect {db} --db-name postgres -- -c 'select current_user'` runs one query. Press Ctrl-C here to stop.\n",
        config = sandbox.config_path.display(),
        user = QUICKSTART_USER,
        password = sandbox.password,
        home = home.display(),
        web = sandbox.web_addr,
        ca = ca.display(),
        db = QUICKSTART_DB,
        maria = if sandbox.mariadb.is_some() {
            format!("  dbward db connect {QUICKSTART_MARIADB} --db-name quickstart\n")
        } else {
            String::new()
        },
    )
}

/// `dbward quickstart [--dir DIR]`: prepare, run the gateway in the foreground until Ctrl-C or
/// SIGTERM, then stop the databases. Without `dir`, a new directory under the system's
/// temporary directory is used and deleted at the end.
pub async fn run(dir: Option<PathBuf>) -> Result<(), QuickstartError> {
    // Signals first: a Ctrl-C while the databases start must stop what has started, not kill
    // the process and leave them running.
    let shutdown = CancellationToken::new();
    dbward_server::stop_on_signal(shutdown.clone());
    let workspace = match dir {
        Some(dir) => Workspace::Kept(dir),
        None => Workspace::Temporary(
            std::env::temp_dir().join(format!("dbward-quickstart-{}", std::process::id())),
        ),
    };
    // `serve` owns the databases and stops them before returning; only then is a temporary
    // directory removed (on an unwinding panic too, by `Workspace`'s drop).
    serve(workspace.path(), shutdown).await
}

async fn serve(dir: &Path, shutdown: CancellationToken) -> Result<(), QuickstartError> {
    let sandbox = prepare(dir, &shutdown).await?;
    let config = Config::load(&sandbox.config_path)?;
    let started = Started::bind(config).await?;
    // A closed stdout (`dbward quickstart | tee log` after Ctrl-C, a supervisor that stopped
    // reading) must not stop the sandbox or skip its cleanup: errors are ignored.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", instructions(&sandbox));
        let _ = out.flush();
    }
    let result = started.run(shutdown).await;
    sandbox.stop();
    Ok(result?)
}

/// The sandbox's directory: kept when the user named it, deleted on drop when quickstart
/// picked it.
enum Workspace {
    Kept(PathBuf),
    Temporary(PathBuf),
}

impl Workspace {
    fn path(&self) -> &Path {
        match self {
            Workspace::Kept(dir) | Workspace::Temporary(dir) => dir,
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Workspace::Temporary(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
