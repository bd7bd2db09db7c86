//! The measurements. Every path is measured in the same run and interleaved (round robin per
//! iteration, or per round for timed runs) so that noise on the machine hits all paths alike.
//! Every measured connection is checked: it must succeed and `select current_user` must return
//! the expected user, otherwise the whole run fails.

use std::path::Path;
use std::pin::pin;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Client;

use crate::env::{self, Endpoint, Env};
use crate::stats::ms;

/// How much of everything one run measures.
#[derive(Debug, Clone)]
pub struct Params {
    pub conn_iterations: usize,
    pub conn_warmup: usize,
    pub pgbench_seconds: u32,
    pub pgbench_rounds: usize,
    pub pgbench_scale: u32,
    /// Client counts of the relay runs (pgbench and the pgbouncer comparison).
    pub relay_clients: Vec<u32>,
    /// Client counts of the MariaDB relay runs and of the audit on/off comparison.
    pub maria_relay_clients: Vec<u32>,
    pub sysbench_rows: u32,
    pub bulk_rows: u64,
    pub bulk_rounds: usize,
    /// Idle PostgreSQL sessions held open, in steps (memory is read at each).
    pub memory_sessions: Vec<usize>,
    pub maria_memory_sessions: usize,
    pub rate_clients: usize,
    pub rate_rounds: usize,
    pub rate_round: Duration,
    /// Clients of the connection storm, each a different dbward user.
    pub storm_clients: usize,
}

impl Params {
    pub fn full() -> Params {
        Params {
            conn_iterations: 200,
            conn_warmup: 3,
            pgbench_seconds: 10,
            pgbench_rounds: 3,
            pgbench_scale: 10,
            relay_clients: vec![1, 8, 32],
            maria_relay_clients: vec![1, 8],
            sysbench_rows: 10_000,
            bulk_rows: 1_000_000,
            bulk_rounds: 3,
            memory_sessions: vec![1000, 3000],
            maria_memory_sessions: 1000,
            rate_clients: 8,
            rate_rounds: 5,
            rate_round: Duration::from_secs(2),
            storm_clients: 500,
        }
    }

    pub fn quick() -> Params {
        Params {
            conn_iterations: 5,
            conn_warmup: 1,
            pgbench_seconds: 2,
            pgbench_rounds: 1,
            pgbench_scale: 1,
            relay_clients: vec![1, 8, 32],
            maria_relay_clients: vec![1, 8],
            sysbench_rows: 1000,
            bulk_rows: 20_000,
            bulk_rounds: 1,
            memory_sessions: vec![30, 60],
            maria_memory_sessions: 30,
            rate_clients: 8,
            rate_rounds: 1,
            rate_round: Duration::from_millis(700),
            storm_clients: 40,
        }
    }

    /// The most idle PostgreSQL sessions held at once.
    pub fn max_memory_sessions(&self) -> usize {
        self.memory_sessions.iter().copied().max().unwrap_or(0)
    }

    /// Bytes one COPY row produces in text format: 1000 characters and a newline.
    pub const BULK_ROW_BYTES: u64 = 1001;
}

/// Named samples (milliseconds, transactions per second, MB/s...).
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub path: String,
    pub samples: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct RelayRow {
    pub path: String,
    pub clients: u32,
    pub tps: Vec<f64>,
    pub latency_ms: Vec<f64>,
    /// User plus system CPU of the process in the middle (gateway, pgbouncer or HAProxy) per
    /// query relayed, in microseconds, per round; empty for the direct path.
    pub cpu_us: Vec<f64>,
}

/// Adds one run's figures to its row (created on first use).
pub fn push_relay(
    rows: &mut Vec<RelayRow>,
    path: &str,
    clients: u32,
    tps: f64,
    latency_ms: f64,
    cpu_us: Option<f64>,
) {
    let i = match rows
        .iter()
        .position(|r| r.path == path && r.clients == clients)
    {
        Some(i) => i,
        None => {
            rows.push(RelayRow {
                path: path.to_string(),
                clients,
                tps: Vec::new(),
                latency_ms: Vec::new(),
                cpu_us: Vec::new(),
            });
            rows.len() - 1
        }
    };
    rows[i].tps.push(tps);
    rows[i].latency_ms.push(latency_ms);
    rows[i].cpu_us.extend(cpu_us);
}

/// The connection storm: every client connects at the same moment as its own dbward user.
#[derive(Debug, Clone)]
pub struct Storm {
    pub path: String,
    pub clients: usize,
    /// Setup times of the connections that succeeded, ms.
    pub setup_ms: Vec<f64>,
    pub errors: usize,
    /// The first error, as the client saw it.
    pub first_error: Option<String>,
    /// Database users still able to log in when the wait for teardown ended.
    pub left_active: usize,
    /// From the last disconnect until every user was locked again (or the wait ended), ms.
    pub settled_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub sessions: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl Memory {
    pub fn per_session_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.sessions as f64
    }
}

#[derive(Debug, Clone)]
pub struct RateRow {
    pub path: String,
    pub sessions: u64,
    pub seconds: f64,
}

impl RateRow {
    pub fn per_second(&self) -> f64 {
        self.sessions as f64 / self.seconds
    }
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub connect: Vec<Series>,
    pub teardown: Vec<Series>,
    pub relay: Vec<RelayRow>,
    pub bulk: Vec<Series>,
    pub bulk_bytes: u64,
    /// One entry per step of idle sessions.
    pub memory: Vec<Memory>,
    pub rate: Vec<RateRow>,
    pub storm: Vec<Storm>,
    pub maria_connect: Vec<Series>,
    pub maria_teardown: Vec<Series>,
    pub maria_relay: Vec<RelayRow>,
    pub maria_memory: Option<Memory>,
    pub maria_rate: Vec<RateRow>,
}

/// Path names, as they appear in the report.
pub const DIRECT: &str = "direct";
pub const DBWARD: &str = "dbward";
pub const DBWARD_STEADY: &str = "dbward (existing locked user)";
pub const DBWARD_NEW: &str = "dbward (new user each time)";
pub const DBWARD_NO_AUDIT: &str = "dbward (query audit off)";
pub const PGBOUNCER: &str = "pgbouncer";
pub const HAPROXY: &str = "HAProxy (TCP passthrough)";

pub(crate) fn series<'a>(list: &'a mut Vec<Series>, path: &str) -> &'a mut Series {
    if let Some(i) = list.iter().position(|s| s.path == path) {
        return &mut list[i];
    }
    list.push(Series {
        path: path.to_string(),
        samples: Vec::new(),
    });
    list.last_mut().expect("just pushed")
}

/// An open session: the client and the task driving its connection.
pub struct Session {
    client: Client,
    conn: JoinHandle<()>,
}

impl Session {
    /// Closes the session (Terminate) and waits until the socket is closed.
    pub async fn close(self) {
        drop(self.client);
        let _ = self.conn.await;
    }
}

/// Connects through `ep`; returns the session and the time until the server was ready for
/// queries (TCP, TLS, authentication and, through dbward, provisioning).
pub async fn connect(ep: &Endpoint) -> anyhow::Result<(Session, Duration)> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(ep.port)
        .user(&ep.user)
        .dbname("postgres")
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let context = || format!("connecting as {} to port {}", ep.user, ep.port);
    let (client, conn) = match ep.source {
        None => {
            let (client, conn) = config.connect(ep.tls.clone()).await.with_context(context)?;
            (client, tokio::spawn(async move { drop(conn.await) }))
        }
        Some(source) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into()).with_context(context)?;
            let stream = socket
                .connect((std::net::Ipv4Addr::LOCALHOST, ep.port).into())
                .await
                .with_context(context)?;
            stream.set_nodelay(true)?;
            let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                &mut ep.tls.clone(),
                "localhost",
            )?;
            let (client, conn) = config
                .connect_raw(stream, tls)
                .await
                .with_context(context)?;
            (client, tokio::spawn(async move { drop(conn.await) }))
        }
    };
    let elapsed = started.elapsed();
    Ok((Session { client, conn }, elapsed))
}

/// Checks that the session works and is the expected database user.
pub async fn check(session: &Session, ep: &Endpoint) -> anyhow::Result<()> {
    let row = session
        .client
        .query_one("select current_user::text", &[])
        .await
        .with_context(|| format!("query as {}", ep.user))?;
    let user: String = row.get(0);
    ensure!(
        user == ep.expected_user,
        "connected as {user:?}, expected {:?}",
        ep.expected_user
    );
    Ok(())
}

/// Connect, check, close: one complete functional session.
async fn session_once(ep: &Endpoint) -> anyhow::Result<Duration> {
    let (s, t) = connect(ep).await?;
    check(&s, ep).await?;
    s.close().await;
    Ok(t)
}

/// Waits until `role` exists and cannot log in; the time since `since`.
pub async fn wait_locked(su: &Client, role: &str, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(30);
    loop {
        let row = su
            .query_opt(
                "select rolcanlogin from pg_roles where rolname = $1",
                &[&role],
            )
            .await?;
        if let Some(row) = row {
            if !row.get::<_, bool>(0) {
                return Ok(since.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("{role} still can log in 30 s after its session ended");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ConnPath {
    Direct,
    Steady,
    New,
    Bouncer,
}

/// Connection setup for every path, and teardown for the dbward paths.
pub async fn connection_setup(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let su = env.superuser().await?;
    let steady = env.dbward_endpoint(env::STEADY_USER)?;
    let warm = env.dbward_endpoint(env::WARM_USER)?;
    let mut paths = vec![ConnPath::Direct, ConnPath::Steady, ConnPath::New];
    if env.pgbouncer_endpoint.is_some() {
        paths.push(ConnPath::Bouncer);
    }
    // Warm-up, not measured: the steady user exists and is locked afterwards.
    for _ in 0..p.conn_warmup.max(1) {
        session_once(&env.direct).await?;
        for ep in [&steady, &warm] {
            let started = Instant::now();
            session_once(ep).await?;
            wait_locked(&su, &ep.user, started).await?;
        }
        if let Some(b) = &env.pgbouncer_endpoint {
            session_once(b).await?;
        }
    }
    for i in 0..p.conn_iterations {
        let mut order = paths.clone();
        order.rotate_left(i % paths.len());
        for path in order {
            let fresh;
            let (name, ep) = match path {
                ConnPath::Direct => (DIRECT, &env.direct),
                ConnPath::Steady => (DBWARD_STEADY, &steady),
                ConnPath::New => {
                    fresh = env.dbward_endpoint(&env::new_user(i))?;
                    (DBWARD_NEW, &fresh)
                }
                ConnPath::Bouncer => (
                    PGBOUNCER,
                    env.pgbouncer_endpoint.as_ref().expect("pgbouncer path"),
                ),
            };
            if path == ConnPath::New {
                let exists = su
                    .query_opt("select 1 from pg_roles where rolname = $1", &[&ep.user])
                    .await?;
                ensure!(
                    exists.is_none(),
                    "{} exists before its first session",
                    ep.user
                );
            }
            let (s, t) = connect(ep)
                .await
                .with_context(|| format!("{name}, iteration {i}"))?;
            check(&s, ep)
                .await
                .with_context(|| format!("{name}, iteration {i}"))?;
            series(&mut out.connect, name).samples.push(ms(t));
            if matches!(path, ConnPath::Steady | ConnPath::New) {
                let closed = Instant::now();
                s.close().await;
                let td = wait_locked(&su, &ep.user, closed).await?;
                series(&mut out.teardown, name).samples.push(ms(td));
            } else {
                s.close().await;
            }
        }
    }
    Ok(())
}

/// The relay on both engines, interleaved per round: `pgbench -S` through every PostgreSQL
/// path at each client count and sysbench `oltp_point_select` through every MariaDB path,
/// with the CPU of the process in the middle per query; then the gateway is restarted with
/// `audit_queries: false` for the same dbward runs without the statement audit, and restarted
/// again as it was.
pub fn relay(env: &mut Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let gateway_pid = |env: &Env| env.gateway.pid;
    for round in 0..p.pgbench_rounds {
        let dbward = env.dbward_endpoint(env::RELAY_USER)?;
        let mut paths: Vec<(&str, Endpoint, Option<u32>)> = vec![
            (DIRECT, env.direct.clone(), None),
            (DBWARD, dbward.clone(), Some(gateway_pid(env))),
        ];
        if let (Some(ep), Some(h)) = (&env.haproxy_pg, &env.haproxy) {
            paths.push((HAPROXY, ep.clone(), Some(h.pid)));
        }
        if let (Some(ep), Some(b)) = (&env.pgbouncer_endpoint, &env.pgbouncer) {
            paths.push((PGBOUNCER, ep.clone(), Some(b.pid()?)));
        }
        for &clients in &p.relay_clients {
            let mut order = paths.clone();
            order.rotate_left(round % paths.len());
            for (name, ep, middle) in order {
                pgbench_once(env, name, &ep, middle, clients, p, out)?;
            }
        }
        let maria_dbward = env.maria.dbward_endpoint(env, env::RELAY_USER)?;
        let mut maria_paths = vec![
            (DIRECT, env.maria.direct.clone(), None),
            (DBWARD, maria_dbward, Some(gateway_pid(env))),
        ];
        if let Some(h) = &env.haproxy {
            let mut ep = env.maria.direct.clone();
            ep.port = h.maria_port;
            maria_paths.push((HAPROXY, ep, Some(h.pid)));
        }
        for &threads in &p.maria_relay_clients {
            let mut order = maria_paths.clone();
            order.rotate_left(round % maria_paths.len());
            for (name, ep, middle) in order {
                crate::maria::relay_once(env, name, &ep, middle, threads, p, out)?;
            }
        }

        env.gateway.restart(false)?;
        let pid = gateway_pid(env);
        let maria_dbward = env.maria.dbward_endpoint(env, env::RELAY_USER)?;
        for &clients in &p.maria_relay_clients {
            pgbench_once(env, DBWARD_NO_AUDIT, &dbward, Some(pid), clients, p, out)?;
            crate::maria::relay_once(
                env,
                DBWARD_NO_AUDIT,
                &maria_dbward,
                Some(pid),
                clients,
                p,
                out,
            )?;
        }
        env.gateway.restart(true)?;
    }
    Ok(())
}

fn pgbench_once(
    env: &Env,
    name: &str,
    ep: &Endpoint,
    middle: Option<u32>,
    clients: u32,
    p: &Params,
    out: &mut Results,
) -> anyhow::Result<()> {
    let before = middle.map(env::cpu_time).transpose()?;
    let (tps, lat, queries) = pgbench(&env.pgbench, ep, clients, p.pgbench_seconds)
        .with_context(|| format!("pgbench through {name} with {clients} clients"))?;
    let cpu = match (middle, before) {
        (Some(pid), Some(before)) => Some(env::cpu_per_query(pid, before, queries)?),
        _ => None,
    };
    push_relay(&mut out.relay, name, clients, tps, lat, cpu);
    Ok(())
}

/// The pgbench command line of one run (also printed in the report).
pub fn pgbench_args(ep: &Endpoint, clients: u32, seconds: u32) -> Vec<String> {
    vec![
        "-n".into(),
        "-S".into(),
        "-T".into(),
        seconds.to_string(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        clients.to_string(),
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        ep.port.to_string(),
        "-U".into(),
        ep.user.clone(),
        "postgres".into(),
    ]
}

/// Runs pgbench; returns (TPS without initial connection time, average latency ms,
/// transactions processed).
fn pgbench(
    bin: &Path,
    ep: &Endpoint,
    clients: u32,
    seconds: u32,
) -> anyhow::Result<(f64, f64, u64)> {
    env::run_load_tool(
        Command::new(bin)
            .args(pgbench_args(ep, clients, seconds))
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &ep.files.ca)
            .env("PGSSLCERT", &ep.files.crt)
            .env("PGSSLKEY", &ep.files.key)
            .env("PGCONNECT_TIMEOUT", "60")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGHOST")
            .env_remove("PGDATABASE"),
        "pgbench",
        parse_pgbench,
    )
}

/// Reads TPS, average latency and the transactions processed from pgbench's report and
/// checks nothing failed.
pub fn parse_pgbench(text: &str) -> anyhow::Result<(f64, f64, u64)> {
    let mut tps = None;
    let mut latency = None;
    let mut processed = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            if rest.contains("without initial connection time") {
                tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            processed = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|v| v.parse::<u64>().ok());
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            let failed: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .context("unreadable failed-transaction count")?;
            ensure!(failed == 0, "{failed} transactions failed");
        }
    }
    let processed = processed.unwrap_or(0);
    ensure!(processed > 0, "no transaction was processed");
    Ok((
        tps.context("no tps line")?,
        latency.context("no latency line")?,
        processed,
    ))
}

/// `COPY ... TO STDOUT` of `rows` rows through every path, interleaved per round.
pub async fn bulk(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let dbward = env.dbward_endpoint(env::RELAY_USER)?;
    let mut paths: Vec<(&str, &Endpoint)> = vec![(DIRECT, &env.direct), (DBWARD, &dbward)];
    if let Some(b) = &env.pgbouncer_endpoint {
        paths.push((PGBOUNCER, b));
    }
    let expected = p.bulk_rows * Params::BULK_ROW_BYTES;
    out.bulk_bytes = expected;
    let sql = format!(
        "COPY (SELECT repeat('x', 1000) FROM generate_series(1, {})) TO STDOUT",
        p.bulk_rows
    );
    for round in 0..p.bulk_rounds {
        let mut order = paths.clone();
        order.rotate_left(round % paths.len());
        for (name, ep) in order {
            let (s, _) = connect(ep)
                .await
                .with_context(|| format!("bulk via {name}"))?;
            check(&s, ep).await?;
            let started = Instant::now();
            let mut stream = pin!(s
                .client
                .copy_out(sql.as_str())
                .await
                .with_context(|| format!("COPY via {name}"))?);
            let mut bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.with_context(|| format!("COPY via {name}"))?.len() as u64;
            }
            let secs = started.elapsed().as_secs_f64();
            ensure!(
                bytes == expected,
                "COPY via {name} returned {bytes} bytes, expected {expected}"
            );
            series(&mut out.bulk, name)
                .samples
                .push(bytes as f64 / 1e6 / secs);
            s.close().await;
        }
    }
    Ok(())
}

/// Gateway RSS with idle proxied sessions, read at each step of [`Params::memory_sessions`]
/// (sessions are added to reach the next step; all stay open until the last).
pub async fn memory(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let su = env.superuser().await?;
    let ep = env.dbward_endpoint(env::MEMORY_USER)?;
    // Warm-up: the gateway has served sessions (runtime threads, pools, caches exist).
    let mut warm = Vec::new();
    for _ in 0..8 {
        let (s, _) = connect(&ep).await?;
        check(&s, &ep).await?;
        warm.push(s);
    }
    for s in warm {
        s.close().await;
    }
    wait_locked(&su, &ep.user, Instant::now()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.gateway.rss_kib()?;

    let mut steps = p.memory_sessions.clone();
    steps.sort_unstable();
    let mut sessions: Vec<Session> = Vec::new();
    for step in steps {
        let opened: Vec<anyhow::Result<Session>> = futures_util::stream::iter(sessions.len()..step)
            .map(|_| {
                let ep = ep.clone();
                async move {
                    let (s, _) = connect(&ep).await?;
                    check(&s, &ep).await?;
                    anyhow::Ok(s)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for s in opened {
            sessions.push(s.context("opening an idle session")?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = env.gateway.rss_kib()?;
        let backends: i64 = su
            .query_one(
                "select count(*) from pg_stat_activity where usename = $1",
                &[&ep.user],
            )
            .await?
            .get(0);
        ensure!(
            backends as usize == step,
            "{backends} backends for {step} idle sessions"
        );
        out.memory.push(Memory {
            sessions: step,
            rss_before_kib: before,
            rss_after_kib: after,
        });
    }
    // Every session is still alive.
    for s in &sessions {
        s.client
            .simple_query("")
            .await
            .context("idle session died")?;
    }
    for s in sessions {
        s.close().await;
    }
    wait_locked(&su, &ep.user, Instant::now()).await?;
    Ok(())
}

/// The loopback address of storm client `i`: 127.0.1.2, 127.0.1.3, … (every 127/8 address is
/// the loopback interface on Linux), one per client.
fn storm_address(i: usize) -> std::net::Ipv4Addr {
    let n = u32::try_from(i).unwrap_or(0);
    std::net::Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 2 + (n % 250) as u8)
}

/// The connection storm: `storm_clients` clients connect at the same moment, each as its own
/// dbward user (`keep` mode, never seen by the database before) from its own loopback address,
/// run `select current_user` and disconnect; then every one of those database users must be locked again. The direct
/// path storms with the same number of clients as one database user, for reference.
pub async fn storm(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let su = env.superuser().await?;
    let mut dbward = Vec::with_capacity(p.storm_clients);
    for i in 0..p.storm_clients {
        let mut ep = env.dbward_endpoint(&env::storm_user(i))?;
        ep.source = Some(storm_address(i));
        dbward.push(ep);
    }
    for (name, eps) in [
        (DIRECT, vec![env.direct.clone(); p.storm_clients]),
        (DBWARD, dbward),
    ] {
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(eps.len()));
        let mut tasks = Vec::with_capacity(eps.len());
        for ep in eps.clone() {
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let (s, t) = connect(&ep).await?;
                check(&s, &ep).await?;
                s.close().await;
                anyhow::Ok(t)
            }));
        }
        let mut row = Storm {
            path: name.to_string(),
            clients: eps.len(),
            setup_ms: Vec::new(),
            errors: 0,
            first_error: None,
            left_active: 0,
            settled_ms: 0.0,
        };
        for t in tasks {
            match t.await.context("storm client panicked")? {
                Ok(t) => row.setup_ms.push(ms(t)),
                Err(err) => {
                    row.errors += 1;
                    row.first_error.get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
        if name == DBWARD {
            let users: Vec<String> = eps.iter().map(|e| e.user.clone()).collect();
            let done = Instant::now();
            let deadline = done + Duration::from_secs(60);
            loop {
                let active: i64 = su
                    .query_one(
                        "select count(*) from pg_roles where rolname = any($1) and rolcanlogin",
                        &[&users],
                    )
                    .await?
                    .get(0);
                row.left_active = active as usize;
                if active == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            row.settled_ms = ms(done.elapsed());
            let sessions: i64 = su
                .query_one(
                    "select count(*) from pg_stat_activity where usename = any($1)",
                    &[&users],
                )
                .await?
                .get(0);
            ensure!(
                sessions == 0,
                "{sessions} backends of storm users still open after the storm"
            );
        }
        out.storm.push(row);
    }
    Ok(())
}

/// Sessions per second with `rate_clients` parallel clients: each dbward client is its own
/// dbward user, so every session activates (and its end locks) a database user.
pub async fn rate(env: &Env, p: &Params, out: &mut Results) -> anyhow::Result<()> {
    let su = env.superuser().await?;
    let mut dbward = Vec::new();
    for k in 0..p.rate_clients {
        dbward.push(env.dbward_endpoint(&env::rate_user(k))?);
    }
    // Warm-up: every rate user exists (and is locked) before the first round.
    for ep in &dbward {
        let started = Instant::now();
        session_once(ep).await?;
        wait_locked(&su, &ep.user, started).await?;
    }
    let mut paths: Vec<(&str, Vec<Endpoint>)> = vec![
        (DIRECT, vec![env.direct.clone(); p.rate_clients]),
        (DBWARD, dbward.clone()),
    ];
    if let Some(b) = &env.pgbouncer_endpoint {
        paths.push((PGBOUNCER, vec![b.clone(); p.rate_clients]));
    }
    for round in 0..p.rate_rounds {
        let mut order = paths.clone();
        order.rotate_left(round % paths.len());
        for (name, eps) in order {
            let (sessions, seconds) = rate_round(eps.clone(), p.rate_round)
                .await
                .with_context(|| format!("session rate via {name}"))?;
            match out.rate.iter_mut().find(|r| r.path == name) {
                Some(r) => {
                    r.sessions += sessions;
                    r.seconds += seconds;
                }
                None => out.rate.push(RateRow {
                    path: name.to_string(),
                    sessions,
                    seconds,
                }),
            }
            if name == DBWARD {
                // Teardown of the last sessions must not spill into the next path's round.
                for ep in &eps {
                    wait_locked(&su, &ep.user, Instant::now()).await?;
                }
            }
        }
    }
    Ok(())
}

/// One timed round: every client connects, checks and disconnects in a loop until the time is
/// up. Returns (sessions completed, seconds until the last client finished).
async fn rate_round(eps: Vec<Endpoint>, length: Duration) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for ep in eps {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                session_once(&ep).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("rate client panicked")??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_report_is_parsed_and_failures_rejected() {
        let ok = "transaction type: <builtin: select only>\nnumber of transactions actually processed: 1234\nnumber of failed transactions: 0 (0.000%)\nlatency average = 0.810 ms\ninitial connection time = 5.1 ms\ntps = 1234.567890 (without initial connection time)\n";
        assert_eq!(parse_pgbench(ok).unwrap(), (1234.56789, 0.81, 1234));
        let failed = ok.replace("failed transactions: 0 (", "failed transactions: 3 (");
        assert!(parse_pgbench(&failed).is_err());
        let none = ok.replace("processed: 1234", "processed: 0");
        assert!(parse_pgbench(&none).is_err());
    }
}
