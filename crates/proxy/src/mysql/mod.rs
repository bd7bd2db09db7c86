//! The MySQL / MariaDB wire protocol, in the order a session uses it:
//!
//! 1. [`accept`] greets a client, takes it through the SSLRequest and TLS (refusing plaintext
//!    with an ERR packet), and reads its HandshakeResponse: user, database, capabilities;
//! 2. [`upstream::connect`] opens the gateway's own TLS session to the database server and
//!    logs in with the gateway's client certificate and no password;
//! 3. [`send_ok`] ends the client's handshake (or [`send_err`] refuses it);
//! 4. [`relay()`] copies bytes both ways, taps the SQL the client sends and refuses the
//!    commands that would change the session's user.
//!
//! Packets are framed, encoded and decoded in [`packet`]. Nothing here decides who may
//! connect or as whom, nor whether a server is one dbward can provision users on.

pub mod accept;
pub mod local;
pub mod packet;
pub mod relay;
pub mod upstream;

pub use crate::handshake::HandshakeLimits;
pub use crate::relay::{RelayEnd, RelayStats, Side, TAP_SQL_LIMIT};
pub use accept::{
    accept, send_err, send_ok, Greeting, MysqlClient, MysqlClientStream, ER_ACCESS_DENIED_ERROR,
    ER_SECURE_TRANSPORT_REQUIRED, GATEWAY_CAPABILITIES, TLS_REQUIRED_MESSAGE,
};
pub use relay::{idle_goodbye, relay, relay_with_idle_limit, MysqlTap};
pub use upstream::{MysqlUpstream, UpstreamLogin};

#[cfg(test)]
mod tests {
    use super::packet::{self, capability, ErrPacket, HandshakeResponse, HandshakeV10};
    use super::*;
    use crate::error::{ProxyError, UpstreamError};
    use crate::testing::{self, Pki};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    const MAX: usize = 64 * 1024;

    fn limits() -> HandshakeLimits {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            max_startup_len: 10_000,
        }
    }

    fn greeting(version: &str) -> Greeting {
        Greeting {
            server_version: version.into(),
            connection_id: 7,
        }
    }

    /// What a stock client chooses from the gateway's greeting.
    const CLIENT_CAPABILITIES: u32 = capability::LONG_PASSWORD
        | capability::PROTOCOL_41
        | capability::SECURE_CONNECTION
        | capability::PLUGIN_AUTH
        | capability::CONNECT_ATTRS
        | capability::PLUGIN_AUTH_LENENC_CLIENT_DATA
        | capability::TRANSACTIONS
        | capability::MULTI_RESULTS
        | capability::SESSION_TRACK
        | capability::DEPRECATE_EOF
        | capability::SSL;

    fn response(user: &str, database: Option<&str>) -> HandshakeResponse {
        HandshakeResponse {
            capabilities: CLIENT_CAPABILITIES,
            charset: 45,
            user: user.into(),
            // What a client with a password would send; the gateway must ignore it.
            auth_response: vec![0xaa; 20],
            database: database.map(str::to_string),
            auth_plugin: Some("caching_sha2_password".into()),
            attrs: vec![("_client_name".into(), "test".into())],
        }
    }

    /// A client: reads the greeting, sends an SSLRequest, does TLS and sends its response.
    async fn tls_client<S>(
        mut stream: S,
        pki: &Pki,
        response: HandshakeResponse,
    ) -> (HandshakeV10, tokio_rustls::client::TlsStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let hello = packet::read_packet(&mut stream, MAX).await.unwrap();
        assert_eq!(hello.seq, 0);
        let hello = HandshakeV10::decode(&hello.payload).unwrap();
        packet::write_packet(
            &mut stream,
            1,
            &packet::ssl_request(response.capabilities, response.charset),
        )
        .await
        .unwrap();
        let mut tls = TlsConnector::from(testing::client_config(pki, &[]))
            .connect(testing::localhost(), stream)
            .await
            .unwrap();
        packet::write_packet(&mut tls, 2, &response.encode())
            .await
            .unwrap();
        (hello, tls)
    }

    async fn accept_with<F, Fut, T>(
        pki: &Pki,
        client: F,
    ) -> (Result<MysqlClient<DuplexStream>, ProxyError>, T)
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let (client_end, gateway_end) = duplex(64 * 1024);
        tokio::join!(
            accept(
                gateway_end,
                testing::server_config(pki, &[]),
                greeting("8.0.36-dbward"),
                limits()
            ),
            client(client_end)
        )
    }

    #[tokio::test]
    async fn ssl_request_leads_to_tls_and_the_handshake_response_with_client_certificate() {
        let pki = testing::pki();
        let (accepted, (hello, mut tls)) = accept_with(&pki, |client| async {
            tls_client(client, &pki, response("alice", Some("app"))).await
        })
        .await;
        assert_eq!(hello.server_version, "8.0.36-dbward");
        assert_eq!(hello.connection_id, 7);
        assert_eq!(hello.scramble.len(), 20);
        assert_eq!(hello.auth_plugin, "mysql_native_password");
        assert_eq!(hello.capabilities, GATEWAY_CAPABILITIES);

        let mut client = accepted.expect("accepted");
        assert_eq!(client.user, "alice");
        assert_eq!(client.database.as_deref(), Some("app"));
        // The test client encodes its auth response with a one-byte length.
        assert_eq!(
            client.capabilities,
            (CLIENT_CAPABILITIES | capability::CONNECT_WITH_DB)
                & !capability::PLUGIN_AUTH_LENENC_CLIENT_DATA
        );
        assert_eq!(client.charset, 45);
        assert_eq!(
            client.attrs,
            [("_client_name".to_string(), "test".to_string())]
        );
        assert_eq!(client.client_certs, vec![pki.client.0.clone()]);
        assert_eq!(client.sequence_id, 3);

        send_ok(&mut client.stream, client.sequence_id, client.capabilities)
            .await
            .unwrap();
        let ok = packet::read_packet(&mut tls, MAX).await.unwrap();
        assert_eq!(ok.seq, 3);
        assert_eq!(ok.payload, [0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn client_without_tls_gets_err_3159_and_is_refused() {
        let pki = testing::pki();
        let (accepted, reply) = accept_with(&pki, |mut client| async move {
            packet::read_packet(&mut client, MAX).await.unwrap();
            let mut plain = response("alice", None);
            plain.capabilities &= !capability::SSL;
            packet::write_packet(&mut client, 1, &plain.encode())
                .await
                .unwrap();
            let reply = packet::read_packet(&mut client, MAX).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            (reply, rest)
        })
        .await;
        assert!(matches!(accepted, Err(ProxyError::TlsRequired)));
        let (reply, rest) = reply;
        assert_eq!(reply.seq, 2);
        let err = ErrPacket::decode(&reply.payload).unwrap();
        assert_eq!(err.code, 3159);
        assert_eq!(err.sqlstate, "HY000");
        assert_eq!(err.message, TLS_REQUIRED_MESSAGE);
        assert!(rest.is_empty(), "nothing after the ERR packet");
    }

    #[tokio::test]
    async fn client_without_a_certificate_fails_the_tls_handshake() {
        let pki = testing::pki();
        let ca = pki.ca.clone();
        let (accepted, _) = accept_with(&pki, |mut client| async move {
            packet::read_packet(&mut client, MAX).await.unwrap();
            packet::write_packet(
                &mut client,
                1,
                &packet::ssl_request(CLIENT_CAPABILITIES, 45),
            )
            .await
            .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            // TLS 1.3 reports the refusal on the first read.
            if let Ok(mut tls) = TlsConnector::from(Arc::new(config))
                .connect(testing::localhost(), client)
                .await
            {
                let _ = tls.write_all(b"x").await;
                let _ = tls.read(&mut [0u8; 16]).await;
            }
        })
        .await;
        assert!(
            matches!(accepted, Err(ProxyError::TlsHandshake(_))),
            "{accepted:?}"
        );
    }

    #[tokio::test]
    async fn garbage_and_early_close_end_the_handshake_with_an_error() {
        let pki = testing::pki();
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[1, 0, 0, 1, 0][..],
            &[][..],
            &[0xff, 0xff, 0xff, 1, 1, 2][..],
        ] {
            let (accepted, _) = accept_with(&pki, |mut client| async move {
                packet::read_packet(&mut client, MAX).await.unwrap();
                client.write_all(garbage).await.unwrap();
                client.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest).await;
            })
            .await;
            assert!(accepted.is_err(), "{garbage:?} was accepted");
        }
    }

    #[tokio::test]
    async fn silent_client_hits_the_handshake_timeout() {
        let pki = testing::pki();
        let (_client, gateway_end) = duplex(1024);
        let limits = HandshakeLimits {
            timeout: Duration::from_millis(50),
            ..limits()
        };
        let accepted = accept(
            gateway_end,
            testing::server_config(&pki, &[]),
            greeting("8.0.36"),
            limits,
        )
        .await;
        assert!(matches!(accepted, Err(ProxyError::HandshakeTimeout(_))));
    }

    /// A database stand-in: accepts one login, refuses `mallory` with an ERR, otherwise
    /// answers OK, then echoes one command's packet back as its answer.
    async fn fake_database(listener: TcpListener, pki: &Pki) -> Option<(String, Option<String>)> {
        let (socket, _) = listener.accept().await.unwrap();
        let mut session = accept(
            socket,
            testing::server_config(pki, &[]),
            greeting("5.5.5-10.11.6-MariaDB-0+deb12u1"),
            limits(),
        )
        .await
        .unwrap();
        assert!(session.auth_plugin.as_deref() == Some("mysql_native_password"));
        if session.user == "mallory" {
            send_err(
                &mut session.stream,
                session.sequence_id,
                1045,
                "28000",
                "denied",
            )
            .await
            .unwrap();
            return None;
        }
        send_ok(
            &mut session.stream,
            session.sequence_id,
            session.capabilities,
        )
        .await
        .unwrap();
        let command = packet::read_packet(&mut session.stream, MAX).await.unwrap();
        packet::write_packet(&mut session.stream, 1, &command.payload)
            .await
            .unwrap();
        let quit = packet::read_packet(&mut session.stream, MAX).await.unwrap();
        assert_eq!(quit.payload, [packet::command::QUIT]);
        Some((session.user, session.database))
    }

    #[tokio::test]
    async fn session_flows_from_client_through_gateway_to_database_and_back() {
        let pki = testing::pki();
        let db_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let db_addr = db_listener.local_addr().unwrap();
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = gateway_listener.local_addr().unwrap();

        let database = {
            let pki = pki.clone();
            tokio::spawn(async move { fake_database(db_listener, &pki).await })
        };
        let gateway = {
            let server_config = testing::server_config(&pki, &[]);
            let client_config = testing::client_config(&pki, &[]);
            tokio::spawn(async move {
                let (socket, _) = gateway_listener.accept().await.unwrap();
                let mut client = accept(socket, server_config, greeting("8.0.36"), limits())
                    .await
                    .unwrap();
                let login = UpstreamLogin {
                    user: &client.user,
                    database: client.database.as_deref(),
                    client_capabilities: client.capabilities,
                    charset: client.charset,
                };
                let mut upstream =
                    upstream::connect(db_addr, client_config, testing::localhost(), &login)
                        .await
                        .unwrap();
                send_ok(&mut client.stream, client.sequence_id, client.capabilities)
                    .await
                    .unwrap();
                let mut queries = Vec::new();
                let stats = relay(&mut client.stream, &mut upstream.stream, |event| {
                    queries.push(format!("{event:?}"));
                })
                .await;
                (upstream.server_version, queries, stats)
            })
        };

        let socket = TcpStream::connect(gateway_addr).await.unwrap();
        let (_, mut tls) = tls_client(socket, &pki, response("alice", Some("app"))).await;
        let ok = packet::read_packet(&mut tls, MAX).await.unwrap();
        assert_eq!((ok.seq, ok.payload[0]), (3, 0));
        packet::write_packet(&mut tls, 0, b"\x03select 1")
            .await
            .unwrap();
        let echo = packet::read_packet(&mut tls, MAX).await.unwrap();
        assert_eq!(echo.payload, b"\x03select 1");
        packet::write_packet(&mut tls, 0, &[packet::command::QUIT])
            .await
            .unwrap();
        tls.shutdown().await.unwrap();

        let (server_version, queries, stats) =
            tokio::time::timeout(Duration::from_secs(10), gateway)
                .await
                .expect("gateway finished")
                .unwrap();
        assert_eq!(
            database.await.unwrap(),
            Some(("alice".to_string(), Some("app".to_string())))
        );
        assert_eq!(server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(
            queries,
            ["Query { sql: \"select 1\", truncated: false }", "Quit"]
        );
        assert!(matches!(stats.end, RelayEnd::Closed(Side::Client)));
    }

    #[tokio::test]
    async fn upstream_refusal_is_returned_with_code_and_sqlstate() {
        let pki = testing::pki();
        let db_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let db_addr = db_listener.local_addr().unwrap();
        let database = {
            let pki = pki.clone();
            tokio::spawn(async move { fake_database(db_listener, &pki).await })
        };
        let login = UpstreamLogin {
            user: "mallory",
            database: None,
            client_capabilities: CLIENT_CAPABILITIES,
            charset: 45,
        };
        let result = upstream::connect(
            db_addr,
            testing::client_config(&pki, &[]),
            testing::localhost(),
            &login,
        )
        .await;
        match result {
            Err(UpstreamError::MysqlServer {
                code,
                sqlstate,
                message,
            }) => {
                assert_eq!(
                    (code, sqlstate.as_str(), message.as_str()),
                    (1045, "28000", "denied")
                );
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        assert_eq!(database.await.unwrap(), None);
    }
}

#[cfg(test)]
mod cli_tests;
