//! The HTTPS API on `web_listen_addr`: TLS with the host certificate, optional client
//! certificates verified against the user CA. The verified identity of a connection is
//! attached to each of its requests; handlers decide what it may do.

mod handlers;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// What the TLS layer established about the peer of one connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Present when the client showed a certificate that chains to the user CA.
    pub identity: Option<dbward_pki::Identity>,
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    handlers::routes().with_state(gateway)
}

pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(gateway.clone());
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, "web accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(15), acceptor.accept(tcp))
                    .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::info!(%addr, %err, "web TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "web TLS handshake timed out");
                    return;
                }
            };
            // The handshake already verified the chain; this also checks the cluster and
            // reads the identity extension that the chain covers.
            let identity = tls.get_ref().1.peer_certificates().and_then(|chain| {
                dbward_pki::verify_user_cert(
                    chain,
                    &gateway.cas.user,
                    &gateway.cluster,
                    time::OffsetDateTime::now_utc(),
                )
                .ok()
            });
            let peer = Peer { addr, identity };
            let service = TowerToHyperService::new(app.layer(axum::Extension(peer)));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                res = conn => {
                    if let Err(err) = res {
                        tracing::debug!(%addr, %err, "web connection ended with error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
