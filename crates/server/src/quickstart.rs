//! `dbward quickstart`: a one-command sandbox. A local PostgreSQL configured for certificate
//! authentication from dbward's CAs, an admin user with the least privileges provisioning
//! needs, db roles `reader`/`writer` over a sample table, a dbward role that provisions users
//! (`keep`), a user with a printed password, and the gateway in the foreground.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbward_model::Config;
use dbward_store::PutMode;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::sandbox::{LocalMariaDb, LocalPostgres};
use crate::{bootstrap, passwords, Started};

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
    pub postgres: LocalPostgres,
    /// Started when MariaDB's binaries are installed.
    pub mariadb: Option<LocalMariaDb>,
}

impl Sandbox {
    /// Stops the databases (the gateway stops on its own).
    pub fn stop(&self) {
        if let Some(mariadb) = &self.mariadb {
            mariadb.stop();
        }
        self.postgres.stop();
    }
}

fn free_port(preferred: u16) -> Result<u16, GatewayError> {
    if StdListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Prepares the sandbox in `dir` (created when missing; reused when it exists).
pub async fn prepare(dir: &Path) -> Result<Sandbox, GatewayError> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
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
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;

    // CAs first: the database's certificates come from them.
    std::fs::create_dir_all(&config.data_dir)?;
    let store = crate::open_store(&config).await?;
    let cas = bootstrap::load_or_create_cas(&store, "quickstart").await?;
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (crt, key) =
        dbward_pki::issue_db_server_cert(&cas.db, &hosts, Duration::from_secs(90 * 24 * 3600))?;
    let tls_dir = dir.join("db-certs");
    std::fs::create_dir_all(&tls_dir)?;
    std::fs::write(tls_dir.join("server.crt"), crt)?;
    dbward_pki::write_private_file(&tls_dir.join("server.key"), key.as_bytes())?;
    std::fs::write(tls_dir.join("server.cas"), &cas.db_client.cert_pem)?;

    let db_port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let postgres = LocalPostgres::start(
        &dir.join("pg"),
        db_port,
        &tls_dir.join("server.crt"),
        &tls_dir.join("server.key"),
        &tls_dir.join("server.cas"),
    )?;
    postgres.psql("postgres", &setup_sql())?;

    let mariadb = if with_mariadb {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let started = LocalMariaDb::start(
            &dir.join("mariadb"),
            port,
            &tls_dir.join("server.crt"),
            &tls_dir.join("server.key"),
            &tls_dir.join("server.cas"),
        );
        let ready = started.and_then(|db| match db.sql(&mariadb_setup_sql()) {
            Ok(_) => Ok(db),
            Err(err) => {
                db.stop();
                Err(err)
            }
        });
        match ready {
            Ok(db) => Some(db),
            Err(err) => {
                postgres.stop();
                return Err(err);
            }
        }
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
  uri: 127.0.0.1:{db_port}
  admin_user:
    name: {ADMIN_USER}
    default_database: postgres
{mariadb_resource}
"#
    );
    let parsed = dbward_model::parse_resources(&resources, "quickstart.yaml")?;
    for resource in &parsed.resources {
        let body =
            serde_json::to_string(resource).map_err(|e| GatewayError::Internal(e.to_string()))?;
        store
            .put_resource(resource.kind(), resource.name(), &body, PutMode::Upsert)
            .await?;
    }
    let password = passwords::generate_password();
    store
        .set_password_hash(
            QUICKSTART_USER,
            &passwords::hash_password(&password).map_err(GatewayError::Internal)?,
        )
        .await?;
    drop(store);
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

/// `dbward quickstart [--dir DIR]`: prepare, start the gateway in the foreground, stop the
/// database on Ctrl-C or SIGTERM.
pub async fn run(dir: Option<PathBuf>) -> Result<(), GatewayError> {
    let dir = match dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("dbward-quickstart-{}", std::process::id())),
    };
    let sandbox = prepare(&dir).await?;
    let config = Config::load(&sandbox.config_path)?;
    let started = match Started::bind(config).await {
        Ok(started) => started,
        Err(err) => {
            sandbox.stop();
            return Err(err);
        }
    };
    // A closed stdout (a supervisor that stopped reading) must not stop the sandbox.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", instructions(&sandbox));
        let _ = out.flush();
    }
    let shutdown = CancellationToken::new();
    crate::stop_on_signal(shutdown.clone());
    let result = started.run(shutdown).await;
    sandbox.stop();
    result
}
