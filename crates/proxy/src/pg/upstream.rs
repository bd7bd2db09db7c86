//! The gateway's own connection to a PostgreSQL server: SSLRequest, TLS with the gateway's
//! client certificate, StartupMessage, and the server's answer up to ReadyForQuery.
//!
//! The server is expected to accept the certificate (`cert` in pg_hba.conf) and answer
//! AuthenticationOk at once; a request for a password is an error, never answered. Which
//! database user the certificate names is the caller's business.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::messages::{self, tag, ErrorFields};
use super::BackendKey;
use crate::error::UpstreamError;

/// Largest message accepted from the server before the session is ready. Startup messages
/// are small; this only keeps a misbehaving server from making the gateway allocate much.
const MAX_STARTUP_REPLY_MESSAGE: usize = 1 << 20;

/// An authenticated session with the database server, ready for queries.
#[derive(Debug)]
pub struct Upstream<S> {
    /// The TLS stream, positioned after ReadyForQuery.
    pub stream: TlsStream<S>,
    /// The server's ParameterStatus values (server_version, client_encoding, ...) in the
    /// order received, for the client's startup reply.
    pub parameters: Vec<(String, String)>,
    /// The server's own cancel key. `None` only if the server sent no BackendKeyData, which
    /// PostgreSQL always does.
    pub backend_key: Option<BackendKey>,
}

/// Connects to the database server at `addr` and authenticates with the client certificate
/// in `tls`, verifying the server as `server_name`. `params` is the StartupMessage content
/// (`user`, `database`, and whatever other client parameters the caller passes through),
/// sent as given.
///
/// There is no timeout here: callers wrap this in `tokio::time::timeout`.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    params: &[(String, String)],
) -> Result<Upstream<TcpStream>, UpstreamError> {
    let stream = TcpStream::connect(addr).await?;
    // Queries and results are small interactive writes; do not hold them back.
    stream.set_nodelay(true)?;
    handshake(stream, tls, server_name, params).await
}

/// [`connect`] on an already open stream.
pub async fn handshake<S>(
    stream: S,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    params: &[(String, String)],
) -> Result<Upstream<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut stream = start_tls(stream, tls, server_name).await?;
    stream.write_all(&messages::startup_message(params)).await?;
    stream.flush().await?;
    let (parameters, backend_key) = read_startup_reply(&mut stream).await?;
    Ok(Upstream {
        stream,
        parameters,
        backend_key,
    })
}

/// Sends an SSLRequest and, once the server agrees, completes the TLS handshake.
pub(crate) async fn start_tls<S>(
    mut stream: S,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<TlsStream<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream.write_all(&messages::ssl_request()).await?;
    stream.flush().await?;
    // Exactly one byte: anything the server (or someone in the path) sent after the `S`
    // must be read by TLS, where it fails the handshake, not taken as protocol data.
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(UpstreamError::TlsNotSupported),
        other => {
            return Err(UpstreamError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )))
        }
    }
    TlsConnector::from(tls)
        .connect(server_name, stream)
        .await
        .map_err(UpstreamError::TlsHandshake)
}

/// Reads the server's messages from authentication to ReadyForQuery.
async fn read_startup_reply<S>(
    stream: &mut S,
) -> Result<(Vec<(String, String)>, Option<BackendKey>), UpstreamError>
where
    S: AsyncRead + Unpin,
{
    let mut authenticated = false;
    let mut parameters = Vec::new();
    let mut backend_key = None;
    loop {
        let message = messages::read_message(stream, MAX_STARTUP_REPLY_MESSAGE).await?;
        let body = message.body();
        match message.tag {
            tag::AUTHENTICATION => {
                let kind = messages::decode_authentication(body)?;
                match kind {
                    None => authenticated = true,
                    Some(kind) => return Err(UpstreamError::AuthenticationRequired(kind)),
                }
            }
            tag::ERROR_RESPONSE => {
                let fields = ErrorFields::decode(body)?;
                return Err(UpstreamError::Server {
                    sqlstate: fields.sqlstate,
                    severity: fields.severity,
                    message: fields.message,
                    detail: fields.detail,
                });
            }
            tag::PARAMETER_STATUS if authenticated => {
                let (name, value) = messages::decode_parameter_status(body)?;
                parameters.push((name, value));
            }
            tag::BACKEND_KEY_DATA if authenticated => {
                backend_key = Some(messages::decode_backend_key_data(body)?);
            }
            tag::READY_FOR_QUERY if authenticated => {
                return Ok((parameters, backend_key));
            }
            // Notices are informational; a NegotiateProtocolVersion only confirms the
            // server speaks 3.0, which is what the gateway asked for.
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    char::from(other)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthenticationKind;
    use crate::pg::startup::{accept, write_startup_reply, Accepted};
    use crate::testing::{self, Pki};
    use crate::HandshakeLimits;
    use bytes::Bytes;
    use tokio::io::{duplex, DuplexStream};

    fn startup_params() -> Vec<(String, String)> {
        testing::params(&[
            ("user", "alice"),
            ("database", "app"),
            ("application_name", "psql"),
            ("options", "-c search_path=x"),
        ])
    }

    /// The gateway's side: its handshake with the `alice` certificate and [`startup_params`].
    async fn handshake_as_alice(
        stream: DuplexStream,
        pki: &Pki,
    ) -> Result<Upstream<DuplexStream>, UpstreamError> {
        let config = testing::client_config(pki, &[]);
        handshake(stream, config, testing::localhost(), &startup_params()).await
    }

    /// Plays a database server on a pipe: the gateway's listener side stands in for it up to
    /// the StartupMessage, then `reply` is what the server answers.
    async fn against_server(
        reply: Bytes,
    ) -> (
        Result<Upstream<DuplexStream>, UpstreamError>,
        Vec<(String, String)>,
    ) {
        let pki = testing::pki();
        let (gateway_end, server_end) = duplex(64 * 1024);
        let server = async {
            let accepted = accept(
                server_end,
                testing::server_config(&pki, &[messages::ALPN_POSTGRESQL]),
                HandshakeLimits::default(),
            )
            .await
            .expect("server accepts");
            let Accepted::Startup(mut startup) = accepted else {
                panic!("expected a startup");
            };
            assert_eq!(startup.client_certs.len(), 1, "gateway presented its cert");
            startup.stream.write_all(&reply).await.unwrap();
            startup.stream.flush().await.unwrap();
            (startup.params, startup.stream)
        };
        let client = handshake_as_alice(gateway_end, &pki);
        let (upstream, (params, _server_stream)) = tokio::join!(client, server);
        (upstream, params)
    }

    #[tokio::test]
    async fn certificate_session_returns_parameters_and_real_backend_key() {
        let mut reply = Vec::new();
        let parameters = testing::params(&[("server_version", "17.2"), ("is_superuser", "off")]);
        let key = BackendKey {
            process_id: 31337,
            secret_key: -12345,
        };
        write_startup_reply(&mut reply, &parameters, key)
            .await
            .unwrap();
        let (upstream, sent) = against_server(Bytes::from(reply)).await;
        let upstream = upstream.expect("upstream session");
        assert_eq!(sent, startup_params(), "all parameters passed through");
        assert_eq!(upstream.parameters, parameters);
        assert_eq!(upstream.backend_key, Some(key));
    }

    #[tokio::test]
    async fn password_request_is_an_error_naming_client_certificates() {
        let (upstream, _) = against_server(messages::authentication_request(5, b"salt")).await;
        let err = upstream.expect_err("password request refused");
        assert!(matches!(
            err,
            UpstreamError::AuthenticationRequired(AuthenticationKind::Md5Password)
        ));
        assert!(err.to_string().contains("database asked for a password"));
    }

    #[tokio::test]
    async fn scram_request_lists_its_mechanisms() {
        let (upstream, _) = against_server(messages::authentication_request(
            10,
            b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0",
        ))
        .await;
        let Err(UpstreamError::AuthenticationRequired(AuthenticationKind::Sasl(mechanisms))) =
            upstream
        else {
            panic!("expected a SASL request, got {upstream:?}");
        };
        assert_eq!(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]);
    }

    #[tokio::test]
    async fn server_error_response_is_returned_with_its_fields() {
        let error = messages::error_response(
            messages::Severity::Fatal,
            "28000",
            "certificate authentication failed for user \"alice\"",
        );
        let (upstream, _) = against_server(error).await;
        let Err(UpstreamError::Server {
            sqlstate,
            severity,
            message,
            ..
        }) = upstream
        else {
            panic!("expected a server error, got {upstream:?}");
        };
        assert_eq!(sqlstate, "28000");
        assert_eq!(severity, "FATAL");
        assert!(message.starts_with("certificate authentication failed"));
    }

    #[tokio::test]
    async fn server_refusing_tls_is_reported() {
        let pki = testing::pki();
        let (gateway_end, mut server_end) = duplex(1024);
        let server = async {
            let packet = messages::read_startup_packet(&mut server_end, 1024)
                .await
                .unwrap();
            assert_eq!(
                messages::decode_startup_packet(&packet).unwrap(),
                messages::StartupPacket::SslRequest
            );
            server_end.write_all(b"N").await.unwrap();
            server_end
        };
        let client = handshake_as_alice(gateway_end, &pki);
        let (upstream, _server) = tokio::join!(client, server);
        assert!(matches!(upstream, Err(UpstreamError::TlsNotSupported)));
    }

    #[tokio::test]
    async fn connect_over_tcp_reaches_ready_for_query() {
        let pki = testing::pki();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = testing::server_config(&pki, &[messages::ALPN_POSTGRESQL]);
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let Ok(Accepted::Startup(mut startup)) =
                accept(socket, server_config, HandshakeLimits::default()).await
            else {
                panic!("expected a startup");
            };
            let key = BackendKey {
                process_id: 9,
                secret_key: 10,
            };
            write_startup_reply(&mut startup.stream, &[], key)
                .await
                .unwrap();
            startup
        });
        let upstream = connect(
            addr,
            testing::client_config(&pki, &[]),
            testing::localhost(),
            &startup_params(),
        )
        .await
        .expect("connected");
        assert_eq!(
            upstream.backend_key,
            Some(BackendKey {
                process_id: 9,
                secret_key: 10
            })
        );
        let startup = server.await.unwrap();
        assert_eq!(startup.param("database"), Some("app"));
    }
}
