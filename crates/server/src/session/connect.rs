//! Step 4 of the pipeline: the gateway's own session with the database server, as the user
//! provisioning made ready, over TLS with a db-client certificate (`upstream`).
//!
//! The connection is opened (TCP, TLS) while the user is activated, when it may be (see
//! [`open_early`]); the login that names the user waits for the activation.
//!
//! Connecting ends the provisioning step whichever way it goes: while the session logs in,
//! the activation is recorded in the store (its mode, for teardown and the reconciler); then
//! the user's lock is released so other sessions of the same user may proceed. Once
//! connected, the session is recorded in the store with its server-side connection (for the
//! instance that cleans up after a crash) and, for engines with cancel requests, a gateway
//! cancel key is issued for it (recorded in a shared store too, see `cancel`).
//! The client has been told nothing yet.

use std::time::{Duration, Instant};

use dbward_proxy::pg::BackendKey;
use dbward_proxy::UpstreamError;
use tokio::sync::OwnedSemaphorePermit;

use super::engine::{Backend, Engine, Login};
use super::upstream::UpstreamTarget;
use super::{Authorized, Provisioned, SessionError};
use crate::Gateway;

/// How long connecting to the database (TCP, TLS, startup) may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Step 4 done: the upstream session is up, recorded as live, its cancel key registered.
pub(crate) struct Connected<E: Engine> {
    pub upstream: E::Upstream,
    pub backend: Backend,
    /// The key the client is given for cancel requests, standing for the server's own.
    pub cancel_key: Option<BackendKey>,
}

/// How long a connection opened during the activation may wait for its login. Servers close
/// a connection that does not log in within their own bound (MariaDB's `connect_timeout`,
/// 10 s by default; PostgreSQL's `authentication_timeout`, 60 s); an older one is dropped
/// and a new one opened.
const EARLY_MAX_AGE: Duration = Duration::from_secs(5);

/// Connections opened early at once, over all databases. Each is a server backend waiting
/// for its user; past this bound a session opens its connection after the activation, so a
/// burst queued behind provisioning cannot take the server's connection slots.
pub(crate) const MAX_EARLY_OPENS: usize = 32;

/// A connection to the database opened while the user was being activated.
pub(crate) struct Early<E: Engine> {
    at: Instant,
    db_user: String,
    opened: Result<(UpstreamTarget, E::Opened), SessionError>,
    _slot: OwnedSemaphorePermit,
}

/// Opens the connection of a session as `db_user` while its activation runs (TCP and TLS,
/// which do not need the user to exist or to be unlocked yet), when a slot among
/// [`MAX_EARLY_OPENS`] is free.
pub(crate) async fn open_early<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
) -> Option<Early<E>> {
    let slot = gw.early_upstreams.clone().try_acquire_owned().ok()?;
    let at = Instant::now();
    let opened = open(gw, engine, client, authorized, db_user).await;
    Some(Early {
        at,
        db_user: db_user.to_string(),
        opened,
        _slot: slot,
    })
}

pub(crate) async fn connect<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    provisioned: &mut Provisioned,
    early: Option<Early<E>>,
) -> Result<Connected<E>, SessionError> {
    // The activation is recorded while the session logs in: both before the lock goes.
    let unrecorded = provisioned.take_unrecorded();
    let (established, ()) = tokio::join!(
        establish(gw, engine, client, authorized, &provisioned.db_user, early),
        provisioned.record_activation(gw, authorized, unrecorded),
    );
    provisioned.connected().await;
    let (target, upstream) = established?;
    let backend = E::backend(&target, &upstream);
    provisioned.record_live(gw, authorized, backend.id).await;
    let cancel_key = match backend.cancel.clone() {
        Some(target) => Some(super::cancel::issue(gw, &authorized.fields.sid, target).await),
        None => None,
    };
    Ok(Connected {
        upstream,
        backend,
        cancel_key,
    })
}

/// The session's login as `db_user`: on the early connection when there is a usable one,
/// else on a new one. An early connection the server closed meanwhile (its own timeout, a
/// restart) is replaced once; a refusal by the server is the session's answer.
async fn establish<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
    early: Option<Early<E>>,
) -> Result<(UpstreamTarget, E::Upstream), SessionError> {
    if let Some(early) = early.filter(|e| e.db_user == db_user && e.at.elapsed() < EARLY_MAX_AGE) {
        let (target, opened) = early.opened?;
        match log_in(gw, engine, &target, opened).await {
            Ok(upstream) => return Ok((target, upstream)),
            Err(LoginFailed::Refused(err)) => return Err(upstream_error(authorized, err, &target)),
            Err(LoginFailed::Transport(err)) => {
                tracing::info!(%err, "the early connection to the database was lost; opening another");
            }
        }
    }
    let (target, opened) = open(gw, engine, client, authorized, db_user).await?;
    match log_in(gw, engine, &target, opened).await {
        Ok(upstream) => Ok((target, upstream)),
        Err(LoginFailed::Refused(err) | LoginFailed::Transport(err)) => {
            Err(upstream_error(authorized, err, &target))
        }
    }
}

/// Why a login failed: the server said no, or the connection failed under it.
enum LoginFailed {
    Refused(UpstreamError),
    Transport(UpstreamError),
}

async fn log_in<E: Engine>(
    gw: &Gateway,
    engine: &E,
    target: &UpstreamTarget,
    opened: E::Opened,
) -> Result<E::Upstream, LoginFailed> {
    match tokio::time::timeout(UPSTREAM_TIMEOUT, engine.log_in(gw, opened)).await {
        Ok(Ok(upstream)) => Ok(upstream),
        Ok(Err(err @ (UpstreamError::Io(_) | UpstreamError::Protocol(_)))) => {
            Err(LoginFailed::Transport(err))
        }
        Ok(Err(err)) => Err(LoginFailed::Refused(err)),
        Err(_) => Err(LoginFailed::Refused(UpstreamError::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("logging in at {} timed out", target.addr),
            ),
        ))),
    }
}

/// The target of a session as `db_user`, and a connection to it through TLS.
async fn open<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
) -> Result<(UpstreamTarget, E::Opened), SessionError> {
    let target = match &authorized.forward {
        // A trusted leaf's gateway stands where the database would: TLS verified with its
        // host CA, a certificate minted here for the user.
        Some(leaf) => forward_target(gw, authorized, leaf, db_user)?,
        None => gw.upstream.target(&gw.cas, &authorized.db, db_user)?,
    };
    let login = Login {
        db_user,
        db_name: &authorized.decision.db_name,
    };
    let opening = engine.open(&target, client, login);
    let opened = match tokio::time::timeout(UPSTREAM_TIMEOUT, opening).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => return Err(upstream_error(authorized, err, &target)),
        Err(_) => {
            return Err(SessionError::Internal(format!(
                "connecting to {} timed out",
                target.addr
            )))
        }
    };
    Ok((target, opened))
}

/// What the client is told of a failed connection or login.
fn upstream_error(
    authorized: &Authorized,
    err: UpstreamError,
    target: &UpstreamTarget,
) -> SessionError {
    match (&authorized.forward, refused_upstream(err, &target.addr)) {
        // The leaf's own refusals (access, provisioning) reach the client as it wrote
        // them; a failed TLS or network connection is named, its details logged.
        (Some(leaf), SessionError::Internal(detail)) => {
            tracing::info!(leaf = %leaf.cluster, %detail, "forwarding to the leaf failed");
            SessionError::AccessDenied(format!(
                "the trusted cluster \"{}\" could not be reached or refused the connection",
                leaf.cluster
            ))
        }
        (_, err) => err,
    }
}

fn forward_target(
    gw: &Gateway,
    authorized: &Authorized,
    leaf: &crate::trust::LeafRecord,
    db_user: &str,
) -> Result<UpstreamTarget, SessionError> {
    let addr = authorized.db.spec.uri.clone();
    let host = crate::trust::http::host_of(&addr).to_string();
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let route = dbward_pki::DbRoute {
        service: authorized.auth.route.service.clone(),
        db_user: Some(db_user.to_string()),
        db_name: Some(authorized.decision.db_name.clone()).filter(|n| !n.is_empty()),
        db_roles: authorized.auth.route.db_roles.clone(),
    };
    let (cert, key) = crate::trust::mint_for_leaf(
        gw,
        &authorized.user,
        dbward_pki::CertUsage::Db,
        Some(route),
        authorized.auth.identity.expires,
    )?;
    let tls = crate::trust::leaf_tls(leaf, Some((&cert, &key)))?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| SessionError::Internal(format!("leaf {}: {e}", leaf.cluster)))?;
    Ok(UpstreamTarget {
        addr,
        server_name_text: host.clone(),
        host,
        port,
        server_name,
        tls,
    })
}

/// A server's own refusal is relayed to the client as the server wrote it; anything else
/// about the connection is for the log.
fn refused_upstream(err: UpstreamError, addr: &str) -> SessionError {
    match err {
        UpstreamError::Server {
            sqlstate,
            message,
            detail,
            ..
        } => SessionError::Database {
            sqlstate,
            message,
            detail,
        },
        UpstreamError::MysqlServer {
            code,
            sqlstate,
            message,
            ..
        } => SessionError::MysqlServer {
            code,
            sqlstate,
            message,
        },
        other => SessionError::Internal(format!("connecting to {addr}: {other}")),
    }
}
