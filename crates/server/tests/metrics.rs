//! The gateway's Prometheus endpoint, scraped over HTTP from a real gateway in front of a real
//! PostgreSQL: the output passes `promtool check metrics`, and the numbers follow a real psql
//! session, a real login and a client that fails its handshake.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's metrics address, as the gateway reports it.
fn metrics_addr(h: &Harness) -> String {
    h.block_on(async { h.gw.endpoints.read().await.metrics.clone() })
        .expect("the test gateway has metrics_listen_addr set")
}

/// `GET /metrics`: the HTTP status line, the content type and the body.
fn scrape(h: &Harness) -> (String, String, String) {
    let addr = metrics_addr(h);
    h.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
            .await
            .expect("metrics answer in time")
            .unwrap();
        let text = String::from_utf8(answer).expect("metrics are UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.lines().next().unwrap_or_default().to_string();
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        (status, content_type, body.to_string())
    })
}

/// The body of a successful scrape.
fn metrics(h: &Harness) -> String {
    let (status, content_type, body) = scrape(h);
    assert!(status.contains(" 200 "), "{status}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    body
}

/// The value of the sample `name{labels}`; labels in the order the gateway writes them.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

/// Runs `promtool check metrics` (Debian package `prometheus`) on `text`.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => panic!(
            "promtool is needed for this test (Debian package prometheus; scripts/test installs it): {err}"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// A password login through the HTTPS API; the HTTP status.
fn login(h: &Harness, user: &str, password: &str) -> u16 {
    let web = h.block_on(async { h.gw.endpoints.read().await.web.clone() });
    let host_ca = std::fs::read_to_string(&h.host_ca).unwrap();
    let (_, csr) = dbward_pki::new_key_and_csr(user).unwrap();
    let body = serde_json::to_vec(
        &serde_json::json!({"user": user, "password": password, "csr_pem": csr}),
    )
    .unwrap();
    h.block_on(async {
        let config = dbward_pki::client_config(
            Some(&host_ca),
            dbward_pki::ServerVerification::Full,
            None,
        )
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        let tcp = tokio::net::TcpStream::connect(&web).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let head = format!(
            "POST /v1/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
    })
}

/// One provisioning db resource, role and user; returns (db, user, client files).
fn provisioned_user() -> (String, String, ClientFiles) {
    let h = harness();
    let n = unique("m");
    let db = format!("db-{n}");
    let admin = format!("adm_{n}");
    let reader = format!("reader_{n}");
    let role = format!("role-{n}");
    let user = format!("alice{n}");
    h.create_admin(&admin, &[&reader]);
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{test: \"{n}\"}}\n    db_names: [\"*\"]\n    db_roles: [\"{reader}\"]\n---\n{}---\nkind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: [{role}]}}\n",
        h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let files = h.db_cert(&user, route(&db, &user, "postgres", &[]));
    (db, user, files)
}

#[test]
fn metrics_endpoint_passes_promtool_and_counts_a_real_session() {
    let h = harness();
    let (db, user, files) = provisioned_user();
    let labels = format!("db=\"{db}\",protocol=\"postgres\"");
    let started = format!("dbward_sessions_started_total{{{labels}}}");
    let active = format!("dbward_sessions_active{{{labels}}}");
    let up = format!("dbward_relayed_bytes_total{{{labels},direction=\"up\"}}");
    let down = format!("dbward_relayed_bytes_total{{{labels},direction=\"down\"}}");
    let setup = format!("dbward_connection_setup_seconds_count{{{labels}}}");
    let activations =
        "dbward_provisioning_seconds_count{operation=\"activate\",protocol=\"postgres\"}";
    let teardowns =
        "dbward_provisioning_seconds_count{operation=\"teardown\",protocol=\"postgres\"}";

    let before = metrics(h);
    assert_eq!(sample(&before, &started), None, "a new db resource");
    let activations_before = sample(&before, activations).unwrap_or(0.0);
    let teardowns_before = sample(&before, teardowns).unwrap_or(0.0);

    // A live session: started, active.
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo(h.pg_addr, &files, &user, "postgres"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    let mut session = OpenSession::start(cmd).expect("session starts");
    assert_eq!(
        session.query("select current_user").as_deref(),
        Some(user.as_str())
    );
    let during = metrics(h);
    assert_eq!(sample(&during, &started), Some(1.0), "{during}");
    assert_eq!(sample(&during, &active), Some(1.0), "{during}");
    assert_eq!(sample(&during, &setup), Some(1.0), "{during}");
    assert!(
        sample(&during, activations).unwrap_or(0.0) > activations_before,
        "the activation was timed: {during}"
    );
    session.close();

    // After the session: nothing active, bytes counted both ways, the user torn down.
    h.eventually("the session is no longer active", || {
        sample(&metrics(h), &active) == Some(0.0)
    });
    h.eventually("the teardown is timed", || {
        sample(&metrics(h), teardowns).unwrap_or(0.0) > teardowns_before
    });
    let after = metrics(h);
    assert_eq!(sample(&after, &started), Some(1.0), "{after}");
    assert!(sample(&after, &up).unwrap_or(0.0) > 0.0, "{after}");
    assert!(sample(&after, &down).unwrap_or(0.0) > 0.0, "{after}");
    assert_eq!(h.can_login(&user), Some(false), "keep mode locks the user");

    let (ok, report) = promtool_check(&after);
    assert!(ok, "promtool check metrics: {report}\n{after}");
}

#[test]
fn logins_and_failures_are_counted_by_result_and_kind() {
    let h = harness();
    let user = unique("loginuser");
    h.apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: []}}\n"
    ));
    let hash = dbward_server::passwords::hash_password("right-password").unwrap();
    h.block_on(h.gw.store.set_password_hash(&user, &hash))
        .unwrap();
    let succeeded = "dbward_logins_total{result=\"success\"}";
    let failed = "dbward_logins_total{result=\"failure\"}";
    let limited = "dbward_logins_total{result=\"rate_limited\"}";
    let client_failures = "dbward_session_failures_total{protocol=\"postgres\",kind=\"client\"}";
    let user_failures = "dbward_session_failures_total{protocol=\"postgres\",kind=\"user\"}";
    let before = metrics(h);
    let value = |text: &str, series: &str| sample(text, series).unwrap_or(0.0);

    assert_eq!(login(h, &user, "right-password"), 200);
    assert_eq!(login(h, &user, "wrong"), 401);
    // Five failures of one user from one address, then the limiter answers.
    let statuses: Vec<u16> = (0..6).map(|_| login(h, &user, "wrong")).collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Garbage on the PostgreSQL listener: a client error.
    h.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(h.pg_addr).await.unwrap();
        tcp.write_all(b"this is not the PostgreSQL protocol at all")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest)).await;
    });
    // A certificate for a database resource that does not exist: refused as the user's.
    let files = h.db_cert(&user, route("no-such-db", &user, "postgres", &[]));
    let refused = h.psql(&files, &user, "postgres", "select 1");
    assert!(!refused.ok, "{refused:?}");

    h.eventually("the client failure is counted", || {
        value(&metrics(h), client_failures) > value(&before, client_failures)
    });
    let after = metrics(h);
    assert_eq!(value(&after, succeeded), value(&before, succeeded) + 1.0);
    let failures = statuses.iter().filter(|s| **s == 401).count() as f64 + 1.0;
    assert_eq!(value(&after, failed), value(&before, failed) + failures);
    assert!(value(&after, limited) > value(&before, limited), "{after}");
    assert!(
        value(&after, user_failures) > value(&before, user_failures),
        "{after}"
    );
    assert!(
        after.contains("# TYPE dbward_audit_queue_depth gauge"),
        "{after}"
    );
    let (ok, report) = promtool_check(&after);
    assert!(ok, "promtool check metrics: {report}\n{after}");
}

#[test]
fn only_get_metrics_is_served() {
    let h = harness();
    let addr = metrics_addr(h);
    let status = h.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /v1/dbs HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    assert!(status.contains(" 404 "), "{status}");
}
