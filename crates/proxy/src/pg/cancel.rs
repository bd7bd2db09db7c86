//! Forwarding a cancel request to the database server.
//!
//! PostgreSQL reads a CancelRequest before authentication (pg_hba.conf does not apply), so it
//! needs no client certificate. It gets no answer: the server closes the connection once it
//! has read the request.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::messages;
use super::upstream::start_tls;
use super::BackendKey;
use crate::error::UpstreamError;

/// How long to wait for the server to close the connection after the request, which is how
/// it acknowledges having read it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Sends a CancelRequest for the server session `key` to `addr`: inside TLS (after an
/// SSLRequest) when `tls` is given, otherwise in plaintext.
///
/// Success means the request was delivered, not that a query was cancelled; PostgreSQL
/// never says. There is no connect timeout here: callers wrap this in `tokio::time::timeout`.
pub async fn send_cancel(
    addr: impl ToSocketAddrs,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    key: BackendKey,
) -> Result<(), UpstreamError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    match tls {
        Some((config, server_name)) => {
            let stream = start_tls(stream, config, server_name).await?;
            deliver(stream, key).await
        }
        None => deliver(stream, key).await,
    }
}

async fn deliver<S>(mut stream: S, key: BackendKey) -> Result<(), UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&messages::cancel_request(key.process_id, key.secret_key))
        .await?;
    stream.flush().await?;
    // Wait for the server to hang up, so the request is known to have been read before the
    // connection goes away. Whatever happens while waiting, the request is already sent.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::startup::{accept, Accepted};
    use crate::testing;
    use crate::HandshakeLimits;
    use tokio::net::TcpListener;

    /// Listens once with the gateway's own listener logic and returns what arrived.
    async fn receive_one(
        pki: &testing::Pki,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Option<BackendKey>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = testing::server_config(pki, &[messages::ALPN_POSTGRESQL]);
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            match accept(socket, config, HandshakeLimits::default()).await {
                Ok(Accepted::Cancel(key)) => Some(key),
                _ => None,
            }
        });
        (addr, task)
    }

    const KEY: BackendKey = BackendKey {
        process_id: 5150,
        secret_key: 0x1234_5678,
    };

    #[tokio::test]
    async fn cancel_is_delivered_in_plaintext() {
        let pki = testing::pki();
        let (addr, received) = receive_one(&pki).await;
        send_cancel(addr, None, KEY).await.expect("sent");
        assert_eq!(received.await.unwrap(), Some(KEY));
    }

    #[tokio::test]
    async fn cancel_is_delivered_inside_tls() {
        let pki = testing::pki();
        let (addr, received) = receive_one(&pki).await;
        let tls = (testing::client_config(&pki, &[]), testing::localhost());
        send_cancel(addr, Some(tls), KEY).await.expect("sent");
        assert_eq!(received.await.unwrap(), Some(KEY));
    }

    #[tokio::test]
    async fn cancel_to_a_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(matches!(
            send_cancel(addr, None, KEY).await,
            Err(UpstreamError::Io(_))
        ));
    }
}
