//! DESIGN §8: two gateway instances sharing one PostgreSQL store serve the same users, roles,
//! databases and CAs; a session through either is provisioned and audited in the shared store,
//! and a cancel request sent to either reaches the session, whichever instance relays it.

mod common;

use std::time::Duration;

use common::*;
use dbward_model::Config;
use dbward_pki::{CertUsage, Identity};
use dbward_server::{Gateway, Started};
use dbward_store::PutMode;
use dbward_testkit::{DbServerCerts, PgServer};
use std::net::SocketAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path, name: &str, dsn: &str) -> Config {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "version: v1\ncluster_name: shared\ndata_dir: {}\nweb_listen_addr: 127.0.0.1:0\npostgres_listen_addr: 127.0.0.1:0\nmysql_listen_addr: \"\"\nstorage:\n  backend: postgres\n  dsn: {dsn:?}\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

/// Two gateway instances on one PostgreSQL store, and a target database with user `dana`
/// allowed through `shared-db` (mode keep).
struct Shared {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store_pg: PgServer,
    target: PgServer,
    ga: Arc<Gateway>,
    gb: Arc<Gateway>,
    pg_a: SocketAddr,
    pg_b: SocketAddr,
}

fn postgres_addr(rt: &tokio::runtime::Runtime, gw: &Gateway) -> SocketAddr {
    rt.block_on(async { gw.endpoints.read().await.postgres.clone() })
        .unwrap()
        .parse()
        .unwrap()
}

fn two_gateways() -> Shared {
    let dir = tempfile::Builder::new()
        .prefix("dwshared")
        .tempdir_in("/tmp")
        .unwrap();
    // The store's own PostgreSQL (reached over its socket), separate from the target database.
    let throwaway = dbward_pki::CaSet::generate("store").unwrap();
    let store_certs_dir = dir.path().join("store-certs");
    std::fs::create_dir_all(&store_certs_dir).unwrap();
    let store_pg =
        PgServer::start(&DbServerCerts::from_cas(&throwaway, &store_certs_dir).unwrap()).unwrap();
    store_pg.psql_super("CREATE DATABASE dwstore").unwrap();
    let dsn = format!("{} sslmode=disable", store_pg.super_conninfo("dwstore"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt
        .block_on(Started::bind(config(dir.path(), "a", &dsn)))
        .unwrap();
    let b = rt
        .block_on(Started::bind(config(dir.path(), "b", &dsn)))
        .unwrap();
    let (ga, gb) = (a.gateway.clone(), b.gateway.clone());
    assert_eq!(ga.cas.user.cert_pem, gb.cas.user.cert_pem, "one set of CAs");
    assert_eq!(ga.cas.db_client.cert_pem, gb.cas.db_client.cert_pem);
    assert_ne!(ga.instance_id, gb.instance_id);
    let (pg_a, pg_b) = (postgres_addr(&rt, &ga), postgres_addr(&rt, &gb));
    rt.spawn(a.run(CancellationToken::new()));
    rt.spawn(b.run(CancellationToken::new()));

    // The target database trusts the shared db-client CA.
    let target_certs_dir = dir.path().join("target-certs");
    std::fs::create_dir_all(&target_certs_dir).unwrap();
    let target =
        PgServer::start(&DbServerCerts::from_cas(&ga.cas, &target_certs_dir).unwrap()).unwrap();
    target
        .psql_super("CREATE ROLE shared_admin LOGIN CREATEROLE; CREATE ROLE shared_reader; GRANT shared_reader TO shared_admin WITH ADMIN OPTION")
        .unwrap();

    // Resources written through instance A.
    let yaml = format!(
        "kind: role\nversion: v7\nmetadata: {{name: shared-auto}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [shared_reader]\n---\nkind: user\nversion: v2\nmetadata: {{name: dana}}\nspec: {{roles: [shared-auto]}}\n---\nkind: role\nversion: v7\nmetadata: {{name: one-at-a-time}}\nspec:\n  options: {{create_db_user_mode: keep, max_connections: 1}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [shared_reader]\n---\nkind: user\nversion: v2\nmetadata: {{name: erin}}\nspec: {{roles: [one-at-a-time]}}\n---\nkind: db\nversion: v3\nmetadata: {{name: shared-db}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{}\n  admin_user: {{name: shared_admin, default_database: postgres}}\n",
        target.port
    );
    let parsed = dbward_model::parse_resources(&yaml, "shared.yaml").unwrap();
    rt.block_on(async {
        for r in &parsed.resources {
            ga.store
                .put_resource(
                    r.kind(),
                    r.name(),
                    &serde_json::to_string(r).unwrap(),
                    PutMode::Upsert,
                )
                .await
                .unwrap();
        }
    });
    Shared {
        dir,
        rt,
        store_pg,
        target,
        ga,
        gb,
        pg_a,
        pg_b,
    }
}

impl Shared {
    /// A db certificate for `user` (`dana`: role `shared-auto`; `erin`: `one-at-a-time`, one
    /// session at a time) on `shared-db`, issued by A's user CA, and the host CA to verify
    /// either gateway with.
    fn db_files(&self, user: &str) -> ClientFiles {
        let (key, csr) = dbward_pki::new_key_and_csr(user).unwrap();
        let cert = dbward_pki::issue_user_cert(
            &self.ga.cas.user,
            &Identity {
                username: user.into(),
                cluster: self.ga.cluster.clone(),
                usage: CertUsage::Db,
                expires: OffsetDateTime::now_utc() + Duration::from_secs(600),
                route: Some(route("shared-db", user, "postgres", &[])),
                pinned_ip: None,
                mfa_session_until: None,
            },
            &csr,
        )
        .unwrap();
        let files = ClientFiles {
            crt: self.dir.path().join(format!("{user}.crt")),
            key: self.dir.path().join(format!("{user}.key")),
            ca: self.dir.path().join("host-ca.crt"),
        };
        std::fs::write(&files.crt, cert).unwrap();
        dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
        std::fs::write(&files.ca, &self.gb.cas.host.cert_pem).unwrap();
        files
    }

    /// A query on the store's database.
    fn store_sql(&self, sql: &str) -> String {
        self.store_pg.psql_super_in("dwstore", sql).unwrap()
    }
}

#[test]
fn two_gateways_share_one_postgres_store() {
    let shared = two_gateways();
    let Shared {
        rt,
        target,
        ga,
        gb,
        pg_b,
        ..
    } = &shared;

    // A session through instance B, with a certificate issued by A's user CA.
    let files = shared.db_files("dana");
    let out = std::process::Command::new("psql")
        .arg(conninfo(*pg_b, &files, "dana", "postgres"))
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dana");

    // Torn down by B, audited where A reads it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let login = target
            .psql_super("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'dana'")
            .unwrap();
        if login == "f" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dana still active: {login:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The end event follows teardown; wait for it (bounded), reading through A's store.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        rt.block_on(gb.audit.flush());
        let events: Vec<serde_json::Value> = rt
            .block_on(ga.store.search_audit(dbward_store::AuditQuery {
                user: Some("dana".into()),
                limit: 100,
                ..Default::default()
            }))
            .unwrap()
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        if events.iter().any(|e| e["event"] == "db.session.end")
            || std::time::Instant::now() > deadline
        {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for wanted in [
        "db.session.start",
        "db.session.user.create",
        "db.session.end",
    ] {
        assert!(kinds.contains(&wanted), "{wanted} missing: {kinds:?}");
    }
}

/// Sends a raw CancelRequest (plain TCP, the 16 bytes a client sends) to a gateway.
async fn send_cancel_request(gateway: SocketAddr, request: &[u8; 16]) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
}

/// A session relayed by instance A is cancelled by a CancelRequest that reaches instance B,
/// within seconds; a wrong key sent to B cancels nothing; the key is in the store only as a
/// hash, and only while the session lives.
#[test]
fn a_cancel_request_to_another_gateway_cancels_the_session() {
    use tokio::io::AsyncReadExt;
    use tokio_postgres::error::SqlState;

    let shared = two_gateways();
    let Shared {
        rt, ga, pg_a, pg_b, ..
    } = &shared;
    let files = shared.db_files("dana");
    let tls = dbward_pki::client_config(
        Some(&ga.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        Some((
            &std::fs::read_to_string(&files.crt).unwrap(),
            &std::fs::read_to_string(&files.key).unwrap(),
        )),
    )
    .unwrap();
    let connector = dbward_provision::postgres::MakeRustlsConnect::new(tls, "localhost");

    let (client, connection) = rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(pg_a.port())
            .user("dana")
            .dbname("postgres")
            // TLS for the session; "prefer" lets the cancel token write a plain CancelRequest.
            .ssl_mode(tokio_postgres::config::SslMode::Prefer);
        config.connect(connector).await.expect("connects through A")
    });
    let connection = rt.spawn(connection);
    let client = Arc::new(client);

    // The key A gave the client, as the client would send it.
    let token = client.cancel_token();
    let request: [u8; 16] = rt.block_on(async {
        let (ours, theirs) = tokio::io::duplex(64);
        token
            .cancel_query_raw(ours, tokio_postgres::NoTls)
            .await
            .unwrap();
        let mut theirs = theirs;
        let mut bytes = [0u8; 16];
        theirs.read_exact(&mut bytes).await.unwrap();
        bytes
    });
    assert_eq!(
        request[..8],
        [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e],
        "a CancelRequest"
    );
    let issued = dbward_proxy::pg::BackendKey {
        process_id: i32::from_be_bytes(request[8..12].try_into().unwrap()),
        secret_key: i32::from_be_bytes(request[12..16].try_into().unwrap()),
    };
    // The store knows the key's hash and its instance, never the key.
    let stored = shared.store_sql("SELECT key_hash || ' ' || instance_id FROM cancel_keys");
    assert_eq!(
        stored,
        format!(
            "{} {}",
            dbward_server::session::cancel::key_hash(issued),
            ga.instance_id
        )
    );
    let pid = issued.process_id.to_string();
    let secret = issued.secret_key.to_string();
    let dump = shared.store_sql("SELECT string_agg(t::text, ' ') FROM cancel_keys AS t");
    assert!(!dump.contains(&pid) && !dump.contains(&secret), "{dump}");

    // Wrong keys sent to B: the right process id with another secret, and another process
    // id with the right secret. The statement runs to its end.
    let mut wrong_secret = request;
    wrong_secret[15] ^= 1;
    let mut wrong_pid = request;
    wrong_pid[11] ^= 1;
    let sleeper = client.clone();
    let short = rt.spawn(async move { sleeper.simple_query("select pg_sleep(4)").await });
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send_cancel_request(*pg_b, &wrong_secret).await;
        send_cancel_request(*pg_b, &wrong_pid).await;
    });
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), short).await })
        .expect("the statement ended")
        .unwrap();
    assert!(result.is_ok(), "a wrong key cancelled: {result:?}");

    // The right key sent to B cancels the statement A relays.
    let sleeper = client.clone();
    let long = rt.spawn(async move { sleeper.simple_query("select pg_sleep(30)").await });
    let started = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        send_cancel_request(*pg_b, &request).await;
        started
    });
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), long).await })
        .expect("the statement ended")
        .unwrap();
    let elapsed = started.elapsed();
    let err = result.expect_err("the statement was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(
        elapsed < Duration::from_secs(5),
        "cancelled after {elapsed:?}"
    );

    // The session goes on; once it ends, its key is gone from the store.
    let row = rt
        .block_on(client.simple_query("select 1"))
        .expect("the session survives a cancel");
    assert!(!row.is_empty());
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = shared.store_sql("SELECT count(*) FROM cancel_keys");
        if left == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} cancel keys left after the session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(connection).unwrap().unwrap();
}

/// `max_connections` counts a user's sessions across every gateway sharing the store: a
/// session held through A takes the only slot, so B refuses one until A's has ended.
#[test]
fn max_connections_counts_sessions_across_gateways() {
    let shared = two_gateways();
    let (pg_a, pg_b) = (shared.pg_a, shared.pg_b);
    let files = shared.db_files("erin");
    let psql = |addr: SocketAddr| {
        std::process::Command::new("psql")
            .arg(conninfo(addr, &files, "erin", "postgres"))
            .args(["-X", "-A", "-t", "-c", "select current_user"])
            .output()
            .unwrap()
    };

    // Held open through A...
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(conninfo(pg_a, &files, "erin", "postgres")).args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        "-",
    ]);
    let mut held = OpenSession::start(cmd).expect("a session through A");
    assert_eq!(held.query("select current_user").as_deref(), Some("erin"));
    // ...B refuses a second one, naming the limit.
    let out = psql(pg_b);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "B accepted a second session");
    assert!(
        stderr.contains("max_connections of your roles is 1"),
        "{stderr}"
    );
    // Once A's session has ended, B serves one.
    held.close();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = psql(pg_b);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "erin");
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("max_connections"), "{stderr}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot A's session held was never freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// CancelRequests come without authentication and finish their handshake at once: a flood of
/// them with unknown keys must not take the shared store's connections (which every gateway
/// needs for logins, sessions and heartbeats). The store's connections from the gateways
/// stay bounded during the flood, and a session through the flooded gateway works after it.
#[test]
fn a_flood_of_unknown_cancel_keys_does_not_exhaust_the_store() {
    let shared = two_gateways();
    let Shared { rt, pg_b, .. } = &shared;
    let store_connections = || -> i64 {
        shared
            .store_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'dwstore'")
            .trim()
            .parse()
            .unwrap()
    };
    let before = store_connections();
    let flood = {
        let target = *pg_b;
        rt.spawn(async move {
            let mut senders = tokio::task::JoinSet::new();
            for i in 0..3000u32 {
                let mut request = [0u8; 16];
                request[..8].copy_from_slice(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]);
                request[8..12].copy_from_slice(&(i + 1).to_be_bytes());
                request[12..16].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                senders.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(mut stream) = tokio::net::TcpStream::connect(target).await {
                        let _ = stream.write_all(&request).await;
                        let _ = stream.shutdown().await;
                    }
                });
                if senders.len() >= 400 {
                    senders.join_next().await;
                }
            }
            while senders.join_next().await.is_some() {}
        })
    };
    let mut most = before;
    while !flood.is_finished() {
        most = most.max(store_connections());
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(flood).unwrap();
    println!("store connections: {before} before the flood, at most {most} during it");
    assert!(
        most <= before + 24,
        "the flood opened store connections: {before} before, {most} during"
    );
    let files = shared.db_files("dana");
    let out = std::process::Command::new("psql")
        .arg(conninfo(*pg_b, &files, "dana", "postgres"))
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
