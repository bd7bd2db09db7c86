//! What the session pipeline asks of a database engine: its wire protocol at the points where
//! a session touches it (handshake, connecting upstream, the ready and error replies, the
//! relay with its tap). Everything an engine does not implement here is shared, in
//! `pipeline` and the step modules it calls.
//!
//! An implementation speaks its protocol through `dbward_proxy` and decides nothing: who may
//! connect, as whom, and what happens around the protocol work belong to the pipeline.

use std::future::Future;

use dbward_model::Protocol;
use dbward_proxy::pg::{BackendKey, RelayStats};
use dbward_proxy::{ProxyError, UpstreamError};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::live::CancelTarget;
use super::relay::SessionTap;
use super::upstream::UpstreamTarget;
use super::SessionError;
use crate::Gateway;

/// One engine's protocol, as a session uses it. A value of the implementing type is the
/// listener's state (its TLS configuration, counters), shared by its connections.
pub(crate) trait Engine: Send + Sync + 'static {
    /// The protocol of the `db` resources this engine serves.
    const PROTOCOL: Protocol;

    /// A client after its handshake, waiting for the reply that starts or refuses its session.
    type Client: Send + Sync;
    /// A connection that asks for something other than a session (PostgreSQL's
    /// CancelRequest); it carries nothing more.
    type Request: Send + Sync;
    /// The gateway's own session with the database server, ready for the client's commands.
    type Upstream: Send + Sync;

    /// Takes a new connection through TLS to the point where it says what it wants. Bounded
    /// by `limits.handshake_timeout`.
    fn accept(
        &self,
        gw: &Gateway,
        tcp: TcpStream,
    ) -> impl Future<Output = Result<Opening<Self>, ProxyError>> + Send;

    /// Serves a [`Opening::Request`], once the connection's pending slot is freed.
    fn serve_request(
        &self,
        gw: &Gateway,
        request: Self::Request,
    ) -> impl Future<Output = ()> + Send;

    /// Refuses the session: the error reply the client reads. A client that already left
    /// is not an error.
    fn send_error(client: &mut Self::Client, err: &SessionError)
        -> impl Future<Output = ()> + Send;

    /// Opens the gateway's session with the database server as `login.db_user`, with the
    /// settings the client chose. No timeout here: the caller bounds it.
    fn connect(
        &self,
        gw: &Gateway,
        target: &UpstreamTarget,
        client: &Self::Client,
        login: Login<'_>,
    ) -> impl Future<Output = Result<Self::Upstream, UpstreamError>> + Send;

    /// The server-side connection an upstream session runs on, for the store's record of
    /// live sessions, cancel requests and the end of the session.
    fn backend(target: &UpstreamTarget, upstream: &Self::Upstream) -> Backend;

    /// Tells the client its session is ready. `cancel_key` is the key the gateway issued for
    /// this session, when the engine has cancel requests.
    fn send_ready(
        client: &mut Self::Client,
        upstream: &Self::Upstream,
        cancel_key: Option<BackendKey>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Copies bytes both ways until either side closes, reporting what the client sends to
    /// `tap`. With `idle`, a client that sends nothing that long is told so, in the
    /// protocol's error message carrying `idle_message`, and the session ends. Both
    /// connections are closed when the returned future ends or is dropped.
    fn relay(
        client: Self::Client,
        upstream: Self::Upstream,
        tap: SessionTap,
        idle: Option<IdleTimeout>,
    ) -> impl Future<Output = RelayStats> + Send;
}

/// What a new connection turned out to be.
pub(crate) enum Opening<E: Engine + ?Sized> {
    /// A client that wants a session.
    Session(Hello<E::Client>),
    /// A one-off request (see [`Engine::Request`]).
    Request(E::Request),
}

/// A client at the end of its handshake: its connection, its certificate chain and what its
/// startup packet asked for (empty when it did not say).
pub(crate) struct Hello<C> {
    pub client: C,
    pub client_certs: Vec<CertificateDer<'static>>,
    pub db_user: String,
    pub db_name: String,
}

/// Who the gateway logs in as upstream: the provisioned (or requested) database user, and
/// the database the decision allows (empty: the server's default).
#[derive(Clone, Copy)]
pub(crate) struct Login<'a> {
    pub db_user: &'a str,
    pub db_name: &'a str,
}

/// The server-side connection of one session.
pub(crate) struct Backend {
    /// PostgreSQL's backend process id, MariaDB's connection id: what the store records and
    /// what the admin ends after the session.
    pub id: Option<i64>,
    /// Where the engine's cancel request for this session goes (PostgreSQL only).
    pub cancel: Option<CancelTarget>,
}

/// The role option `client_idle_timeout` of a session: how long the client may send nothing,
/// and the text it is told when it did.
#[derive(Debug, Clone)]
pub(crate) struct IdleTimeout {
    pub after: std::time::Duration,
    pub message: String,
}
