//! The HTTPS API refuses certificates it did not issue unchanged and in date.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dbward_pki::{CertUsage, Identity};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /v1/dbs with a client certificate; returns the HTTP status line, or None when the
/// TLS layer refused the connection.
async fn get_dbs(web: &str, cert_pem: &str, key_pem: &str, host_ca: &str) -> Option<String> {
    let config = dbward_pki::client_config(
        Some(host_ca),
        dbward_pki::ServerVerification::Full,
        Some((cert_pem, key_pem)),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(b"GET /v1/dbs HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(|l| l.to_string())
}

fn login_cert(expires: OffsetDateTime) -> (String, String) {
    let h = harness();
    let (key, csr) = dbward_pki::new_key_and_csr("webuser").unwrap();
    let identity = Identity {
        username: "webuser".into(),
        cluster: h.gw.cluster.clone(),
        usage: CertUsage::Login,
        expires,
        route: None,
        pinned_ip: None,
        mfa_session_until: None,
    };
    (
        dbward_pki::issue_user_cert(&h.gw.cas.user, &identity, &csr).unwrap(),
        key,
    )
}

#[test]
fn api_accepts_a_valid_certificate_and_refuses_tampered_or_expired_ones() {
    let h = harness();
    h.apply("kind: user\nversion: v2\nmetadata: {name: webuser}\nspec: {roles: []}\n");
    let web = h.block_on(async { h.gw.endpoints.read().await.web.clone() });
    let host_ca = h.gw.cas.host.cert_pem.clone();

    let (cert, key) = login_cert(OffsetDateTime::now_utc() + Duration::from_secs(600));
    let status = h.block_on(get_dbs(&web, &cert, &key, &host_ca));
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));

    // Tampered: one byte of the DER changed (inside the signed part), re-encoded as PEM.
    let der = dbward_pki::parse_cert_pem(&cert).unwrap().remove(0);
    let mut bytes = der.as_ref().to_vec();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    let tampered = pem_of(&bytes);
    let status = h.block_on(get_dbs(&web, &tampered, &key, &host_ca));
    assert!(
        !matches!(status.as_deref(), Some("HTTP/1.1 200 OK")),
        "tampered certificate accepted: {status:?}"
    );

    // Expired a minute ago.
    let (expired, key) = login_cert(OffsetDateTime::now_utc() - Duration::from_secs(60));
    let status = h.block_on(get_dbs(&web, &expired, &key, &host_ca));
    assert!(
        !matches!(status.as_deref(), Some("HTTP/1.1 200 OK")),
        "expired certificate accepted: {status:?}"
    );
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
