//! The client side of `dbward proxy db` for PostgreSQL: a local, plain-TCP client is bridged
//! to the gateway over TLS with the user's database certificate.
//!
//! The local client's SSLRequest and GSSENCRequest are declined (`N`), so it speaks in the
//! clear; the bridge sends the gateway an SSLRequest, upgrades, forwards the startup packet (or
//! a CancelRequest: psql's Ctrl-C arrives on a new connection) and relays bytes unchanged.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::messages::{self, ssl_request, StartupPacket, MAX_STARTUP_PACKET_LEN};
use crate::error::ProxyError;
use crate::relay::RelayStats;

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
    let first = read_until_startup(&mut client).await?;
    let mut gateway = TcpStream::connect(gateway_addr).await?;
    gateway.set_nodelay(true)?;
    gateway.write_all(&ssl_request()).await?;
    let mut answer = [0u8; 1];
    gateway.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(ProxyError::Protocol("the gateway refused TLS".to_string()));
    }
    let mut tls_stream = TlsConnector::from(tls)
        .connect(server_name, gateway)
        .await
        .map_err(ProxyError::TlsHandshake)?;
    tls_stream.write_all(&first).await?;
    Ok(crate::relay::relay_inspecting(&mut client, &mut tls_stream, |_| Ok(())).await)
}

/// Reads startup packets until one that is not an encryption request, declining those;
/// returns the packet's bytes, length included, for the gateway to judge.
async fn read_until_startup<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
) -> Result<Vec<u8>, ProxyError> {
    loop {
        let body = messages::read_startup_packet(client, MAX_STARTUP_PACKET_LEN).await?;
        if let Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) =
            messages::decode_startup_packet(&body)
        {
            client.write_all(b"N").await?;
            continue;
        }
        // The length field counts itself; the reader checked it fits.
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        return Ok(packet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::gssenc_request;

    #[tokio::test]
    async fn encryption_requests_are_declined_and_the_startup_packet_is_kept_whole() {
        let (mut local, mut remote) = tokio::io::duplex(1024);
        let mut startup = Vec::new();
        let body = b"\x00\x03\x00\x00user\x00alice\x00\x00";
        startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        startup.extend_from_slice(body);
        let mut sent = Vec::new();
        sent.extend_from_slice(&gssenc_request());
        sent.extend_from_slice(&ssl_request());
        sent.extend_from_slice(&startup);
        remote.write_all(&sent).await.unwrap();
        let packet = read_until_startup(&mut local).await.unwrap();
        assert_eq!(packet, startup);
        let mut answers = [0u8; 2];
        remote.read_exact(&mut answers).await.unwrap();
        assert_eq!(&answers, b"NN");
    }
}
