//! MariaDB (and, where cheap, MySQL 8) provisioning: activate, deactivate and drop the users
//! dbward creates, over warm admin connections authenticated with a db-client certificate.
//!
//! A MariaDB session has one active role, so every user gets an all-in-one role
//! `dw-role-<user>`: the db roles are granted to it, it is granted to the user and set as the
//! user's default role. Users are created `'<user>'@'%' REQUIRE SUBJECT '/CN=<user>'`, are
//! members of [`MARKER_ROLE`], and have their dbward name recorded in
//! `<default schema>.user_attributes`. Conditions are told apart by error number only.
//!
//! MariaDB commits every account statement on its own, so an activation is a sequence of
//! idempotent steps: repeating it after a failure repairs the user. An activation that fails
//! part way undoes what it did before it returns: a user it created is dropped with its
//! all-in-one role and its record, a user it was reactivating is locked again. This module
//! does not lock: the caller holds the per-(database, user) lock around each activation and
//! teardown.
//!
//! The user may have changed its own account during a session (`SET PASSWORD` needs no
//! privilege) or been given privileges directly; activation and teardown put it back to a
//! clean slate (`sql/clean_slate.sql`, `sql/revoke_privileges.sql`): no password, the
//! `REQUIRE SUBJECT` dbward set, no resource limits, no privilege of its own, and roles
//! only the marker and its all-in-one role. Some roles are never granted, whatever a dbward
//! role or trait asks for (`sql/never_granted.sql`).
//!
//! Queries and longer statements live in `sql/*.sql` beside this file; their `{name}`
//! placeholders are filled with hex literals, quoted identifiers or numbers only, never with
//! raw input. One-line account statements (`GRANT … TO …`, `ALTER USER … ACCOUNT LOCK`) are
//! written where they run, from quoted identifiers.

mod conn;
mod flavor;
mod preflight;
mod quote;
mod terminate;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub use crate::AdminTarget;
pub use conn::MysqlError;
pub use flavor::{parse_server_version, provisioning_supported, ServerFlavor};
pub use quote::{quote_account, quote_ident, quote_string};

use self::conn::{hex_literal, AdminConn as Conn};

use crate::error::ProvisionError;
use crate::names::{hashed_name, DbUserName, NameLimit};
use crate::pool::{Pool, PoolKey, PooledConn as _};
use crate::{
    ActivateOutcome, DeactivateOutcome, Finding, Provisioner, Settle, TeardownMode, UserState,
    MARKER_ROLE,
};

/// Longest user name MariaDB keeps.
pub const MARIADB_MAX_USER_CHARS: usize = 80;
/// Longest user or role name MySQL keeps.
pub const MYSQL_MAX_NAME_CHARS: usize = 32;
/// Prefix of each user's all-in-one role.
pub const ROLE_PREFIX: &str = "dw-role-";
/// Default schema for `user_attributes` when the admin user names none.
pub const DEFAULT_SCHEMA: &str = "dbward";

const CLEAN_SLATE_SQL: &str = include_str!("sql/clean_slate.sql");
const REVOKE_PRIVILEGES_SQL: &str = include_str!("sql/revoke_privileges.sql");
const CREATE_ATTRIBUTES_SQL: &str = include_str!("sql/create_attributes.sql");
const ATTRIBUTES_COLLATION_SQL: &str = include_str!("sql/attributes_collation.sql");
const CONVERT_ATTRIBUTES_SQL: &str = include_str!("sql/convert_attributes.sql");
const NEVER_GRANTED_SQL: &str = include_str!("sql/never_granted.sql");
const ACTIVE_MANAGED_SQL: &str = include_str!("sql/active_managed.sql");
const ROLE_EXISTS_SQL: &str = include_str!("sql/role_exists.sql");
const ADMIN_OF_ROLE_SQL: &str = include_str!("sql/admin_of_role.sql");
const ACCOUNT_ELSEWHERE_SQL: &str = include_str!("sql/account_elsewhere.sql");
const USER_STATE_SQL: &str = include_str!("sql/user_state.sql");
const DIRECT_ROLES_SQL: &str = include_str!("sql/direct_roles.sql");
const LIVE_SESSIONS_SQL: &str = include_str!("sql/live_sessions.sql");
const IS_DEFINER_SQL: &str = include_str!("sql/is_definer.sql");
const RECORDED_NAME_SQL: &str = include_str!("sql/recorded_name.sql");
const RECORD_NAME_SQL: &str = include_str!("sql/record_name.sql");
const FORGET_NAME_SQL: &str = include_str!("sql/forget_name.sql");

/// MariaDB's `SET USER` privilege bit in `mysql.global_priv` (`access`), which has no column
/// in the `mysql.user` view.
const SET_USER_ACCESS_BIT: u64 = 1 << 30;

/// `template` with each `{name}` replaced by its value. Values are hex literals, quoted
/// identifiers or numbers, never raw input.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut sql = template.to_string();
    for (name, value) in values {
        sql = sql.replace(&format!("{{{name}}}"), value);
    }
    sql
}

/// MariaDB error numbers the provisioning logic tells apart.
pub mod errno {
    /// `ER_DBACCESS_DENIED_ERROR`.
    pub const DBACCESS_DENIED: u16 = 1044;
    /// `ER_BAD_DB_ERROR`: the schema does not exist.
    pub const BAD_DB: u16 = 1049;
    /// `ER_ACCESS_DENIED_ERROR`.
    pub const ACCESS_DENIED: u16 = 1045;
    /// `ER_ACCESS_DENIED_NO_PASSWORD_ERROR`: also what a role grant without ADMIN gives.
    pub const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    /// `ER_TABLEACCESS_DENIED_ERROR`.
    pub const TABLEACCESS_DENIED: u16 = 1142;
    /// `ER_SPECIFIC_ACCESS_DENIED_ERROR`.
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// `ER_OPTION_PREVENTS_STATEMENT` (`--read-only`).
    pub const OPTION_PREVENTS_STATEMENT: u16 = 1290;
    /// `ER_NONEXISTING_GRANT`: also what `REVOKE ALL PRIVILEGES` gives a role that holds
    /// no privilege of its own.
    pub const NONEXISTING_GRANT: u16 = 1141;
    /// `ER_CANNOT_USER`: the account operation failed (exists, missing, …).
    pub const CANNOT_USER: u16 = 1396;
    /// `ER_INVALID_ROLE`.
    pub const INVALID_ROLE: u16 = 1959;
    /// MySQL `ER_CANNOT_USER_REFERENCED_AS_DEFINER`: objects depend on the user.
    pub const USER_REFERENCED_AS_DEFINER: u16 = 4006;
}

/// The MariaDB user that dbward provisions for the dbward user `dbward_name` (80 characters
/// kept, longer hashed).
pub fn mariadb_user_name(dbward_name: &str) -> DbUserName {
    DbUserName::new(hashed_name(
        dbward_name,
        NameLimit::Chars(MARIADB_MAX_USER_CHARS),
    ))
}

/// The MySQL user for `dbward_name` (32 characters kept, longer hashed).
pub fn mysql_user_name(dbward_name: &str) -> DbUserName {
    DbUserName::new(hashed_name(
        dbward_name,
        NameLimit::Chars(MYSQL_MAX_NAME_CHARS),
    ))
}

/// The statements that give `admin` the schema it logs into and keeps `user_attributes` in.
pub fn schema_fix(schema: &str, admin: &str) -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS {q}; GRANT ALL ON {q}.* TO {}@`%`;",
        quote_ident(admin),
        q = quote_ident(schema)
    )
}

/// The all-in-one role of `user`.
pub fn all_in_one_role(user: &DbUserName) -> String {
    format!("{ROLE_PREFIX}{}", user.as_str())
}

/// Timing knobs of [`MariaProvisioner`].
#[derive(Debug, Clone)]
pub struct MariaProvisionerSettings {
    /// How long teardown waits for a closing session to leave the process list.
    pub settle_time: Duration,
    /// How often it looks meanwhile.
    pub settle_poll: Duration,
    /// Time allowed for one operation, connecting included.
    pub operation_timeout: Duration,
    /// Most idle admin connections kept per target.
    pub max_idle_per_target: usize,
    /// Longest time an admin connection is reused. A connection keeps the session state it
    /// started with, so a fix made in the database reaches every warm connection within
    /// this time.
    pub max_connection_lifetime: Duration,
}

impl Default for MariaProvisionerSettings {
    fn default() -> Self {
        MariaProvisionerSettings {
            settle_time: Duration::from_secs(2),
            settle_poll: Duration::from_millis(50),
            operation_timeout: Duration::from_secs(30),
            max_idle_per_target: 16,
            max_connection_lifetime: Duration::from_secs(300),
        }
    }
}

/// Provisions users in MariaDB servers. Cheap to clone; clones share the warm connections.
#[derive(Clone)]
pub struct MariaProvisioner {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Conn>,
    settings: MariaProvisionerSettings,
}

impl Default for MariaProvisioner {
    fn default() -> Self {
        Self::new()
    }
}

impl MariaProvisioner {
    /// A provisioner with default settings and no open connection.
    pub fn new() -> Self {
        Self::with_settings(MariaProvisionerSettings::default())
    }

    /// A provisioner with the given settings.
    pub fn with_settings(settings: MariaProvisionerSettings) -> Self {
        MariaProvisioner {
            inner: Arc::new(Inner {
                pool: Pool::new(
                    settings.max_idle_per_target,
                    settings.max_connection_lifetime,
                ),
                settings,
            }),
        }
    }

    /// An idle warm connection to `target` younger than the maximum lifetime, or a new one,
    /// once fewer than the pool's size are in use; it holds its permit until it is given back
    /// or dropped.
    async fn conn(&self, target: &AdminTarget) -> Result<Conn, ProvisionError> {
        let key = PoolKey::of(target);
        let wait = self.inner.settings.operation_timeout;
        let permit = self
            .inner
            .pool
            .permit(&key, wait)
            .await
            .ok_or(ProvisionError::Timeout(wait))?;
        let mut conn = match self.inner.pool.take(&key) {
            Some(conn) => conn,
            None => self.fresh_conn(target).await?,
        };
        conn.hold_permit(Some(permit));
        Ok(conn)
    }

    /// A new admin connection to `target`, into its schema.
    async fn fresh_conn(&self, target: &AdminTarget) -> Result<Conn, ProvisionError> {
        self.fresh_conn_into(target, Some(&target.database)).await
    }

    /// A new admin connection to `target`, into `schema` (none: no default schema). A
    /// schema that does not exist, or that the admin may not enter, is
    /// [`ProvisionError::AdminSchemaMissing`] / [`ProvisionError::AdminSchemaDenied`].
    async fn fresh_conn_into(
        &self,
        target: &AdminTarget,
        schema: Option<&str>,
    ) -> Result<Conn, ProvisionError> {
        let timeout = self.inner.settings.operation_timeout;
        let connecting = Conn::connect(
            &target.host,
            target.port,
            target.client_config.clone(),
            &target.server_name,
            &target.admin_user,
            schema,
        );
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(ProvisionError::Timeout(timeout)),
            Ok(Err(MysqlError::Server(err)))
                if schema.is_some()
                    && (err.code == errno::BAD_DB || err.code == errno::DBACCESS_DENIED) =>
            {
                let schema = schema.unwrap_or_default().to_string();
                let admin = target.admin_user.clone();
                let fix = schema_fix(&schema, &admin);
                Err(if err.code == errno::BAD_DB {
                    ProvisionError::AdminSchemaMissing { admin, schema, fix }
                } else {
                    ProvisionError::AdminSchemaDenied { admin, schema, fix }
                })
            }
            Ok(Err(err)) => Err(ProvisionError::AdminConnect {
                admin: target.admin_user.clone(),
                address: target.address(),
                source: Box::new(err),
            }),
            Ok(Ok(mut conn)) => {
                // String literals below rely on backslash escapes (certificate subjects
                // carry OpenSSL's `\/` escapes), whatever the server's default sql_mode.
                exec(
                    &mut conn,
                    "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
                    &target.admin_user,
                )
                .await?;
                // The handshake asks for utf8mb4, but a server started with
                // --skip-character-set-client-handshake ignores that: names are any Unicode.
                exec(&mut conn, "SET NAMES utf8mb4", &target.admin_user).await?;
                Ok(conn)
            }
        }
    }

    /// Keeps a connection that finished an operation cleanly for the next one.
    fn give_back(&self, target: &AdminTarget, conn: Conn) {
        self.inner.pool.put(PoolKey::of(target), conn);
    }

    /// After an operation: a connection that succeeded goes back to the pool; after a
    /// failure it is dropped together with every idle connection to `target`.
    fn finish<T>(
        &self,
        target: &AdminTarget,
        conn: Conn,
        outcome: Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        self.inner.pool.finish(PoolKey::of(target), conn, outcome)
    }

    /// Number of idle warm connections kept for `target`.
    #[cfg(feature = "test-support")]
    pub fn idle_connections(&self, target: &AdminTarget) -> usize {
        self.inner.pool.idle_count(&PoolKey::of(target))
    }

    /// Opens an admin connection to `target` ahead of time and creates the marker role and
    /// the `user_attributes` table when missing.
    #[cfg(feature = "test-support")]
    pub async fn warm_up(&self, target: &AdminTarget) -> Result<(), ProvisionError> {
        let mut conn = self.conn(target).await?;
        ensure_setup(&mut conn, target).await?;
        self.give_back(target, conn);
        Ok(())
    }

    /// Makes `user` able to log in with exactly `roles` (through its all-in-one role),
    /// creating it when it does not exist. `dbward_name` is recorded for a new user and must
    /// match the record of an existing one.
    pub async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        dbward_name: &str,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError> {
        quote::check_user_name(user.as_str())?;
        for role in roles {
            quote::check_role_name(role)?;
        }
        let requested: BTreeSet<String> = roles.iter().cloned().collect();
        let timeout = self.inner.settings.operation_timeout;
        let work = async {
            let mut conn = self.conn(target).await?;
            if let Err(error) = ensure_setup(&mut conn, target).await {
                return self.finish(target, conn, Err(error));
            }
            let outcome = activate(&mut conn, target, user, dbward_name, &requested).await;
            self.finish(target, conn, outcome)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ProvisionError::Timeout(timeout))?
    }

    /// Ends a session's hold on `user` after its server connection closed: lock it (`Keep`)
    /// or drop it (`Drop`, locking instead when it is the DEFINER of routines, views,
    /// triggers or events), unless it still has live sessions.
    pub async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError> {
        quote::check_user_name(user.as_str())?;
        let timeout = self.inner.settings.operation_timeout + self.inner.settings.settle_time;
        let settle = (
            self.inner.settings.settle_time,
            self.inner.settings.settle_poll,
        );
        let work = async {
            let mut conn = self.conn(target).await?;
            let outcome = settle_and_deactivate(&mut conn, target, user, mode, settle).await;
            self.finish(target, conn, outcome)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ProvisionError::Timeout(timeout))?
    }

    /// Live sessions of `user` (`information_schema.processlist`).
    #[cfg(feature = "test-support")]
    pub async fn live_session_count(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<i64, ProvisionError> {
        let mut conn = self.conn(target).await?;
        let count = live_sessions(&mut conn, user, &target.admin_user).await?;
        self.give_back(target, conn);
        Ok(count)
    }

    /// How the database sees `user`; `None` when it does not exist. `can_login` is "not
    /// locked"; `roles` are the db roles of its all-in-one role.
    #[cfg(feature = "test-support")]
    pub async fn user_state(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<Option<UserState>, ProvisionError> {
        let mut conn = self.conn(target).await?;
        let state = user_state(&mut conn, user, &target.admin_user).await?;
        self.give_back(target, conn);
        Ok(state)
    }

    /// Managed users that are unlocked and have no live session: what a crash leaves behind.
    pub async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError> {
        let admin = target.admin_user.as_str();
        let mut conn = self.conn(target).await?;
        let sql = render(ACTIVE_MANAGED_SQL, &[("marker", &hex_literal(MARKER_ROLE))]);
        let rows = conn.query(&sql).await.map_err(|e| map_error(e, admin))?;
        self.give_back(target, conn);
        Ok(rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .filter(|name| name != admin)
            .collect())
    }

    /// What the admin user lacks for provisioning `roles_to_check`, each with the statement
    /// that fixes it. Empty when everything is in place.
    pub async fn preflight(
        &self,
        target: &AdminTarget,
        roles_to_check: &[String],
    ) -> Result<Vec<Finding>, ProvisionError> {
        // The operator runs the check after changing something in the database: look with a
        // new session, and let no warm connection keep the state from before.
        self.inner.pool.discard(&PoolKey::of(target));
        // Without its schema the admin cannot log in there: look from no schema, where the
        // check reports the schema with its fix alongside everything else.
        let (mut conn, in_schema) = match self.fresh_conn(target).await {
            Ok(conn) => (conn, true),
            Err(
                ProvisionError::AdminSchemaMissing { .. }
                | ProvisionError::AdminSchemaDenied { .. },
            ) => (self.fresh_conn_into(target, None).await?, false),
            Err(err) => return Err(err),
        };
        let findings = preflight::preflight(&mut conn, target, roles_to_check).await;
        if in_schema {
            self.finish(target, conn, findings)
        } else {
            findings
        }
    }

    /// The server's version string (`SELECT VERSION()`), for the version gate.
    pub async fn server_version(&self, target: &AdminTarget) -> Result<String, ProvisionError> {
        let mut conn = self.conn(target).await?;
        let version = server_version(&mut conn, &target.admin_user).await;
        self.finish(target, conn, version)
    }

    /// The in-database name of `dbward_name` on this server: MySQL keeps 32 characters,
    /// MariaDB 80 (longer names are hashed). Servers too old to provision users are refused.
    pub async fn plan_user(
        &self,
        target: &AdminTarget,
        dbward_name: &str,
    ) -> Result<DbUserName, ProvisionError> {
        use self::flavor::{parse_server_version, provisioning_supported, ServerFlavor};
        let flavor = parse_server_version(&self.server_version(target).await?);
        provisioning_supported(&flavor).map_err(ProvisionError::Unsupported)?;
        Ok(match flavor {
            ServerFlavor::MySql(..) => mysql_user_name(dbward_name),
            _ => mariadb_user_name(dbward_name),
        })
    }
}

impl Provisioner for MariaProvisioner {
    async fn plan_user(
        &self,
        target: &AdminTarget,
        dbward_name: &str,
    ) -> Result<DbUserName, ProvisionError> {
        MariaProvisioner::plan_user(self, target, dbward_name).await
    }

    async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        dbward_name: &str,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError> {
        MariaProvisioner::activate(self, target, user, dbward_name, roles).await
    }

    async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError> {
        MariaProvisioner::deactivate(self, target, user, mode).await
    }

    async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError> {
        MariaProvisioner::list_active_managed(self, target).await
    }

    async fn preflight(
        &self,
        target: &AdminTarget,
        roles: &[String],
    ) -> Result<Vec<Finding>, ProvisionError> {
        MariaProvisioner::preflight(self, target, roles).await
    }

    async fn terminate_backend(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        backend_id: u64,
    ) -> Result<bool, ProvisionError> {
        self.kill_connection(target, user, backend_id).await
    }
}

async fn settle_and_deactivate(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
    mode: TeardownMode,
    (settle_time, settle_poll): (Duration, Duration),
) -> Result<DeactivateOutcome, ProvisionError> {
    let admin = target.admin_user.as_str();
    let Some(state) = user_state(conn, user, admin).await? else {
        return Ok(DeactivateOutcome::Missing);
    };
    if !state.managed {
        return Err(ProvisionError::UserNotManaged {
            user: user.to_string(),
        });
    }
    // The closing session may still be listed for a moment.
    let mut settle = Settle::closing_backend(settle_time, settle_poll);
    while live_sessions(conn, user, admin).await? > 0 {
        if !settle.wait().await {
            return Ok(DeactivateOutcome::Kept);
        }
    }
    deactivate(conn, target, user, mode).await
}

/// Creates the marker role and the `user_attributes` table when missing (and gives the table
/// its binary collation), once per admin connection: four statements, a quarter of a
/// reactivation's time on the server, that a warm connection need not repeat.
async fn ensure_setup(conn: &mut Conn, target: &AdminTarget) -> Result<(), ProvisionError> {
    if conn.setup_done {
        return Ok(());
    }
    let admin = target.admin_user.as_str();
    let schema = quote_ident(&target.database);
    exec(
        conn,
        &format!("CREATE ROLE IF NOT EXISTS {}", quote_ident(MARKER_ROLE)),
        admin,
    )
    .await?;
    exec(
        conn,
        &render(CREATE_ATTRIBUTES_SQL, &[("schema", &schema)]),
        admin,
    )
    .await?;
    let collation = conn
        .query_value(&render(
            ATTRIBUTES_COLLATION_SQL,
            &[("schema_name", &hex_literal(&target.database))],
        ))
        .await
        .map_err(|e| map_error(e, admin))?;
    if collation.as_deref() != Some("utf8mb4_bin") {
        exec(
            conn,
            &render(CONVERT_ATTRIBUTES_SQL, &[("schema", &schema)]),
            admin,
        )
        .await?;
    }
    conn.setup_done = true;
    Ok(())
}

async fn activate(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
    dbward_name: &str,
    requested: &BTreeSet<String>,
) -> Result<ActivateOutcome, ProvisionError> {
    let admin = target.admin_user.as_str();
    let name = user.as_str();
    // Every requested role must be one dbward may grant, exist and be grantable by the admin
    // before anything is created: MariaDB commits account statements one by one.
    for wanted in requested {
        check_never_granted(conn, target, wanted).await?;
        check_grantable(conn, admin, wanted).await?;
    }
    // The same name on another host (`root`@`localhost`) or as a role is someone else's
    // account: never create a twin of it.
    let elsewhere = count(
        conn,
        &render(ACCOUNT_ELSEWHERE_SQL, &[("user", &hex_literal(name))]),
        admin,
    )
    .await?;
    if elsewhere > 0 {
        return Err(ProvisionError::UserNotManaged { user: name.into() });
    }
    let outcome = match user_state(conn, user, admin).await? {
        None => ActivateOutcome::Created,
        Some(state) if !state.managed => {
            return Err(ProvisionError::UserNotManaged { user: name.into() })
        }
        Some(state) => {
            match recorded_name(conn, target, name).await? {
                // A hash collision or a hijack: the user belongs to someone else.
                Some(recorded) if recorded != dbward_name => {
                    return Err(ProvisionError::UserNotManaged { user: name.into() });
                }
                Some(_) => {}
                None => record_name(conn, target, name, dbward_name).await?,
            }
            if live_sessions(conn, user, admin).await? >= 1 {
                return if state.roles == *requested && state.can_login {
                    Ok(ActivateOutcome::AlreadyActive)
                } else {
                    Err(ProvisionError::RolesChanged { user: name.into() })
                };
            }
            ActivateOutcome::Reactivated
        }
    };
    let mut created = false;
    let made = make_active(
        conn,
        target,
        user,
        dbward_name,
        requested,
        outcome == ActivateOutcome::Created,
        &mut created,
    )
    .await;
    match made {
        Ok(()) => Ok(outcome),
        Err(err) => {
            undo_activation(conn, target, user, created, outcome).await;
            Err(err)
        }
    }
}

/// Creates the user when `create` (setting `created` once it exists), then gives it a clean
/// slate, exactly the `requested` roles (through its all-in-one role) and login.
async fn make_active(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
    dbward_name: &str,
    requested: &BTreeSet<String>,
    create: bool,
    created: &mut bool,
) -> Result<(), ProvisionError> {
    let admin = target.admin_user.as_str();
    let name = user.as_str();
    let account = quote_account(name);
    let role_name = all_in_one_role(user);
    let role = quote_ident(&role_name);
    if create {
        // Locked until the last step: a failure half way never leaves a user who can log in.
        let subject = quote::subject_literal(name);
        exec(
            conn,
            &format!("CREATE USER {account} REQUIRE SUBJECT {subject} ACCOUNT LOCK"),
            admin,
        )
        .await?;
        *created = true;
        record_name(conn, target, name, dbward_name).await?;
    }
    exec(conn, &format!("CREATE ROLE IF NOT EXISTS {role}"), admin).await?;
    clean_slate(conn, target, user).await?;
    for granted in requested {
        let granted = quote_ident(granted);
        exec(conn, &format!("GRANT {granted} TO {role}"), admin).await?;
    }
    exec(conn, &format!("GRANT {role} TO {account}"), admin).await?;
    exec(
        conn,
        &format!("SET DEFAULT ROLE {role} FOR {account}"),
        admin,
    )
    .await?;
    exec(conn, &format!("ALTER USER {account} ACCOUNT UNLOCK"), admin).await?;
    Ok(())
}

/// Puts the user back to what dbward made: no password, its `REQUIRE SUBJECT`, no resource
/// limits, no privilege of its own, member of the marker role only, no default role; its
/// all-in-one role (when it exists) holds nothing. Leaves login as it is.
async fn clean_slate(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
) -> Result<(), ProvisionError> {
    let admin = target.admin_user.as_str();
    let name = user.as_str();
    let account = quote_account(name);
    let role_name = all_in_one_role(user);
    let role = quote_ident(&role_name);
    exec(
        conn,
        &render(
            CLEAN_SLATE_SQL,
            &[
                ("account", &account),
                ("subject", &quote::subject_literal(name)),
            ],
        ),
        admin,
    )
    .await?;
    // This also revokes every role the user holds (whoever administers them), the marker
    // included: granted back at once.
    revoke_privileges(conn, &account, admin).await?;
    for held in direct_roles(conn, name, "%", admin).await? {
        if held != MARKER_ROLE {
            let held = quote_ident(&held);
            exec(conn, &format!("REVOKE {held} FROM {account}"), admin).await?;
        }
    }
    let marker = quote_ident(MARKER_ROLE);
    exec(conn, &format!("GRANT {marker} TO {account}"), admin).await?;
    exec(conn, &format!("SET DEFAULT ROLE NONE FOR {account}"), admin).await?;
    if role_exists(conn, &role_name, admin).await? {
        revoke_privileges(conn, &role, admin).await?;
        for held in direct_roles(conn, &role_name, "", admin).await? {
            let held = quote_ident(&held);
            exec(conn, &format!("REVOKE {held} FROM {role}"), admin).await?;
        }
    }
    Ok(())
}

/// Revokes every privilege and role `grantee` (a quoted account or role) holds directly.
/// MariaDB answers `ER_NONEXISTING_GRANT` for a role that holds roles but no privilege of its
/// own, after revoking the roles; the caller revokes whatever is left one by one.
async fn revoke_privileges(
    conn: &mut Conn,
    grantee: &str,
    admin: &str,
) -> Result<(), ProvisionError> {
    let sql = render(REVOKE_PRIVILEGES_SQL, &[("grantee", grantee)]);
    match conn.query(&sql).await {
        Ok(_) => Ok(()),
        Err(MysqlError::Server(err)) if err.code == errno::NONEXISTING_GRANT => Ok(()),
        Err(err) => Err(map_error(err, admin)),
    }
}

/// After a failed activation: a user this activation created is dropped with its role and
/// record; a user it was reactivating is locked and loses its all-in-one role. Best effort:
/// the reconciler finds whatever a broken connection leaves.
async fn undo_activation(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
    created: bool,
    outcome: ActivateOutcome,
) {
    let name = user.as_str();
    let account = quote_account(name);
    let role = quote_ident(&all_in_one_role(user));
    let statements = if created {
        vec![
            format!("DROP USER IF EXISTS {account}"),
            format!("DROP ROLE IF EXISTS {role}"),
            forget_name_sql(target, name),
        ]
    } else if outcome == ActivateOutcome::Reactivated {
        vec![
            format!("ALTER USER {account} ACCOUNT LOCK"),
            format!("REVOKE {role} FROM {account}"),
        ]
    } else {
        // The failure came before anything was created.
        Vec::new()
    };
    for sql in statements {
        if let Err(err) = conn.query(&sql).await {
            tracing::warn!(user = name, %err, "undoing a failed activation");
        }
    }
}

async fn role_exists(conn: &mut Conn, role: &str, admin: &str) -> Result<bool, ProvisionError> {
    let sql = render(ROLE_EXISTS_SQL, &[("role", &hex_literal(role))]);
    Ok(count(conn, &sql, admin).await? > 0)
}

/// Whether `admin` holds `role` WITH ADMIN OPTION, and may therefore grant it.
async fn admin_of_role(conn: &mut Conn, admin: &str, role: &str) -> Result<bool, ProvisionError> {
    let sql = render(
        ADMIN_OF_ROLE_SQL,
        &[("admin", &hex_literal(admin)), ("role", &hex_literal(role))],
    );
    Ok(count(conn, &sql, admin).await? > 0)
}

/// The statement that forgets the recorded dbward name of the dropped user `name`.
fn forget_name_sql(target: &AdminTarget, name: &str) -> String {
    render(
        FORGET_NAME_SQL,
        &[
            ("schema", &quote_ident(&target.database)),
            ("user", &hex_literal(name)),
        ],
    )
}

/// Refuses a role dbward must never grant, naming the reason (`sql/never_granted.sql`).
async fn check_never_granted(
    conn: &mut Conn,
    target: &AdminTarget,
    role: &str,
) -> Result<(), ProvisionError> {
    let admin = target.admin_user.as_str();
    let sql = render(
        NEVER_GRANTED_SQL,
        &[
            ("role", &hex_literal(role)),
            ("admin", &hex_literal(admin)),
            ("marker", &hex_literal(MARKER_ROLE)),
            ("schema", &hex_literal(&target.database)),
            ("role_prefix", &hex_literal(ROLE_PREFIX)),
            ("set_user_bit", &SET_USER_ACCESS_BIT.to_string()),
        ],
    );
    match conn
        .query_value(&sql)
        .await
        .map_err(|e| map_error(e, admin))?
    {
        Some(reason) => Err(ProvisionError::RoleForbidden {
            role: role.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

async fn deactivate(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &DbUserName,
    mode: TeardownMode,
) -> Result<DeactivateOutcome, ProvisionError> {
    let admin = target.admin_user.as_str();
    let name = user.as_str();
    let account = quote_account(name);
    let role = quote_ident(&all_in_one_role(user));

    // Close the race with a login: lock first, then look for sessions.
    exec(conn, &format!("ALTER USER {account} ACCOUNT LOCK"), admin).await?;
    if live_sessions(conn, user, admin).await? >= 1 {
        exec(conn, &format!("ALTER USER {account} ACCOUNT UNLOCK"), admin).await?;
        return Ok(DeactivateOutcome::Kept);
    }

    let mut fell_back = false;
    if mode == TeardownMode::Drop {
        if is_definer(conn, name, admin).await? {
            fell_back = true;
        } else {
            match conn.query(&format!("DROP USER {account}")).await {
                Ok(_) => {
                    exec(conn, &format!("DROP ROLE IF EXISTS {role}"), admin).await?;
                    exec(conn, &forget_name_sql(target, name), admin).await?;
                    return Ok(DeactivateOutcome::Dropped);
                }
                Err(MysqlError::Server(err)) if err.code == errno::USER_REFERENCED_AS_DEFINER => {
                    fell_back = true;
                }
                Err(err) => return Err(map_error(err, admin)),
            }
        }
    }
    // A locked user holds the marker role only and nothing it gave itself; activation
    // grants the all-in-one role back.
    clean_slate(conn, target, user).await?;
    // A DEFINER is kept, locked like in `keep` mode, so its views and routines survive.
    Ok(if fell_back {
        DeactivateOutcome::DropFellBackToLock
    } else {
        DeactivateOutcome::Locked
    })
}

async fn user_state(
    conn: &mut Conn,
    user: &DbUserName,
    admin: &str,
) -> Result<Option<UserState>, ProvisionError> {
    let name = user.as_str();
    let sql = render(
        USER_STATE_SQL,
        &[
            ("user", &hex_literal(name)),
            ("marker", &hex_literal(MARKER_ROLE)),
        ],
    );
    let rows = conn.query(&sql).await.map_err(|e| map_error(e, admin))?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let mut columns = row.into_iter();
    let locked = columns.next().flatten();
    let marker_grants = columns.next().flatten();
    // Never the admin itself, whatever its grants say.
    let managed = name != admin && marker_grants.as_deref().is_some_and(|n| n != "0");
    let roles = direct_roles(conn, &all_in_one_role(user), "", admin)
        .await?
        .into_iter()
        .collect();
    Ok(Some(UserState {
        managed,
        can_login: !matches!(locked.as_deref(), Some("true") | Some("1")),
        roles,
    }))
}

/// Roles granted to the account `user`@`host` (roles themselves have host `''`).
/// Refuses a role that does not exist or that the admin is not an ADMIN of.
async fn check_grantable(conn: &mut Conn, admin: &str, role: &str) -> Result<(), ProvisionError> {
    if !role_exists(conn, role, admin).await? {
        return Err(ProvisionError::RoleMissing {
            role: role.to_string(),
        });
    }
    if !admin_of_role(conn, admin, role).await? {
        return Err(ProvisionError::AdminCannotGrant {
            admin: admin.to_string(),
            role: role.to_string(),
            fix: format!(
                "GRANT {} TO {}@`%` WITH ADMIN OPTION;",
                quote_ident(role),
                quote_ident(admin)
            ),
        });
    }
    Ok(())
}

/// Roles granted to the account `user`@`host` (roles themselves have host `''`).
async fn direct_roles(
    conn: &mut Conn,
    user: &str,
    host: &str,
    admin: &str,
) -> Result<Vec<String>, ProvisionError> {
    let sql = render(
        DIRECT_ROLES_SQL,
        &[("user", &hex_literal(user)), ("host", &hex_literal(host))],
    );
    let rows = conn.query(&sql).await.map_err(|e| map_error(e, admin))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}

/// The number a `SELECT COUNT(*)` answers.
async fn count(conn: &mut Conn, sql: &str, admin: &str) -> Result<i64, ProvisionError> {
    let value = conn
        .query_value(sql)
        .await
        .map_err(|e| map_error(e, admin))?;
    value
        .as_deref()
        .unwrap_or("0")
        .parse()
        .map_err(|_| ProvisionError::UnexpectedAnswer(format!("count {value:?}")))
}

async fn live_sessions(
    conn: &mut Conn,
    user: &DbUserName,
    admin: &str,
) -> Result<i64, ProvisionError> {
    let sql = render(LIVE_SESSIONS_SQL, &[("user", &hex_literal(user.as_str()))]);
    count(conn, &sql, admin).await
}

/// Whether `user`@`%` is the DEFINER of any routine, view, trigger or event; MariaDB drops
/// such a user without complaint and leaves the objects broken.
async fn is_definer(conn: &mut Conn, user: &str, admin: &str) -> Result<bool, ProvisionError> {
    let definer = hex_literal(&format!("{user}@%"));
    let sql = render(IS_DEFINER_SQL, &[("definer", &definer)]);
    Ok(count(conn, &sql, admin).await? > 0)
}

async fn recorded_name(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &str,
) -> Result<Option<String>, ProvisionError> {
    let sql = render(
        RECORDED_NAME_SQL,
        &[
            ("schema", &quote_ident(&target.database)),
            ("user", &hex_literal(user)),
        ],
    );
    conn.query_value(&sql)
        .await
        .map_err(|e| map_error(e, &target.admin_user))
}

async fn record_name(
    conn: &mut Conn,
    target: &AdminTarget,
    user: &str,
    dbward_name: &str,
) -> Result<(), ProvisionError> {
    let sql = render(
        RECORD_NAME_SQL,
        &[
            ("schema", &quote_ident(&target.database)),
            ("user", &hex_literal(user)),
            ("dbward_name", &hex_literal(dbward_name)),
        ],
    );
    exec(conn, &sql, &target.admin_user).await
}

async fn server_version(conn: &mut Conn, admin: &str) -> Result<String, ProvisionError> {
    let version = conn
        .query_value("SELECT VERSION()")
        .await
        .map_err(|e| map_error(e, admin))?;
    Ok(version.unwrap_or_default())
}

async fn exec(conn: &mut Conn, sql: &str, admin: &str) -> Result<(), ProvisionError> {
    conn.query(sql)
        .await
        .map(drop)
        .map_err(|e| map_error(e, admin))
}

/// Turns a database error into the provisioning error it stands for, by error number.
fn map_error(err: MysqlError, admin: &str) -> ProvisionError {
    match &err {
        MysqlError::Server(server) => match server.code {
            errno::DBACCESS_DENIED
            | errno::ACCESS_DENIED
            | errno::ACCESS_DENIED_NO_PASSWORD
            | errno::TABLEACCESS_DENIED
            | errno::SPECIFIC_ACCESS_DENIED => ProvisionError::AdminLacksPrivilege {
                admin: admin.to_string(),
            },
            errno::OPTION_PREVENTS_STATEMENT => ProvisionError::ReadOnly,
            errno::INVALID_ROLE => ProvisionError::RoleMissing {
                role: role_in_message(&server.message).unwrap_or_default(),
            },
            _ => ProvisionError::Mysql(err),
        },
        MysqlError::Connection(_) => ProvisionError::Mysql(err),
    }
}

/// The role an `ER_INVALID_ROLE` names (`Invalid role specification `x``): the quoted part
/// of the message, whatever the language around it.
fn role_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].rfind('`')? + start;
    Some(message[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_keeps_80_characters_and_hashes_longer_names() {
        let name = "a".repeat(80);
        assert_eq!(mariadb_user_name(&name).as_str(), name);
        let long = "a".repeat(81);
        let hashed = mariadb_user_name(&long);
        assert!(hashed.as_str().starts_with("dw-"));
        assert_eq!(hashed.as_str().len(), 30);
        assert_eq!(all_in_one_role(&hashed), format!("dw-role-{hashed}"));
    }

    #[test]
    fn mysql_keeps_32_characters() {
        assert_eq!(mysql_user_name(&"b".repeat(32)).as_str(), "b".repeat(32));
        assert!(mysql_user_name(&"b".repeat(33)).as_str().starts_with("dw-"));
        // Characters, not bytes.
        assert_eq!(mysql_user_name(&"é".repeat(32)).as_str(), "é".repeat(32));
    }

    #[test]
    fn invalid_role_error_names_the_role_in_any_language() {
        assert_eq!(
            role_in_message("Invalid role specification `no such`").as_deref(),
            Some("no such")
        );
        assert_eq!(role_in_message("no quotes"), None);
    }
}
