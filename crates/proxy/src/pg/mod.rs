//! The PostgreSQL wire protocol, in the order a session uses it:
//!
//! 1. [`accept`] takes a client connection through TLS (SSLRequest or PostgreSQL 17 direct
//!    TLS) to its StartupMessage, or recognises a CancelRequest;
//! 2. [`upstream::connect`] opens the gateway's own TLS session to the database server and
//!    authenticates it with the gateway's client certificate;
//! 3. [`write_startup_reply`] tells the client its session is ready, with the server's
//!    parameters and a gateway-issued [`BackendKey`];
//! 4. [`relay()`] copies bytes both ways and taps the SQL the client sends;
//! 5. [`cancel::send_cancel`] forwards a cancel request to the server.
//!
//! Every message is encoded and decoded in [`messages`]. Nothing here decides who may
//! connect or as whom.

pub mod cancel;
pub mod local;
pub mod messages;
pub mod relay;
pub mod startup;
pub mod upstream;

pub use crate::handshake::HandshakeLimits;
pub use crate::relay::{RelayEnd, RelayStats, Side};
pub use messages::Severity;
pub use relay::{idle_goodbye, relay, relay_with_idle_limit, TapEvent};
pub use startup::{
    accept, send_error, send_error_with_detail, write_startup_reply, Accepted, ClientStartup,
    ClientTlsStream, PrefixedStream, TLS_REQUIRED_MESSAGE,
};
pub use upstream::Upstream;

/// The key a session is cancelled by: what BackendKeyData carries and a CancelRequest
/// repeats (protocol 3.0, 4-byte secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// Process id.
    pub process_id: i32,
    /// Secret key.
    pub secret_key: i32,
}

/// A fresh random key for the gateway to hand to a client in place of the server's own, so
/// that a client never learns (and can never replay) the server's real key.
pub fn random_backend_key() -> BackendKey {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    BackendKey {
        // PostgreSQL process ids are positive; clients may print or parse them as such.
        process_id: rng.gen_range(1..=i32::MAX),
        secret_key: rng.gen(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    const MAX: usize = 64 * 1024;

    /// A database server stand-in: certificate session, one query answered, then waits for
    /// the client to leave.
    async fn fake_database(listener: TcpListener, pki: &testing::Pki, key: BackendKey) -> String {
        let (socket, _) = listener.accept().await.unwrap();
        let Ok(Accepted::Startup(mut session)) = accept(
            socket,
            testing::server_config(pki, &[messages::ALPN_POSTGRESQL]),
            HandshakeLimits::default(),
        )
        .await
        else {
            panic!("database expected a startup");
        };
        let parameters = testing::params(&[("server_version", "17.2")]);
        write_startup_reply(&mut session.stream, &parameters, key)
            .await
            .unwrap();
        let query = messages::read_message(&mut session.stream, MAX)
            .await
            .unwrap();
        let mut answer = Vec::new();
        answer.extend_from_slice(&[b'C', 0, 0, 0, 13]);
        answer.extend_from_slice(b"SELECT 1\0");
        answer.extend_from_slice(&messages::ready_for_query(b'I'));
        session.stream.write_all(&answer).await.unwrap();
        session.stream.flush().await.unwrap();
        let terminate = messages::read_message(&mut session.stream, MAX)
            .await
            .unwrap();
        assert_eq!(terminate.tag, messages::tag::TERMINATE);
        // The gateway closes its side after the client left.
        let mut rest = Vec::new();
        let _ = session.stream.read_to_end(&mut rest).await;
        format!(
            "{} {}",
            char::from(query.tag),
            session.param("user").unwrap_or("")
        )
    }

    #[tokio::test]
    async fn session_flows_from_client_through_gateway_to_database_and_back() {
        let pki = testing::pki();
        let db_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let db_addr = db_listener.local_addr().unwrap();
        let real_key = BackendKey {
            process_id: 4000,
            secret_key: 4001,
        };
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = gateway_listener.local_addr().unwrap();

        let database = {
            let pki = pki.clone();
            tokio::spawn(async move { fake_database(db_listener, &pki, real_key).await })
        };
        let gateway = {
            let server_config = testing::server_config(&pki, &[messages::ALPN_POSTGRESQL]);
            let client_config = testing::client_config(&pki, &[]);
            tokio::spawn(async move {
                let (socket, _) = gateway_listener.accept().await.unwrap();
                let Ok(Accepted::Startup(mut client)) =
                    accept(socket, server_config, HandshakeLimits::default()).await
                else {
                    panic!("gateway expected a startup");
                };
                let mut upstream =
                    upstream::connect(db_addr, client_config, testing::localhost(), &client.params)
                        .await
                        .unwrap();
                let issued = random_backend_key();
                write_startup_reply(&mut client.stream, &upstream.parameters, issued)
                    .await
                    .unwrap();
                let mut queries = Vec::new();
                let stats = relay(&mut client.stream, &mut upstream.stream, |event| {
                    if let TapEvent::Query { sql, .. } = event {
                        queries.push(sql.to_string());
                    }
                })
                .await;
                (issued, upstream.backend_key, queries, stats)
            })
        };

        // The client: SSLRequest, TLS, startup, one query, Terminate.
        let mut socket = TcpStream::connect(gateway_addr).await.unwrap();
        socket.write_all(&messages::ssl_request()).await.unwrap();
        let mut answer = [0u8; 1];
        socket.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        let mut tls = TlsConnector::from(testing::client_config(&pki, &[]))
            .connect(testing::localhost(), socket)
            .await
            .unwrap();
        let params = testing::params(&[("user", "alice"), ("database", "app")]);
        tls.write_all(&messages::startup_message(&params))
            .await
            .unwrap();
        let mut client_key = None;
        let mut parameters = Vec::new();
        loop {
            let message = messages::read_message(&mut tls, MAX).await.unwrap();
            match message.tag {
                b'K' => client_key = Some(message.raw.clone()),
                b'S' => parameters.push(message.raw.clone()),
                b'Z' => break,
                _ => {}
            }
        }
        tls.write_all(&messages::query("select 1")).await.unwrap();
        let complete = messages::read_message(&mut tls, MAX).await.unwrap();
        assert_eq!(complete.tag, b'C');
        let ready = messages::read_message(&mut tls, MAX).await.unwrap();
        assert_eq!(ready.tag, b'Z');
        tls.write_all(&messages::terminate()).await.unwrap();
        tls.shutdown().await.unwrap();

        let (issued, real, queries, stats) = tokio::time::timeout(Duration::from_secs(10), gateway)
            .await
            .expect("gateway finished")
            .unwrap();
        assert_eq!(
            database.await.unwrap(),
            "Q alice",
            "query and user reached the database"
        );
        assert_eq!(real, Some(real_key));
        assert_ne!(issued, real_key);
        assert_eq!(
            client_key,
            Some(messages::backend_key_data(
                issued.process_id,
                issued.secret_key
            ))
        );
        assert_eq!(
            parameters,
            vec![messages::parameter_status("server_version", "17.2")]
        );
        assert_eq!(queries, ["select 1"]);
        assert!(matches!(stats.end, RelayEnd::Closed(Side::Client)));
        assert_eq!(stats.client_to_server, 14 + 5);
        assert_eq!(stats.server_to_client, 14 + 6);
    }
}
