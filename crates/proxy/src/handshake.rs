//! What both engines' client handshakes share: their bounds ([`HandshakeLimits`]) and the
//! server side of the TLS handshake that yields the client's certificate chain.
//!
//! When TLS starts and what the client sends inside it belongs to each engine's `accept`;
//! who the certificate names is decided by the caller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::ProxyError;

/// Largest handshake packet accepted by default: PostgreSQL's own limit on a startup packet
/// (`MAX_STARTUP_PACKET_LENGTH`); a MySQL HandshakeResponse is far smaller.
pub const DEFAULT_MAX_STARTUP_LEN: usize = 10_000;

/// Bounds on a client handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Time allowed from the first byte to the end of the client's handshake (a PostgreSQL
    /// StartupMessage, a MySQL HandshakeResponse).
    pub timeout: Duration,
    /// Largest handshake packet accepted.
    pub max_startup_len: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(30),
            max_startup_len: DEFAULT_MAX_STARTUP_LEN,
        }
    }
}

impl HandshakeLimits {
    /// Runs `handshake` within [`HandshakeLimits::timeout`].
    pub(crate) async fn within<T>(
        self,
        handshake: impl Future<Output = Result<T, ProxyError>>,
    ) -> Result<T, ProxyError> {
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::HandshakeTimeout(self.timeout)),
        }
    }
}

/// Completes the server side of a TLS handshake on `stream` and returns the TLS stream with
/// the client's certificate chain, leaf first, as verified by rustls (empty when `tls` does
/// not ask for client certificates). A rejected certificate fails the handshake.
pub(crate) async fn accept_tls<S>(
    stream: S,
    tls: Arc<ServerConfig>,
) -> Result<(TlsStream<S>, Vec<CertificateDer<'static>>), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = TlsAcceptor::from(tls)
        .accept(stream)
        .await
        .map_err(ProxyError::TlsHandshake)?;
    let client_certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(<[CertificateDer<'static>]>::to_vec)
        .unwrap_or_default();
    Ok((stream, client_certs))
}
