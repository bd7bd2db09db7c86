//! The session pipeline shared by every database engine.
//!
//! A connection moves through typed steps, each consuming the previous one:
//! `Authenticated` (certificate verified, identity read) → `Authorized` (RBAC decision from the
//! store's current roles) → `Provisioned` (database user active, lock held) → connected
//! upstream (engine specific) → relaying → torn down. An engine listener (`postgres`,
//! `mysql`) owns the wire protocol and calls these steps in order; `lifecycle` holds what
//! both engines do around them (audit of start and end, the query tap's sink, teardown).
//! Nothing downstream re-checks a step.

mod lifecycle;
pub mod live;
pub mod mysql;
mod permissions;
pub mod postgres;
mod provisioning;
mod reconcile;
mod upstream;

use std::net::SocketAddr;

use dbward_model::{Db, Protocol, User};
use dbward_pki::{CertUsage, DbRoute, Identity};
use dbward_rbac::Decision;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub use live::{watch_revocations, LiveSessions};
pub use provisioning::{preflight, provision, Provisioned};
pub use reconcile::{reconcile_loop, reconcile_once};
pub use upstream::UpstreamCredentials;

use crate::audit::SessionFields;
use crate::Gateway;

/// Why a database connection was refused or ended, with what the client may read.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Authentication or authorization failed; the text is the generic one or a
    /// PROVISIONING.md message. SQLSTATE 28000 / MySQL 1045.
    #[error("{0}")]
    AccessDenied(String),
    /// Provisioning refused the session with a message meant for the user.
    #[error("{0}")]
    Provisioning(String),
    /// The provisioning lock could not be taken in time.
    #[error("{0}")]
    Busy(String),
    /// The database itself refused (its message is relayed as is).
    #[error("{message}")]
    Database { sqlstate: String, message: String },
    /// A MySQL/MariaDB server refused (relayed with its error number).
    #[error("{message}")]
    MysqlServer {
        code: u16,
        sqlstate: String,
        message: String,
    },
    /// Anything else; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// The text shown to the client.
    pub fn user_message(&self) -> String {
        match self {
            SessionError::Internal(_) => {
                "dbward could not complete the connection; see the gateway log".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The PostgreSQL SQLSTATE that carries this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            SessionError::AccessDenied(_) => "28000",
            SessionError::Provisioning(_) => "28000",
            SessionError::Busy(_) => "57P03",
            SessionError::Database { sqlstate, .. } => sqlstate,
            SessionError::MysqlServer { .. } => "08006",
            SessionError::Internal(_) => "08006",
        }
    }

    /// The MySQL error number and SQLSTATE that carry this error.
    pub fn mysql_code(&self) -> (u16, &str) {
        match self {
            // ER_ACCESS_DENIED_ERROR
            SessionError::AccessDenied(_) | SessionError::Provisioning(_) => (1045, "28000"),
            // ER_LOCK_WAIT_TIMEOUT
            SessionError::Busy(_) => (1205, "HY000"),
            SessionError::MysqlServer { code, sqlstate, .. } => (*code, sqlstate),
            // ER_UNKNOWN_ERROR
            SessionError::Database { .. } | SessionError::Internal(_) => (1105, "HY000"),
        }
    }
}

impl From<crate::GatewayError> for SessionError {
    fn from(err: crate::GatewayError) -> Self {
        SessionError::Internal(err.to_string())
    }
}

/// Step 1: the client's certificate chains to the user CA, belongs to this cluster, is a
/// database certificate and names a route.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Identity,
    pub route: DbRoute,
    pub peer: SocketAddr,
}

pub fn authenticate(
    gw: &Gateway,
    peer: SocketAddr,
    chain: &[CertificateDer<'static>],
) -> Result<Authenticated, SessionError> {
    let identity =
        dbward_pki::verify_user_cert(chain, &gw.cas.user, &gw.cluster, OffsetDateTime::now_utc())
            .map_err(|err| {
            tracing::info!(%peer, %err, "database client certificate refused");
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
            tracing::info!(user = %auth.identity.username, "denied: user no longer exists");
            denied()
        })?;
    let db = snapshot
        .dbs
        .get(&auth.route.service)
        .cloned()
        .ok_or_else(|| {
            tracing::info!(db = %auth.route.service, "denied: database resource not found");
            denied()
        })?;
    if db.spec.protocol != protocol {
        return Err(SessionError::AccessDenied(format!(
            "database \"{}\" is a {} database; connect to the {} listener",
            db.metadata.name, db.spec.protocol, db.spec.protocol
        )));
    }
    let checker = snapshot.checker(&user).map_err(|err| {
        tracing::warn!(user = %user.metadata.name, %err, "roles cannot be evaluated");
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
            tracing::info!(user = %user.metadata.name, db = %db.metadata.name, reason = %d.reason(), "database access denied");
            SessionError::AccessDenied(d.user_message())
        })?;
    let fields = SessionFields {
        user: user.metadata.name.clone(),
        sid: uuid::Uuid::new_v4().to_string(),
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
    if authorized.auth.identity.expires <= OffsetDateTime::now_utc() {
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
    let granted: std::collections::BTreeSet<_> = authorized.decision.db_roles.iter().collect();
    if !granted.is_subset(&decision.db_roles.iter().collect()) {
        return Err("database roles were revoked".into());
    }
    Ok(())
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}
