//! The HTTPS API on `web_listen_addr`: TLS with the host certificate, optional client
//! certificates verified against the user CA. The verified identity of a connection is
//! attached to each of its requests; handlers decide what it may do. Connections are bounded
//! in time and number by the `limits:` of the configuration (see [`connection`]).

mod handlers;

pub use handlers::PASSWORD_REQUIRED;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::listen::{self, Pending};
use crate::Gateway;

/// What the TLS layer established about the peer of one connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Present when the client showed a certificate that chains to the user CA.
    pub identity: Option<dbward_pki::Identity>,
    /// A user of a trusted root cluster: the identity their root's CA vouches for, and who
    /// they are for this cluster. Never set for this cluster's own certificates.
    pub remote: Option<(dbward_pki::Identity, crate::trust::RemoteUser)>,
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
    let gate = gateway.pending.clone();
    let stop = shutdown.clone();
    listen::accept_loop(
        listener,
        gate,
        shutdown,
        "web",
        move |tcp, addr, pending| {
            connection(
                gateway.clone(),
                app.clone(),
                acceptor.clone(),
                tcp,
                addr,
                pending,
                stop.clone(),
            )
        },
    )
    .await;
}

/// One HTTPS connection, from TLS handshake to close.
///
/// Time bounds (`limits:`): the TLS handshake and the first request's headers must arrive
/// within `handshake_timeout` of the accept; after that, a connection with no request in
/// flight for `idle_timeout` is closed (for HTTP/1 also a request whose headers trickle in
/// slower than that). A client without a certificate keeps its pending slot for the whole
/// connection, so anonymous connections (ping, login) stay within the pending caps; a
/// certificate holder has shown who it is and frees its slot after the handshake.
async fn connection(
    gateway: Arc<Gateway>,
    app: Router,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    pending: Pending,
    shutdown: CancellationToken,
) {
    let limits = gateway.config.limits.clone();
    let accepted_at = Instant::now();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
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
    // The handshake already verified the chain; this also checks the cluster and reads the
    // identity extension that the chain covers.
    let identity = tls.get_ref().1.peer_certificates().and_then(|chain| {
        dbward_pki::verify_user_cert(
            chain,
            &gateway.cas.user,
            &gateway.cluster,
            time::OffsetDateTime::now_utc(),
        )
        .ok()
    });
    let remote = match (&identity, tls.get_ref().1.peer_certificates()) {
        (None, Some(chain)) => match gateway.catalog.snapshot().await {
            Ok(snapshot) => crate::trust::verify_remote(&snapshot, chain),
            Err(_) => None,
        },
        _ => None,
    };
    let anonymous = identity.is_none() && remote.is_none();
    let pending = if anonymous {
        Some(pending)
    } else {
        drop(pending);
        None
    };
    let activity = Arc::new(Activity::new());
    let app = app.layer(axum::Extension(Peer {
        addr,
        identity,
        remote,
    }));
    let request_timeout = limits.idle_timeout;
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let busy = activity.request_started();
            async move {
                let response = if anonymous {
                    // A body trickling in must not hold an anonymous slot for ever.
                    match tokio::time::timeout(request_timeout, app.oneshot(req)).await {
                        Ok(response) => response,
                        Err(_) => Ok(request_timed_out()),
                    }
                } else {
                    app.oneshot(req).await
                };
                drop(busy);
                response
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    loop {
        let check_at = activity.next_check(accepted_at, &limits);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(%addr, %err, "web connection ended with error");
                }
                break;
            }
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(check_at.into()) => {
                match activity.expired(accepted_at, &limits) {
                    Some(why) => {
                        tracing::debug!(%addr, why, "web connection closed");
                        break;
                    }
                    None => continue,
                }
            }
        }
    }
    drop(pending);
}

fn request_timed_out() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(crate::api::ApiError {
            error: "the request took too long to arrive".into(),
        }),
    )
        .into_response()
}

/// Requests in flight on one connection and when the last one began or ended.
struct Activity {
    started_any: AtomicBool,
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// Held while a request is served.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            started_any: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.started_any.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection may next have run out of time.
    fn next_check(&self, accepted_at: Instant, limits: &dbward_model::Limits) -> Instant {
        if !self.started_any.load(Ordering::SeqCst) {
            accepted_at + limits.handshake_timeout
        } else if self.in_flight.load(Ordering::SeqCst) > 0 {
            Instant::now() + limits.idle_timeout
        } else {
            self.last() + limits.idle_timeout
        }
    }

    /// Why the connection is to be closed now, if it is.
    fn expired(&self, accepted_at: Instant, limits: &dbward_model::Limits) -> Option<&'static str> {
        let now = Instant::now();
        if !self.started_any.load(Ordering::SeqCst) {
            return (now >= accepted_at + limits.handshake_timeout)
                .then_some("no request within the handshake timeout");
        }
        (self.in_flight.load(Ordering::SeqCst) == 0 && now >= self.last() + limits.idle_timeout)
            .then_some("idle")
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}
