//! Step 4 of the pipeline: the gateway's own session with the database server, as the user
//! provisioning made ready, over TLS with a db-client certificate (`upstream`).
//!
//! The connection is opened (TCP, TLS) while the user is activated, when it may be (see
//! [`activate_while_opening`]); the login that names the user waits for the activation.
//!
//! Connecting ends the provisioning step whichever way it goes: while the session logs in,
//! the activation is recorded in the store (its mode, for teardown and the reconciler); then
//! the user's lock is released so other sessions of the same user may proceed. Once
//! connected, the session is recorded in the store with its server-side connection (for the
//! instance that cleans up after a crash) and, for engines with cancel requests, a gateway
//! cancel key is issued for it (recorded in a shared store too, see `cancel`).
//! The client has been told nothing yet.

use std::future::Future;
use std::time::{Duration, Instant};

use dbward_proxy::pg::BackendKey;
use dbward_proxy::UpstreamError;
use tokio::sync::OwnedSemaphorePermit;

use super::engine::{Backend, Engine, Login};
use super::upstream::UpstreamTarget;
use super::{Authorized, Provisioned, SessionError};
use crate::Gateway;

/// How long connecting to the database (TCP, TLS, startup) may take, early connection and
/// new one together.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Step 4 done: the upstream session is up, recorded as live, its cancel key registered.
pub(crate) struct Connected<E: Engine> {
    pub upstream: E::Upstream,
    pub backend: Backend,
    /// The key the client is given for cancel requests, standing for the server's own.
    pub cancel_key: Option<BackendKey>,
}

/// How long a connection opened during the activation may wait for its login. Servers close
/// a connection that does not log in within their own bound (PostgreSQL's
/// `authentication_timeout`, 60 s by default); the gateway closes it sooner and opens another
/// once the activation is over.
const EARLY_MAX_AGE: Duration = Duration::from_secs(5);

/// Connections opened early at once, over all databases. Each is a server process waiting
/// for its user; past this bound a session opens its connection after the activation, so a
/// burst queued behind provisioning does not add as many processes on the server.
pub(crate) const MAX_EARLY_OPENS: usize = 32;

/// A connection to the database opened while the user was being activated, through TLS.
pub(crate) struct Early<E: Engine> {
    at: Instant,
    db_user: String,
    target: UpstreamTarget,
    opened: E::Opened,
    _slot: OwnedSemaphorePermit,
}

/// Runs `activation` while the session's connection as `db_user` opens (TCP and TLS, which do
/// not need the user to exist or to be unlocked yet), when the engine opens early and one of
/// [`MAX_EARLY_OPENS`] slots is free. A connection that would wait longer than
/// [`EARLY_MAX_AGE`] is closed then, its slot freed; the activation's failure closes it too. A
/// connection that could not be opened early is opened again after the activation, as
/// without one.
pub(crate) async fn activate_while_opening<E: Engine, T>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
    activation: impl Future<Output = Result<T, SessionError>>,
) -> Result<(T, Option<Early<E>>), SessionError> {
    let slot = match E::OPENS_EARLY {
        true => gw.early_upstreams.clone().try_acquire_owned().ok(),
        false => None,
    };
    let Some(slot) = slot else {
        return Ok((activation.await?, None));
    };
    let at = Instant::now();
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let mut slot = Some(slot);
    let mut opening = Some(Box::pin(open(
        gw, engine, client, authorized, db_user, deadline,
    )));
    let mut opened = None;
    let stale = tokio::time::sleep(EARLY_MAX_AGE);
    tokio::pin!(activation, stale);
    loop {
        tokio::select! {
            biased;
            activated = &mut activation => {
                let early = opened.zip(slot).map(|((target, opened), slot)| Early {
                    at,
                    db_user: db_user.to_string(),
                    target,
                    opened,
                    _slot: slot,
                });
                return Ok((activated?, early));
            }
            result = until_done(opening.as_mut()), if opening.is_some() => {
                opening = None;
                match result {
                    Ok(both) => opened = Some(both),
                    Err(err) => {
                        tracing::debug!(%err, "opening the connection during the activation failed");
                        slot = None;
                    }
                }
            }
            () = &mut stale, if slot.is_some() => {
                // Closes the connection, or stops opening it.
                (opening, opened, slot) = (None, None, None);
            }
        }
    }
}

/// `future` to its end; never, without one.
async fn until_done<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
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

/// The session's login as `db_user`: on the early connection when there is one, else on a
/// new one. An early connection the server closed before the login (its own timeout, a
/// restart) is replaced once; any other failure is the session's answer. Both tries together
/// are bounded by [`UPSTREAM_TIMEOUT`].
async fn establish<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
    early: Option<Early<E>>,
) -> Result<(UpstreamTarget, E::Upstream), SessionError> {
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    if let Some(early) = early.filter(|e| e.db_user == db_user && e.at.elapsed() < EARLY_MAX_AGE) {
        let Early { target, opened, .. } = early;
        match log_in(gw, engine, &target, opened, deadline).await {
            Ok(upstream) => return Ok((target, upstream)),
            Err(UpstreamError::ClosedBeforeLogin) => {
                tracing::info!("the database closed the connection opened during the activation; opening another");
            }
            Err(err) => return Err(upstream_error(authorized, err, &target)),
        }
    }
    let (target, opened) = open(gw, engine, client, authorized, db_user, deadline).await?;
    match log_in(gw, engine, &target, opened, deadline).await {
        Ok(upstream) => Ok((target, upstream)),
        Err(err) => Err(upstream_error(authorized, err, &target)),
    }
}

async fn log_in<E: Engine>(
    gw: &Gateway,
    engine: &E,
    target: &UpstreamTarget,
    opened: E::Opened,
    deadline: tokio::time::Instant,
) -> Result<E::Upstream, UpstreamError> {
    tokio::time::timeout_at(deadline, engine.log_in(gw, opened))
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("logging in at {} timed out", target.addr),
            )))
        })
}

/// The target of a session as `db_user`, and a connection to it through TLS.
async fn open<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
    deadline: tokio::time::Instant,
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
    let opened = match tokio::time::timeout_at(deadline, opening).await {
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
