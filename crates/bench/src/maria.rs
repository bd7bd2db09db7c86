//! The MariaDB side of the benchmark: one MariaDB started for the run (from the test kit), its
//! accounts and sysbench table, a small MySQL-protocol client (TLS with a client certificate,
//! `COM_QUERY`, `COM_QUIT`) and the MariaDB measurements: relay (sysbench), connection setup
//! and teardown, provisioning rate and gateway memory per idle session.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dbward_pki::{CaSet, ServerVerification};
use dbward_proxy::mysql::packet::{self, capability};
use dbward_proxy::mysql::upstream::{self, UpstreamLogin};
use dbward_testkit::{DbServerCerts, MariaServer};
use futures_util::StreamExt;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::env::{
    self, no_resumption, run, Env, Sizing, ADMIN_USER, CERT_TTL, DIRECT_USER, MARIA_MONITOR,
    MARIA_RESOURCE, MARIA_SCHEMA, READER_ROLE,
};
use crate::measure::{
    series, Memory, Params, RateRow, Results, DBWARD, DBWARD_NEW, DBWARD_STEADY, DIRECT,
};
use crate::stats::ms;

/// The MariaDB of the run and what its paths need.
pub struct MariaWorld {
    pub server: MariaServer,
    /// TLS with a db-client certificate `CN=bench_direct` straight to MariaDB.
    pub direct: MyEndpoint,
    /// The account that reads `mysql.global_priv` (teardown checks).
    pub monitor: MyEndpoint,
    pub sysbench: Option<PathBuf>,
    pub version: String,
    dir: PathBuf,
}

/// One way to reach MariaDB: port, user, the client TLS configuration, and a directory with
/// the same certificate as files for sysbench (`client-cert.pem`, `client-key.pem`,
/// `cacert.pem`, which sysbench 1.0 reads from its working directory).
#[derive(Clone)]
pub struct MyEndpoint {
    pub port: u16,
    pub user: String,
    pub tls: Arc<ClientConfig>,
    pub files: PathBuf,
}

impl MariaWorld {
    /// Starts MariaDB with the run's certificates and creates the admin, the reader role,
    /// the direct user, the monitor and the sysbench table.
    pub fn start(
        cas: &CaSet,
        certs: &DbServerCerts,
        dir: &Path,
        sizing: &Sizing,
    ) -> anyhow::Result<MariaWorld> {
        let server = MariaServer::start(certs)?;
        let a = ADMIN_USER;
        server.sql_root(&format!(
            "SET GLOBAL max_connections = {max};
             CREATE USER '{a}'@'%' REQUIRE SUBJECT '/CN={a}';
             GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{a}'@'%';
             GRANT SELECT ON mysql.roles_mapping TO '{a}'@'%';
             GRANT UPDATE ON mysql.* TO '{a}'@'%';
             GRANT SELECT ON *.* TO '{a}'@'%';
             CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
             GRANT `dbward-auto-user` TO '{a}'@'%' WITH ADMIN OPTION;
             CREATE DATABASE IF NOT EXISTS dbward;
             GRANT ALL ON dbward.* TO '{a}'@'%' WITH GRANT OPTION;
             CREATE DATABASE {MARIA_SCHEMA};
             CREATE ROLE `{READER_ROLE}` WITH ADMIN '{a}'@'%';
             GRANT SELECT ON {MARIA_SCHEMA}.* TO `{READER_ROLE}`;
             CREATE USER '{DIRECT_USER}'@'%' REQUIRE SUBJECT '/CN={DIRECT_USER}';
             GRANT SELECT ON {MARIA_SCHEMA}.* TO '{DIRECT_USER}'@'%';
             CREATE USER '{MARIA_MONITOR}'@'%' REQUIRE SUBJECT '/CN={MARIA_MONITOR}';
             GRANT SELECT ON mysql.* TO '{MARIA_MONITOR}'@'%';
             GRANT PROCESS ON *.* TO '{MARIA_MONITOR}'@'%';
             GRANT SELECT ON {MARIA_SCHEMA}.* TO '{MARIA_MONITOR}'@'%';",
            max = sizing.maria_max_connections
        ))?;
        let version = server.sql_root("SELECT VERSION()")?;
        let sysbench = find_sysbench();
        match &sysbench {
            Ok(bin) => {
                run(
                    Command::new(bin)
                        .args(["oltp_point_select", "--db-driver=mysql"])
                        .arg(format!("--mysql-socket={}", server.socket.display()))
                        .args(["--mysql-user=root", "--tables=1"])
                        .arg(format!("--mysql-db={MARIA_SCHEMA}"))
                        .arg(format!("--table-size={}", sizing.sysbench_rows))
                        .arg("prepare"),
                    "sysbench prepare",
                )?;
            }
            Err(why) => eprintln!("skipping the MariaDB relay: {why}"),
        }
        let clients = dir.join("maria-clients");
        fs::create_dir_all(&clients)?;
        let direct = db_client_endpoint(cas, DIRECT_USER, server.port, &clients)?;
        let monitor = db_client_endpoint(cas, MARIA_MONITOR, server.port, &clients)?;
        Ok(MariaWorld {
            server,
            direct,
            monitor,
            sysbench: sysbench.ok(),
            version,
            dir: clients,
        })
    }

    /// The path through dbward to the MariaDB resource for dbward user `user`.
    pub fn dbward_endpoint(&self, env: &Env, user: &str) -> anyhow::Result<MyEndpoint> {
        let (cert, key) = env::route_certificate(&env.cas, user, MARIA_RESOURCE, MARIA_SCHEMA)?;
        let files = self.dir.join(format!("{user}.dbward"));
        write_sysbench_files(&files, &cert, &key, &env.cas.host.cert_pem)?;
        let tls = no_resumption(dbward_pki::client_config(
            Some(&env.cas.host.cert_pem),
            ServerVerification::Full,
            Some((&cert, &key)),
        )?);
        Ok(MyEndpoint {
            port: env.gateway.mysql_port,
            user: user.to_string(),
            tls,
            files,
        })
    }
}

fn find_sysbench() -> Result<PathBuf, String> {
    ["/usr/bin/sysbench", "/usr/local/bin/sysbench"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "sysbench is not installed (Debian package sysbench; scripts/bench installs it)".into()
        })
}

fn write_sysbench_files(dir: &Path, cert: &str, key: &str, ca: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("client-cert.pem"), cert)?;
    dbward_pki::write_private_file(&dir.join("client-key.pem"), key.as_bytes())?;
    fs::write(dir.join("cacert.pem"), ca)?;
    Ok(())
}

fn db_client_endpoint(
    cas: &CaSet,
    user: &str,
    port: u16,
    dir: &Path,
) -> anyhow::Result<MyEndpoint> {
    let (cert, key) = dbward_pki::issue_db_client_cert(&cas.db_client, user, CERT_TTL)?;
    let files = dir.join(user);
    write_sysbench_files(&files, &cert, &key, &cas.db.cert_pem)?;
    let tls = no_resumption(dbward_pki::client_config(
        Some(&cas.db.cert_pem),
        ServerVerification::Full,
        Some((&cert, &key)),
    )?);
    Ok(MyEndpoint {
        port,
        user: user.to_string(),
        tls,
        files,
    })
}

/// An open MySQL-protocol session.
pub struct MySession {
    stream: TlsStream<TcpStream>,
}

/// Login capabilities: the 4.1 protocol with EOF packets, as the `mariadb` client without
/// compression.
const CAPABILITIES: u32 = capability::LONG_PASSWORD
    | capability::PROTOCOL_41
    | capability::SECURE_CONNECTION
    | capability::TRANSACTIONS
    | capability::PLUGIN_AUTH;

/// Connects and logs in; returns the session and the time until it was ready for queries.
pub async fn connect(ep: &MyEndpoint) -> anyhow::Result<(MySession, Duration)> {
    let login = UpstreamLogin {
        user: &ep.user,
        database: Some(MARIA_SCHEMA),
        client_capabilities: CAPABILITIES,
        charset: 45,
    };
    let started = Instant::now();
    let session = tokio::time::timeout(
        Duration::from_secs(60),
        upstream::connect(
            ("127.0.0.1", ep.port),
            ep.tls.clone(),
            ServerName::try_from("localhost")?,
            &login,
        ),
    )
    .await
    .context("connection timed out")?
    .with_context(|| format!("connecting as {} to port {}", ep.user, ep.port))?;
    Ok((
        MySession {
            stream: session.stream,
        },
        started.elapsed(),
    ))
}

impl MySession {
    /// Runs one statement; the first column of its first row (`None`: no rows, or NULL).
    pub async fn query_value(&mut self, sql: &str) -> anyhow::Result<Option<String>> {
        let mut payload = vec![packet::command::QUERY];
        payload.extend_from_slice(sql.as_bytes());
        packet::write_packet(&mut self.stream, 0, &payload).await?;
        let first = self.read().await?;
        match first.first() {
            Some(&packet::OK_HEADER) => return Ok(None),
            Some(&packet::ERR_HEADER) => bail!("{sql}: {}", error_text(&first)),
            _ => {}
        }
        let columns = usize::from(*first.first().context("empty packet")?);
        ensure!(columns > 0 && columns < 0xfb, "unexpected column count");
        for _ in 0..columns {
            self.read().await?;
        }
        ensure!(is_eof(&self.read().await?), "missing EOF after the columns");
        let mut value = None;
        let mut first_row = true;
        loop {
            let row = self.read().await?;
            if is_eof(&row) {
                return Ok(value);
            }
            if row.first() == Some(&packet::ERR_HEADER) {
                bail!("{sql}: {}", error_text(&row));
            }
            if first_row {
                first_row = false;
                value = match row.first() {
                    Some(0xfb) => None,
                    Some(&len) if len < 0xfb && row.len() > usize::from(len) => {
                        Some(String::from_utf8_lossy(&row[1..1 + usize::from(len)]).into_owned())
                    }
                    _ => bail!("unexpected row encoding"),
                };
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<Vec<u8>> {
        Ok(packet::read_packet(&mut self.stream, 1 << 24)
            .await?
            .payload)
    }

    /// `COM_QUIT`, then closes the connection.
    pub async fn close(mut self) {
        let _ = packet::write_packet(&mut self.stream, 0, &[packet::command::QUIT]).await;
        let _ = self.stream.shutdown().await;
    }
}

fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

fn error_text(payload: &[u8]) -> String {
    match packet::ErrPacket::decode(payload) {
        Ok(err) => format!("error {} ({}): {}", err.code, err.sqlstate, err.message),
        Err(err) => err.to_string(),
    }
}

/// Checks that the session works and is the expected account.
pub async fn check(s: &mut MySession, ep: &MyEndpoint) -> anyhow::Result<()> {
    let user = s
        .query_value("SELECT CURRENT_USER()")
        .await?
        .unwrap_or_default();
    ensure!(
        user == format!("{}@%", ep.user),
        "connected as {user:?}, expected {}@%",
        ep.user
    );
    Ok(())
}

async fn session_once(ep: &MyEndpoint) -> anyhow::Result<Duration> {
    let (mut s, t) = connect(ep).await?;
    check(&mut s, ep).await?;
    s.close().await;
    Ok(t)
}

/// `account_locked` of `user@%` through the monitor session: `None` when it does not exist.
async fn locked(monitor: &mut MySession, user: &str) -> anyhow::Result<Option<bool>> {
    let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    let v = monitor
        .query_value(&format!(
            "SELECT IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') FROM mysql.global_priv WHERE User = 0x{hex} AND Host = '%'"
        ))
        .await?;
    Ok(v.map(|v| v == "true" || v == "1"))
}

/// Waits until `user@%` exists and is locked; the time since `since`.
async fn wait_locked(
    monitor: &mut MySession,
    user: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(30);
    loop {
        if locked(monitor, user).await? == Some(true) {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{user} is still unlocked 30 s after its session ended");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Connection setup on MariaDB: direct, the same locked dbward user again, a new dbward user
/// each time; teardown until `account_locked` is true again.
pub async fn connection_setup(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let m = &env.maria;
    let (mut monitor, _) = connect(&m.monitor).await?;
    let steady = m.dbward_endpoint(env, env::STEADY_USER)?;
    for _ in 0..p.conn_warmup.max(1) {
        session_once(&m.direct).await?;
        let started = Instant::now();
        session_once(&steady).await?;
        wait_locked(&mut monitor, &steady.user, started).await?;
    }
    for i in 0..p.conn_iterations {
        for k in 0..3 {
            let path = (i + k) % 3;
            let fresh;
            let (name, ep) = match path {
                0 => (DIRECT, &m.direct),
                1 => (DBWARD_STEADY, &steady),
                _ => {
                    fresh = m.dbward_endpoint(env, &env::new_user(i))?;
                    ensure!(
                        locked(&mut monitor, &fresh.user).await?.is_none(),
                        "{} exists before its first session",
                        fresh.user
                    );
                    (DBWARD_NEW, &fresh)
                }
            };
            let (mut s, t) = connect(ep)
                .await
                .with_context(|| format!("MariaDB {name}, iteration {i}"))?;
            check(&mut s, ep)
                .await
                .with_context(|| format!("MariaDB {name}, iteration {i}"))?;
            series(&mut out.maria_connect, name).samples.push(ms(t));
            let closed = Instant::now();
            s.close().await;
            if path != 0 {
                let td = wait_locked(&mut monitor, &ep.user, closed).await?;
                series(&mut out.maria_teardown, name).samples.push(ms(td));
            }
        }
    }
    monitor.close().await;
    Ok(())
}

/// Sessions per second with parallel clients on MariaDB, as [`crate::measure::rate`].
pub async fn rate(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let m = &env.maria;
    let (mut monitor, _) = connect(&m.monitor).await?;
    let mut dbward = Vec::new();
    for k in 0..p.rate_clients {
        let ep = m.dbward_endpoint(env, &env::rate_user(k))?;
        let started = Instant::now();
        session_once(&ep).await?;
        wait_locked(&mut monitor, &ep.user, started).await?;
        dbward.push(ep);
    }
    let paths: Vec<(&str, Vec<MyEndpoint>)> = vec![
        (DIRECT, vec![m.direct.clone(); p.rate_clients]),
        (DBWARD, dbward),
    ];
    for round in 0..p.rate_rounds {
        let mut order = paths.clone();
        order.rotate_left(round % paths.len());
        for (name, eps) in order {
            let started = Instant::now();
            let deadline = started + p.rate_round;
            let mut tasks = Vec::new();
            for ep in eps.clone() {
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        session_once(&ep).await?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                }));
            }
            let mut sessions = 0;
            for t in tasks {
                sessions += t
                    .await
                    .context("rate client panicked")?
                    .with_context(|| format!("MariaDB session rate via {name}"))?;
            }
            let seconds = started.elapsed().as_secs_f64();
            match out.maria_rate.iter_mut().find(|r| r.path == name) {
                Some(r) => {
                    r.sessions += sessions;
                    r.seconds += seconds;
                }
                None => out.maria_rate.push(RateRow {
                    path: name.to_string(),
                    sessions,
                    seconds,
                }),
            }
            if name == DBWARD {
                for ep in &eps {
                    wait_locked(&mut monitor, &ep.user, Instant::now()).await?;
                }
            }
        }
    }
    monitor.close().await;
    Ok(())
}

/// Gateway RSS with `maria_memory_sessions` idle MariaDB sessions.
pub async fn memory(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let m = &env.maria;
    let (mut monitor, _) = connect(&m.monitor).await?;
    let ep = m.dbward_endpoint(env, env::MEMORY_USER)?;
    let mut warm = Vec::new();
    for _ in 0..8 {
        let (mut s, _) = connect(&ep).await?;
        check(&mut s, &ep).await?;
        warm.push(s);
    }
    for s in warm {
        s.close().await;
    }
    wait_locked(&mut monitor, &ep.user, Instant::now()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.gateway.rss_kib()?;
    let opened: Vec<anyhow::Result<MySession>> =
        futures_util::stream::iter(0..p.maria_memory_sessions)
            .map(|_| {
                let ep = ep.clone();
                async move {
                    let (mut s, _) = connect(&ep).await?;
                    check(&mut s, &ep).await?;
                    anyhow::Ok(s)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut sessions = Vec::with_capacity(opened.len());
    for s in opened {
        sessions.push(s.context("opening an idle MariaDB session")?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = env.gateway.rss_kib()?;
    let hex: String = ep.user.bytes().map(|b| format!("{b:02x}")).collect();
    let threads: usize = monitor
        .query_value(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 0x{hex}"
        ))
        .await?
        .unwrap_or_default()
        .parse()?;
    ensure!(
        threads == p.maria_memory_sessions,
        "{threads} MariaDB connections for {} idle sessions",
        p.maria_memory_sessions
    );
    for mut s in sessions {
        s.query_value("SELECT 1")
            .await
            .context("idle session died")?;
        s.close().await;
    }
    wait_locked(&mut monitor, &ep.user, Instant::now()).await?;
    monitor.close().await;
    out.maria_memory = Some(Memory {
        sessions: p.maria_memory_sessions,
        rss_before_kib: before,
        rss_after_kib: after,
    });
    Ok(())
}

/// The sysbench command line of one relay run (also shown in the report).
pub fn sysbench_args(ep: &MyEndpoint, threads: u32, seconds: u32, rows: u32) -> Vec<String> {
    vec![
        "oltp_point_select".into(),
        "--db-driver=mysql".into(),
        "--mysql-host=127.0.0.1".into(),
        format!("--mysql-port={}", ep.port),
        format!("--mysql-user={}", ep.user),
        format!("--mysql-db={MARIA_SCHEMA}"),
        "--mysql-ssl=on".into(),
        "--db-ps-mode=disable".into(),
        "--tables=1".into(),
        format!("--table-size={rows}"),
        format!("--threads={threads}"),
        format!("--time={seconds}"),
        "run".into(),
    ]
}

/// One sysbench run: (queries per second, average latency ms, queries).
pub fn sysbench(
    bin: &Path,
    ep: &MyEndpoint,
    threads: u32,
    seconds: u32,
    rows: u32,
) -> anyhow::Result<(f64, f64, u64)> {
    env::run_load_tool(
        Command::new(bin)
            .args(sysbench_args(ep, threads, seconds, rows))
            .current_dir(&ep.files),
        "sysbench",
        parse_sysbench,
    )
}

/// Reads queries, queries per second and the average latency from sysbench's report, and
/// checks that no error was ignored.
pub fn parse_sysbench(text: &str) -> anyhow::Result<(f64, f64, u64)> {
    let mut qps = None;
    let mut queries = None;
    let mut latency = None;
    let mut in_latency = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("queries:") {
            let rest = rest.trim();
            queries = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            qps = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("ignored errors:") {
            let n: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .context("unreadable ignored-error count")?;
            ensure!(n == 0, "{n} errors were ignored");
        } else if line.starts_with("Latency (ms):") {
            in_latency = true;
        } else if in_latency {
            if let Some(rest) = line.strip_prefix("avg:") {
                latency = rest.trim().parse().ok();
                in_latency = false;
            }
        }
    }
    let queries: u64 = queries.context("no queries line")?;
    ensure!(queries > 0, "no query was run");
    Ok((
        qps.context("no queries per second")?,
        latency.context("no average latency")?,
        queries,
    ))
}

/// Relay rows for one sysbench run through a MariaDB path, with the CPU of the process in the
/// middle (gateway or HAProxy) per query.
pub fn relay_once(
    env: &Env,
    name: &str,
    ep: &MyEndpoint,
    middle: Option<u32>,
    threads: u32,
    p: &Params,
    out: &mut Results,
) -> anyhow::Result<()> {
    let Some(bin) = &env.maria.sysbench else {
        return Ok(());
    };
    let before = middle.map(env::cpu_time).transpose()?;
    let (qps, lat, queries) = sysbench(bin, ep, threads, p.pgbench_seconds, p.sysbench_rows)
        .with_context(|| format!("sysbench through {name} with {threads} threads"))?;
    let cpu = match (middle, before) {
        (Some(pid), Some(before)) => Some(env::cpu_per_query(pid, before, queries)?),
        _ => None,
    };
    crate::measure::push_relay(&mut out.maria_relay, name, threads, qps, lat, cpu);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysbench_report_is_parsed_and_errors_rejected() {
        let ok = "SQL statistics:\n    queries performed:\n        read:                            120\n    transactions:                        120    (11.99 per sec.)\n    queries:                             120    (11.99 per sec.)\n    ignored errors:                      0      (0.00 per sec.)\n\nLatency (ms):\n         min:                                    0.05\n         avg:                                    0.08\n         max:                                    1.20\n";
        assert_eq!(parse_sysbench(ok).unwrap(), (11.99, 0.08, 120));
        let failed = ok.replace(
            "errors:                      0",
            "errors:                      2",
        );
        assert!(parse_sysbench(&failed).is_err());
        let none = ok.replace("queries:                             120", "queries: 0");
        assert!(parse_sysbench(&none).is_err());
    }
}
