//! Steps 1 and 2 of the pipeline: who the client is (its certificate) and what it may do
//! (the RBAC decision, made with the roles stored now). Nothing here speaks a protocol or
//! touches a database; the revocation watcher re-runs step 2 through [`still_allowed`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
    /// A user of a trusted root cluster (their certificate chains to that root's user CA).
    pub remote: Option<crate::trust::RemoteUser>,
    /// The trusted leaf cluster this gateway forwards the session to (a certificate of this
    /// cluster whose route names a leaf).
    pub leaf: Option<String>,
}

pub async fn authenticate(
    gw: &Gateway,
    sid: &str,
    peer: SocketAddr,
    chain: &[CertificateDer<'static>],
) -> Result<Authenticated, SessionError> {
    let refused = || {
        SessionError::AccessDenied(
            "client certificate refused: log in again with `dbward db login`".into(),
        )
    };
    let local = dbward_pki::verify_user_cert_with_claims(
        chain,
        &gw.cas.user,
        &gw.cluster,
        OffsetDateTime::now_utc(),
    );
    let (identity, remote, leaf) = match local {
        // This cluster's own certificate: only the route's leaf is read from the claims.
        Ok((identity, claims)) => (identity, None, claims.route_cluster),
        Err(err) => {
            let snapshot = gw.catalog.snapshot().await?;
            match crate::trust::verify_remote(&snapshot, chain) {
                Some((identity, remote)) => (identity, Some(remote), None),
                None => {
                    tracing::info!(%err, "database client certificate refused");
                    return Err(refused());
                }
            }
        }
    };
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
        remote,
        leaf,
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
    /// Set when the session is forwarded to a trusted leaf cluster: where to.
    pub forward: Option<crate::trust::LeafRecord>,
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
    if auth.remote.is_some() {
        return authorize_remote(&snapshot, auth, protocol, requested);
    }
    let user = snapshot
        .users
        .get(&auth.identity.username)
        .cloned()
        .ok_or_else(|| {
            tracing::info!("denied: user no longer exists");
            denied()
        })?;
    if let Some(leaf) = auth.leaf.clone() {
        return authorize_forward(gw, &snapshot, auth, user, &leaf, protocol, requested).await;
    }
    if holds_a_remote_name(&snapshot, &user.metadata.name) {
        tracing::warn!("denied: a local user holds the name of a trusted root's users");
        return Err(denied());
    }
    let db = route_db(&snapshot, &auth, protocol)?;
    let checker = snapshot.checker(&user).map_err(|err| {
        tracing::warn!(%err, "roles cannot be evaluated");
        denied()
    })?;
    let (db_user, db_name) = requested_names(&auth, &requested);
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
        ..Default::default()
    };
    Ok(Authorized {
        auth,
        user,
        db,
        decision,
        fields,
        forward: None,
    })
}

/// Step 2 on a leaf for a user of a trusted root: the leaf's own decision, with the leaf
/// roles the role map gives for the roles the root vouched for, and the root's traits. The
/// database user is `remote-<user>-<root cluster>`.
fn authorize_remote(
    snapshot: &crate::catalog::Snapshot,
    auth: Authenticated,
    protocol: Protocol,
    requested: Requested<'_>,
) -> Result<Authorized, SessionError> {
    let denied = || SessionError::AccessDenied(dbward_rbac::GENERIC_DENIAL.to_string());
    let remote = auth.remote.clone().ok_or_else(denied)?;
    let user = remote_leaf_user(snapshot, &auth.identity.username, &remote)?;
    // Never the database user of a local user of the same name.
    if snapshot.users.contains_key(&user.metadata.name) {
        tracing::warn!(name = %user.metadata.name, "denied: a local user holds the mapped remote name");
        return Err(denied());
    }
    // Nor one that a user of another trusted root could be mapped to as well: with roots `c`
    // and `b-c`, user `a-b` of `c` and user `a` of `b-c` are both `remote-a-b-c`.
    if let Some(other) = ambiguous_root(&remote.cluster, snapshot.trusted.keys()) {
        tracing::warn!(root = %remote.cluster, %other, "denied: the names of two trusted roots make remote user names ambiguous");
        return Err(SessionError::AccessDenied(format!(
            "the trusted clusters \"{}\" and \"{other}\" can map different people to the same database user; rename one of them",
            remote.cluster
        )));
    }
    let db = route_db(snapshot, &auth, protocol)?;
    // Never the snapshot's per-name cache: a local user may hold the mapped name.
    let checker =
        dbward_rbac::AccessChecker::new(&user, &snapshot.roles_of(&user)).map_err(|err| {
            tracing::warn!(%err, "mapped roles cannot be evaluated");
            denied()
        })?;
    let (db_user, db_name) = requested_names(&auth, &requested);
    let decision = checker
        .authorize(&db, db_user, db_name, &auth.route.db_roles)
        .map_err(|d| {
            tracing::info!(reason = %d.reason(), "database access denied (remote user)");
            match d.kind() {
                dbward_rbac::DenialKind::WrongDbUser {
                    expected,
                    requested,
                } => {
                    SessionError::AccessDenied(crate::trust::wrong_remote_name(expected, requested))
                }
                _ => SessionError::AccessDenied(d.user_message()),
            }
        })?;
    // Options that rest on what only the root saw: the leaf cannot check a one-time code
    // given to the root, nor the address the user connected to the root from.
    if decision.session_mfa {
        return Err(SessionError::AccessDenied(format!(
            "database \"{}\" requires a one-time code for each session (require_session_mfa), which users of the trusted cluster \"{}\" cannot give to this cluster",
            db.metadata.name, remote.cluster
        )));
    }
    if decision.limits.pin_source_ip {
        return Err(SessionError::AccessDenied(format!(
            "the roles mapped for users of the trusted cluster \"{}\" pin the source IP (pin_source_ip), which this cluster cannot check for them",
            remote.cluster
        )));
    }
    let fields = SessionFields {
        user: auth.identity.username.clone(),
        user_cluster: Some(remote.cluster.clone()),
        sid: auth.sid.clone(),
        db_service: db.metadata.name.clone(),
        db_protocol: db.spec.protocol.to_string(),
        db_uri: db.spec.uri.clone(),
        db_name: decision.db_name.clone(),
        db_user: decision.db_user.clone(),
        db_roles: decision.db_roles.clone(),
        ..Default::default()
    };
    Ok(Authorized {
        auth,
        user,
        db,
        decision,
        fields,
        forward: None,
    })
}

/// Whether a local user's name has the shape of a trusted root's users'
/// (`remote-<user>-<root>`): such a user would share their database users, so it is refused.
fn holds_a_remote_name(snapshot: &crate::catalog::Snapshot, name: &str) -> bool {
    name.starts_with("remote-")
        && snapshot
            .trusted_clusters
            .keys()
            .any(|root| name.ends_with(&format!("-{root}")))
}

/// The leaf user a trusted root's user is now: refused when the trust is gone (disabled,
/// deleted, re-joined with another CA) or none of their roles map.
fn remote_leaf_user(
    snapshot: &crate::catalog::Snapshot,
    username: &str,
    remote: &crate::trust::RemoteUser,
) -> Result<User, SessionError> {
    let denied = || SessionError::AccessDenied(dbward_rbac::GENERIC_DENIAL.to_string());
    let trusted = snapshot
        .trusted
        .get(&remote.cluster)
        .filter(|t| t.record.user_ca_pem == remote.user_ca_pem)
        .ok_or_else(|| {
            tracing::info!(root = %remote.cluster, "denied: the root cluster is no longer trusted");
            denied()
        })?;
    remote.leaf_user(username, trusted).ok_or_else(|| {
        tracing::info!(root = %remote.cluster, roles = ?remote.roles, "denied: no role of the root user maps to a role here");
        denied()
    })
}

/// Step 2 on a root for a database of a trusted leaf: the user must exist here and the leaf
/// be known; the leaf makes the access decision when this gateway connects to it.
async fn authorize_forward(
    gw: &Gateway,
    snapshot: &crate::catalog::Snapshot,
    auth: Authenticated,
    user: User,
    leaf_name: &str,
    protocol: Protocol,
    requested: Requested<'_>,
) -> Result<Authorized, SessionError> {
    let denied = || SessionError::AccessDenied(dbward_rbac::GENERIC_DENIAL.to_string());
    let leaf = crate::trust::leaf_record(gw, leaf_name)
        .await?
        .ok_or_else(|| {
            tracing::info!(leaf = %leaf_name, "denied: not a leaf of this cluster");
            denied()
        })?;
    let addr = crate::trust::leaf_listener(&leaf, protocol)
        .ok_or_else(|| {
            SessionError::AccessDenied(format!(
                "cluster \"{leaf_name}\" has no {protocol} listener"
            ))
        })?
        .to_string();
    let checker = snapshot.checker(&user).map_err(|err| {
        tracing::warn!(%err, "roles cannot be evaluated");
        denied()
    })?;
    let db_user = non_empty(requested.db_user)
        .or(auth.route.db_user.as_deref())
        .unwrap_or("")
        .to_string();
    let db_name = non_empty(requested.db_name)
        .or(auth.route.db_name.as_deref())
        .unwrap_or("")
        .to_string();
    if let Err(reason) = check_pinned_ip(&auth.identity, auth.peer.ip(), checker.limits()) {
        return Err(SessionError::AccessDenied(reason));
    }
    let db = Db {
        version: "v3".into(),
        metadata: dbward_model::Metadata::named(&auth.route.service),
        spec: dbward_model::DbSpec {
            protocol,
            uri: addr.clone(),
            tls: Default::default(),
            admin_user: None,
        },
    };
    // Nothing is provisioned here: the leaf does it.
    let decision = Decision {
        db_user: db_user.clone(),
        db_name: db_name.clone(),
        mode: dbward_rbac::ProvisioningMode::Off,
        db_roles: auth.route.db_roles.clone(),
        db_permissions: Vec::new(),
        limits: checker.limits(),
        // The leaf applies its own roles' options, session MFA included.
        session_mfa: false,
    };
    let fields = SessionFields {
        user: user.metadata.name.clone(),
        leaf_cluster: Some(leaf_name.to_string()),
        sid: auth.sid.clone(),
        db_service: auth.route.service.clone(),
        db_protocol: protocol.to_string(),
        db_uri: addr,
        db_name,
        db_user,
        db_roles: auth.route.db_roles.clone(),
        ..Default::default()
    };
    Ok(Authorized {
        auth,
        user,
        db,
        decision,
        fields,
        forward: Some(leaf),
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
    if authorized.forward.is_some() {
        // The leaf re-checks its own side with the roles and traits the minted certificate
        // carries; when they change here, the session ends so that the next one carries the
        // new ones.
        return match snapshot.users.get(&authorized.user.metadata.name) {
            Some(user)
                if user.spec.roles == authorized.user.spec.roles
                    && user.spec.traits == authorized.user.spec.traits =>
            {
                Ok(())
            }
            Some(_) => Err("the user's roles or traits changed".into()),
            None => Err("user deleted".into()),
        };
    }
    let remote_user;
    let user = match &authorized.auth.remote {
        Some(remote) => {
            remote_user = remote_leaf_user(snapshot, &authorized.auth.identity.username, remote)
                .map_err(|_| "the root cluster is no longer trusted or no role maps")?;
            &remote_user
        }
        None => snapshot
            .users
            .get(&authorized.user.metadata.name)
            .ok_or("user deleted")?,
    };
    let db = snapshot
        .dbs
        .get(&authorized.db.metadata.name)
        .ok_or("database resource deleted")?;
    let checker = if authorized.auth.remote.is_some() {
        Arc::new(
            dbward_rbac::AccessChecker::new(user, &snapshot.roles_of(user))
                .map_err(|e| e.to_string())?,
        )
    } else {
        snapshot.checker(user).map_err(|e| e.to_string())?
    };
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
/// Another trusted root whose users' remote names can equal those of `root`'s users: one
/// name is the other's hyphen suffix (`c` and `b-c`).
fn ambiguous_root<'a>(
    root: &str,
    trusted: impl IntoIterator<Item = &'a String>,
) -> Option<&'a String> {
    let suffix = |a: &str, b: &str| a.ends_with(&format!("-{b}"));
    trusted
        .into_iter()
        .find(|other| other.as_str() != root && (suffix(root, other) || suffix(other, root)))
}

pub(crate) fn check_session_mfa(identity: &Identity, decision: &Decision) -> Result<(), String> {
    if decision.session_mfa && identity.mfa_session_until.is_none() {
        return Err(
            "your roles require a one-time code for each session to this database (require_session_mfa), and this certificate was issued without one: run `dbward db login` again with the code"
                .into(),
        );
    }
    Ok(())
}

/// The database resource the certificate's route names, if it speaks `protocol`.
fn route_db(
    snapshot: &crate::catalog::Snapshot,
    auth: &Authenticated,
    protocol: Protocol,
) -> Result<Db, SessionError> {
    let db = snapshot
        .dbs
        .get(&auth.route.service)
        .cloned()
        .ok_or_else(|| {
            tracing::info!("denied: database resource not found");
            SessionError::AccessDenied(dbward_rbac::GENERIC_DENIAL.to_string())
        })?;
    if db.spec.protocol != protocol {
        return Err(SessionError::AccessDenied(format!(
            "database \"{}\" is a {} database; connect to the {} listener",
            db.metadata.name, db.spec.protocol, db.spec.protocol
        )));
    }
    Ok(db)
}

/// The database user and name the client asked for, else the route's.
fn requested_names<'a>(auth: &'a Authenticated, requested: &Requested<'a>) -> (&'a str, &'a str) {
    let db_user = non_empty(requested.db_user)
        .or(auth.route.db_user.as_deref())
        .unwrap_or("");
    let db_name = non_empty(requested.db_name)
        .or(auth.route.db_name.as_deref())
        .unwrap_or("");
    (db_user, db_name)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_whose_names_end_in_each_other_are_ambiguous() {
        let roots: Vec<String> = ["c", "b-c", "east", "west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // remote-a-b-c: user a-b of c, or user a of b-c.
        assert_eq!(ambiguous_root("c", &roots).map(String::as_str), Some("b-c"));
        assert_eq!(ambiguous_root("b-c", &roots).map(String::as_str), Some("c"));
        assert_eq!(ambiguous_root("east", &roots), None);
        // "least" ends in "east" but not in "-east".
        let roots: Vec<String> = ["east", "least"].iter().map(|s| s.to_string()).collect();
        assert_eq!(ambiguous_root("east", &roots), None);
    }
}
