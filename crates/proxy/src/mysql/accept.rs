//! The gateway's listener side of the MySQL handshake: greeting, SSLRequest, TLS with a
//! client certificate, and the HandshakeResponse read inside TLS.
//!
//! The gateway never checks a password: identity is the client certificate. Whatever auth
//! response the client computed is ignored, and the handshake ends with the OK packet the
//! caller sends once the session is let in ([`send_ok`]) or with an ERR packet
//! ([`send_err`]). Every stock client accepts an OK at that point, whichever plugin it used.

use std::sync::Arc;

use rand::Rng;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::packet::{
    self, capability, ErrPacket, HandshakeResponse, HandshakeV10, NATIVE_PASSWORD_PLUGIN,
    SERVER_STATUS_AUTOCOMMIT, SSL_REQUEST_LEN,
};
use crate::error::ProxyError;
use crate::handshake::{accept_tls, HandshakeLimits};

/// The message a client gets when it starts a session without TLS.
pub const TLS_REQUIRED_MESSAGE: &str =
    "dbward requires TLS with a client certificate: connect with --ssl-ca/--ssl-cert/--ssl-key";

/// `ER_SECURE_TRANSPORT_REQUIRED`.
pub const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
/// `ER_ACCESS_DENIED_ERROR`.
pub const ER_ACCESS_DENIED_ERROR: u16 = 1045;

/// Collation announced in the greeting: `utf8mb4_general_ci`.
const GREETING_CHARSET: u8 = 45;

/// Capabilities the gateway offers clients. Only what every supported server (MariaDB 10.2+,
/// MySQL 5.7+) also has, so that the upstream session can be opened with exactly the set the
/// client chose and bytes can be relayed unchanged. Compression, query attributes and
/// optional metadata change the command format and are left out.
pub const GATEWAY_CAPABILITIES: u32 = capability::LONG_PASSWORD
    | capability::FOUND_ROWS
    | capability::LONG_FLAG
    | capability::CONNECT_WITH_DB
    | capability::NO_SCHEMA
    | capability::ODBC
    | capability::LOCAL_FILES
    | capability::IGNORE_SPACE
    | capability::PROTOCOL_41
    | capability::INTERACTIVE
    | capability::SSL
    | capability::TRANSACTIONS
    | capability::SECURE_CONNECTION
    | capability::MULTI_STATEMENTS
    | capability::MULTI_RESULTS
    | capability::PS_MULTI_RESULTS
    | capability::PLUGIN_AUTH
    | capability::CONNECT_ATTRS
    | capability::PLUGIN_AUTH_LENENC_CLIENT_DATA
    | capability::SESSION_TRACK
    | capability::DEPRECATE_EOF;

/// What the gateway says about itself in its greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Server version string. Clients read the flavour from it (`…-MariaDB` switches
    /// mariadb-specific behaviour on), so it should resemble the database behind the gateway.
    pub server_version: String,
    /// Connection id the client sees (`CONNECTION_ID()` comes from the real server later).
    pub connection_id: u32,
}

/// The TLS stream of an accepted client.
pub type MysqlClientStream<S> = TlsStream<S>;

/// A client that completed TLS and sent its HandshakeResponse; it waits for OK or ERR.
#[derive(Debug)]
pub struct MysqlClient<S> {
    /// The client connection inside TLS, positioned after the HandshakeResponse.
    pub stream: MysqlClientStream<S>,
    /// User name from the handshake.
    pub user: String,
    /// Initial database, when the client named one.
    pub database: Option<String>,
    /// The capabilities the client chose (a subset of [`GATEWAY_CAPABILITIES`] unless the
    /// client ignores the greeting); the upstream session must use the same.
    pub capabilities: u32,
    /// The client's certificate chain, leaf first, as verified by rustls.
    pub client_certs: Vec<CertificateDer<'static>>,
    /// Collation id the client asked for.
    pub charset: u8,
    /// Connection attributes (`_client_name`, `program_name`, …) in the order sent.
    pub attrs: Vec<(String, String)>,
    /// Authentication plugin the client answered with (informational).
    pub auth_plugin: Option<String>,
    /// Sequence id of the next packet the gateway sends (the OK or ERR ending the handshake).
    pub sequence_id: u8,
}

/// Runs the server side of the handshake up to the client's HandshakeResponse, within
/// `limits.timeout`; `limits.max_startup_len` bounds each handshake packet.
///
/// A client that does not ask for TLS gets an ERR packet saying how to connect, and
/// [`ProxyError::TlsRequired`] is returned. TLS errors (including a missing or rejected
/// client certificate, if `tls` requires one) end the connection.
pub async fn accept<S>(
    stream: S,
    tls: Arc<ServerConfig>,
    greeting: Greeting,
    limits: HandshakeLimits,
) -> Result<MysqlClient<S>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    limits
        .within(handshake(stream, tls, greeting, limits))
        .await
}

async fn handshake<S>(
    mut stream: S,
    tls: Arc<ServerConfig>,
    greeting: Greeting,
    limits: HandshakeLimits,
) -> Result<MysqlClient<S>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let hello = HandshakeV10 {
        server_version: greeting.server_version,
        connection_id: greeting.connection_id,
        scramble: scramble(),
        capabilities: GATEWAY_CAPABILITIES,
        charset: GREETING_CHARSET,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: NATIVE_PASSWORD_PLUGIN.into(),
    };
    packet::write_packet(&mut stream, 0, &hello.encode()).await?;

    let request = match packet::read_packet(&mut stream, limits.max_startup_len).await {
        Ok(request) => request,
        // Health checks and port scans connect, read the greeting and leave.
        Err(ProxyError::Truncated) => return Err(ProxyError::ClosedBeforeStartup),
        Err(err) => return Err(err),
    };
    let capabilities = HandshakeResponse::peek_capabilities(&request.payload)
        .ok_or_else(|| ProxyError::Protocol("handshake response too short".into()))?;
    if capabilities & capability::SSL == 0 {
        send_err(
            &mut stream,
            request.seq.wrapping_add(1),
            ER_SECURE_TRANSPORT_REQUIRED,
            "HY000",
            TLS_REQUIRED_MESSAGE,
        )
        .await?;
        return Err(ProxyError::TlsRequired);
    }
    if request.payload.len() != SSL_REQUEST_LEN {
        // A full response with CLIENT_SSL set but no TLS: the client is confused or lying.
        return Err(ProxyError::Protocol(
            "handshake response claims TLS but did not start it".into(),
        ));
    }

    // Nothing past the SSLRequest has been read, so no plaintext reaches the TLS session.
    let (mut stream, client_certs) = accept_tls(stream, tls).await?;

    let response = packet::read_packet(&mut stream, limits.max_startup_len).await?;
    let decoded = HandshakeResponse::decode(&response.payload)?;
    Ok(MysqlClient {
        stream,
        user: decoded.user,
        database: decoded.database,
        capabilities: decoded.capabilities,
        client_certs,
        charset: decoded.charset,
        attrs: decoded.attrs,
        auth_plugin: decoded.auth_plugin,
        sequence_id: response.seq.wrapping_add(1),
    })
}

/// 20 printable random bytes, as servers generate them (some clients stop at a NUL).
fn scramble() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    (0..20).map(|_| rng.gen_range(0x21u8..=0x7e)).collect()
}

/// Writes an ERR packet (4.1 form with SQLSTATE) with sequence id `seq` and flushes it, so
/// that the client prints `ERROR <code> (<sqlstate>): <message>`. The caller closes the
/// connection afterwards.
///
/// `message` reaches the client as is: it must not carry secrets or internal detail.
pub async fn send_err<S>(
    stream: &mut S,
    seq: u8,
    code: u16,
    sqlstate: &str,
    message: &str,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let err = ErrPacket {
        code,
        sqlstate: sqlstate.to_string(),
        message: message.to_string(),
    };
    packet::write_packet(stream, seq, &err.encode()).await
}

/// Writes the OK packet that ends a client's handshake (or any command) with sequence id
/// `seq`, in the form the client's `capabilities` expect, with autocommit status, and
/// flushes it.
pub async fn send_ok<S>(stream: &mut S, seq: u8, capabilities: u32) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    packet::write_packet(
        stream,
        seq,
        &packet::ok_packet(capabilities, SERVER_STATUS_AUTOCOMMIT),
    )
    .await
}
