//! DESIGN §8: two gateway instances sharing one PostgreSQL store serve the same users, roles,
//! databases and CAs; a session through either is provisioned and audited in the shared store.

mod common;

use std::time::Duration;

use common::*;
use dbward_model::Config;
use dbward_pki::{CertUsage, Identity};
use dbward_server::Started;
use dbward_store::PutMode;
use dbward_testkit::{DbServerCerts, PgServer};
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

#[test]
fn two_gateways_share_one_postgres_store() {
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
    let pg_b: std::net::SocketAddr = rt
        .block_on(async { gb.endpoints.read().await.postgres.clone() })
        .unwrap()
        .parse()
        .unwrap();
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

    // Resources written through instance A...
    let yaml = format!(
        "kind: role\nversion: v7\nmetadata: {{name: shared-auto}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [shared_reader]\n---\nkind: user\nversion: v2\nmetadata: {{name: dana}}\nspec: {{roles: [shared-auto]}}\n---\nkind: db\nversion: v3\nmetadata: {{name: shared-db}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{}\n  admin_user: {{name: shared_admin, default_database: postgres}}\n",
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

    // ...serve a session through instance B, with a certificate issued by A's user CA.
    let (key, csr) = dbward_pki::new_key_and_csr("dana").unwrap();
    let cert = dbward_pki::issue_user_cert(
        &ga.cas.user,
        &Identity {
            username: "dana".into(),
            cluster: ga.cluster.clone(),
            usage: CertUsage::Db,
            expires: OffsetDateTime::now_utc() + Duration::from_secs(600),
            route: Some(route("shared-db", "dana", "postgres", &[])),
            pinned_ip: None,
        },
        &csr,
    )
    .unwrap();
    let files = ClientFiles {
        crt: dir.path().join("dana.crt"),
        key: dir.path().join("dana.key"),
        ca: dir.path().join("host-ca.crt"),
    };
    std::fs::write(&files.crt, cert).unwrap();
    dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
    std::fs::write(&files.ca, &gb.cas.host.cert_pem).unwrap();
    let out = std::process::Command::new("psql")
        .arg(conninfo(pg_b, &files, "dana", "postgres"))
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

/// `max_connections` counts a user's sessions across every gateway sharing the store: a
/// session held through A takes the only slot, so B refuses one until A's has ended.
#[test]
fn max_connections_counts_sessions_across_gateways() {
    let dir = tempfile::Builder::new()
        .prefix("dwshared")
        .tempdir_in("/tmp")
        .unwrap();
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
    let listener = |g: &std::sync::Arc<dbward_server::Gateway>| -> std::net::SocketAddr {
        rt.block_on(async { g.endpoints.read().await.postgres.clone() })
            .unwrap()
            .parse()
            .unwrap()
    };
    let (pg_a, pg_b) = (listener(&ga), listener(&gb));
    rt.spawn(a.run(CancellationToken::new()));
    rt.spawn(b.run(CancellationToken::new()));

    let target_certs_dir = dir.path().join("target-certs");
    std::fs::create_dir_all(&target_certs_dir).unwrap();
    let target =
        PgServer::start(&DbServerCerts::from_cas(&ga.cas, &target_certs_dir).unwrap()).unwrap();
    target
        .psql_super("CREATE ROLE shared_admin LOGIN CREATEROLE; CREATE ROLE shared_reader; GRANT shared_reader TO shared_admin WITH ADMIN OPTION")
        .unwrap();
    let yaml = format!(
        "kind: role\nversion: v7\nmetadata: {{name: one-at-a-time}}\nspec:\n  options: {{create_db_user_mode: keep, max_connections: 1}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [shared_reader]\n---\nkind: user\nversion: v2\nmetadata: {{name: erin}}\nspec: {{roles: [one-at-a-time]}}\n---\nkind: db\nversion: v3\nmetadata: {{name: shared-db}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{}\n  admin_user: {{name: shared_admin, default_database: postgres}}\n",
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
    let (key, csr) = dbward_pki::new_key_and_csr("erin").unwrap();
    let cert = dbward_pki::issue_user_cert(
        &ga.cas.user,
        &Identity {
            username: "erin".into(),
            cluster: ga.cluster.clone(),
            usage: CertUsage::Db,
            expires: OffsetDateTime::now_utc() + Duration::from_secs(600),
            route: Some(route("shared-db", "erin", "postgres", &[])),
            pinned_ip: None,
        },
        &csr,
    )
    .unwrap();
    let files = ClientFiles {
        crt: dir.path().join("erin.crt"),
        key: dir.path().join("erin.key"),
        ca: dir.path().join("host-ca.crt"),
    };
    std::fs::write(&files.crt, cert).unwrap();
    dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
    std::fs::write(&files.ca, &ga.cas.host.cert_pem).unwrap();
    let psql = |addr: std::net::SocketAddr| {
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
