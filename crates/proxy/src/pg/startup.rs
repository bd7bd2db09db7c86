//! The gateway's listener side of the PostgreSQL startup: everything from the first byte a
//! client sends to its StartupMessage, read inside TLS.
//!
//! Clients reach TLS either through an SSLRequest (any libpq) or with PostgreSQL 17 direct
//! TLS. A plaintext StartupMessage is answered with an ErrorResponse and refused. A
//! CancelRequest, plaintext or inside TLS, is handed back to the caller. Once the caller has
//! let the session in, [`write_startup_reply`] tells the client it is ready, and
//! [`send_error`] is how a refusal reaches it. Who the client is and what it may reach is not
//! decided here.
//!
//! # Startup parameters that are refused
//!
//! The session must run as the database user the gateway chose, and the audit must say who
//! that was. PostgreSQL applies startup parameters (top-level ones and the `-c name=value` /
//! `--name=value` switches inside `options`) before the first query, so a few of them would
//! change identity or the kind of session behind the gateway's back. They are refused with a
//! FATAL `42501` naming the parameter, before the session is authorised or any database is
//! contacted ([`refused_startup_parameter`]); silently dropping them would leave the client
//! believing it runs as someone else.
//!
//! - `role` and `session_authorization`: switch the session to another role (a role the user
//!   is a member of, such as the marker role, is accepted by PostgreSQL).
//! - `is_superuser`: read-only in PostgreSQL; refused so that no version or fork can be
//!   talked into it.
//! - `replication` with any value other than false: a walsender session streams the whole
//!   cluster's changes and skips the SQL privileges the user's roles define.
//!
//! Every other parameter is forwarded (a deny-list, not an allow-list): drivers send many
//! (`DateStyle`, `TimeZone`, `extra_float_digits`, `search_path`, `application_name`, ...),
//! and PostgreSQL applies each with the same privilege checks as a `SET` by that user, which
//! refuses superuser-only settings. GUC names are compared the way PostgreSQL compares them:
//! case-insensitively, with `-` read as `_` inside `options`, and `options` split at
//! unescaped white space with `\` escaping the next character.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use super::messages::{self, Severity, StartupPacket};
use super::BackendKey;
use crate::error::{eof_as_truncated, ProxyError};
use crate::handshake::{accept_tls, HandshakeLimits};

/// The message a client gets when it tries to start a session without TLS.
pub const TLS_REQUIRED_MESSAGE: &str =
    "dbward requires TLS: connect with sslmode=verify-full (or require)";

/// What a client connection turned out to be.
#[derive(Debug)]
pub enum Accepted<S> {
    /// A session to set up (boxed: a TLS stream is large, a cancel is not).
    Startup(Box<ClientStartup<S>>),
    /// A request to cancel the query of another session, identified by the key the gateway
    /// issued to it. The connection carries nothing more and gets no answer.
    Cancel(BackendKey),
}

/// The TLS stream of an accepted client.
pub type ClientTlsStream<S> = TlsStream<PrefixedStream<S>>;

/// A client that completed TLS and sent its StartupMessage.
#[derive(Debug)]
pub struct ClientStartup<S> {
    /// The client connection, inside TLS, positioned after the StartupMessage.
    pub stream: ClientTlsStream<S>,
    /// Startup parameters (user, database, application_name, options, ...) in the order the
    /// client sent them. Protocol extensions (`_pq_.*`) are not included: the gateway has
    /// already declined them.
    pub params: Vec<(String, String)>,
    /// The client's certificate chain, leaf first, as verified by rustls. Empty when the
    /// TLS configuration does not ask for client certificates.
    pub client_certs: Vec<CertificateDer<'static>>,
    /// Whether the client used PostgreSQL 17 direct TLS rather than an SSLRequest.
    pub direct_tls: bool,
}

impl<S> ClientStartup<S> {
    /// The value of startup parameter `name`, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Accepts a client connection up to its StartupMessage, within `limits.timeout`.
///
/// Errors end this connection only. When the client sent a plaintext StartupMessage or an
/// unsupported protocol version, it has already been sent an ErrorResponse.
pub async fn accept<S>(
    stream: S,
    tls: Arc<ServerConfig>,
    limits: HandshakeLimits,
) -> Result<Accepted<S>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    limits.within(handshake(stream, tls, limits)).await
}

async fn handshake<S>(
    mut stream: S,
    tls: Arc<ServerConfig>,
    limits: HandshakeLimits,
) -> Result<Accepted<S>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut declined_gssenc = false;
    loop {
        // One byte first: a TLS record starts with 0x16, where a startup packet starts with
        // the high byte of a length that is never that large.
        let mut first = [0u8; 1];
        if stream.read(&mut first).await? == 0 {
            return Err(if declined_gssenc {
                ProxyError::Truncated
            } else {
                ProxyError::ClosedBeforeStartup
            });
        }
        if first[0] == messages::TLS_HANDSHAKE_RECORD {
            let prefixed = PrefixedStream::new(stream, Some(first[0]));
            return startup_inside_tls(prefixed, tls, limits, true).await;
        }
        let mut len = [first[0], 0, 0, 0];
        stream
            .read_exact(&mut len[1..])
            .await
            .map_err(eof_as_truncated)?;
        let body = messages::read_startup_body(&mut stream, len, limits.max_startup_len).await?;
        match messages::decode_startup_packet(&body) {
            Ok(StartupPacket::SslRequest) => {
                // The answer is written before any TLS byte is read, and nothing past the
                // SSLRequest has been read: no plaintext can be smuggled into the TLS session.
                stream.write_all(b"S").await?;
                stream.flush().await?;
                let prefixed = PrefixedStream::new(stream, None);
                return startup_inside_tls(prefixed, tls, limits, false).await;
            }
            Ok(StartupPacket::GssEncRequest) if !declined_gssenc => {
                declined_gssenc = true;
                stream.write_all(b"N").await?;
                stream.flush().await?;
            }
            Ok(StartupPacket::GssEncRequest) => {
                return Err(ProxyError::Protocol("repeated GSSENCRequest".into()));
            }
            Ok(StartupPacket::CancelRequest { pid, secret }) => {
                return Ok(Accepted::Cancel(BackendKey {
                    process_id: pid,
                    secret_key: secret,
                }));
            }
            Ok(StartupPacket::Startup(_)) => {
                send_error(&mut stream, "28000", TLS_REQUIRED_MESSAGE).await?;
                return Err(ProxyError::TlsRequired);
            }
            Err(err @ ProxyError::UnsupportedProtocol { .. }) => {
                send_error(&mut stream, "0A000", &err.to_string()).await?;
                return Err(err);
            }
            Err(err) => return Err(err),
        }
    }
}

async fn startup_inside_tls<S>(
    stream: PrefixedStream<S>,
    tls: Arc<ServerConfig>,
    limits: HandshakeLimits,
    direct_tls: bool,
) -> Result<Accepted<S>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut stream, client_certs) = accept_tls(stream, tls).await?;
    // PostgreSQL 17 accepts direct TLS only with ALPN "postgresql", so that a TLS connection
    // meant for another protocol is never taken for a PostgreSQL session.
    if direct_tls && stream.get_ref().1.alpn_protocol() != Some(messages::ALPN_POSTGRESQL) {
        return Err(ProxyError::DirectTlsWithoutAlpn);
    }

    let body = messages::read_startup_packet(&mut stream, limits.max_startup_len).await?;
    let startup = match messages::decode_startup_packet(&body) {
        Ok(StartupPacket::Startup(startup)) => startup,
        Ok(StartupPacket::CancelRequest { pid, secret }) => {
            return Ok(Accepted::Cancel(BackendKey {
                process_id: pid,
                secret_key: secret,
            }));
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            return Err(ProxyError::Protocol("encryption request inside TLS".into()));
        }
        Err(err @ ProxyError::UnsupportedProtocol { .. }) => {
            send_error(&mut stream, "0A000", &err.to_string()).await?;
            return Err(err);
        }
        Err(err) => return Err(err),
    };

    let (extensions, params): (Vec<_>, Vec<_>) = startup
        .params
        .into_iter()
        .partition(|(name, _)| name.starts_with(messages::PROTOCOL_EXTENSION_PREFIX));
    if let Some(refused) = refused_startup_parameter(&params) {
        send_error(&mut stream, "42501", &refused.to_string()).await?;
        return Err(ProxyError::RefusedStartupParameter(refused.to_string()));
    }
    // A newer minor version or protocol extensions are declined here, the way PostgreSQL
    // does it before authentication; the client then carries on with 3.0.
    if startup.minor_version > 0 || !extensions.is_empty() {
        let names: Vec<String> = extensions.into_iter().map(|(name, _)| name).collect();
        stream
            .write_all(&messages::negotiate_protocol_version(0, &names))
            .await?;
        stream.flush().await?;
    }
    Ok(Accepted::Startup(Box::new(ClientStartup {
        stream,
        params,
        client_certs,
        direct_tls,
    })))
}

/// A startup parameter the gateway refuses, as found in the startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedParameter {
    /// The setting, as PostgreSQL would name it (`role`, `session_authorization`, ...).
    pub name: String,
    /// Whether it came inside the `options` parameter rather than on its own.
    pub in_options: bool,
}

impl std::fmt::Display for RefusedParameter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.in_options { " (in options)" } else { "" };
        write!(
            f,
            "dbward does not accept the startup parameter \"{}\"{place}: the session runs as the database user dbward chose",
            self.name
        )
    }
}

/// Settings no client may make at startup; see the module documentation.
const REFUSED_SETTINGS: [&str; 3] = ["role", "session_authorization", "is_superuser"];

/// The first startup parameter of `params` that the gateway refuses, if any.
pub fn refused_startup_parameter(params: &[(String, String)]) -> Option<RefusedParameter> {
    for (name, value) in params {
        let name = guc_name(name);
        if name == "replication" && !is_false(value) {
            return Some(RefusedParameter {
                name,
                in_options: false,
            });
        }
        if name == "options" {
            if let Some(name) = settings_in_options(value)
                .into_iter()
                .find(|setting| REFUSED_SETTINGS.contains(&setting.as_str()))
            {
                return Some(RefusedParameter {
                    name,
                    in_options: true,
                });
            }
        } else if REFUSED_SETTINGS.contains(&name.as_str()) {
            return Some(RefusedParameter {
                name,
                in_options: false,
            });
        }
    }
    None
}

/// A GUC name as PostgreSQL matches it: case-insensitive, `-` read as `_` (which is what
/// `--name=value` and `-c name=value` do; a top-level name with `-` names nothing).
fn guc_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// Whether PostgreSQL reads `value` as boolean false (`parse_bool`).
fn is_false(value: &str) -> bool {
    let value = value.to_ascii_lowercase();
    matches!(value.as_str(), "0" | "of" | "off" | "n" | "no")
        || (!value.is_empty() && "false".starts_with(value.as_str()))
}

/// The names of every setting the `options` string could make: the arguments of `-c` and
/// `--`, found the way the server's `getopt` finds them (switches may be clustered, the
/// argument may be attached or the next word). Every other word that looks like
/// `name=value` is counted as well.
fn settings_in_options(options: &str) -> Vec<String> {
    // The server's switches that take an argument (postgres.c, process_postgres_switches).
    const WITH_ARGUMENT: &str = "BCcDdfhkNprStvW-";
    let words = split_options(options);
    let mut names = Vec::new();
    let mut setting = |argument: &str| {
        if let Some((name, _)) = argument.split_once('=') {
            names.push(guc_name(name));
        }
    };
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        if let Some(switches) = word.strip_prefix('-') {
            for (at, switch) in switches.char_indices() {
                if WITH_ARGUMENT.contains(switch) {
                    let attached = &switches[at + switch.len_utf8()..];
                    let argument = if attached.is_empty() {
                        i += 1;
                        words.get(i).map(String::as_str).unwrap_or("")
                    } else {
                        attached
                    };
                    // Only `-c` and `--` set a named setting; the argument of any other
                    // switch is looked at too, so that a switch whose meaning differs
                    // between server versions cannot hide one.
                    setting(argument);
                    break;
                }
            }
        } else {
            setting(word);
        }
        i += 1;
    }
    names
}

/// `options` split into words as the server does (`pg_split_opts`): at white space, where a
/// backslash makes the next character part of the word.
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut escaped = false;
    for c in options.chars() {
        if escaped {
            word.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
            in_word = true;
        } else if c.is_ascii_whitespace() || c == '\u{0b}' {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
        } else {
            word.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Writes a FATAL ErrorResponse (fields `S`, `V`, `C`, `M`) and flushes it, so that psql
/// prints `FATAL:  <message>`. The caller closes the connection afterwards.
///
/// `message` reaches the client as is: it must not carry secrets or internal detail.
pub async fn send_error<S>(stream: &mut S, sqlstate: &str, message: &str) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    send_error_with_detail(stream, sqlstate, message, None).await
}

/// [`send_error`] with a `DETAIL` line (field `D`) when `detail` is given.
pub async fn send_error_with_detail<S>(
    stream: &mut S,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream
        .write_all(&messages::error_response_with_detail(
            Severity::Fatal,
            sqlstate,
            message,
            detail,
        ))
        .await?;
    stream.flush().await
}

/// Tells an accepted client its session is ready: AuthenticationOk, one ParameterStatus per
/// entry of `parameters` (normally the server's, from [`super::Upstream`]), BackendKeyData
/// with the gateway-issued `key`, and ReadyForQuery (idle). Written as one buffer and flushed.
pub async fn write_startup_reply<S>(
    stream: &mut S,
    parameters: &[(String, String)],
    key: BackendKey,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&startup_reply(parameters, key)).await?;
    stream.flush().await
}

fn startup_reply(parameters: &[(String, String)], key: BackendKey) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::with_capacity(64 + parameters.len() * 32);
    buf.extend_from_slice(&messages::authentication_ok());
    for (name, value) in parameters {
        buf.extend_from_slice(&messages::parameter_status(name, value));
    }
    buf.extend_from_slice(&messages::backend_key_data(key.process_id, key.secret_key));
    buf.extend_from_slice(&messages::ready_for_query(b'I'));
    buf.freeze()
}

/// A stream that yields bytes already read from it before reading further.
///
/// Recognising direct TLS costs the first byte of the ClientHello; this hands it back to the
/// TLS acceptor. Writes go straight through.
#[derive(Debug)]
pub struct PrefixedStream<S> {
    inner: S,
    prefix: Option<u8>,
}

impl<S> PrefixedStream<S> {
    fn new(inner: S, prefix: Option<u8>) -> Self {
        PrefixedStream { inner, prefix }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(byte) = self.prefix.take() {
                buf.put_slice(&[byte]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Pki};
    use std::time::Duration;
    use tokio::io::{duplex, DuplexStream};
    use tokio_rustls::TlsConnector;

    fn limits() -> HandshakeLimits {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            max_startup_len: messages::MAX_STARTUP_PACKET_LEN,
        }
    }

    fn startup_params() -> Vec<(String, String)> {
        testing::params(&[
            ("user", "alice"),
            ("database", "postgres"),
            ("application_name", "psql"),
        ])
    }

    /// Runs `accept` on one end of a pipe while `client` drives the other.
    async fn accept_with<F, Fut, T>(
        pki: &Pki,
        client: F,
    ) -> (Result<Accepted<DuplexStream>, ProxyError>, T)
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let (client_end, gateway_end) = duplex(64 * 1024);
        let config = testing::server_config(pki, &[messages::ALPN_POSTGRESQL]);
        tokio::join!(accept(gateway_end, config, limits()), client(client_end))
    }

    async fn read_byte(stream: &mut DuplexStream) -> u8 {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("answer byte");
        byte[0]
    }

    /// The client's side from the TLS handshake on: TLS offering `alpn`, then `packet` (a
    /// StartupMessage or a CancelRequest) inside it.
    async fn send_inside_tls(
        client: DuplexStream,
        pki: &Pki,
        alpn: &[&[u8]],
        packet: &[u8],
    ) -> tokio_rustls::client::TlsStream<DuplexStream> {
        let mut tls = TlsConnector::from(testing::client_config(pki, alpn))
            .connect(testing::localhost(), client)
            .await
            .unwrap();
        tls.write_all(packet).await.unwrap();
        tls.flush().await.unwrap();
        tls
    }

    #[tokio::test]
    async fn ssl_request_leads_to_tls_and_startup_params_with_client_certificate() {
        let pki = &testing::pki();
        let startup = messages::startup_message(&startup_params());
        let (accepted, answer) = accept_with(pki, |mut client| async move {
            client.write_all(&messages::ssl_request()).await.unwrap();
            let answer = read_byte(&mut client).await;
            (answer, send_inside_tls(client, pki, &[], &startup).await)
        })
        .await;
        assert_eq!(answer.0, b'S');
        let Ok(Accepted::Startup(startup)) = accepted else {
            panic!("expected a startup, got {accepted:?}");
        };
        assert_eq!(startup.params, startup_params());
        assert_eq!(startup.param("user"), Some("alice"));
        assert_eq!(startup.client_certs, vec![pki.client.0.clone()]);
        assert!(!startup.direct_tls);
    }

    #[tokio::test]
    async fn direct_tls_with_postgresql_alpn_is_accepted() {
        let pki = testing::pki();
        let startup = messages::startup_message(&startup_params());
        let (accepted, _client) = accept_with(&pki, |client| {
            send_inside_tls(client, &pki, &[messages::ALPN_POSTGRESQL], &startup)
        })
        .await;
        let Ok(Accepted::Startup(startup)) = accepted else {
            panic!("expected a startup, got {accepted:?}");
        };
        assert!(startup.direct_tls);
        assert_eq!(startup.params, startup_params());
    }

    #[tokio::test]
    async fn direct_tls_without_alpn_is_refused() {
        let pki = testing::pki();
        let startup = messages::startup_message(&startup_params());
        let (accepted, _client) =
            accept_with(&pki, |client| send_inside_tls(client, &pki, &[], &startup)).await;
        assert!(matches!(accepted, Err(ProxyError::DirectTlsWithoutAlpn)));
    }

    #[tokio::test]
    async fn gssenc_request_is_declined_then_ssl_request_proceeds() {
        let pki = &testing::pki();
        let startup = messages::startup_message(&startup_params());
        let (accepted, answers) = accept_with(pki, |mut client| async move {
            client.write_all(&messages::gssenc_request()).await.unwrap();
            let gss = read_byte(&mut client).await;
            client.write_all(&messages::ssl_request()).await.unwrap();
            let ssl = read_byte(&mut client).await;
            (gss, ssl, send_inside_tls(client, pki, &[], &startup).await)
        })
        .await;
        assert_eq!((answers.0, answers.1), (b'N', b'S'));
        assert!(matches!(accepted, Ok(Accepted::Startup(_))));
    }

    #[tokio::test]
    async fn plaintext_startup_is_refused_with_fatal_28000() {
        let pki = testing::pki();
        let (accepted, reply) = accept_with(&pki, |mut client| async move {
            client
                .write_all(&messages::startup_message(&startup_params()))
                .await
                .unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        })
        .await;
        assert!(matches!(accepted, Err(ProxyError::TlsRequired)));
        assert_eq!(reply[0], b'E');
        let fields = messages::ErrorFields::decode(&reply[5..]).unwrap();
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.sqlstate, "28000");
        assert_eq!(fields.message, TLS_REQUIRED_MESSAGE);
    }

    #[tokio::test]
    async fn garbage_closes_the_connection_without_an_answer() {
        let pki = testing::pki();
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0, 0, 0, 2, 1, 2, 3, 4][..],
            &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78][..],
            &[0, 0, 0, 12][..],
        ] {
            let (accepted, reply) = accept_with(&pki, |mut client| async move {
                client.write_all(garbage).await.unwrap();
                client.shutdown().await.unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).await.unwrap();
                reply
            })
            .await;
            assert!(accepted.is_err(), "{garbage:?} was accepted");
            assert!(
                reply.is_empty() || reply[0] == b'E',
                "{garbage:?} got {reply:?}"
            );
        }
    }

    #[tokio::test]
    async fn cancel_request_in_plaintext_is_returned() {
        let pki = testing::pki();
        let (accepted, _) = accept_with(&pki, |mut client| async move {
            client
                .write_all(&messages::cancel_request(4242, -7))
                .await
                .unwrap();
        })
        .await;
        let key = BackendKey {
            process_id: 4242,
            secret_key: -7,
        };
        assert!(matches!(accepted, Ok(Accepted::Cancel(k)) if k == key));
    }

    #[tokio::test]
    async fn cancel_request_inside_tls_is_returned() {
        let pki = &testing::pki();
        let (accepted, _client) = accept_with(pki, |mut client| async move {
            client.write_all(&messages::ssl_request()).await.unwrap();
            read_byte(&mut client).await;
            send_inside_tls(client, pki, &[], &messages::cancel_request(1, 2)).await
        })
        .await;
        let key = BackendKey {
            process_id: 1,
            secret_key: 2,
        };
        assert!(matches!(accepted, Ok(Accepted::Cancel(k)) if k == key));
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
            testing::server_config(&pki, &[messages::ALPN_POSTGRESQL]),
            limits,
        )
        .await;
        assert!(matches!(accepted, Err(ProxyError::HandshakeTimeout(_))));
    }

    #[tokio::test]
    async fn startup_reply_carries_parameters_and_the_given_key() {
        let (mut gateway, mut client) = duplex(4096);
        let parameters = testing::params(&[("server_version", "17.2"), ("TimeZone", "UTC")]);
        let key = BackendKey {
            process_id: 77,
            secret_key: 88,
        };
        write_startup_reply(&mut gateway, &parameters, key)
            .await
            .unwrap();
        let max = 1024;
        let auth = messages::read_message(&mut client, max).await.unwrap();
        assert_eq!((auth.tag, auth.body()), (b'R', &[0u8, 0, 0, 0][..]));
        for (name, value) in &parameters {
            let status = messages::read_message(&mut client, max).await.unwrap();
            assert_eq!(status.raw, messages::parameter_status(name, value));
        }
        let key_data = messages::read_message(&mut client, max).await.unwrap();
        assert_eq!(key_data.raw, messages::backend_key_data(77, 88));
        let ready = messages::read_message(&mut client, max).await.unwrap();
        assert_eq!((ready.tag, ready.body()), (b'Z', &b"I"[..]));
    }

    fn refused(params: &[(&str, &str)]) -> Option<String> {
        refused_startup_parameter(&testing::params(params)).map(|r| r.name)
    }

    #[test]
    fn identity_settings_are_refused_in_every_spelling() {
        for options in [
            "-c role=dbward-auto-user",
            "-crole=dbward-auto-user",
            "--role=dbward-auto-user",
            "-c ROLE=x",
            "--Role=x",
            "-c session_authorization=postgres",
            "--session-authorization=postgres",
            "-c\tsession_authorization=postgres",
            "-c statement_timeout=5 -c role=x",
            "-Pcrole=x",
            "-P -c role=x",
            "-c application_name=a\\ b -c role=x",
            "-c is_superuser=on",
            "-- role=x",
        ] {
            assert!(
                refused(&[("user", "alice"), ("options", options)]).is_some(),
                "{options:?} was let through"
            );
        }
        for (name, value) in [
            ("role", "dbward-auto-user"),
            ("ROLE", "x"),
            ("session_authorization", "postgres"),
            ("Session_Authorization", "postgres"),
            ("is_superuser", "on"),
            ("replication", "true"),
            ("replication", "database"),
            ("replication", "on"),
            ("replication", "yes"),
            ("REPLICATION", "1"),
        ] {
            assert_eq!(
                refused(&[("user", "alice"), (name, value)]),
                Some(name.to_ascii_lowercase()),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn ordinary_settings_pass() {
        for options in [
            "",
            "-c statement_timeout=5000",
            "-c search_path=role",
            "-c application_name=role=x",
            "-capplication_name=my\\ role=1",
            "--search-path=public",
            "-c DateStyle=ISO",
        ] {
            assert_eq!(
                refused(&[("user", "alice"), ("options", options)]),
                None,
                "{options:?}"
            );
        }
        assert_eq!(
            refused(&[
                ("user", "role"),
                ("database", "session_authorization"),
                ("application_name", "role=x"),
                ("DateStyle", "ISO"),
                ("extra_float_digits", "3"),
                ("replication", "false"),
                ("replication", "off"),
                ("replication", "0"),
                ("replication", "no"),
            ]),
            None
        );
    }

    #[test]
    fn options_are_split_like_the_server_does() {
        assert_eq!(
            split_options("  -c a=b\\ c\t--x=\\\\y \\"),
            ["-c", "a=b c", "--x=\\y", ""]
        );
        assert_eq!(
            settings_in_options("-c a=1 -cb=2 --c-d=3 -Pce=4 -d 5 f=6"),
            ["a", "b", "c_d", "e", "f"]
        );
    }

    #[tokio::test]
    async fn startup_setting_role_is_refused_with_fatal_42501() {
        let pki = &testing::pki();
        let startup = messages::startup_message(&testing::params(&[
            ("user", "alice"),
            ("database", "postgres"),
            ("options", "-c role=dbward-auto-user"),
        ]));
        let (accepted, reply) = accept_with(pki, |mut client| async move {
            client.write_all(&messages::ssl_request()).await.unwrap();
            read_byte(&mut client).await;
            let mut tls = send_inside_tls(client, pki, &[], &startup).await;
            let mut reply = Vec::new();
            let _ = tls.read_to_end(&mut reply).await;
            reply
        })
        .await;
        assert!(
            matches!(accepted, Err(ProxyError::RefusedStartupParameter(_))),
            "{accepted:?}"
        );
        assert_eq!(reply[0], b'E');
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("C42501"), "{text}");
        assert!(text.contains("\"role\" (in options)"), "{text}");
    }
}
