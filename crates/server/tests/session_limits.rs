//! Teleport's role options that limit a user's sessions, enforced through the gateway:
//! `max_connections`, `client_idle_timeout` and `pin_source_ip`. Real PostgreSQL, a real
//! driver (tokio-postgres, whose socket can be bound to a chosen local address), observed by
//! the client, in the catalogs and in the audit.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;

/// A db resource with its admin and a `reader` db role, and roles selecting it.
struct World {
    db: String,
    reader: String,
    labels: String,
}

fn world() -> World {
    let h = harness();
    let n = unique("sl");
    let w = World {
        db: format!("db-{n}"),
        reader: format!("reader_{n}"),
        labels: format!("{{test: \"{n}\"}}"),
    };
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[&w.reader]);
    h.apply(&h.db_yaml(&w.db, &w.labels, Some(&admin)));
    w
}

impl World {
    /// A provisioning role (keep) selecting the database, with `options` added.
    fn role(&self, options: &str) -> String {
        let name = unique("limited");
        harness().apply(&format!(
            "kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec:\n  options: {{create_db_user_mode: keep{options}}}\n  allow:\n    db_labels: {labels}\n    db_names: [\"*\"]\n    db_roles: [\"{reader}\"]\n",
            labels = self.labels,
            reader = self.reader,
        ));
        name
    }

    fn user(&self, role: &str) -> String {
        let user = unique("su");
        harness().apply(&format!(
            "kind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: [{role}]}}\n"
        ));
        user
    }
}

type Session = (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
);

/// A tokio-postgres session through the gateway with the certificate in `files`, from the
/// local address `source` (127.0.0.1 when `None`).
async fn connect(
    files: &ClientFiles,
    user: &str,
    source: Option<IpAddr>,
) -> Result<Session, tokio_postgres::Error> {
    let h = harness();
    let cert = std::fs::read_to_string(&files.crt).unwrap();
    let key = std::fs::read_to_string(&files.key).unwrap();
    let tls = dbward_pki::client_config(
        Some(&h.gw.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        Some((&cert, &key)),
    )
    .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .port(h.pg_addr.port())
        .user(user)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let source = source.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(h.pg_addr).await.unwrap();
    let mut maker = dbward_provision::postgres::MakeRustlsConnect::new(tls, "localhost");
    let tls =
        MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut maker, "localhost").unwrap();
    let (client, connection) = config.connect_raw(stream, tls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn one(client: &tokio_postgres::Client) -> i32 {
    client.query_one("select 1", &[]).await.unwrap().get(0)
}

/// The database error a refused or closed session ended with: (SQLSTATE, message).
fn db_error(err: &tokio_postgres::Error) -> (SqlState, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {err}"));
    (db.code().clone(), db.message().to_string())
}

/// The `db.session.start` records of `user` that failed, with their error text.
fn refusals(user: &str) -> Vec<String> {
    harness()
        .audit_events(user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.start" && e["success"] == false)
        .map(|e| e["error"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn max_connections_refuses_one_session_too_many_until_one_ends() {
    let h = harness();
    let w = world();
    let role = w.role(", max_connections: 2");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    h.block_on(async {
        let first = connect(&files, &user, None).await.expect("first session");
        let second = connect(&files, &user, None).await.expect("second session");
        assert_eq!(one(&first.0).await, 1);
        assert_eq!(one(&second.0).await, 1);

        let Err(err) = connect(&files, &user, None).await else {
            panic!("a third session was accepted");
        };
        let (code, message) = db_error(&err);
        assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS, "{message}");
        assert!(
            message.contains("max_connections") && message.contains("is 2"),
            "{message}"
        );
        // The two sessions are untouched.
        assert_eq!(one(&second.0).await, 1);

        // One ends: its slot is free once its teardown is over.
        let (client, task) = first;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let third = loop {
            match connect(&files, &user, None).await {
                Ok(session) => break session,
                Err(err) => {
                    let (code, message) = db_error(&err);
                    assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS, "{message}");
                    assert!(Instant::now() < deadline, "the slot was never freed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(one(&third.0).await, 1);
    });
    let refused = refusals(&user);
    assert!(
        !refused.is_empty() && refused.iter().all(|e| e.contains("max_connections")),
        "{refused:?}"
    );
    // Every session record of the user is gone once its clients are (the store counts them).
    h.eventually("the user's session records are removed", || {
        h.block_on(h.gw.store.list_sessions())
            .unwrap()
            .iter()
            .all(|s| s.dbward_user != user)
    });
    h.eventually("locked after the last session", || {
        h.can_login(&user) == Some(false)
    });
}

#[test]
fn a_refused_session_provisions_nothing() {
    let h = harness();
    let w = world();
    let role = w.role(", max_connections: 1");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    h.block_on(async {
        let only = connect(&files, &user, None).await.expect("first session");
        // The user is active for the first session; lock it behind the gateway's back: the
        // refused attempt must not activate it again.
        h.sql(&format!("ALTER ROLE {} NOLOGIN", q(&user)));
        let Err(err) = connect(&files, &user, None).await else {
            panic!("a second session was accepted");
        };
        assert_eq!(db_error(&err).0, SqlState::TOO_MANY_CONNECTIONS);
        assert_eq!(
            h.can_login(&user),
            Some(false),
            "the refused session activated the user"
        );
        drop(only);
    });
}

#[test]
fn an_idle_client_is_told_and_disconnected_and_an_active_one_is_not() {
    let h = harness();
    let w = world();
    let role = w.role(", client_idle_timeout: 2s");
    let idle_user = w.user(&role);
    let busy_user = w.user(&role);
    let idle_files = h.db_cert(&idle_user, route(&w.db, &idle_user, "postgres", &[]));
    let busy_files = h.db_cert(&busy_user, route(&w.db, &busy_user, "postgres", &[]));
    h.block_on(async {
        let (idle, idle_task) = connect(&idle_files, &idle_user, None)
            .await
            .expect("idle session");
        let (busy, busy_task) = connect(&busy_files, &busy_user, None)
            .await
            .expect("busy session");
        assert_eq!(one(&idle).await, 1);
        let last_activity = Instant::now();
        // The busy client sends a query every 500 ms for 4 s: twice the timeout.
        while last_activity.elapsed() < Duration::from_secs(4) {
            assert_eq!(one(&busy).await, 1, "the active session was closed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(one(&busy).await, 1);
        // The idle one was closed by the gateway, with a FATAL saying why, within a bound.
        let ended = tokio::time::timeout(Duration::from_secs(5), idle_task)
            .await
            .expect("the idle session was closed")
            .unwrap();
        let err = ended.expect_err("closed with an error");
        let (code, message) = db_error(&err);
        assert_eq!(code, SqlState::from_code("57P05"), "{message}");
        assert!(message.contains("client_idle_timeout"), "{message}");
        assert!(message.contains("2s"), "{message}");
        assert!(idle.is_closed());
        drop(busy);
        let _ = tokio::time::timeout(Duration::from_secs(10), busy_task).await;
    });
    // Normal teardown: the idle user is locked, and the end record says why.
    h.eventually("the idle user is locked", || {
        h.can_login(&idle_user) == Some(false)
    });
    h.eventually("the session end is audited with its reason", || {
        h.audit_events(&idle_user).iter().any(|e| {
            e["event"] == "db.session.end"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("client_idle_timeout"))
        })
    });
    h.eventually("the busy user is locked after it left", || {
        h.can_login(&busy_user) == Some(false)
    });
    assert!(
        h.audit_events(&busy_user)
            .iter()
            .filter(|e| e["event"] == "db.session.end")
            .all(|e| e.get("reason").is_none()),
        "the client that left was recorded as idle"
    );
}

#[test]
fn a_pinned_certificate_works_only_from_its_address_and_an_unpinned_one_not_at_all() {
    let h = harness();
    let w = world();
    let role = w.role(", pin_source_ip: true");
    let user = w.user(&role);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let pinned = h.db_cert_pinned(&user, route(&w.db, &user, "postgres", &[]), here);
    let unpinned = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    h.block_on(async {
        let (client, task) = connect(&pinned, &user, Some(here))
            .await
            .expect("the pinned address connects");
        assert_eq!(one(&client).await, 1);
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

        let Err(err) = connect(&pinned, &user, Some(elsewhere)).await else {
            panic!("connected from another address");
        };
        let (code, message) = db_error(&err);
        assert_eq!(
            code,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "{message}"
        );
        assert!(message.contains("pin_source_ip"), "{message}");
        assert!(message.contains("127.0.0.2"), "{message}");

        let Err(err) = connect(&unpinned, &user, Some(here)).await else {
            panic!("connected with a certificate without a pinned address");
        };
        let (code, message) = db_error(&err);
        assert_eq!(
            code,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "{message}"
        );
        assert!(message.contains("pin_source_ip"), "{message}");
        assert!(message.contains("has none"), "{message}");
    });
    let refused = refusals(&user);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().all(|e| e.contains("pin_source_ip")),
        "{refused:?}"
    );

    // Without the option the unpinned certificate is fine, from anywhere.
    let plain = w.role("");
    let other = w.user(&plain);
    let files = h.db_cert(&other, route(&w.db, &other, "postgres", &[]));
    h.block_on(async {
        let (client, _task) = connect(&files, &other, Some(elsewhere))
            .await
            .expect("no pinning without the option");
        assert_eq!(one(&client).await, 1);
    });
}

/// One HTTPS request to the gateway's API from the local address `source`, with an optional
/// client certificate: the status code and the body.
async fn https(
    source: IpAddr,
    cert: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let web: SocketAddr = h.gw.endpoints.read().await.web.parse().unwrap();
    let config = dbward_pki::client_config(
        Some(&h.gw.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        cert,
    )
    .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(web).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The identity in the first certificate of a PEM text.
fn identity_of(cert_pem: &str) -> dbward_pki::Identity {
    let der = dbward_pki::parse_cert_pem(cert_pem).unwrap().remove(0);
    dbward_pki::read_identity(der.as_ref()).unwrap()
}

#[test]
fn login_pins_the_callers_address_and_the_api_and_db_login_keep_to_it() {
    let h = harness();
    let w = world();
    let role = w.role(", pin_source_ip: true");
    let user = w.user(&role);
    let plain = w.role("");
    let free = w.user(&plain);
    let password = "correct horse battery staple";
    let phc = dbward_server::passwords::hash_password(password).unwrap();
    h.block_on(async {
        for u in [&user, &free] {
            h.gw.store.set_password_hash(u, &phc).await.unwrap();
        }
    });
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let login = |name: &str| {
        let (key, csr) = dbward_pki::new_key_and_csr(name).unwrap();
        let body = serde_json::to_vec(
            &serde_json::json!({"user": name, "password": password, "csr_pem": csr}),
        )
        .unwrap();
        let (status, body) = h.block_on(https(here, None, "POST", "/v1/login", &body));
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        (answer["cert_pem"].as_str().unwrap().to_string(), key)
    };

    // Login records the address of the caller, only for users whose roles pin.
    let (cert, key) = login(&user);
    assert_eq!(identity_of(&cert).pinned_ip, Some(here));
    let (free_cert, free_key) = login(&free);
    assert_eq!(identity_of(&free_cert).pinned_ip, None);

    // The login certificate works for the API from its address only.
    let db_cert_request = |name: &str| {
        let (_, csr) = dbward_pki::new_key_and_csr(name).unwrap();
        serde_json::to_vec(&serde_json::json!({"db": w.db, "csr_pem": csr})).unwrap()
    };
    let (status, body) = h.block_on(https(
        elsewhere,
        Some((&cert, &key)),
        "POST",
        "/v1/db-certs",
        &db_cert_request(&user),
    ));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pin_source_ip"), "{body}");
    let (status, _) = h.block_on(https(elsewhere, Some((&cert, &key)), "GET", "/v1/dbs", b""));
    assert_eq!(status, 403);
    let (status, body) = h.block_on(https(
        here,
        Some((&cert, &key)),
        "POST",
        "/v1/db-certs",
        &db_cert_request(&user),
    ));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    // `db login` carries the pin over into the database certificate.
    assert_eq!(
        identity_of(answer["cert_pem"].as_str().unwrap()).pinned_ip,
        Some(here)
    );

    // A user whose roles do not pin uses the API from anywhere.
    let (status, body) = h.block_on(https(
        elsewhere,
        Some((&free_cert, &free_key)),
        "GET",
        "/v1/dbs",
        b"",
    ));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_role_gaining_pin_source_ip_ends_a_session_whose_certificate_has_no_address() {
    let h = harness();
    let w = world();
    let role = w.role("");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let (client, task) = h.block_on(async {
        let (client, task) = connect(&files, &user, None).await.expect("session");
        assert_eq!(one(&client).await, 1);
        (client, task)
    });
    // The same role, now pinning.
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep, pin_source_ip: true}}\n  allow:\n    db_labels: {labels}\n    db_names: [\"*\"]\n    db_roles: [\"{reader}\"]\n",
        labels = w.labels,
        reader = w.reader,
    ));
    h.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the session was ended");
        assert!(client.is_closed());
    });
    h.eventually("locked after the session was ended", || {
        h.can_login(&user) == Some(false)
    });
}

/// A record of this gateway for a session that is not running here (what a record write that
/// landed after the session's teardown leaves behind, the store being slow) stops counting
/// against `max_connections`: the gateway removes it.
#[test]
fn a_record_of_a_session_that_is_not_running_stops_holding_a_slot() {
    let h = harness();
    let w = world();
    let role = w.role(", max_connections: 1");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let ghost = unique("ghost");
    let now = h.block_on(h.gw.store.now_unix_ms()).unwrap();
    h.block_on(h.gw.store.register_session(dbward_store::SessionRecord {
        sid: ghost.clone(),
        instance_id: h.gw.instance_id.clone(),
        db_service: w.db.clone(),
        db_user: user.clone(),
        dbward_user: user.clone(),
        mode: "keep".into(),
        started_unix_ms: now - 60_000,
        engine: "postgres".into(),
        server: String::new(),
        backend_id: None,
    }))
    .unwrap();
    h.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let session = loop {
            match connect(&files, &user, None).await {
                Ok(session) => break session,
                Err(err) => {
                    let (code, message) = db_error(&err);
                    assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS, "{message}");
                    assert!(
                        Instant::now() < deadline,
                        "the record of a session that is not running still holds the slot"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        assert_eq!(one(&session.0).await, 1);
    });
    let sids: Vec<String> = h
        .block_on(h.gw.store.list_sessions())
        .unwrap()
        .into_iter()
        .map(|s| s.sid)
        .collect();
    assert!(!sids.contains(&ghost), "{sids:?}");
}
