//! The gateway's own connection to a MySQL or MariaDB server: greeting, SSLRequest, TLS with
//! the gateway's client certificate, and a HandshakeResponse with an empty auth response.
//!
//! The server is expected to know the user by its certificate (`REQUIRE SUBJECT`) with no
//! password, so an empty response for whatever plugin it names authenticates it. A server
//! that then asks for more (a password) gets an empty answer and refuses with an ERR, which
//! is returned for the caller to relay.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::accept::GATEWAY_CAPABILITIES;
use super::packet::{
    self, capability, AuthSwitch, ErrPacket, HandshakeResponse, HandshakeV10,
    AUTH_MORE_DATA_HEADER, AUTH_SWITCH_HEADER, ERR_HEADER, MAX_HANDSHAKE_PACKET, OK_HEADER,
};
use crate::error::UpstreamError;

/// `caching_sha2_password` fast-auth result: authenticated, OK follows.
const FAST_AUTH_SUCCESS: u8 = 0x03;
/// `caching_sha2_password` fast-auth result: send the password.
const PERFORM_FULL_AUTH: u8 = 0x04;

/// Capabilities that change how later packets look; client and server must agree on every
/// one of them for an unchanged relay.
const FORMAT_CAPABILITIES: u32 = capability::PROTOCOL_41
    | capability::TRANSACTIONS
    | capability::SESSION_TRACK
    | capability::DEPRECATE_EOF
    | capability::MULTI_RESULTS
    | capability::PS_MULTI_RESULTS;

/// Who the gateway logs in as, and with which session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLogin<'a> {
    /// Database user (its certificate's CN is this name).
    pub user: &'a str,
    /// Initial database.
    pub database: Option<&'a str>,
    /// The capabilities the client chose ([`super::MysqlClient::capabilities`]).
    pub client_capabilities: u32,
    /// The collation the client chose ([`super::MysqlClient::charset`]).
    pub charset: u8,
}

/// An authenticated session with the database server, ready for commands.
#[derive(Debug)]
pub struct MysqlUpstream<S> {
    /// The TLS stream, positioned after the server's OK packet.
    pub stream: TlsStream<S>,
    /// The server's version string as sent in its greeting (MariaDB 10 and 11 prefix theirs
    /// with `5.5.5-`).
    pub server_version: String,
    /// The server's connection id.
    pub connection_id: u32,
    /// The capabilities the session was opened with.
    pub capabilities: u32,
    /// Status flags of the server's OK packet.
    pub status: u16,
}

/// Connects to the server at `addr` and logs in as `login.user` with the client certificate
/// in `tls`, verifying the server as `server_name`.
///
/// There is no timeout here: callers wrap this in `tokio::time::timeout`.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    login: &UpstreamLogin<'_>,
) -> Result<MysqlUpstream<TcpStream>, UpstreamError> {
    let stream = TcpStream::connect(addr).await?;
    // Queries and results are small interactive writes; do not hold them back.
    stream.set_nodelay(true)?;
    handshake(stream, tls, server_name, login).await
}

async fn read_greeting<S>(stream: &mut S) -> Result<HandshakeV10, UpstreamError>
where
    S: AsyncRead + Unpin,
{
    let greeting = packet::read_packet(stream, MAX_HANDSHAKE_PACKET).await?;
    if greeting.payload.first() == Some(&ERR_HEADER) {
        // Too many connections, host blocked, …: refused before any handshake.
        return Err(server_error(&greeting.payload));
    }
    Ok(HandshakeV10::decode(&greeting.payload)?)
}

/// [`connect`] on an already open stream.
pub async fn handshake<S>(
    mut stream: S,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    login: &UpstreamLogin<'_>,
) -> Result<MysqlUpstream<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let greeting = read_greeting(&mut stream).await?;
    if greeting.capabilities & capability::SSL == 0 {
        return Err(UpstreamError::TlsNotSupported);
    }
    let wanted = login.client_capabilities & GATEWAY_CAPABILITIES;
    let missing = wanted & FORMAT_CAPABILITIES & !greeting.capabilities;
    if missing != 0 {
        return Err(UpstreamError::Protocol(format!(
            "server lacks capabilities {missing:#x} the client negotiated"
        )));
    }
    let capabilities = (wanted & greeting.capabilities)
        | capability::PROTOCOL_41
        | capability::SECURE_CONNECTION
        | capability::SSL
        | (greeting.capabilities & capability::PLUGIN_AUTH);

    let plugin = (capabilities & capability::PLUGIN_AUTH != 0)
        .then(|| greeting.auth_plugin.clone())
        .filter(|plugin| !plugin.is_empty());
    let response = HandshakeResponse {
        capabilities,
        charset: login.charset,
        user: login.user.to_string(),
        auth_response: Vec::new(),
        database: login.database.map(str::to_string),
        auth_plugin: plugin,
        attrs: Vec::new(),
    };
    // The SSLRequest must announce exactly the capabilities of the response that follows
    // it; MariaDB refuses the handshake otherwise.
    let mut seq = 1u8;
    packet::write_packet(
        &mut stream,
        seq,
        &packet::ssl_request(response.encode_capabilities(), login.charset),
    )
    .await?;
    let mut stream = TlsConnector::from(tls)
        .connect(server_name, stream)
        .await
        .map_err(UpstreamError::TlsHandshake)?;

    seq = seq.wrapping_add(1);
    packet::write_packet(&mut stream, seq, &response.encode()).await?;

    loop {
        let reply = packet::read_packet(&mut stream, MAX_HANDSHAKE_PACKET).await?;
        seq = reply.seq;
        match reply.payload.first().copied() {
            Some(OK_HEADER) => {
                let status = packet::ok_status(&reply.payload)?;
                return Ok(MysqlUpstream {
                    stream,
                    server_version: greeting.server_version,
                    connection_id: greeting.connection_id,
                    capabilities: response.encode_capabilities(),
                    status,
                });
            }
            Some(ERR_HEADER) => return Err(server_error(&reply.payload)),
            Some(AUTH_SWITCH_HEADER) => {
                let switch = AuthSwitch::decode(&reply.payload)?;
                tracing::debug!(plugin = %switch.plugin, "database switched authentication plugin");
                seq = seq.wrapping_add(1);
                packet::write_packet(&mut stream, seq, &empty_auth_response(&switch.plugin))
                    .await?;
            }
            Some(AUTH_MORE_DATA_HEADER) => match reply.payload.get(1).copied() {
                Some(FAST_AUTH_SUCCESS) => {}
                Some(PERFORM_FULL_AUTH) => {
                    // The empty password, NUL-terminated, over TLS.
                    seq = seq.wrapping_add(1);
                    packet::write_packet(&mut stream, seq, &[0]).await?;
                }
                _ => {
                    return Err(UpstreamError::Protocol(
                        "unexpected authentication data from the server".into(),
                    ))
                }
            },
            _ => {
                return Err(UpstreamError::Protocol(
                    "unexpected packet during the handshake".into(),
                ))
            }
        }
    }
}

/// The answer for an empty password under `plugin`: nothing, except for the cleartext
/// plugin, whose password is NUL-terminated.
fn empty_auth_response(plugin: &str) -> Vec<u8> {
    if plugin == "mysql_clear_password" {
        vec![0]
    } else {
        Vec::new()
    }
}

fn server_error(payload: &[u8]) -> UpstreamError {
    match ErrPacket::decode(payload) {
        Ok(err) => UpstreamError::MysqlServer {
            code: err.code,
            sqlstate: err.sqlstate,
            message: err.message,
        },
        Err(err) => err.into(),
    }
}
