//! The PostgreSQL engine: the session pipeline's protocol steps spoken in PostgreSQL
//! (SSLRequest or direct TLS, StartupMessage, ErrorResponse, the startup reply with a
//! gateway-issued cancel key, the relay's tap), and the one request a connection may carry
//! instead of a session: a CancelRequest, forwarded to the server of the session it names
//! (through the store when another instance relays that session, see `cancel`).
//!
//! Protocol details live in `dbward_proxy::pg`; the order of things in `pipeline`.

use std::sync::Arc;

use dbward_model::Protocol;
use dbward_proxy::pg::{self, Accepted, BackendKey, RelayStats, TapEvent};
use dbward_proxy::{ProxyError, UpstreamError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::cancel::{self, CANCEL_FORWARD_WAIT};
use super::engine::{Backend, Engine, Hello, IdleTimeout, Login, Opening};
use super::live::CancelTarget;
use super::relay::SessionTap;
use super::upstream::UpstreamTarget;
use super::{pipeline, SessionError};
use crate::Gateway;

pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    pipeline::serve(gw, PostgresEngine { tls }, listener, shutdown).await;
}

/// The PostgreSQL listener's state.
pub(crate) struct PostgresEngine {
    tls: Arc<rustls::ServerConfig>,
}

/// A PostgreSQL client after its StartupMessage.
pub(crate) struct PgClient {
    stream: pg::ClientTlsStream<TcpStream>,
    /// The startup parameters, passed on to the server (but `user` and `database`).
    params: Vec<(String, String)>,
}

/// What the relay saw the client send, for the session's audit.
fn tapped(tap: &SessionTap, event: TapEvent<'_>) {
    match event {
        TapEvent::Query { sql, .. } | TapEvent::Parse { sql, .. } => tap.query(sql),
        // No SQL text: recorded by the function's OID (`pg_proc.oid`).
        TapEvent::FunctionCall { oid } => tap.query(&format!("FunctionCall oid {oid}")),
        TapEvent::Terminate => tap.goodbye(),
    }
}

impl Engine for PostgresEngine {
    const PROTOCOL: Protocol = Protocol::Postgres;
    type Client = PgClient;
    /// The gateway-issued key of the session to cancel.
    type Request = BackendKey;
    type Upstream = pg::Upstream<TcpStream>;

    async fn accept(&self, gw: &Gateway, tcp: TcpStream) -> Result<Opening<Self>, ProxyError> {
        let limits = pg::HandshakeLimits {
            timeout: gw.config.limits.handshake_timeout,
            ..pg::HandshakeLimits::default()
        };
        let startup = match pg::accept(tcp, self.tls.clone(), limits).await? {
            Accepted::Cancel(key) => return Ok(Opening::Request(key)),
            Accepted::Startup(startup) => *startup,
        };
        let param = |key: &str| startup.param(key).unwrap_or("").to_string();
        let (db_user, db_name) = (param("user"), param("database"));
        let pg::ClientStartup {
            stream,
            params,
            client_certs,
            ..
        } = startup;
        Ok(Opening::Session(Hello {
            client: PgClient { stream, params },
            client_certs,
            db_user,
            db_name,
        }))
    }

    async fn serve_request(&self, gw: &Gateway, key: BackendKey) {
        let Some(target) = gw.sessions.cancel_target(key) else {
            // Perhaps a session another instance relays.
            return cancel::pass_on(gw, key).await;
        };
        if let Err(err) = target.send(CANCEL_FORWARD_WAIT).await {
            tracing::info!(%err, "cancel request could not be forwarded");
        }
    }

    async fn send_error(client: &mut PgClient, err: &SessionError) {
        let _ = pg::send_error_with_detail(
            &mut client.stream,
            err.sqlstate(),
            &err.user_message(),
            err.detail(),
        )
        .await;
    }

    async fn connect(
        &self,
        _gw: &Gateway,
        target: &UpstreamTarget,
        client: &PgClient,
        login: Login<'_>,
    ) -> Result<Self::Upstream, UpstreamError> {
        let mut params: Vec<(String, String)> = client
            .params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .cloned()
            .collect();
        params.push(("user".into(), login.db_user.to_string()));
        params.push(("database".into(), login.db_name.to_string()));
        let tls = target.tls.clone();
        pg::upstream::connect(
            target.addr.as_str(),
            tls,
            target.server_name.clone(),
            &params,
        )
        .await
    }

    fn backend(target: &UpstreamTarget, upstream: &Self::Upstream) -> Backend {
        let key = upstream.backend_key;
        Backend {
            id: key.map(|key| i64::from(key.process_id)),
            cancel: key.map(|key| CancelTarget {
                addr: target.addr.clone(),
                tls: Some((target.tls.clone(), target.server_name.clone())),
                key,
            }),
        }
    }

    async fn send_ready(
        client: &mut PgClient,
        upstream: &Self::Upstream,
        cancel_key: Option<BackendKey>,
    ) -> std::io::Result<()> {
        // A server that sent no key of its own still gets the client a well-formed one.
        let key = cancel_key.unwrap_or_else(pg::random_backend_key);
        pg::write_startup_reply(&mut client.stream, &upstream.parameters, key).await
    }

    async fn relay(
        mut client: PgClient,
        mut upstream: Self::Upstream,
        tap: SessionTap,
        idle: Option<IdleTimeout>,
    ) -> RelayStats {
        let tap = |event: TapEvent<'_>| tapped(&tap, event);
        let idle = idle.map(|idle| dbward_proxy::IdleLimit {
            after: idle.after,
            goodbye: pg::idle_goodbye(&idle.message),
        });
        pg::relay_with_idle_limit(&mut client.stream, &mut upstream.stream, idle.as_ref(), tap)
            .await
    }
}
