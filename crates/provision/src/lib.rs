//! Automatic database user provisioning: admin connections to the databases and the SQL that
//! activates, deactivates and drops the users dbward creates for people.
//!
//! One interface ([`Provisioner`]) with one module per engine (`postgres`, `mysql`), served
//! by [`Provisioners`]; the target, the warm connection pool, the settle policy and the
//! outcome types below are shared by all of them. This crate neither proxies client traffic
//! nor decides policy: the caller has already authorised the session and computed the db
//! roles, and holds the per-user lock.

use std::collections::BTreeSet;

pub mod error;
pub mod mysql;
pub mod names;
mod pool;
pub mod postgres;
mod provisioner;
mod settle;
mod target;

pub use error::{error_chain, ErrorKind, ProvisionError, UserFacingError};
pub use names::{db_user_name, hashed_name, pg_name, DbUserName, NameLimit};
pub use provisioner::{Provisioner, Provisioners};
pub use settle::Settle;
pub use target::{AdminTarget, Engine};

/// Role every user created by dbward is a member of; membership is how dbward recognises the
/// users it owns.
pub const MARKER_ROLE: &str = "dbward-auto-user";

/// What activation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateOutcome {
    /// The user did not exist and was created with the requested roles.
    Created,
    /// The user existed, was idle, and now holds exactly the requested roles and can log in.
    Reactivated,
    /// The user has live sessions and already holds exactly the requested roles; left as is.
    AlreadyActive,
}

/// What to do with a user once its last session has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeardownMode {
    /// Revoke its roles and disable login (`keep`).
    Keep,
    /// Drop it, or fall back to `Keep` when objects depend on it (`best_effort_drop`).
    Drop,
}

/// What deactivation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivateOutcome {
    /// Nothing changed: the user still has live sessions (another session, or one that
    /// started while locking).
    Kept,
    /// Login disabled, every role except the marker revoked, and (PostgreSQL) the user put
    /// back to a clean slate: no password, settings or attributes of its own making.
    Locked,
    /// The user was dropped.
    Dropped,
    /// Dropping was refused because objects depend on the user; it was locked instead.
    DropFellBackToLock,
    /// The user no longer exists; nothing to do.
    Missing,
}

/// A user as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    /// Member of [`MARKER_ROLE`] without ADMIN OPTION, and not the admin itself: created by
    /// dbward. (Members WITH ADMIN OPTION administer the marker: admins, DBAs.)
    pub managed: bool,
    /// Login enabled (PostgreSQL `rolcanlogin`).
    pub can_login: bool,
    /// Roles held directly, without the marker role.
    pub roles: BTreeSet<String>,
}

/// One thing the admin user is missing, with the statement that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What is wrong, in one sentence.
    pub problem: String,
    /// The exact statement (or action) that fixes it.
    pub fix: String,
}
