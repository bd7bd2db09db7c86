//! The session pipeline: one connection from accept to teardown, the same for every
//! database engine.
//!
//! A connection moves through typed steps, each taking the previous step's value, one module
//! a step; `pipeline` calls them in order and is the place to start reading:
//!
//! | step | module | value |
//! |---|---|---|
//! | accept: TLS, startup packet | `postgres`, `mysql` (the `engine::Engine`) | `Hello` |
//! | authenticate: certificate verified, identity read | `access` | [`Authenticated`] |
//! | authorize: RBAC decision from the store's current roles, source IP pinning | `access` | [`Authorized`] |
//! | take a slot: the user's `max_connections`, across gateways | `limits` | `Slot` |
//! | provision: database user active, lock held | `provisioning` | [`Provisioned`] |
//! | connect: upstream up, live session recorded, cancel key issued | `connect` | `Connected` |
//! | relay: bytes both ways, queries tapped for the audit | `relay` | `Ended` |
//! | tear down: backend ended, user deactivated, session forgotten | `teardown` | — |
//!
//! Nothing downstream re-checks or skips a step. Once a user is provisioned, a `Teardown`
//! guard owns what must be undone, so every way out of the session (refused, client gone,
//! relay over, task dropped) tears down exactly once.
//!
//! An engine (`postgres`, `mysql`) is the wire protocol at the points a session touches it,
//! and nothing else: it decides nothing, and what the two engines share is written once, here.
//! `lifecycle` writes the session's audit records; `live` knows the sessions running now
//! (cancel keys, revocation, shutdown); `cancel` passes cancel requests between instances
//! sharing a store; `upstream` holds the TLS material for the database.
//! Each connection runs in one tracing span (`session`: session id, peer, user, database),
//! so every log line of a session carries them.

mod access;
pub mod cancel;
mod connect;
mod engine;
mod lifecycle;
mod limits;
pub mod live;
pub mod mysql;
mod permissions;
mod pipeline;
pub mod postgres;
mod provisioning;
mod reconcile;
mod relay;
mod teardown;
mod upstream;

pub use access::{authenticate, authorize, Authenticated, Authorized, Requested};
pub(crate) use access::{check_pinned_ip, still_allowed};
pub use cancel::watch_cancel_requests;
pub use live::{watch_revocations, LiveSessions};
pub use provisioning::{activate_db_user, plan_db_user, preflight, PlannedUser, Provisioned};
pub use reconcile::{reconcile_loop, reconcile_once};
pub use upstream::UpstreamCredentials;

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
    /// The user has as many sessions as the `max_connections` of their roles allows.
    /// SQLSTATE 53300 / MySQL 1226.
    #[error("{0}")]
    TooManyConnections(String),
    /// The database itself refused (its message and detail are relayed as they are).
    #[error("{message}")]
    Database {
        sqlstate: String,
        message: String,
        detail: Option<String>,
    },
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

    /// The database's own detail line (PostgreSQL `DETAIL:`), relayed with its message.
    pub fn detail(&self) -> Option<&str> {
        match self {
            SessionError::Database { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// The PostgreSQL SQLSTATE that carries this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            SessionError::AccessDenied(_) => "28000",
            SessionError::Provisioning(_) => "28000",
            SessionError::Busy(_) => "57P03",
            // too_many_connections
            SessionError::TooManyConnections(_) => "53300",
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
            // ER_USER_LIMIT_REACHED (max_user_connections)
            SessionError::TooManyConnections(_) => (1226, "42000"),
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
