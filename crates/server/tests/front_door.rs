//! The front door under abuse, tried over real sockets the way an attacker without an account
//! would: login floods, lockout attempts, slow and idle connections, absurd parameters, weak
//! TLS and foreign certificates.
//!
//! Each test starts its own gateway as a separate process (this test binary run again in
//! gateway mode, see [`gateway_process`]), so that the gateway's memory and file descriptors
//! can be read from `/proc/<pid>` apart from the clients'. The figures are printed (run with
//! `--nocapture` to see them) and asserted as bounds, never as timings of a fast machine.
//!
//! Several client addresses come from the loopback range: on Linux every 127.0.0.0/8 address
//! is local, so a client socket bound to 127.0.0.2 reaches a listener on 127.0.0.1 and the
//! gateway sees 127.0.0.2 as the peer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbward_pki::{CaSet, CertUsage, DbRoute, Identity};
use dbward_store::{PutMode, Store};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const CLUSTER: &str = "dbward-test";
const CONFIG_ENV: &str = "DBWARD_FRONT_DOOR_CONFIG";

/// The gateway side of every test here: runs `dbward start` with the configuration named by
/// `DBWARD_FRONT_DOOR_CONFIG` until killed. Without that variable it does nothing.
#[test]
#[ignore = "the gateway process that the other tests of this file start"]
fn gateway_process() {
    let Ok(path) = std::env::var(CONFIG_ENV) else {
        return;
    };
    // Dies with the test that started it, even when that test panics or is killed.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).expect("PR_SET_PDEATHSIG");
    let config = dbward_model::Config::load(Path::new(&path)).expect("gateway config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(dbward_server::run(config)).expect("gateway");
}

/// A gateway process with a PostgreSQL listener (in front of the shared test PostgreSQL),
/// a MySQL listener and the web API, killed on drop.
struct GatewayProcess {
    child: Child,
    dir: tempfile::TempDir,
    web: SocketAddr,
    pg: SocketAddr,
    mysql: SocketAddr,
    cas: &'static CaSet,
    host_ca: String,
    /// `fd_reader`, a PostgreSQL role reachable through the gateway's `fdpg` database.
    pg_user: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Users with a password, a database they may reach without provisioning, and the gateway
/// started with `limits` (YAML lines under `limits:`, or empty).
fn start_gateway(limits: &str, users: &[(&str, &str)]) -> GatewayProcess {
    let cas = dbward_testkit::shared_cas().expect("test CAs");
    let pg = dbward_testkit::shared_pg().expect("test PostgreSQL");
    let pg_user = dbward_testkit::unique_name("fd_reader");
    pg.psql_super(&format!("CREATE ROLE {pg_user} LOGIN"))
        .expect("create role");

    let dir = tempfile::Builder::new()
        .prefix("dwfront")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut resources = format!(
        "kind: role\nversion: v7\nmetadata: {{name: fd-reader}}\nspec:\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_users: [{pg_user}]\n---\nkind: db\nversion: v3\nmetadata: {{name: fdpg, labels: {{env: test}}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{}\n",
        pg.port
    );
    for (name, _) in users {
        resources.push_str(&format!(
            "---\nkind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [fd-reader]}}\n"
        ));
    }
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open_sqlite(&data).expect("store");
        for ca in [&cas.user, &cas.host, &cas.db, &cas.db_client] {
            store
                .put_ca_if_absent(ca.kind.as_str(), &ca.cert_pem, &ca.key_pem)
                .await
                .expect("store CA");
        }
        let parsed = dbward_model::parse_resources(&resources, "test.yaml").expect("resources");
        for r in &parsed.resources {
            let json = serde_json::to_string(r).expect("json");
            store
                .put_resource(r.kind(), r.name(), &json, PutMode::Upsert)
                .await
                .expect("store resource");
        }
        for (name, password) in users {
            let hash = dbward_server::passwords::hash_password(password).expect("hash");
            store
                .set_password_hash(name, &hash)
                .await
                .expect("store password");
        }
    });
    drop(rt);

    let config = dir.path().join("dbward.yaml");
    let limits = if limits.is_empty() {
        String::new()
    } else {
        format!("limits:\n{limits}")
    };
    std::fs::write(
        &config,
        format!(
            "version: v1\ncluster_name: {CLUSTER}\ndata_dir: {}\npublic_addr: localhost\nweb_listen_addr: 127.0.0.1:0\npostgres_listen_addr: 127.0.0.1:0\nmysql_listen_addr: 127.0.0.1:0\n{limits}",
            data.display()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["gateway_process", "--exact", "--ignored", "--nocapture"])
        .env(CONFIG_ENV, &config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the gateway process");
    let endpoints_file = data.join("admin").join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoints = loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints_file) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                if value["pid"].as_u64() == Some(u64::from(child.id())) {
                    break value;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = |key: &str| -> SocketAddr {
        endpoints[key]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} address in {endpoints}"))
    };
    GatewayProcess {
        web: addr("web"),
        pg: addr("postgres"),
        mysql: addr("mysql"),
        child,
        dir,
        cas,
        host_ca: cas.host.cert_pem.clone(),
        pg_user,
    }
}

impl GatewayProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("gateway status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// Open file descriptors of the gateway.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// A login certificate as `dbward login` would get it (PEM, key), or another cluster's.
    fn login_cert(&self, user: &str, cluster: &str, expires: OffsetDateTime) -> (String, String) {
        self.issue(user, cluster, CertUsage::Login, expires, None)
    }

    /// The admin identity `dbward start` wrote into `data_dir`.
    fn admin_cert(&self) -> (String, String) {
        let admin = self.dir.path().join("data").join("admin");
        (
            std::fs::read_to_string(admin.join("identity.crt")).expect("admin cert"),
            std::fs::read_to_string(admin.join("identity.key")).expect("admin key"),
        )
    }

    fn issue(
        &self,
        user: &str,
        cluster: &str,
        usage: CertUsage,
        expires: OffsetDateTime,
        route: Option<DbRoute>,
    ) -> (String, String) {
        let (key, csr) = dbward_pki::new_key_and_csr(user).expect("csr");
        let identity = Identity {
            username: user.into(),
            cluster: cluster.into(),
            usage,
            expires,
            route,
            pinned_ip: None,
            mfa_session_until: None,
        };
        (
            dbward_pki::issue_user_cert(&self.cas.user, &identity, &csr).expect("issue"),
            key,
        )
    }

    /// A database certificate for the `fdpg` route, written to files for psql.
    fn db_cert_files(&self, user: &str) -> (PathBuf, PathBuf, PathBuf) {
        let route = DbRoute {
            service: "fdpg".into(),
            db_user: Some(self.pg_user.clone()),
            db_name: Some("postgres".into()),
            db_roles: Vec::new(),
        };
        let (cert, key) = self.issue(
            user,
            CLUSTER,
            CertUsage::Db,
            OffsetDateTime::now_utc() + Duration::from_secs(3600),
            Some(route),
        );
        let dir = self.dir.path().join(format!("client-{user}"));
        std::fs::create_dir_all(&dir).expect("client dir");
        let files = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("ca.pem"),
        );
        std::fs::write(&files.0, cert).expect("cert");
        dbward_pki::write_private_file(&files.1, key.as_bytes()).expect("key");
        std::fs::write(&files.2, &self.host_ca).expect("ca");
        files
    }

    /// `psql -c 'select 1'` through the gateway's PostgreSQL listener; its output or error.
    fn psql_select(&self, user: &str) -> Result<String, String> {
        let (crt, key, ca) = self.db_cert_files(user);
        let out = Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} user={} dbname=postgres",
                self.pg.port(),
                ca.display(),
                crt.display(),
                key.display(),
                self.pg_user
            ))
            .args(["-X", "-A", "-t", "-c", "select 'through the gateway'"])
            .env("PGCONNECT_TIMEOUT", "30")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS to the web listener, trusting the host CA, with an optional client certificate.
async fn web_tls(
    gw_web: SocketAddr,
    host_ca: &str,
    from: IpAddr,
    cert: Option<(&str, &str)>,
) -> Result<TlsClient, String> {
    let config =
        dbward_pki::client_config(Some(host_ca), dbward_pki::ServerVerification::Full, cert)
            .map_err(|e| e.to_string())?;
    let tcp = connect_from(from, gw_web)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

/// One HTTP/1.1 request on its own connection: the status code and body, or why there was
/// no answer.
async fn https(
    gw: &GatewayProcess,
    from: IpAddr,
    cert: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let tls = web_tls(gw.web, &gw.host_ca, from, cert).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (mut reader, mut writer) = tokio::io::split(tls);
    // Written while the answer is read: a server may answer (413, say) before it has read
    // the whole body, and the answer must not be lost to a reset.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Keep the write half open until the answer is read.
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(writer);
    });
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(120), reader.read_to_end(&mut answer)).await;
    write.abort();
    if answer.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:.200}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn login_body(user: &str, password: &str, csr: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"user": user, "password": password, "csr_pem": csr}))
        .expect("json")
}

async fn login(
    gw: &GatewayProcess,
    from: IpAddr,
    user: &str,
    password: &str,
) -> Result<u16, String> {
    let (_, csr) = dbward_pki::new_key_and_csr(user).map_err(|e| e.to_string())?;
    https(
        gw,
        from,
        None,
        "POST",
        "/v1/login",
        &login_body(user, password, &csr),
    )
    .await
    .map(|(status, _)| status)
}

fn tally(results: &[Result<u16, String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in results {
        let key = match r {
            Ok(status) => status.to_string(),
            Err(_) => "no answer".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

// 1. Login floods.

#[test]
fn login_flood_from_one_address_verifies_few_passwords_and_memory_stays_bounded() {
    let gw = start_gateway(
        // Enough pending room for 200 simultaneous connections from one address: this test
        // is about the password limiter, the connection caps have their own. Two checks at
        // once (about 19 MiB each), written out so that the memory bound does not depend on
        // the machine's cores; the five attempts the limiter lets through then also exercise
        // the queue for a verification slot.
        "  max_pending_per_address: 512\n  max_concurrent_logins: 2\n",
        &[
            ("flooded", "the-right-password"),
            ("bystander", "bystander-password"),
        ],
    );
    let rt = runtime();
    let rss_before = gw.status_kib("VmRSS");
    let gw = Arc::new(gw);
    let (flood, bystander) = rt.block_on(async {
        let mut tasks = JoinSet::new();
        for _ in 0..200 {
            let gw = gw.clone();
            tasks.spawn(async move { login(&gw, loopback(1), "flooded", "wrong").await });
        }
        // A legitimate user from another address while the flood is on.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let bystander = login(&gw, loopback(2), "bystander", "bystander-password").await;
        let bystander = (bystander, started.elapsed());
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(r.expect("login task"));
        }
        (results, bystander)
    });
    let rss_after = gw.status_kib("VmRSS");
    let peak = gw.status_kib("VmHWM");
    let counts = tally(&flood);
    println!(
        "login flood, 200 wrong passwords from 127.0.0.1: {counts:?}; bystander from 127.0.0.2: {:?} in {:?}",
        bystander.0, bystander.1
    );
    println!(
        "gateway memory: VmRSS before {} MiB, after {} MiB, peak (VmHWM) {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    let verified = counts.get("401").copied().unwrap_or(0);
    let refused = counts.get("429").copied().unwrap_or(0) + counts.get("503").copied().unwrap_or(0);
    assert!(verified <= 5, "{verified} passwords verified: {counts:?}");
    assert_eq!(
        verified + refused,
        200,
        "every attempt answered 401/429/503: {counts:?}"
    );
    assert!(counts.get("429").copied().unwrap_or(0) >= 190, "{counts:?}");
    assert_eq!(bystander.0, Ok(200), "the bystander could not log in");
    assert!(
        peak.saturating_sub(rss_before) < 100 * 1024,
        "peak memory grew by {} MiB",
        peak.saturating_sub(rss_before) / 1024
    );

    // 200 logins with 1 MB user names: refused before anything is stored or hashed.
    let long_name = "x".repeat(1 << 20);
    let rss_before = gw.status_kib("VmRSS");
    let results = rt.block_on(async {
        let mut results = Vec::new();
        for batch in 0..10 {
            let mut tasks = JoinSet::new();
            for _ in 0..20 {
                let gw = gw.clone();
                let name = long_name.clone();
                tasks.spawn(async move {
                    https(
                        &gw,
                        loopback(3 + batch),
                        None,
                        "POST",
                        "/v1/login",
                        &login_body(&name, "pw", "x"),
                    )
                    .await
                    .map(|(s, _)| s)
                });
            }
            while let Some(r) = tasks.join_next().await {
                results.push(r.expect("login task"));
            }
        }
        results
    });
    let rss_after = gw.status_kib("VmRSS");
    let counts = tally(&results);
    println!(
        "200 logins with 1 MiB user names: {counts:?}; VmRSS before {} MiB, after {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        !counts.contains_key("200") && !counts.contains_key("401"),
        "{counts:?}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 100 * 1024,
        "memory grew by {} MiB",
        rss_after.saturating_sub(rss_before) / 1024
    );
}

// 2. Lockout of others.

#[test]
fn wrong_passwords_from_one_address_do_not_lock_the_user_out_from_another() {
    let gw = start_gateway("", &[("carol", "carol-password")]);
    let rt = runtime();
    let attacker = loopback(5);
    let statuses: Vec<_> = rt.block_on(async {
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(login(&gw, attacker, "carol", "guess").await);
        }
        statuses
    });
    println!("8 wrong passwords for carol from 127.0.0.5: {statuses:?}");
    assert_eq!(statuses[..5], [Ok(401), Ok(401), Ok(401), Ok(401), Ok(401)]);
    assert_eq!(statuses[5..], [Ok(429), Ok(429), Ok(429)]);
    // The attacker's address stays blocked for carol, even with the right password...
    let from_attacker = rt.block_on(login(&gw, attacker, "carol", "carol-password"));
    assert_eq!(from_attacker, Ok(429));
    // ...but carol herself, elsewhere, logs in.
    let from_carol = rt.block_on(login(&gw, loopback(6), "carol", "carol-password"));
    println!("carol from 127.0.0.6: {from_carol:?}");
    assert_eq!(from_carol, Ok(200));
}

// 3. Slow and idle connections.

/// What a slow client sends before it goes quiet, and where.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Nothing at all, to the PostgreSQL listener.
    SilentPostgres,
    /// An SSLRequest, then the first bytes of a TLS ClientHello.
    PartialClientHelloPostgres,
    /// The first bytes of a TLS ClientHello, to the web listener.
    PartialClientHelloWeb,
    /// A complete TLS handshake on the web listener, then half an HTTP request.
    PartialHttpHeaders,
    /// Half a MySQL packet header after the greeting.
    PartialMysqlPacket,
}

/// PostgreSQL's SSLRequest.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

const PARTIAL_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

type Conn = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// Opens one slow connection, to the listener its kind belongs to.
async fn slow_connection(gw: &GatewayProcess, from: IpAddr, kind: Slow) -> Result<Conn, String> {
    let err = |e: std::io::Error| e.to_string();
    let conn: Conn = match kind {
        Slow::SilentPostgres => Box::pin(connect_from(from, gw.pg).await.map_err(err)?),
        Slow::PartialClientHelloPostgres => {
            let mut tcp = connect_from(from, gw.pg).await.map_err(err)?;
            tcp.write_all(&SSL_REQUEST).await.map_err(err)?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(err)?;
            tcp.write_all(PARTIAL_CLIENT_HELLO).await.map_err(err)?;
            Box::pin(tcp)
        }
        Slow::PartialClientHelloWeb => {
            let mut tcp = connect_from(from, gw.web).await.map_err(err)?;
            tcp.write_all(PARTIAL_CLIENT_HELLO).await.map_err(err)?;
            Box::pin(tcp)
        }
        Slow::PartialHttpHeaders => {
            let mut tls = web_tls(gw.web, &gw.host_ca, from, None).await?;
            tls.write_all(b"POST /v1/login HTTP/1.1\r\nhost: localhost\r\ncontent-le")
                .await
                .map_err(err)?;
            Box::pin(tls)
        }
        Slow::PartialMysqlPacket => {
            let mut tcp = connect_from(from, gw.mysql).await.map_err(err)?;
            tcp.write_all(&[0x20, 0x00]).await.map_err(err)?;
            Box::pin(tcp)
        }
    };
    Ok(conn)
}

/// Reads until the peer closes; how long that took, or `None` past `limit`.
async fn closed_within(mut conn: Conn, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[test]
fn slow_connections_are_closed_in_time_while_real_clients_get_through() {
    let handshake_timeout = Duration::from_secs(2);
    let gw = Arc::new(start_gateway(
        "  handshake_timeout: 2s\n",
        &[("dora", "dora-password")],
    ));
    let rt = runtime();
    let fds_before = gw.fds();
    let kinds = [
        Slow::SilentPostgres,
        Slow::PartialClientHelloPostgres,
        Slow::PartialClientHelloWeb,
        Slow::PartialHttpHeaders,
        Slow::PartialMysqlPacket,
    ];
    // 1,000 slow clients from 20 addresses, 50 each (under the per-address cap).
    let (opened, fds_during, psql, login_status, closings) = rt.block_on(async {
        let mut opening = JoinSet::new();
        for i in 0..1000usize {
            let gw = gw.clone();
            let from = loopback(10 + (i % 20) as u8);
            let kind = kinds[i % kinds.len()];
            opening.spawn(async move {
                let conn = slow_connection(&gw, from, kind).await;
                (kind, conn, Instant::now())
            });
        }
        let mut closing = JoinSet::new();
        let mut opened = 0;
        while let Some(r) = opening.join_next().await {
            let (kind, conn, at) = r.expect("open task");
            match conn {
                Ok(conn) => {
                    opened += 1;
                    let limit = handshake_timeout + Duration::from_secs(4);
                    closing.spawn(async move { (kind, closed_within(conn, limit).await, at) });
                }
                Err(err) => println!("slow {kind:?} connection not opened: {err}"),
            }
        }
        let fds_during = gw.fds();
        // Meanwhile a real psql session and a real login.
        let gw2 = gw.clone();
        let psql = tokio::task::spawn_blocking(move || gw2.psql_select("dora"));
        let login_status = login(&gw, loopback(1), "dora", "dora-password").await;
        let psql = psql.await.expect("psql task");
        let mut closings = Vec::new();
        while let Some(r) = closing.join_next().await {
            closings.push(r.expect("close task"));
        }
        (opened, fds_during, psql, login_status, closings)
    });
    std::thread::sleep(Duration::from_millis(500));
    let fds_after = gw.fds();
    let still_open: Vec<_> = closings.iter().filter(|(_, d, _)| d.is_none()).collect();
    let slowest = closings.iter().filter_map(|(_, d, _)| *d).max();
    println!(
        "1,000 slow connections: {opened} opened, {} closed by the gateway, slowest close after {slowest:?}; gateway fds before {fds_before}, during {fds_during}, after {fds_after}",
        closings.len() - still_open.len()
    );
    println!("meanwhile: psql {psql:?}, login {login_status:?}");
    assert!(opened >= 990, "only {opened} slow connections opened");
    assert!(
        still_open.is_empty(),
        "{} connections still open {:?} after the handshake timeout, e.g. {:?}",
        still_open.len(),
        handshake_timeout + Duration::from_secs(4),
        still_open.first().map(|(k, _, _)| k)
    );
    assert_eq!(psql.as_deref(), Ok("through the gateway"), "{}", gw.log());
    assert_eq!(login_status, Ok(200));
    assert!(
        fds_after <= fds_before + 20,
        "gateway fds: {fds_before} before, {fds_after} after"
    );
}

#[test]
fn pending_connections_are_capped_per_address_and_overall() {
    // A long handshake timeout: whatever closes within a second was refused by a cap.
    let gw = start_gateway(
        "  handshake_timeout: 60s\n  max_pending_per_address: 16\n  max_pending_connections: 40\n",
        &[],
    );
    let rt = runtime();
    let fds_before = gw.fds();
    let mut held = Vec::new();
    let mut kept_conns = Vec::new();
    for (last, to) in [(60u8, gw.pg), (61, gw.mysql), (62, gw.web)] {
        let (open, conns) = rt.block_on(async {
            let mut conns = Vec::new();
            for _ in 0..30 {
                if let Ok(tcp) = connect_from(loopback(last), to).await {
                    conns.push(tcp);
                }
                // Let the gateway account for each before the next arrives.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut open = Vec::new();
            for mut tcp in conns {
                let mut buf = [0u8; 1024];
                // The MySQL greeting may arrive; only a close counts.
                let closed = loop {
                    match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(_)) => continue,
                        Err(_) => break false,
                    }
                };
                if !closed {
                    open.push(tcp);
                }
            }
            (open.len(), open)
        });
        held.push(open);
        kept_conns.push(conns);
    }
    let fds_during = gw.fds();
    println!(
        "30 silent connections from each of 127.0.0.60/61/62 (cap 16 per address, 40 overall): held {held:?}; gateway fds before {fds_before}, during {fds_during}"
    );
    assert_eq!(held, vec![16, 16, 8]);
    drop(kept_conns);
}

#[test]
fn idle_https_connections_are_closed_and_busy_ones_are_not() {
    let gw = start_gateway("  idle_timeout: 2s\n", &[]);
    let rt = runtime();
    let (idle, busy) = rt.block_on(async {
        let request = b"GET /v1/ping HTTP/1.1\r\nhost: localhost\r\n\r\n";
        // One request, then silence.
        let mut tls = web_tls(gw.web, &gw.host_ca, loopback(1), None)
            .await
            .expect("tls");
        tls.write_all(request).await.expect("request");
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await.expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let idle = closed_within(Box::pin(tls), Duration::from_secs(10)).await;
        // A request every 500 ms for 4 s: never idle for long, stays open.
        let mut tls = web_tls(gw.web, &gw.host_ca, loopback(1), None)
            .await
            .expect("tls");
        let mut busy = true;
        for _ in 0..8 {
            if tls.write_all(request).await.is_err() {
                busy = false;
                break;
            }
            match tls.read(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => {
                    busy = false;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (idle, busy)
    });
    println!("idle keep-alive connection closed after {idle:?}; busy connection kept: {busy}");
    let idle = idle.expect("an idle connection was kept open for 10 s");
    assert!(
        idle >= Duration::from_millis(1500),
        "closed too early: {idle:?}"
    );
    assert!(busy, "a connection in use was closed");
}

// 4. Bounds on every parameter.

#[test]
fn absurd_parameters_and_bodies_are_refused_with_400_or_413() {
    let gw = start_gateway("", &[("erin", "erin-password")]);
    let rt = runtime();
    let (admin_cert, admin_key) = gw.admin_cert();
    let admin = Some((admin_cert.as_str(), admin_key.as_str()));
    let get = |path: &str| rt.block_on(https(&gw, loopback(1), admin, "GET", path, b""));
    let post =
        |path: &str, body: &[u8]| rt.block_on(https(&gw, loopback(1), admin, "POST", path, body));
    let status = |r: Result<(u16, String), String>| r.map(|(s, _)| s);

    assert_eq!(status(get("/v1/audit?since_secs=3600&limit=10")), Ok(200));
    for path in [
        "/v1/audit?since_secs=99999999999999",
        "/v1/audit?since_secs=18446744073709551615",
        "/v1/audit?limit=100000000000",
        "/v1/audit?since_secs=-1",
        "/v1/audit?limit=x",
    ] {
        let got = get(path);
        println!("GET {path}: {got:?}");
        assert_eq!(status(got), Ok(400), "{path}");
    }
    // The gateway is still up after all of that.
    assert_eq!(status(get("/v1/ping")), Ok(200));

    // Bodies: a 16 MiB resource file and a 1 MiB login are refused before they are parsed.
    let huge = serde_json::to_vec(&serde_json::json!({
        "file_name": "big.yaml",
        "text": "#".repeat(16 << 20),
    }))
    .expect("json");
    let got = status(post("/v1/resources", &huge));
    println!("POST /v1/resources with 16 MiB: {got:?}");
    assert_eq!(got, Ok(413));
    let got = status(post(
        "/v1/login",
        &login_body(&"y".repeat(1 << 20), "pw", "x"),
    ));
    println!("POST /v1/login with a 1 MiB user name: {got:?}");
    assert_eq!(got, Ok(413));
    // A user name over 256 bytes is refused before it is looked up or counted.
    let got = post("/v1/login", &login_body(&"z".repeat(300), "pw", "x"));
    println!("POST /v1/login with a 300-byte user name: {got:?}");
    assert_eq!(status(got), Ok(400));
    // A logged-in user's certificate request: body and role list bounded.
    let (cert, key) = gw.login_cert(
        "erin",
        CLUSTER,
        OffsetDateTime::now_utc() + Duration::from_secs(600),
    );
    let user = Some((cert.as_str(), key.as_str()));
    let (_, csr) = dbward_pki::new_key_and_csr("erin").expect("csr");
    let db_cert = |roles: usize, padding: usize| {
        let body = serde_json::to_vec(&serde_json::json!({
            "db": "fdpg",
            "db_user": gw.pg_user,
            "db_roles": (0..roles).map(|i| format!("r{i}")).collect::<Vec<_>>(),
            "csr_pem": format!("{csr}{}", " ".repeat(padding)),
        }))
        .expect("json");
        status(rt.block_on(https(&gw, loopback(1), user, "POST", "/v1/db-certs", &body)))
    };
    assert_eq!(db_cert(0, 0), Ok(200));
    let got = db_cert(65, 0);
    println!("POST /v1/db-certs with 65 roles: {got:?}");
    assert_eq!(got, Ok(400));
    let got = db_cert(0, 100 << 10);
    println!("POST /v1/db-certs with a 100 KiB body: {got:?}");
    assert_eq!(got, Ok(413));
    // A certificate lifetime that overflows any clock is capped, not a crash.
    let (_, csr) = dbward_pki::new_key_and_csr("erin").expect("csr");
    let body = serde_json::to_vec(&serde_json::json!({
        "user": "erin", "password": "erin-password", "csr_pem": csr, "ttl_secs": u64::MAX,
    }))
    .expect("json");
    let got = status(rt.block_on(https(&gw, loopback(7), None, "POST", "/v1/login", &body)));
    assert_eq!(got, Ok(200));
}

// 6. TLS policy.

/// Whether `openssl s_client` completes a handshake with `args` against `addr`.
fn openssl_handshake(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "New, TLSv1.0, Cipher is ECDHE-RSA-AES256-SHA" (the label is not always the version
    // negotiated) after a handshake, "New, (NONE), Cipher is (NONE)" without one.
    let established = text
        .lines()
        .any(|l| l.starts_with("New, ") && l.contains("Cipher is ") && !l.contains("(NONE)"));
    (established, text)
}

#[test]
fn only_tls_1_2_and_1_3_with_ecdhe_aead_suites_are_accepted_on_every_listener() {
    let gw = start_gateway("", &[]);
    let files = gw.db_cert_files("tls-probe");
    let cert = files.0.to_str().expect("path").to_string();
    let key = files.1.to_str().expect("path").to_string();
    let listeners: [(&str, SocketAddr, &[&str]); 3] = [
        ("web", gw.web, &[]),
        ("postgres", gw.pg, &["-starttls", "postgres"]),
        ("mysql", gw.mysql, &["-starttls", "mysql"]),
    ];
    for (name, addr, starttls) in listeners {
        let with = |extra: &[&str]| {
            let mut args: Vec<&str> = starttls.to_vec();
            args.extend(["-cert", cert.as_str(), "-key", key.as_str()]);
            args.extend(extra);
            openssl_handshake(addr, &args)
        };
        // What a current client does works, so a refusal below is the policy.
        for good in [
            &["-tls1_3"][..],
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"][..],
        ] {
            let (ok, text) = with(good);
            assert!(ok, "{name} {good:?} refused:\n{text}");
        }
        for bad in [
            &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
            &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
            &[
                "-tls1_2",
                "-cipher",
                "AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384",
            ][..],
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256",
            ][..],
        ] {
            let (ok, text) = with(bad);
            println!("{name} {bad:?}: refused = {}", !ok);
            assert!(!ok, "{name} accepted {bad:?}:\n{text}");
        }
    }
}

/// The first thing the PostgreSQL listener answers after a TLS handshake with `cert`: `Err`
/// when the TLS layer refused the certificate, `Ok(first byte)` when the handshake passed.
async fn pg_first_answer(gw: &GatewayProcess, cert: (&str, &str)) -> Result<u8, String> {
    let config = dbward_pki::client_config(
        Some(&gw.host_ca),
        dbward_pki::ServerVerification::Full,
        Some(cert),
    )
    .map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(gw.pg).await.map_err(|e| e.to_string())?;
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // StartupMessage, protocol 3.0, user and database.
    let mut body = vec![0, 3, 0, 0];
    for part in ["user", "x", "database", "postgres", ""] {
        body.extend(part.as_bytes());
        body.push(0);
    }
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    tls.write_all(&msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut first = [0u8; 1];
    tls.read_exact(&mut first)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(first[0])
}

#[test]
fn foreign_expired_and_other_cluster_certificates_are_refused_at_the_handshake() {
    let gw = start_gateway("", &[]);
    let rt = runtime();
    let route = || {
        Some(DbRoute {
            service: "fdpg".into(),
            db_user: Some(gw.pg_user.clone()),
            db_name: None,
            db_roles: Vec::new(),
        })
    };
    let in_an_hour = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let good = gw.issue("frank", CLUSTER, CertUsage::Db, in_an_hour, route());
    let expired = gw.issue(
        "frank",
        CLUSTER,
        CertUsage::Db,
        OffsetDateTime::now_utc() - Duration::from_secs(60),
        route(),
    );
    let other_cluster = gw.issue("frank", "elsewhere", CertUsage::Db, in_an_hour, route());
    let other_ca = CaSet::generate(CLUSTER).expect("another CA set");
    let (key, csr) = dbward_pki::new_key_and_csr("frank").expect("csr");
    let foreign = (
        dbward_pki::issue_user_cert(
            &other_ca.user,
            &Identity {
                username: "frank".into(),
                cluster: CLUSTER.into(),
                usage: CertUsage::Db,
                expires: in_an_hour,
                route: route(),
                pinned_ip: None,
                mfa_session_until: None,
            },
            &csr,
        )
        .expect("issue"),
        key,
    );
    // The valid certificate gets past TLS (an answer of the PostgreSQL protocol: 'R' or 'E').
    let answer = rt.block_on(pg_first_answer(&gw, (&good.0, &good.1)));
    assert!(matches!(answer, Ok(b'R') | Ok(b'E')), "{answer:?}");
    for (what, cert) in [
        ("another CA", &foreign),
        ("expired", &expired),
        ("another cluster", &other_cluster),
    ] {
        let answer = rt.block_on(pg_first_answer(&gw, (&cert.0, &cert.1)));
        println!("postgres listener, certificate of {what}: {answer:?}");
        assert!(
            answer.is_err(),
            "{what}: the handshake passed, answer {answer:?}"
        );
    }
    // The web API likewise: no identity, so an endpoint that needs one answers 401, and a
    // certificate of another cluster fails the handshake.
    let web = |cert: &(String, String)| {
        rt.block_on(https(
            &gw,
            loopback(1),
            Some((&cert.0, &cert.1)),
            "GET",
            "/v1/dbs",
            b"",
        ))
        .map(|(s, _)| s)
    };
    let login_ok = gw.login_cert("frank", CLUSTER, in_an_hour);
    let login_elsewhere = gw.login_cert("frank", "elsewhere", in_an_hour);
    assert_eq!(web(&login_ok), Ok(401), "frank is no user here");
    let got = web(&login_elsewhere);
    println!("web listener, login certificate of another cluster: {got:?}");
    assert!(got.is_err(), "{got:?}");
    let got = web(&foreign);
    println!("web listener, certificate of another CA: {got:?}");
    assert!(got.is_err(), "{got:?}");
}

/// An `openssl s_server` on a free loopback port with a database server certificate of the
/// test CA, restricted by `args`; killed on drop.
struct OpensslServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl_server(dir: &Path, args: &[&str]) -> OpensslServer {
    let cas = dbward_testkit::shared_cas().expect("test CAs");
    let (cert, key) = dbward_pki::issue_db_server_cert(
        &cas.db,
        &["localhost".to_string()],
        Duration::from_secs(3600),
    )
    .expect("server cert");
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, cert).expect("cert");
    dbward_pki::write_private_file(&key_file, key.as_bytes()).expect("key");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let child = Command::new("openssl")
        .args(["s_server", "-accept"])
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&cert_file)
        .arg("-key")
        .arg(&key_file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    OpensslServer { child, addr }
}

#[test]
fn upstream_connections_refuse_old_tls_and_cbc_servers() {
    let cas = dbward_testkit::shared_cas().expect("test CAs");
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    let handshake = |server: &OpensslServer| {
        // What dbward uses towards a database (verify-full against its db CA).
        let config = dbward_pki::client_config(
            Some(&cas.db.cert_pem),
            dbward_pki::ServerVerification::Full,
            None,
        )
        .expect("client config");
        rt.block_on(async {
            let tcp = TcpStream::connect(server.addr)
                .await
                .map_err(|e| e.to_string())?;
            let name =
                rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    };
    // A server that speaks what the policy allows is reached, so refusals below are the policy.
    let good = openssl_server(
        dir.path(),
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert_eq!(handshake(&good), Ok(()));
    drop(good);
    for args in [
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384"][..],
    ] {
        let server = openssl_server(dir.path(), args);
        let got = handshake(&server);
        println!("upstream server with {args:?}: {got:?}");
        assert!(got.is_err(), "dbward connected to a server offering only {args:?}");
    }
}
