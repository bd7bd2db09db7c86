//! PostgreSQL provisioning: activate, deactivate and drop the users dbward creates, over warm
//! admin connections authenticated with a db-client certificate.
//!
//! Each operation is a call to a helper function that the admin connection installed in
//! `pg_temp` (see `sql/functions.sql`), so one activation is one statement, one transaction
//! and, on a warm connection, one round trip. Conditions are told apart by SQLSTATE only.
//!
//! The users provisioned here are adversaries of the admin (PROVISIONING.md §8): nothing they
//! create is ever resolved by a statement the admin runs (pinned `search_path`, qualified
//! built-ins), whatever they do to their own role is undone at reactivation and teardown, and
//! roles that would lift them above their db roles are never granted.
//!
//! This module does not lock: the caller holds the per-(database, user) lock around each
//! activation and teardown.

mod conn;
mod permissions;
mod preflight;
mod quote;
mod terminate;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::AdminTarget;
pub use permissions::{TableName, TablePrivilege};
pub use quote::quote_ident;
pub use tls::{MakeRustlsConnect, RustlsConnect, RustlsStream};

use self::conn::AdminConn;
use self::quote::{check_role_name, check_user_name};
use crate::error::ProvisionError;
use crate::names::DbUserName;
use crate::pool::{Pool, PoolKey};
use crate::{
    ActivateOutcome, DeactivateOutcome, Finding, Provisioner, Settle, TeardownMode, MARKER_ROLE,
};

const ACTIVATE_SQL: &str = include_str!("sql/activate.sql");
const DISABLE_LOGIN_SQL: &str = include_str!("sql/disable_login.sql");
const FINISH_TEARDOWN_SQL: &str = include_str!("sql/finish_teardown.sql");
#[cfg(feature = "test-support")]
const LIVE_SESSIONS_SQL: &str = include_str!("sql/live_sessions.sql");
#[cfg(feature = "test-support")]
const USER_STATE_SQL: &str = include_str!("sql/user_state.sql");
const ACTIVE_MANAGED_SQL: &str = include_str!("sql/active_managed.sql");

/// Timing knobs of [`PgProvisioner`].
#[derive(Debug, Clone)]
pub struct PgProvisionerSettings {
    /// How long teardown waits for a just-closed session to leave `pg_stat_activity` before
    /// concluding that the user is still in use.
    pub settle_time: Duration,
    /// Pause between two looks at `pg_stat_activity` while settling.
    pub settle_poll: Duration,
    /// Limit for opening an admin connection.
    pub connect_timeout: Duration,
    /// Limit for one operation on an open connection.
    pub operation_timeout: Duration,
    /// Idle admin connections kept per (server, admin user, database).
    pub max_idle_per_target: usize,
    /// Longest time an admin connection is reused. A connection keeps the settings it
    /// started with, so a fix made in the database (`ALTER ROLE … SET …`) reaches every
    /// warm connection within this time.
    pub max_connection_lifetime: Duration,
}

impl Default for PgProvisionerSettings {
    fn default() -> Self {
        PgProvisionerSettings {
            settle_time: Duration::from_secs(2),
            settle_poll: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_idle_per_target: 16,
            max_connection_lifetime: Duration::from_secs(300),
        }
    }
}

/// Provisions users in PostgreSQL servers. Cheap to clone; clones share the warm connections.
#[derive(Clone)]
pub struct PgProvisioner {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<AdminConn>,
    settings: PgProvisionerSettings,
}

type OpFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, ProvisionError>> + Send + 'c>>;

impl Default for PgProvisioner {
    fn default() -> Self {
        Self::new()
    }
}

impl PgProvisioner {
    /// A provisioner with default settings and no open connection.
    pub fn new() -> Self {
        Self::with_settings(PgProvisionerSettings::default())
    }

    pub fn with_settings(settings: PgProvisionerSettings) -> Self {
        PgProvisioner {
            inner: Arc::new(Inner {
                pool: Pool::new(
                    settings.max_idle_per_target,
                    settings.max_connection_lifetime,
                ),
                settings,
            }),
        }
    }

    /// Opens an admin connection to `target` ahead of time (helper functions installed,
    /// statements prepared), so the next activation is a single round trip.
    #[cfg(feature = "test-support")]
    pub async fn warm_up(&self, target: &AdminTarget) -> Result<(), ProvisionError> {
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        self.with_conn(target, move |conn| {
            let (admin, database) = (admin.clone(), database.clone());
            Box::pin(async move {
                install_functions(conn, &admin, &database).await?;
                for sql in [ACTIVATE_SQL, DISABLE_LOGIN_SQL, FINISH_TEARDOWN_SQL] {
                    conn.statement(sql)
                        .await
                        .map_err(|e| map_error(e, &admin, ""))?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Number of idle warm connections kept for `target`.
    #[cfg(feature = "test-support")]
    pub fn idle_connections(&self, target: &AdminTarget) -> usize {
        self.inner.pool.idle_count(&PoolKey::of(target))
    }

    /// Makes `user` able to log in with exactly `roles`, creating it when it does not exist.
    /// One transaction: on any error nothing has changed.
    ///
    /// Refused before anything changes: a role that does not exist, that may never be granted
    /// ([`ProvisionError::RoleForbidden`]), or that the admin does not hold WITH ADMIN OPTION.
    /// A reactivated user is first put back to a clean slate (no password, attributes,
    /// settings or memberships of its own making).
    pub async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError> {
        check_user_name(user.as_str())?;
        for role in roles {
            check_role_name(role)?;
        }
        let mut requested: Vec<String> = roles.to_vec();
        requested.sort();
        requested.dedup();
        let allowed = target.allowed_predefined_roles.clone();
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let user = user.as_str().to_owned();
        let outcome = self
            .with_conn(target, move |conn| {
                let (admin, database, user, requested, allowed) = (
                    admin.clone(),
                    database.clone(),
                    user.clone(),
                    requested.clone(),
                    allowed.clone(),
                );
                Box::pin(async move {
                    install_functions(conn, &admin, &database).await?;
                    let map = |e| map_error(e, &admin, &user);
                    let statement = conn.statement(ACTIVATE_SQL).await.map_err(map)?;
                    let row = conn
                        .client()
                        .query_one(&statement, &[&user, &requested, &MARKER_ROLE, &allowed])
                        .await
                        .map_err(map)?;
                    let outcome: String = row.try_get(0).map_err(map)?;
                    Ok(outcome)
                })
            })
            .await?;
        match outcome.as_str() {
            "created" => Ok(ActivateOutcome::Created),
            "reactivated" => Ok(ActivateOutcome::Reactivated),
            "already_active" => Ok(ActivateOutcome::AlreadyActive),
            other => Err(unexpected(other)),
        }
    }

    /// Ends a session's hold on `user` after its server connection closed: lock it (`Keep`)
    /// or drop it (`Drop`, falling back to locking when objects depend on it), unless it
    /// still has live sessions anywhere in the cluster.
    pub async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError> {
        check_user_name(user.as_str())?;
        let settings = &self.inner.settings;
        let mut settle = Settle::closing_backend(settings.settle_time, settings.settle_poll);
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let user = user.as_str().to_owned();
        let drop_user = mode == TeardownMode::Drop;
        let outcome = loop {
            let (admin, database, user) = (admin.clone(), database.clone(), user.clone());
            let outcome = self
                .with_conn(target, move |conn| {
                    let (admin, database, user) = (admin.clone(), database.clone(), user.clone());
                    Box::pin(async move {
                        install_functions(conn, &admin, &database).await?;
                        let map = |e| map_error(e, &admin, &user);
                        // Two statements, two transactions: login must be disabled
                        // (committed) before the final look at pg_stat_activity, or a login
                        // racing with the teardown could go unseen.
                        let disable = conn.statement(DISABLE_LOGIN_SQL).await.map_err(map)?;
                        let row = conn
                            .client()
                            .query_one(&disable, &[&user, &MARKER_ROLE])
                            .await
                            .map_err(map)?;
                        let first: String = row.try_get(0).map_err(map)?;
                        if first != "disabled" {
                            return Ok(first);
                        }
                        let finish = conn.statement(FINISH_TEARDOWN_SQL).await.map_err(map)?;
                        let row = conn
                            .client()
                            .query_one(&finish, &[&user, &MARKER_ROLE, &drop_user])
                            .await
                            .map_err(map)?;
                        let outcome: String = row.try_get(0).map_err(map)?;
                        Ok(outcome)
                    })
                })
                .await?;
            // The closing session's backend may still be listed for a moment after the
            // client went away.
            if outcome == "active" && settle.wait().await {
                continue;
            }
            break outcome;
        };
        match outcome.as_str() {
            "missing" => Ok(DeactivateOutcome::Missing),
            "active" => Ok(DeactivateOutcome::Kept),
            "locked" => Ok(DeactivateOutcome::Locked),
            "dropped" => Ok(DeactivateOutcome::Dropped),
            "dependent" => Ok(DeactivateOutcome::DropFellBackToLock),
            other => Err(unexpected(other)),
        }
    }

    /// Sessions of `user` in every database of the cluster.
    #[cfg(feature = "test-support")]
    pub async fn live_session_count(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<i64, ProvisionError> {
        let admin = target.admin_user.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, user) = (admin.clone(), user.clone());
            Box::pin(async move {
                let map = |e| map_error(e, &admin, &user);
                let statement = conn.statement(LIVE_SESSIONS_SQL).await.map_err(map)?;
                let row = conn
                    .client()
                    .query_one(&statement, &[&user])
                    .await
                    .map_err(map)?;
                row.try_get::<_, i64>(0).map_err(map)
            })
        })
        .await
    }

    /// How the database sees `user`; `None` when it does not exist.
    #[cfg(feature = "test-support")]
    pub async fn user_state(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<Option<crate::UserState>, ProvisionError> {
        let admin = target.admin_user.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, user) = (admin.clone(), user.clone());
            Box::pin(async move {
                let map = |e| map_error(e, &admin, &user);
                let statement = conn.statement(USER_STATE_SQL).await.map_err(map)?;
                let row = conn
                    .client()
                    .query_opt(&statement, &[&user, &MARKER_ROLE])
                    .await
                    .map_err(map)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let roles: Vec<String> = row.try_get("roles").map_err(map)?;
                Ok(Some(crate::UserState {
                    managed: row.try_get("managed").map_err(map)?,
                    can_login: row.try_get("can_login").map_err(map)?,
                    roles: roles.into_iter().collect(),
                }))
            })
        })
        .await
    }

    /// Managed users that can log in and have no live session: what a crash leaves behind.
    pub async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError> {
        let admin = target.admin_user.clone();
        self.with_conn(target, move |conn| {
            let admin = admin.clone();
            Box::pin(async move {
                let map = |e| map_error(e, &admin, "");
                let statement = conn.statement(ACTIVE_MANAGED_SQL).await.map_err(map)?;
                let rows = conn
                    .client()
                    .query(&statement, &[&MARKER_ROLE])
                    .await
                    .map_err(map)?;
                rows.iter()
                    .map(|r| r.try_get::<_, String>(0).map_err(map))
                    .collect()
            })
        })
        .await
    }

    /// Lists what the admin user lacks for provisioning `roles_to_check`, each with the
    /// statement that fixes it. Empty when everything is in place.
    pub async fn preflight(
        &self,
        target: &AdminTarget,
        roles_to_check: &[String],
    ) -> Result<Vec<Finding>, ProvisionError> {
        // The operator runs the check after changing something in the database: look with a
        // new session, and let no warm connection keep the state from before.
        let key = PoolKey::of(target);
        self.inner.pool.discard(&key);
        let settings = &self.inner.settings;
        let mut conn = AdminConn::open(target, settings.connect_timeout).await?;
        let checking = preflight::run(
            &mut conn,
            &target.admin_user,
            roles_to_check,
            &target.allowed_predefined_roles,
        );
        match tokio::time::timeout(settings.operation_timeout, checking).await {
            Err(_) => Err(ProvisionError::Timeout(settings.operation_timeout)),
            Ok(Err(error)) => Err(error),
            Ok(Ok(findings)) => {
                self.inner.pool.put(key, conn);
                Ok(findings)
            }
        }
    }

    /// `dbward db check` for the databases sessions may enter besides the admin's own
    /// (`target.database`): each must exist and let every one of `roles` connect; when the
    /// admin enters the session's database (`admin_enters`: no `default_database`, or table
    /// permissions granted there), the admin needs CONNECT and TEMPORARY there too, and
    /// transactions there must be writable. Cluster-wide matters are [`Self::preflight`]'s.
    pub async fn preflight_databases(
        &self,
        target: &AdminTarget,
        roles: &[String],
        databases: &[String],
        admin_enters: bool,
    ) -> Result<Vec<Finding>, ProvisionError> {
        let settings = &self.inner.settings;
        let mut findings = Vec::new();
        let mut conn = AdminConn::open(target, settings.connect_timeout).await?;
        let mut seen = std::collections::BTreeSet::new();
        for database in databases {
            if !seen.insert(database.as_str()) {
                continue;
            }
            let checking = preflight::database_checks(
                &mut conn,
                &target.admin_user,
                database,
                roles,
                admin_enters && *database != target.database,
                &mut findings,
            );
            let enter = tokio::time::timeout(settings.operation_timeout, checking)
                .await
                .map_err(|_| ProvisionError::Timeout(settings.operation_timeout))??;
            if !enter {
                continue;
            }
            let mut there = target.clone();
            there.database = database.clone();
            let mut other = match AdminConn::open(&there, settings.connect_timeout).await {
                Ok(conn) => conn,
                // Not a privilege (checked above): pg_hba.conf, or the database went away.
                Err(error) => {
                    findings.push(Finding {
                        problem: format!(
                            "admin user \"{}\" cannot connect to database \"{database}\": {}",
                            target.admin_user,
                            crate::error_chain(&error)
                        ),
                        fix: String::new(),
                    });
                    continue;
                }
            };
            let checking =
                preflight::admin_checks_in(&mut other, &target.admin_user, &mut findings, true);
            tokio::time::timeout(settings.operation_timeout, checking)
                .await
                .map_err(|_| ProvisionError::Timeout(settings.operation_timeout))??;
        }
        Ok(findings)
    }

    /// Runs `op` on a warm connection to `target`, opening one when none is idle.
    ///
    /// A failed operation discards its connection and every idle one of the same key: the
    /// cause (a closed connection, a setting changed in the database since the connection
    /// started) is likely shared. When the failed connection came from the pool, the
    /// operation is retried once on a fresh connection; every operation is safe to repeat.
    async fn with_conn<T, F>(&self, target: &AdminTarget, mut op: F) -> Result<T, ProvisionError>
    where
        F: for<'c> FnMut(&'c mut AdminConn) -> OpFuture<'c, T>,
    {
        let settings = &self.inner.settings;
        let key = PoolKey::of(target);
        let _in_use = self
            .inner
            .pool
            .permit(&key, settings.operation_timeout)
            .await
            .ok_or(ProvisionError::Timeout(settings.operation_timeout))?;
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.inner.pool.take(&key) {
                Some(conn) => (conn, true),
                None => (
                    AdminConn::open(target, settings.connect_timeout).await?,
                    false,
                ),
            };
            let result = tokio::time::timeout(settings.operation_timeout, op(&mut conn)).await;
            match result {
                // A timed-out connection may be stuck mid-statement: never reuse it.
                Err(_) => return Err(ProvisionError::Timeout(settings.operation_timeout)),
                Ok(Err(error)) => {
                    drop(conn);
                    self.inner.pool.discard(&key);
                    if reused && !retried {
                        tracing::debug!(%error, "operation failed on a warm admin connection; retrying on a new one");
                        retried = true;
                        continue;
                    }
                    return Err(error);
                }
                Ok(Ok(value)) => {
                    self.inner.pool.put(key, conn);
                    return Ok(value);
                }
            }
        }
    }
}

impl Provisioner for PgProvisioner {
    async fn plan_user(
        &self,
        _target: &AdminTarget,
        dbward_name: &str,
    ) -> Result<DbUserName, ProvisionError> {
        Ok(crate::names::db_user_name(dbward_name))
    }

    async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        _dbward_name: &str,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError> {
        PgProvisioner::activate(self, target, user, roles).await
    }

    async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError> {
        PgProvisioner::deactivate(self, target, user, mode).await
    }

    async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError> {
        PgProvisioner::list_active_managed(self, target).await
    }

    async fn preflight(
        &self,
        target: &AdminTarget,
        roles: &[String],
    ) -> Result<Vec<Finding>, ProvisionError> {
        PgProvisioner::preflight(self, target, roles).await
    }

    async fn terminate_backend(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        backend_id: u64,
    ) -> Result<bool, ProvisionError> {
        // A process id is an int4; anything else names no backend.
        match i32::try_from(backend_id) {
            Ok(pid) => PgProvisioner::terminate_backend(self, target, user, pid).await,
            Err(_) => Ok(false),
        }
    }
}

/// Installs the helper functions, mapping a missing TEMPORARY privilege to its own error.
async fn install_functions(
    conn: &mut AdminConn,
    admin: &str,
    database: &str,
) -> Result<(), ProvisionError> {
    conn.ensure_functions().await.map_err(|e| {
        if sqlstate(&e) == Some("42501") {
            ProvisionError::AdminLacksTemporary {
                admin: admin.to_owned(),
                database: database.to_owned(),
                fix: format!(
                    "GRANT TEMPORARY ON DATABASE {} TO {};",
                    quote_ident(database),
                    quote_ident(admin)
                ),
            }
        } else {
            map_error(e, admin, "")
        }
    })
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|code| code.code())
}

/// Turns a database error into the provisioning error it stands for, by SQLSTATE.
fn map_error(error: tokio_postgres::Error, admin: &str, user: &str) -> ProvisionError {
    let detail = || {
        error
            .as_db_error()
            .and_then(|db| db.detail())
            .unwrap_or_default()
            .to_owned()
    };
    match sqlstate(&error) {
        Some("DWU01") => ProvisionError::UserNotManaged {
            user: user.to_owned(),
        },
        Some("DWU02") => ProvisionError::RolesChanged {
            user: user.to_owned(),
        },
        Some("DWU03") => ProvisionError::UserNotClean {
            user: user.to_owned(),
        },
        Some("DWR01") => ProvisionError::RoleMissing { role: detail() },
        Some("DWR02") => ProvisionError::RoleForbidden {
            role: detail(),
            reason: error
                .as_db_error()
                .and_then(|db| db.hint())
                .unwrap_or("it may never be granted")
                .to_owned(),
        },
        Some("DWP01") => ProvisionError::AdminLacksCreateRole {
            admin: admin.to_owned(),
            quoted_admin: quote_ident(admin),
        },
        Some("DWP02") => {
            let role = detail();
            ProvisionError::AdminCannotGrant {
                fix: format!(
                    "GRANT {} TO {} WITH ADMIN OPTION;",
                    quote_ident(&role),
                    quote_ident(admin)
                ),
                admin: admin.to_owned(),
                role,
            }
        }
        // read_only_sql_transaction: a hot standby or default_transaction_read_only.
        Some("25006") => ProvisionError::ReadOnly,
        // insufficient_privilege
        Some("42501") => ProvisionError::AdminLacksPrivilege {
            admin: admin.to_owned(),
        },
        _ => ProvisionError::Postgres(error),
    }
}

/// The helper functions only return the words the callers match; anything else means a
/// mismatched function definition.
fn unexpected(answer: &str) -> ProvisionError {
    ProvisionError::UnexpectedAnswer(answer.to_owned())
}
