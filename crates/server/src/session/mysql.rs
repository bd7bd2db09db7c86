//! The MySQL/MariaDB engine: the session pipeline's protocol steps spoken in MySQL (greeting,
//! TLS upgrade, HandshakeResponse, ERR and OK packets, the relay's tap and the commands it
//! refuses). The greeting repeats the version of the last server the gateway reached, so
//! clients see the flavour they will talk to.
//!
//! Protocol details live in `dbward_proxy::mysql`; the order of things in `pipeline`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dbward_model::Protocol;
use dbward_proxy::mysql::{self, Greeting, MysqlTap, MysqlUpstream, UpstreamLogin};
use dbward_proxy::pg::{BackendKey, HandshakeLimits, RelayStats};
use dbward_proxy::{ProxyError, UpstreamError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::engine::{Backend, Engine, Hello, IdleTimeout, Login, Opening};
use super::relay::SessionTap;
use super::upstream::UpstreamTarget;
use super::{pipeline, SessionError};
use crate::Gateway;

/// What the greeting says before the gateway has seen a real server: a MariaDB, as MariaDB
/// presents itself to MySQL-protocol clients.
pub const DEFAULT_SERVER_VERSION: &str = "5.5.5-10.11.0-MariaDB-dbward";

pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let engine = MysqlEngine {
        tls,
        next_connection_id: AtomicU32::new(1),
    };
    pipeline::serve(gw, engine, listener, shutdown).await;
}

/// The MySQL listener's state.
pub(crate) struct MysqlEngine {
    tls: Arc<rustls::ServerConfig>,
    /// The connection id the next greeting announces.
    next_connection_id: AtomicU32,
}

/// A MySQL client after its HandshakeResponse, waiting for OK or ERR.
pub(crate) struct MysqlClient {
    stream: mysql::MysqlClientStream<TcpStream>,
    capabilities: u32,
    charset: u8,
    /// The sequence id of the OK or ERR that ends the handshake.
    sequence_id: u8,
}

/// What the relay saw the client send, for the session's audit.
fn tapped(tap: &SessionTap, event: MysqlTap<'_>) {
    match event {
        MysqlTap::Query { sql, .. } | MysqlTap::Prepare { sql, .. } => tap.query(sql),
        MysqlTap::Quit => tap.goodbye(),
        MysqlTap::Refused { command } => {
            tap.refused(command, mysql::relay::refused_message(command))
        }
    }
}

impl Engine for MysqlEngine {
    const PROTOCOL: Protocol = Protocol::Mysql;
    type Client = MysqlClient;
    /// MySQL connections carry nothing but sessions.
    type Request = Infallible;
    type Upstream = MysqlUpstream<TcpStream>;

    async fn accept(&self, gw: &Gateway, tcp: TcpStream) -> Result<Opening<Self>, ProxyError> {
        let server_version = gw
            .mysql_version
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|_| DEFAULT_SERVER_VERSION.to_string());
        let greeting = Greeting {
            server_version,
            connection_id: self
                .next_connection_id
                .fetch_add(1, Ordering::Relaxed)
                .max(1),
        };
        let limits = HandshakeLimits {
            timeout: gw.config.limits.handshake_timeout,
            ..HandshakeLimits::default()
        };
        let hello = mysql::accept(tcp, self.tls.clone(), greeting, limits).await?;
        Ok(Opening::Session(Hello {
            client: MysqlClient {
                stream: hello.stream,
                capabilities: hello.capabilities,
                charset: hello.charset,
                sequence_id: hello.sequence_id,
            },
            client_certs: hello.client_certs,
            db_user: hello.user,
            db_name: hello.database.unwrap_or_default(),
        }))
    }

    async fn serve_request(&self, _gw: &Gateway, request: Infallible) {
        match request {}
    }

    async fn send_error(client: &mut MysqlClient, err: &SessionError) {
        let (code, sqlstate) = err.mysql_code();
        let message = err.user_message();
        let seq = client.sequence_id;
        let _ = mysql::send_err(&mut client.stream, seq, code, sqlstate, &message).await;
    }

    async fn connect(
        &self,
        gw: &Gateway,
        target: &UpstreamTarget,
        client: &MysqlClient,
        login: Login<'_>,
    ) -> Result<Self::Upstream, UpstreamError> {
        let login = UpstreamLogin {
            user: login.db_user,
            database: Some(login.db_name).filter(|d| !d.is_empty()),
            client_capabilities: client.capabilities,
            charset: client.charset,
        };
        let tls = target.tls.clone();
        let upstream = mysql::upstream::connect(
            target.addr.as_str(),
            tls,
            target.server_name.clone(),
            &login,
        )
        .await?;
        // Later greetings announce the flavour and version clients will talk to.
        if let Ok(mut version) = gw.mysql_version.write() {
            if *version != upstream.server_version {
                version.clone_from(&upstream.server_version);
            }
        }
        Ok(upstream)
    }

    fn backend(_target: &UpstreamTarget, upstream: &Self::Upstream) -> Backend {
        Backend {
            id: Some(i64::from(upstream.connection_id)),
            cancel: None,
        }
    }

    async fn send_ready(
        client: &mut MysqlClient,
        upstream: &Self::Upstream,
        _cancel_key: Option<BackendKey>,
    ) -> std::io::Result<()> {
        let seq = client.sequence_id;
        mysql::send_ok(&mut client.stream, seq, upstream.capabilities).await
    }

    async fn relay(
        mut client: MysqlClient,
        mut upstream: Self::Upstream,
        tap: SessionTap,
        idle: Option<IdleTimeout>,
    ) -> RelayStats {
        let tap = |event: MysqlTap<'_>| tapped(&tap, event);
        let idle = idle.map(|idle| dbward_proxy::IdleLimit {
            after: idle.after,
            goodbye: mysql::idle_goodbye(&idle.message),
        });
        mysql::relay_with_idle_limit(&mut client.stream, &mut upstream.stream, idle.as_ref(), tap)
            .await
    }
}
