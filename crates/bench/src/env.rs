//! The benchmark world: one PostgreSQL (from the test kit), one dbward gateway as a child
//! process, and pgbouncer when it is installed, all with TLS and certificates from dbward's CAs,
//! plus the database roles, dbward resources and client certificates every path uses.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dbward_pki::{CaSet, CertUsage, DbRoute, Identity, ServerVerification};
use dbward_provision::postgres::MakeRustlsConnect;
use dbward_store::PutMode;
use dbward_testkit::{DbServerCerts, PgServer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use time::OffsetDateTime;

/// The dbward cluster name of the benchmark gateway.
pub const CLUSTER: &str = "bench";
/// The dbward `db` resource every dbward path goes through.
pub const DB_RESOURCE: &str = "bench";
/// Database role the benchmark users get; it may read the pgbench tables.
pub const READER_ROLE: &str = "bench_reader";
/// Admin user dbward provisions with.
pub const ADMIN_USER: &str = "bench_admin";
/// Existing database user of the direct path.
pub const DIRECT_USER: &str = "bench_direct";
/// Database user pgbouncer's clients authenticate as and pgbouncer logs in as.
pub const PGBOUNCER_USER: &str = "bench_pgb";
/// dbward user of the steady-state path (provisioned once, then locked and reactivated).
pub const STEADY_USER: &str = "bench_steady";
/// dbward user of the pgbench and COPY runs.
pub const RELAY_USER: &str = "bench_relay";
/// dbward user of the idle sessions of the memory measurement.
pub const MEMORY_USER: &str = "bench_mem";
/// dbward user for warming up the gateway before anything is measured.
pub const WARM_USER: &str = "bench_warm";
/// The dbward `db` resource of the MariaDB paths.
pub const MARIA_RESOURCE: &str = "bench-maria";
/// Schema of the sysbench table on MariaDB.
pub const MARIA_SCHEMA: &str = "sbtest";
/// MariaDB account that reads `mysql.global_priv` for the teardown checks.
pub const MARIA_MONITOR: &str = "bench_monitor";

/// dbward user `i` of the connection storm (each connects once, all at the same time).
pub fn storm_user(i: usize) -> String {
    format!("bench_storm_{i}")
}

/// dbward user `i` of the new-user path (never seen by the database before its iteration).
pub fn new_user(i: usize) -> String {
    format!("bench_new_{i}")
}

/// dbward user of parallel client `k` in the provisioning-rate measurement.
pub fn rate_user(k: usize) -> String {
    format!("bench_rate_{k}")
}

/// Certificate lifetime: longer than any run.
pub(crate) const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the world must hold before the gateway starts (the gateway reads the store).
pub struct Sizing {
    pub new_users: usize,
    pub rate_users: usize,
    pub storm_users: usize,
    pub pgbench_scale: u32,
    pub max_connections: u32,
    /// MariaDB's `max_connections` (the idle sessions of its memory measurement fit).
    pub maria_max_connections: u32,
    /// Rows of the sysbench table.
    pub sysbench_rows: u32,
}

/// Files a libpq client (pgbench) needs: `PGSSLCERT`, `PGSSLKEY`, `PGSSLROOTCERT`.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub crt: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// One way to reach PostgreSQL: address, user, and the TLS client configuration.
#[derive(Clone)]
pub struct Endpoint {
    pub port: u16,
    /// The client's own address (`None`: the system's choice, 127.0.0.1). The connection
    /// storm gives each of its dbward clients another loopback address, as a crowd of people
    /// arrives from many addresses: the gateway bounds handshakes per client address.
    pub source: Option<std::net::Ipv4Addr>,
    pub user: String,
    /// What `select current_user` must return on this path.
    pub expected_user: String,
    pub tls: MakeRustlsConnect,
    pub files: ClientFiles,
}

/// How the gateway child process is started.
#[derive(Debug, Clone)]
pub enum GatewayCommand {
    /// This binary's `serve-gateway -c FILE` (the same `dbward_server::run` as `dbward start`).
    BuiltIn(PathBuf),
    /// An external `dbward` binary, run as `dbward start -c FILE`.
    Cli(PathBuf),
}

pub struct Env {
    pub pg: PgServer,
    pub maria: crate::maria::MariaWorld,
    pub haproxy: Option<crate::haproxy::HaProxy>,
    /// The PostgreSQL path through HAProxy (the direct path's client, HAProxy's port).
    pub haproxy_pg: Option<Endpoint>,
    pub cas: CaSet,
    pub gateway: GatewayProcess,
    pub pgbouncer: Option<PgBouncer>,
    pub direct: Endpoint,
    pub pgbouncer_endpoint: Option<Endpoint>,
    pub host_ca_file: PathBuf,
    pub pgbench: PathBuf,
    /// What was done to PostgreSQL's configuration beyond the test kit defaults.
    pub pg_notes: Vec<String>,
    pub pgbouncer_config: Option<String>,
    pub gateway_config: String,
    dir: PathBuf,
    // Last: deleted after the processes above have stopped.
    _root: tempfile::TempDir,
}

impl Env {
    pub fn start(
        sizing: &Sizing,
        gateway: &GatewayCommand,
        want_pgbouncer: Option<PathBuf>,
    ) -> anyhow::Result<Env> {
        let root = tempfile::Builder::new()
            .prefix("dwbench")
            .tempdir_in("/tmp")
            .context("creating the benchmark directory")?;
        // The database account (pgbouncer runs as it when we are root) must reach its files.
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))?;
        let dir = root.path().to_path_buf();
        let data_dir = dir.join("gateway-data");
        let config_path = dir.join("dbward.yaml");
        let ports = GatewayPorts {
            postgres: free_port()?,
            mysql: free_port()?,
        };
        let gateway_config = gateway_config(&data_dir, ports, true);
        fs::write(&config_path, &gateway_config)?;
        let config = dbward_model::Config::load(&config_path)?;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The CAs exist before the database, whose certificates they sign.
        let cas = rt.block_on(async {
            fs::create_dir_all(&config.data_dir)?;
            let store = dbward_server::open_store(&config).await?;
            anyhow::Ok(dbward_server::bootstrap::load_or_create_cas(&store, CLUSTER).await?)
        })?;
        let certs_dir = dir.join("db-certs");
        fs::create_dir_all(&certs_dir)?;
        let certs = DbServerCerts::from_cas(&cas, &certs_dir)?;
        let pg = PgServer::start(&certs)?;
        let mut pg_notes = Vec::new();
        if sizing.max_connections > 200 {
            raise_max_connections(&pg, sizing.max_connections)?;
            pg_notes.push(format!(
                "`ALTER SYSTEM SET max_connections = {}` and a restart (the test kit starts with 200), so that the idle sessions of the memory measurement fit",
                sizing.max_connections
            ));
        }

        let pgbench = pgbench_binary()?;
        setup_database(&pg, &pgbench, sizing.pgbench_scale)?;
        let maria = crate::maria::MariaWorld::start(&cas, &certs, &dir, sizing)?;

        // Every dbward user exists in the store before the gateway starts: the store is
        // written by this process only while the gateway is not running.
        rt.block_on(store_resources(&config, &pg, maria.server.port, sizing))?;
        drop(rt);

        let db_ca_file = dir.join("db-ca.crt");
        fs::write(&db_ca_file, &cas.db.cert_pem)?;
        let host_ca_file = dir.join("host-ca.crt");
        fs::write(&host_ca_file, &cas.host.cert_pem)?;
        let clients_dir = dir.join("clients");
        fs::create_dir_all(&clients_dir)?;

        let direct = db_client_endpoint(&cas, DIRECT_USER, pg.port, &db_ca_file, &clients_dir)?;

        let gateway = GatewayProcess::start(gateway, &config_path, &data_dir, &dir, ports)?;
        let haproxy = match crate::haproxy::HaProxy::find() {
            Ok(bin) => Some(crate::haproxy::HaProxy::start(
                &bin,
                &dir,
                pg.port,
                maria.server.port,
            )?),
            Err(why) => {
                eprintln!("skipping HAProxy: {why}");
                None
            }
        };
        let haproxy_pg = haproxy.as_ref().map(|h| Endpoint {
            port: h.pg_port,
            ..direct.clone()
        });

        let (pgbouncer, pgbouncer_endpoint, pgbouncer_config) = match want_pgbouncer {
            Some(bin) => {
                let (bouncer, text) = PgBouncer::start(&bin, &cas, &pg, &dir, &db_ca_file)?;
                let ep = db_client_endpoint(
                    &cas,
                    PGBOUNCER_USER,
                    bouncer.port,
                    &db_ca_file,
                    &clients_dir,
                )?;
                (Some(bouncer), Some(ep), Some(text))
            }
            None => (None, None, None),
        };

        Ok(Env {
            pg,
            maria,
            haproxy,
            haproxy_pg,
            cas,
            gateway,
            pgbouncer,
            direct,
            pgbouncer_endpoint,
            host_ca_file,
            pgbench,
            pg_notes,
            pgbouncer_config,
            gateway_config,
            dir,
            _root: root,
        })
    }

    /// The path through dbward for dbward user `user` (provisioned as a database user of the
    /// same name), with a database certificate for the `bench` route as `dbward db login`
    /// issues it.
    pub fn dbward_endpoint(&self, user: &str) -> anyhow::Result<Endpoint> {
        let dir = self.dir.join("clients");
        let (cert, key) = route_certificate(&self.cas, user, DB_RESOURCE, "postgres")?;
        let files = ClientFiles {
            crt: dir.join(format!("{user}.dbward.crt")),
            key: dir.join(format!("{user}.dbward.key")),
            ca: self.host_ca_file.clone(),
        };
        fs::write(&files.crt, &cert)?;
        dbward_pki::write_private_file(&files.key, key.as_bytes())?;
        let config = no_resumption(dbward_pki::client_config(
            Some(&self.cas.host.cert_pem),
            ServerVerification::Full,
            Some((&cert, &key)),
        )?);
        Ok(Endpoint {
            port: self.gateway.port,
            source: None,
            user: user.to_string(),
            expected_user: user.to_string(),
            tls: MakeRustlsConnect::new(config, "localhost"),
            files,
        })
    }

    /// A superuser connection through the Unix socket, for checks and teardown polling.
    pub async fn superuser(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.pg.super_conninfo("postgres"), tokio_postgres::NoTls)
                .await
                .context("superuser connection")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The gateway's log, for diagnosing a failed path.
    pub fn gateway_log(&self) -> String {
        tail(&self.gateway.log)
    }
}

/// A dbward database certificate (and its key) for `user` on the route `service`/`db_name`,
/// as `dbward db login` issues it.
pub(crate) fn route_certificate(
    cas: &CaSet,
    user: &str,
    service: &str,
    db_name: &str,
) -> anyhow::Result<(String, String)> {
    let (key, csr) = dbward_pki::new_key_and_csr(user)?;
    let identity = Identity {
        username: user.to_string(),
        cluster: CLUSTER.to_string(),
        usage: CertUsage::Db,
        expires: OffsetDateTime::now_utc() + CERT_TTL,
        route: Some(DbRoute {
            service: service.to_string(),
            db_user: Some(user.to_string()),
            db_name: Some(db_name.to_string()),
            db_roles: Vec::new(),
        }),
        pinned_ip: None,
        mfa_session_until: None,
    };
    Ok((
        dbward_pki::issue_user_cert(&cas.user, &identity, &csr)?,
        key,
    ))
}

/// Runs a load tool (pgbench, sysbench) to the end and reads its report with `parse`; fails
/// with the tool's output when it fails or its report does not parse.
pub(crate) fn run_load_tool<T>(
    cmd: &mut Command,
    what: &str,
    parse: impl FnOnce(&str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed ({}):\n{stderr}\n{stdout}", out.status);
    }
    parse(&stdout).with_context(|| format!("{what} output:\n{stdout}\n{stderr}"))
}

/// CPU of process `pid` per query over a run, in microseconds: `before` is its CPU time when
/// the run started.
pub(crate) fn cpu_per_query(pid: u32, before: Duration, queries: u64) -> anyhow::Result<f64> {
    Ok((cpu_time(pid)? - before).as_secs_f64() * 1e6 / queries.max(1) as f64)
}

/// A client configuration that never resumes TLS sessions: every benchmark connection pays a
/// full handshake, as a new psql process would.
pub(crate) fn no_resumption(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A direct (or pgbouncer) path: a db-client certificate `CN=<user>` and the db CA as root.
fn db_client_endpoint(
    cas: &CaSet,
    user: &str,
    port: u16,
    db_ca_file: &Path,
    dir: &Path,
) -> anyhow::Result<Endpoint> {
    let (cert, key) = dbward_pki::issue_db_client_cert(&cas.db_client, user, CERT_TTL)?;
    let files = ClientFiles {
        crt: dir.join(format!("{user}.crt")),
        key: dir.join(format!("{user}.key")),
        ca: db_ca_file.to_path_buf(),
    };
    fs::write(&files.crt, &cert)?;
    dbward_pki::write_private_file(&files.key, key.as_bytes())?;
    let config = no_resumption(dbward_pki::client_config(
        Some(&cas.db.cert_pem),
        ServerVerification::Full,
        Some((&cert, &key)),
    )?);
    Ok(Endpoint {
        port,
        source: None,
        user: user.to_string(),
        expected_user: user.to_string(),
        tls: MakeRustlsConnect::new(config, "localhost"),
        files,
    })
}

/// `pgbench` of the server's own version when present, else the one on `PATH`.
fn pgbench_binary() -> anyhow::Result<PathBuf> {
    let own = PgServer::bin_dir()?.join("pgbench");
    if own.is_file() {
        return Ok(own);
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("pgbench");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("pgbench not found; install the Debian package postgresql-contrib (or postgresql)")
}

/// Runs a command as the database service account when we are root (PostgreSQL's tools and
/// pgbouncer refuse to run as root).
fn as_db_account(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn chown_to_db_account(path: &Path) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let user =
        nix::unistd::User::from_name("postgres")?.context("the postgres account does not exist")?;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::chown(&p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {}", p.display()))?;
        if p.is_dir() {
            for entry in fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The test kit starts PostgreSQL with `max_connections = 200`; the memory measurement needs
/// more backends, so the setting is raised and the server restarted in place.
fn raise_max_connections(pg: &PgServer, n: u32) -> anyhow::Result<()> {
    pg.psql_super(&format!("ALTER SYSTEM SET max_connections = {n}"))?;
    let pg_ctl = PgServer::bin_dir()?.join("pg_ctl");
    run(
        as_db_account(&pg_ctl)
            .current_dir("/")
            .arg("-D")
            .arg(&pg.data_dir)
            .arg("-l")
            .arg(pg.socket_dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"]),
        "pg_ctl restart",
    )?;
    let now = pg.psql_super("SHOW max_connections")?;
    if now != n.to_string() {
        bail!("max_connections is {now} after the restart, wanted {n}");
    }
    Ok(())
}

/// Roles of the three paths and the pgbench tables.
fn setup_database(pg: &PgServer, pgbench: &Path, scale: u32) -> anyhow::Result<()> {
    pg.psql_super(&format!(
        "CREATE ROLE {READER_ROLE} NOLOGIN;\n\
         CREATE ROLE {ADMIN_USER} LOGIN CREATEROLE;\n\
         GRANT {READER_ROLE} TO {ADMIN_USER} WITH ADMIN OPTION;\n\
         CREATE ROLE {DIRECT_USER} LOGIN IN ROLE {READER_ROLE};\n\
         CREATE ROLE {PGBOUNCER_USER} LOGIN IN ROLE {READER_ROLE};"
    ))?;
    run(
        Command::new(pgbench)
            .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&pg.socket_dir)
            .args(["-p", &pg.port.to_string(), "-U", "postgres", "postgres"])
            .env_remove("PGSSLMODE"),
        "pgbench -i",
    )?;
    pg.psql_super(&format!(
        "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO {READER_ROLE}"
    ))?;
    Ok(())
}

/// The role, database resource and every dbward user of the run.
async fn store_resources(
    config: &dbward_model::Config,
    pg: &PgServer,
    maria_port: u16,
    sizing: &Sizing,
) -> anyhow::Result<()> {
    let mut yaml = format!(
        "kind: role\nversion: v7\nmetadata: {{name: bench-keep}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{bench: \"yes\"}}\n    db_names: [\"*\"]\n    db_roles: [{READER_ROLE}]\n\
         ---\nkind: db\nversion: v3\nmetadata: {{name: {DB_RESOURCE}, labels: {{bench: \"yes\"}}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{port}\n  admin_user: {{name: {ADMIN_USER}, default_database: postgres}}\n",
        port = pg.port
    );
    yaml.push_str(&format!(
        "---\nkind: db\nversion: v3\nmetadata: {{name: {MARIA_RESOURCE}, labels: {{bench: \"yes\"}}}}\nspec:\n  protocol: mysql\n  uri: 127.0.0.1:{maria_port}\n  admin_user: {{name: {ADMIN_USER}}}\n"
    ));
    let mut users: Vec<String> = [STEADY_USER, RELAY_USER, MEMORY_USER, WARM_USER]
        .iter()
        .map(|s| s.to_string())
        .collect();
    users.extend((0..sizing.new_users).map(new_user));
    users.extend((0..sizing.rate_users).map(rate_user));
    users.extend((0..sizing.storm_users).map(storm_user));
    for u in &users {
        yaml.push_str(&format!(
            "---\nkind: user\nversion: v2\nmetadata: {{name: {u}}}\nspec: {{roles: [bench-keep]}}\n"
        ));
    }
    let parsed = dbward_model::parse_resources(&yaml, "bench.yaml")?;
    let store = dbward_server::open_store(config).await?;
    for r in &parsed.resources {
        let body = serde_json::to_string(r)?;
        store
            .put_resource(r.kind(), r.name(), &body, PutMode::Upsert)
            .await?;
    }
    Ok(())
}

/// The last lines of a log file.
pub(crate) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The gateway as a child process, so its memory can be read from `/proc/<pid>/status`
/// without the benchmark's own client connections in it.
pub struct GatewayProcess {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub mysql_port: u16,
    pub log: PathBuf,
    how: GatewayCommand,
    config: PathBuf,
    data_dir: PathBuf,
    dir: PathBuf,
    ports: GatewayPorts,
    /// Whether the running gateway records client statements (`audit_queries`).
    pub audit_queries: bool,
}

/// The gateway's listener ports, fixed for the run so that a restart keeps every endpoint.
#[derive(Debug, Clone, Copy)]
pub struct GatewayPorts {
    pub postgres: u16,
    pub mysql: u16,
}

/// The gateway's configuration file.
fn gateway_config(data_dir: &Path, ports: GatewayPorts, audit_queries: bool) -> String {
    let mut text = format!(
        "version: v1\ncluster_name: {CLUSTER}\ndata_dir: {}\nweb_listen_addr: 127.0.0.1:0\npostgres_listen_addr: 127.0.0.1:{}\nmysql_listen_addr: 127.0.0.1:{}\n",
        data_dir.display(),
        ports.postgres,
        ports.mysql
    );
    if !audit_queries {
        text.push_str("audit_queries: false\n");
    }
    text
}

impl GatewayProcess {
    fn start(
        how: &GatewayCommand,
        config: &Path,
        data_dir: &Path,
        dir: &Path,
        ports: GatewayPorts,
    ) -> anyhow::Result<GatewayProcess> {
        let log = dir.join("gateway.log");
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = match how {
            GatewayCommand::BuiltIn(exe) => {
                let mut c = Command::new(exe);
                c.arg("serve-gateway");
                c
            }
            GatewayCommand::Cli(exe) => {
                let mut c = Command::new(exe);
                c.arg("start");
                c
            }
        };
        let child = cmd
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting the gateway ({how:?})"))?;
        let pid = child.id();
        let mut gw = GatewayProcess {
            child,
            pid,
            port: 0,
            mysql_port: 0,
            log,
            how: how.clone(),
            config: config.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            audit_queries: !fs::read_to_string(config)?.contains("audit_queries: false"),
        };
        let endpoints_file = dbward_server::AdminFiles::new(data_dir).endpoints();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = fs::read_to_string(&endpoints_file) {
                if let Ok(ep) = serde_json::from_str::<dbward_server::Endpoints>(&text) {
                    if ep.pid == pid {
                        let addr = ep
                            .postgres
                            .context("the gateway has no postgres listener")?;
                        let addr: std::net::SocketAddr = addr.parse()?;
                        gw.port = addr.port();
                        let mysql = ep.mysql.context("the gateway has no mysql listener")?;
                        gw.mysql_port = mysql.parse::<std::net::SocketAddr>()?.port();
                        return Ok(gw);
                    }
                }
            }
            if let Some(status) = gw.child.try_wait()? {
                bail!("the gateway exited ({status}):\n{}", tail(&gw.log));
            }
            if Instant::now() > deadline {
                bail!("the gateway did not start in 60 s:\n{}", tail(&gw.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the gateway and starts it again on the same ports and store, recording client
    /// statements or not (`audit_queries`). Sessions open at that moment end.
    pub fn restart(&mut self, audit_queries: bool) -> anyhow::Result<()> {
        stop_child(&mut self.child, self.pid);
        fs::write(
            &self.config,
            gateway_config(&self.data_dir, self.ports, audit_queries),
        )?;
        let fresh = GatewayProcess::start(
            &self.how,
            &self.config,
            &self.data_dir,
            &self.dir,
            self.ports,
        )?;
        let old = std::mem::replace(self, fresh);
        // The old process has exited; dropping its handle does nothing more.
        drop(old);
        Ok(())
    }

    /// User plus system CPU time of the gateway process so far (every thread).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid)
    }

    /// Resident set size of the gateway process, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.pid);
    }
}

/// SIGTERM, a grace period, then SIGKILL.
pub(crate) fn stop_child(child: &mut Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // `pid` is our own child, not yet reaped, so it cannot have been reused.
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// User plus system CPU time of a process (fields 14 and 15 of `/proc/<pid>/stat`, every
/// thread of the process).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .context("no CPU times in /proc/<pid>/stat")
    };
    let total = ticks(14)? + ticks(15)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    Ok(Duration::from_nanos(total * 1_000_000_000 / hz.max(1)))
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// pgbouncer in session mode with TLS on both sides.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    pidfile: PathBuf,
    log: PathBuf,
}

impl PgBouncer {
    fn start(
        bin: &Path,
        cas: &CaSet,
        pg: &PgServer,
        root: &Path,
        db_ca_file: &Path,
    ) -> anyhow::Result<(PgBouncer, String)> {
        let dir = root.join("pgbouncer");
        fs::create_dir_all(&dir)?;
        // Listener certificate from the db CA, the one the direct path's clients trust too.
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (crt, key) = dbward_pki::issue_db_server_cert(&cas.db, &hosts, CERT_TTL)?;
        fs::write(dir.join("listener.crt"), crt)?;
        dbward_pki::write_private_file(&dir.join("listener.key"), key.as_bytes())?;
        // Client certificates are from the db-client CA, CN = user name (auth_type = cert).
        fs::write(dir.join("client-ca.crt"), &cas.db_client.cert_pem)?;
        fs::copy(db_ca_file, dir.join("server-ca.crt"))?;
        // The one certificate pgbouncer presents to PostgreSQL: CN = bench_pgb.
        let (crt, key) =
            dbward_pki::issue_db_client_cert(&cas.db_client, PGBOUNCER_USER, CERT_TTL)?;
        fs::write(dir.join("server-client.crt"), crt)?;
        dbward_pki::write_private_file(&dir.join("server-client.key"), key.as_bytes())?;
        fs::write(
            dir.join("userlist.txt"),
            format!("\"{PGBOUNCER_USER}\" \"\"\n"),
        )?;
        let pidfile = dir.join("pgbouncer.pid");
        let log = dir.join("pgbouncer.log");
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let config = format!(
                "[databases]\n\
                 postgres = host=127.0.0.1 port={pg_port} dbname=postgres user={PGBOUNCER_USER}\n\
                 \n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 pool_mode = session\n\
                 max_client_conn = 1000\n\
                 default_pool_size = 20\n\
                 auth_type = cert\n\
                 auth_file = {d}/userlist.txt\n\
                 client_tls_sslmode = verify-full\n\
                 client_tls_cert_file = {d}/listener.crt\n\
                 client_tls_key_file = {d}/listener.key\n\
                 client_tls_ca_file = {d}/client-ca.crt\n\
                 server_tls_sslmode = verify-full\n\
                 server_tls_ca_file = {d}/server-ca.crt\n\
                 server_tls_cert_file = {d}/server-client.crt\n\
                 server_tls_key_file = {d}/server-client.key\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\n\
                 log_connections = 0\n\
                 log_disconnections = 0\n",
                pg_port = pg.port,
                d = dir.display(),
            );
            fs::write(dir.join("pgbouncer.ini"), &config)?;
            chown_to_db_account(&dir)?;
            let _ = fs::remove_file(&pidfile);
            let child = as_db_account(bin)
                .arg(dir.join("pgbouncer.ini"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pgbouncer")?;
            let mut bouncer = PgBouncer {
                child,
                port,
                pidfile: pidfile.clone(),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut up = false;
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && pidfile.exists() {
                    up = true;
                    break;
                }
                if bouncer.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                let shown = config.replace(&dir.display().to_string(), "$DIR");
                return Ok((bouncer, shown));
            }
            last_err = Some(anyhow::anyhow!("pgbouncer did not start:\n{}", tail(&log)));
            bouncer.stop();
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("pgbouncer did not start")))
    }

    fn stop(&mut self) {
        // pgbouncer runs under runuser when we are root; signal pgbouncer itself.
        if let Ok(text) = fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                // The pid file is the one our pgbouncer wrote in our own directory.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let pid = self.child.id();
        stop_child(&mut self.child, pid);
    }

    /// pgbouncer's own process id (from its pid file; it may run under `runuser`).
    pub fn pid(&self) -> anyhow::Result<u32> {
        let text = fs::read_to_string(&self.pidfile).context("reading pgbouncer's pid file")?;
        Ok(text.trim().parse()?)
    }

    /// The pgbouncer log, for diagnosing a failed path.
    pub fn log(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Raises the open-file limit to the hard limit (children inherit it): a thousand idle
/// sessions hold a thousand client sockets here and two thousand in the gateway.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    Ok(hard)
}

/// Writes a file and flushes it (reports, charts).
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
