//! Step 4 of the pipeline: the gateway's own session with the database server, as the user
//! provisioning made ready, over TLS with a db-client certificate (`upstream`).
//!
//! Connecting ends the provisioning step whichever way it goes: while the connection opens,
//! the activation is recorded in the store (its mode, for teardown and the reconciler); then
//! the user's lock is released so other sessions of the same user may proceed. Once
//! connected, the session is recorded in the store with its server-side connection (for the
//! instance that cleans up after a crash) and, for engines with cancel requests, a gateway
//! cancel key is issued for it (recorded in a shared store too, see `cancel`).
//! The client has been told nothing yet.

use std::time::Duration;

use dbward_proxy::pg::BackendKey;
use dbward_proxy::UpstreamError;

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

pub(crate) async fn connect<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    provisioned: &mut Provisioned,
) -> Result<Connected<E>, SessionError> {
    // The activation is recorded while the connection opens: both before the lock goes.
    let unrecorded = provisioned.take_unrecorded();
    let (opened, ()) = tokio::join!(
        open(gw, engine, client, authorized, &provisioned.db_user),
        provisioned.record_activation(gw, authorized, unrecorded),
    );
    provisioned.connected().await;
    let (target, upstream) = opened?;
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

async fn open<E: Engine>(
    gw: &Gateway,
    engine: &E,
    client: &E::Client,
    authorized: &Authorized,
    db_user: &str,
) -> Result<(UpstreamTarget, E::Upstream), SessionError> {
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
    let connecting = engine.connect(gw, &target, client, login);
    let upstream = tokio::time::timeout(UPSTREAM_TIMEOUT, connecting)
        .await
        .map_err(|_| SessionError::Internal(format!("connecting to {} timed out", target.addr)))?
        .map_err(|err| refused_upstream(err, &target.addr))
        .map_err(|err| match (&authorized.forward, err) {
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
        })?;
    Ok((target, upstream))
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
