//! The stock `mariadb` command-line client against [`super::accept`]: it must get through
//! TLS with its certificate and the handshake without a password, and print the gateway's
//! refusal when it does not use TLS.

use std::future::Future;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::packet::{self, command, ErrPacket};
use super::*;
use crate::testing;
use crate::ProxyError;

/// A gateway on a free port of 127.0.0.1 whose first connection is accepted and handed to
/// `then`, in a task; the client's certificate and CA are written to `dir` as PEM files.
async fn gateway<F, Fut>(dir: &Path, then: F) -> (u16, JoinHandle<Fut::Output>)
where
    F: FnOnce(Result<MysqlClient<TcpStream>, ProxyError>) -> Fut + Send + 'static,
    Fut: Future + Send,
    Fut::Output: Send + 'static,
{
    let pki = testing::pki();
    for (file, pem) in &pki.pem_files {
        std::fs::write(dir.join(file), pem).expect("write");
    }
    let tls = testing::server_config(&pki, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let greeting = Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 11,
        };
        then(accept(socket, tls, greeting, HandshakeLimits::default()).await).await
    });
    (port, task)
}

async fn run_mariadb(port: u16, args: Vec<String>) -> Output {
    let mut command = tokio::process::Command::new("mariadb");
    command
        .arg("--no-defaults")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--user=alice")
        .arg("--connect-timeout=10")
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("mariadb finished")
        .expect("the mariadb client is installed (Debian package mariadb-client)")
}

#[tokio::test]
async fn mariadb_client_completes_the_handshake_with_its_certificate_and_no_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, gateway) = gateway(dir.path(), |client| async move {
        let mut client = client.expect("handshake");
        send_ok(&mut client.stream, client.sequence_id, client.capabilities)
            .await
            .expect("ok");
        // Answer the first query with an ERR the client prints; skip anything before it.
        loop {
            let packet = packet::read_packet(&mut client.stream, 1 << 20)
                .await
                .expect("command");
            if packet.payload.first() == Some(&command::QUERY) {
                let sql = String::from_utf8_lossy(&packet.payload[1..]).into_owned();
                let err = ErrPacket {
                    code: 1234,
                    sqlstate: "42000".into(),
                    message: format!("seen: {sql}"),
                };
                packet::write_packet(&mut client.stream, 1, &err.encode())
                    .await
                    .expect("err");
                return (client.user, client.database, client.client_certs.len());
            }
            packet::write_packet(
                &mut client.stream,
                packet.seq.wrapping_add(1),
                &packet::ok_packet(client.capabilities, 2),
            )
            .await
            .expect("ok");
        }
    })
    .await;
    let files = |f: &str| dir.path().join(f).display().to_string();
    let output = run_mariadb(
        port,
        vec![
            format!("--ssl-ca={}", files("ca.pem")),
            format!("--ssl-cert={}", files("client.pem")),
            format!("--ssl-key={}", files("client.key")),
            "--database=app".into(),
            "-e".into(),
            "select 42".into(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ERROR 1234 (42000)") && stderr.contains("seen: select 42"),
        "{stderr}"
    );
    let (user, database, certs) = gateway.await.expect("gateway");
    assert_eq!(user, "alice");
    assert_eq!(database.as_deref(), Some("app"));
    assert!(certs >= 1, "the client certificate reached the gateway");
}

#[tokio::test]
async fn mariadb_client_without_tls_prints_the_gateway_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, gateway) = gateway(dir.path(), |client| async move { client.map(|_| ()) }).await;
    let output = run_mariadb(
        port,
        vec!["--skip-ssl".into(), "-e".into(), "select 1".into()],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("ERROR 3159") && stderr.contains(TLS_REQUIRED_MESSAGE),
        "{stderr}"
    );
    assert!(matches!(
        gateway.await.expect("gateway"),
        Err(ProxyError::TlsRequired)
    ));
}
