//! Steps 1 and 2 of the pipeline: who the client is (its certificate) and what it may do
//! (the RBAC decision, made with the roles stored now). Nothing here speaks a protocol or
//! touches a database; the revocation watcher re-runs step 2 through [`still_allowed`].

use std::net::{IpAddr, SocketAddr};

use dbward_model::{Db, Protocol, User};
use dbward_pki::{CertUsage, DbRoute, Identity};
use dbward_rbac::{Decision, SessionLimits};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::SessionError;
use crate::audit::SessionFields;
use crate::Gateway;

/// Step 1: the client's certificate chains to the user CA, belongs to this cluster, is a
/// database certificate and names a route.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Identity,
    pub route: DbRoute,
    pub peer: SocketAddr,
    /// The session id, given to the connection when it was accepted: its log lines, audit
    /// records and store records all carry it.
    pub sid: String,
}

pub fn authenticate(
    gw: &Gateway,
    sid: &str,
    peer: SocketAddr,
    chain: &[CertificateDer<'static>],
) -> Result<Authenticated, SessionError> {
    let identity =
        dbward_pki::verify_user_cert(chain, &gw.cas.user, &gw.cluster, OffsetDateTime::now_utc())
            .map_err(|err| {
            tracing::info!(%err, "database client certificate refused");
            SessionError::AccessDenied(
                "client certificate refused: log in again with `dbward db login`".into(),
            )
        })?;
    if identity.usage != CertUsage::Db {
        return Err(SessionError::AccessDenied(
            "this certificate is not a database certificate: run `dbward db login DB` first".into(),
        ));
    }
    let route = identity.route.clone().ok_or_else(|| {
        SessionError::AccessDenied(
            "this certificate carries no database route: run `dbward db login DB` first".into(),
        )
    })?;
    Ok(Authenticated {
        identity,
        route,
        peer,
        sid: sid.to_string(),
    })
}

/// Step 2: the RBAC decision, made with the roles stored now (not those of login time).
#[derive(Debug, Clone)]
pub struct Authorized {
    pub auth: Authenticated,
    pub user: User,
    pub db: Db,
    pub decision: Decision,
    pub fields: SessionFields,
}

/// What the client asked for in its startup packet; empty strings fall back to the route.
pub struct Requested<'a> {
    pub db_user: &'a str,
    pub db_name: &'a str,
}

pub async fn authorize(
    gw: &Gateway,
    auth: Authenticated,
    protocol: Protocol,
    requested: Requested<'_>,
) -> Result<Authorized, SessionError> {
    let snapshot = gw.catalog.snapshot().await?;
    let denied = || SessionError::AccessDenied(dbward_rbac::GENERIC_DENIAL.to_string());
    let user = snapshot
        .users
        .get(&auth.identity.username)
        .cloned()
        .ok_or_else(|| {
            tracing::info!("denied: user no longer exists");
            denied()
        })?;
    let db = snapshot
        .dbs
        .get(&auth.route.service)
        .cloned()
        .ok_or_else(|| {
            tracing::info!("denied: database resource not found");
            denied()
        })?;
    if db.spec.protocol != protocol {
        return Err(SessionError::AccessDenied(format!(
            "database \"{}\" is a {} database; connect to the {} listener",
            db.metadata.name, db.spec.protocol, db.spec.protocol
        )));
    }
    let checker = snapshot.checker(&user).map_err(|err| {
        tracing::warn!(%err, "roles cannot be evaluated");
        denied()
    })?;
    let db_user = non_empty(requested.db_user)
        .or(auth.route.db_user.as_deref())
        .unwrap_or("");
    let db_name = non_empty(requested.db_name)
        .or(auth.route.db_name.as_deref())
        .unwrap_or("");
    let decision = checker
        .authorize(&db, db_user, db_name, &auth.route.db_roles)
        .map_err(|d| {
            tracing::info!(reason = %d.reason(), "database access denied");
            SessionError::AccessDenied(d.user_message())
        })?;
    if let Err(reason) = check_pinned_ip(&auth.identity, auth.peer.ip(), decision.limits) {
        tracing::info!(%reason, "database access denied: source IP pinning");
        return Err(SessionError::AccessDenied(reason));
    }
    if let Err(reason) = check_session_mfa(&auth.identity, &decision) {
        tracing::info!(%reason, "database access denied: session MFA");
        return Err(SessionError::AccessDenied(reason));
    }
    let fields = SessionFields {
        user: user.metadata.name.clone(),
        sid: auth.sid.clone(),
        db_service: db.metadata.name.clone(),
        db_protocol: db.spec.protocol.to_string(),
        db_uri: db.spec.uri.clone(),
        db_name: decision.db_name.clone(),
        db_user: decision.db_user.clone(),
        db_roles: decision.db_roles.clone(),
    };
    Ok(Authorized {
        auth,
        user,
        db,
        decision,
        fields,
    })
}

/// Re-evaluates a live session against the store's current state: used by the revocation
/// watcher. `Err` carries the reason the session must end.
pub(crate) fn still_allowed(
    snapshot: &crate::catalog::Snapshot,
    authorized: &Authorized,
) -> Result<(), String> {
    // disconnect_expired_cert: an MFA-verified certificate opens sessions for a minute, and
    // the sessions it opened last until the login it came from ends.
    if authorized.auth.identity.session_expires() <= OffsetDateTime::now_utc() {
        return Err("certificate expired".into());
    }
    let user = snapshot
        .users
        .get(&authorized.user.metadata.name)
        .ok_or("user deleted")?;
    let db = snapshot
        .dbs
        .get(&authorized.db.metadata.name)
        .ok_or("database resource deleted")?;
    let checker = snapshot.checker(user).map_err(|e| e.to_string())?;
    let decision = checker
        .authorize(
            db,
            &authorized.decision.db_user,
            &authorized.decision.db_name,
            &authorized.auth.route.db_roles,
        )
        .map_err(|d| d.reason())?;
    if decision.mode != authorized.decision.mode {
        return Err("provisioning mode changed".into());
    }
    check_pinned_ip(
        &authorized.auth.identity,
        authorized.auth.peer.ip(),
        decision.limits,
    )?;
    check_session_mfa(&authorized.auth.identity, &decision)?;
    let granted: std::collections::BTreeSet<_> = authorized.decision.db_roles.iter().collect();
    if !granted.is_subset(&decision.db_roles.iter().collect()) {
        return Err("database roles were revoked".into());
    }
    Ok(())
}

/// The role option `pin_source_ip`: when some role of the user sets it, the certificate must
/// carry the address it was issued to, and the client must come from that address. `Err`
/// carries what the client is told.
pub(crate) fn check_pinned_ip(
    identity: &Identity,
    peer: IpAddr,
    limits: SessionLimits,
) -> Result<(), String> {
    if !limits.pin_source_ip {
        return Ok(());
    }
    match identity.pinned_ip {
        None => Err(
            "your roles pin certificates to the address they were issued to (pin_source_ip), and this certificate has none: log in again with `dbward login`"
                .into(),
        ),
        Some(pinned) if pinned.to_canonical() != peer.to_canonical() => Err(format!(
            "this certificate is pinned to the address it was issued to (pin_source_ip) and the connection comes from another one ({}): log in again from this address",
            peer.to_canonical()
        )),
        Some(_) => Ok(()),
    }
}

/// The role option `require_session_mfa: true`: a database some role granting it sets the
/// option on is reached only with a database certificate issued after a fresh one-time code
/// (its identity carries the MFA mark). `Err` carries what the client is told.
pub(crate) fn check_session_mfa(identity: &Identity, decision: &Decision) -> Result<(), String> {
    if decision.session_mfa && identity.mfa_session_until.is_none() {
        return Err(
            "your roles require a one-time code for each session to this database (require_session_mfa), and this certificate was issued without one: run `dbward db login` again with the code"
                .into(),
        );
    }
    Ok(())
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}
