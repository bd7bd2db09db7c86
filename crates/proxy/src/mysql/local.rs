//! The client side of `dbward proxy db` for MySQL/MariaDB: a local, plain-TCP client is
//! bridged to the gateway, and the bridge does the TLS upgrade with the user's database
//! certificate in the middle of the MySQL handshake (where the protocol puts it).
//!
//! ```text
//! local client ── plain ──▶ bridge ── SSLRequest, TLS (user certificate) ──▶ gateway
//! ```
//!
//! The greeting reaches the local client without the SSL capability, so it answers in the
//! clear; the bridge sends the gateway an SSLRequest, upgrades, and forwards the client's
//! handshake response inside TLS. The gateway's answer to it carries a sequence id one higher
//! than the local client expects (the SSLRequest took one), so it is renumbered; after that
//! every command starts again at sequence id 0 and bytes are relayed unchanged.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::packet::{
    self, capability, HandshakeResponse, HandshakeV10, MAX_HANDSHAKE_PACKET, SSL_REQUEST_LEN,
};
use crate::error::ProxyError;
use crate::relay::{RelayEnd, RelayStats, Side};

/// Bridges one local connection to the gateway at `gateway_addr`, returning when either side
/// closes.
pub async fn bridge<C>(
    mut client: C,
    gateway_addr: &str,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<RelayStats, ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut gateway = TcpStream::connect(gateway_addr).await?;
    gateway.set_nodelay(true)?;

    // The greeting, without SSL for the local leg.
    let greeting = packet::read_packet(&mut gateway, MAX_HANDSHAKE_PACKET).await?;
    let mut hello = HandshakeV10::decode(&greeting.payload)?;
    if hello.capabilities & capability::SSL == 0 {
        return Err(ProxyError::Protocol(
            "the gateway did not offer TLS".to_string(),
        ));
    }
    hello.capabilities &= !capability::SSL;
    packet::write_packet(&mut client, greeting.seq, &hello.encode()).await?;

    // The client's handshake response, in the clear on the local leg.
    let response = packet::read_packet(&mut client, MAX_HANDSHAKE_PACKET).await?;
    let client_caps = match HandshakeResponse::peek_capabilities(&response.payload) {
        Some(capabilities) if response.payload.len() >= SSL_REQUEST_LEN => {
            capabilities | capability::SSL
        }
        _ => {
            return Err(ProxyError::Protocol(
                "the client sent a pre-4.1 handshake response".to_string(),
            ))
        }
    };
    let charset = response.payload[8];

    // Upgrade the gateway leg, then forward the response inside TLS with SSL announced:
    // the SSLRequest must carry exactly the capabilities of the response that follows it.
    packet::write_packet(
        &mut gateway,
        response.seq,
        &packet::ssl_request(client_caps, charset),
    )
    .await?;
    let mut tls_stream = TlsConnector::from(tls)
        .connect(server_name, gateway)
        .await
        .map_err(ProxyError::TlsHandshake)?;
    let mut forwarded = response.payload.clone();
    forwarded[..4].copy_from_slice(&client_caps.to_le_bytes());
    packet::write_packet(&mut tls_stream, response.seq.wrapping_add(1), &forwarded).await?;

    // The gateway's verdict (OK or ERR), renumbered for the local client.
    let verdict = packet::read_packet(&mut tls_stream, MAX_HANDSHAKE_PACKET).await?;
    packet::write_packet(&mut client, verdict.seq.wrapping_sub(1), &verdict.payload).await?;
    if verdict.payload.first() != Some(&packet::OK_HEADER) {
        return Ok(RelayStats {
            client_to_server: 0,
            server_to_client: 0,
            end: RelayEnd::Closed(Side::Server),
        });
    }
    Ok(crate::relay::relay_inspecting(&mut client, &mut tls_stream, |_| Ok(())).await)
}
