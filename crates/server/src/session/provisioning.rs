//! Step 3 of the pipeline: make the database user ready (PROVISIONING.md §3).
//!
//! `authorize → lock(D, db user) → activate → connect as the user → unlock → relay … → close →
//! lock → deactivate or drop → unlock`. The lock is the store's cross-instance lease, keyed by
//! (engine, server host:port, db user) ([`DbUserKey`]), so two gateways sharing a store, or
//! two `db` resources pointing at one server, never activate and tear down the same user at
//! once.
//!
//! What survives a crash of this process is in the store: the activation that made a user
//! active (its mode, for teardown and the reconciler) and each live session with its upstream
//! connection (for the instance that cleans up after this one, see `reconcile`). A teardown
//! that cannot reach the store waits for it, with backoff, until it can.
//!
//! Clients are told only what PROVISIONING.md writes for them ([`UserFacing`]); every other
//! provisioning failure reaches them as a generic message with the session id, and its detail
//! (admin name, missing grant) goes to the log and to `dbward db check`.

use std::time::Duration;

use dbward_model::{Db, Protocol};
use dbward_provision::postgres::AdminTarget;
use dbward_provision::{
    ActivateOutcome, DbUserName, DeactivateOutcome, ProvisionError, TeardownMode,
};
use dbward_rbac::ProvisioningMode;
use dbward_store::{ActivationRecord, LockGuard, SessionRecord};
use serde_json::json;

use super::{Authorized, SessionError};
use crate::{audit, Gateway};

/// How long a connection waits for another session's activation or teardown of the same user.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// First and longest pause of a teardown that waits for the store.
const STORE_RETRY_FIRST: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long recording a live session may hold up its start.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// A database user as every gateway and every `db` resource sees it: the engine, the server
/// (`host:port`) and the in-database name. Two resources that point at one server name the
/// same user, so they share its provisioning lock, its live-session count and its activation
/// record. The only place these keys are built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbUserKey {
    pub engine: &'static str,
    pub server: String,
    pub db_user: String,
}

impl DbUserKey {
    pub fn of(db: &Db, db_user: &str) -> DbUserKey {
        DbUserKey {
            engine: engine_name(db.spec.protocol),
            server: server_of(db),
            db_user: db_user.to_string(),
        }
    }

    /// `<engine>/<host:port>/<db user>`: the key of the user's activation record.
    pub fn store_key(&self) -> String {
        format!("{}/{}/{}", self.engine, self.server, self.db_user)
    }

    /// The key of the user's provisioning lock.
    pub fn lock_key(&self) -> String {
        format!("provision/{}", self.store_key())
    }
}

fn engine_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Postgres => "postgres",
        Protocol::Mysql => "mysql",
    }
}

/// The server a `db` resource points at, as `host:port` (host in lower case, default port
/// filled in).
pub(crate) fn server_of(db: &Db) -> String {
    match db.host_port() {
        Ok((host, port)) => format!("{}:{port}", host.to_ascii_lowercase()),
        Err(_) => db.spec.uri.trim().to_ascii_lowercase(),
    }
}

/// `keep` wins over `best_effort_drop`: a user is dropped only when every activation and
/// resource that applies asks for it.
pub(crate) fn weakest(a: ProvisioningMode, b: ProvisioningMode) -> ProvisioningMode {
    if a == ProvisioningMode::BestEffortDrop && b == ProvisioningMode::BestEffortDrop {
        ProvisioningMode::BestEffortDrop
    } else {
        ProvisioningMode::Keep
    }
}

/// A mode as stored (`keep`, `best_effort_drop`); anything else counts as `keep`.
pub(crate) fn stored_mode(text: &str) -> ProvisioningMode {
    if text == ProvisioningMode::BestEffortDrop.as_str() {
        ProvisioningMode::BestEffortDrop
    } else {
        ProvisioningMode::Keep
    }
}

pub(crate) fn teardown_mode(mode: ProvisioningMode) -> TeardownMode {
    match mode {
        ProvisioningMode::BestEffortDrop => TeardownMode::Drop,
        _ => TeardownMode::Keep,
    }
}

/// What a client may read about an error: the texts PROVISIONING.md writes for users, or
/// `None`, and then the client gets the generic message with its session id.
pub(crate) trait UserFacing {
    fn user_facing(&self) -> Option<String>;
}

impl UserFacing for ProvisionError {
    fn user_facing(&self) -> Option<String> {
        // No wildcard: a new error kind must be decided on here.
        match self {
            // About the person's own name and roles; PROVISIONING §2, §3.
            ProvisionError::UserNotManaged { .. }
            | ProvisionError::RolesChanged { .. }
            | ProvisionError::RoleMissing { .. }
            | ProvisionError::InvalidName { .. } => Some(self.to_string()),
            // The role is named (it came from the person's roles or traits); why it is
            // refused (it is the admin, a superuser role, ...) is for the log only.
            ProvisionError::RoleForbidden { role, .. } => Some(format!(
                "database role \"{role}\" may not be granted to provisioned users"
            )),
            // The admin, its privileges, the server: for the operator only.
            ProvisionError::AdminLacksCreateRole { .. }
            | ProvisionError::AdminCannotGrant { .. }
            | ProvisionError::AdminLacksTemporary { .. }
            | ProvisionError::AdminLacksPrivilege { .. }
            | ProvisionError::ReadOnly
            | ProvisionError::UserNotClean { .. }
            | ProvisionError::UserMissing { .. }
            | ProvisionError::AdminConnect { .. }
            | ProvisionError::Timeout(_)
            | ProvisionError::UnexpectedAnswer(_)
            | ProvisionError::Postgres(_) => None,
        }
    }
}

/// The admin connection of one engine.
#[derive(Clone)]
pub(crate) enum EngineAdmin {
    Postgres(AdminTarget),
    Mysql(dbward_provision::mysql::AdminTarget),
}

/// Step 3 done: the user the upstream connection logs in as, and what teardown needs.
pub struct Provisioned {
    /// The in-database user name (hashed when the dbward name is too long).
    pub db_user: String,
    mode: ProvisioningMode,
    admin: Option<EngineAdmin>,
    key: Option<DbUserKey>,
    lock: Option<LockGuard>,
    /// The session was recorded in the store's live sessions.
    recorded: bool,
}

/// The PostgreSQL admin connection target of a database, or the PROVISIONING §1.5 error.
pub(crate) fn admin_target(
    gw: &Gateway,
    db: &Db,
    session_db_name: &str,
) -> Result<AdminTarget, SessionError> {
    let (admin, target) = admin_credentials(gw, db)?;
    let database = admin
        .default_database
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| session_db_name.to_string());
    Ok(AdminTarget {
        host: target.host,
        port: target.port,
        server_name: target.server_name_text,
        client_config: target.tls,
        admin_user: admin.name,
        database,
        allowed_predefined_roles: db.allowed_predefined_roles(),
    })
}

fn admin_credentials(
    gw: &Gateway,
    db: &Db,
) -> Result<(dbward_model::AdminUser, super::upstream::UpstreamTarget), SessionError> {
    let admin = db.admin_user().ok_or_else(|| {
        SessionError::Provisioning(format!(
            "database \"{}\" has no admin user configured: automatic user provisioning needs spec.admin_user in the db resource",
            db.metadata.name
        ))
    })?;
    let target = gw.upstream.target(&gw.cas, db, &admin.name)?;
    Ok((admin, target))
}

/// The MySQL/MariaDB admin target: the admin's default database is the schema that keeps
/// `user_attributes`.
fn mysql_admin_target(
    gw: &Gateway,
    db: &Db,
) -> Result<dbward_provision::mysql::AdminTarget, SessionError> {
    let (admin, target) = admin_credentials(gw, db)?;
    Ok(dbward_provision::mysql::AdminTarget {
        host: target.host,
        port: target.port,
        server_name: target.server_name_text,
        client_config: target.tls,
        admin_user: admin.name,
        default_schema: admin
            .default_database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| dbward_provision::mysql::DEFAULT_SCHEMA.to_string()),
    })
}

/// The admin connection of a database for maintenance (reconciler): PostgreSQL connects to
/// the admin's default database, else `postgres`.
pub(crate) fn engine_admin(gw: &Gateway, db: &Db) -> Result<EngineAdmin, SessionError> {
    Ok(match db.spec.protocol {
        Protocol::Postgres => EngineAdmin::Postgres(admin_target(gw, db, "postgres")?),
        Protocol::Mysql => EngineAdmin::Mysql(mysql_admin_target(gw, db)?),
    })
}

/// The in-database name of a dbward user on this database (MariaDB's limit; a MySQL 8
/// server's shorter one is applied at connect time from its version).
pub(crate) fn in_db_name(db: &Db, dbward_name: &str) -> String {
    match db.spec.protocol {
        Protocol::Postgres => dbward_provision::names::pg_name(dbward_name),
        Protocol::Mysql => dbward_provision::mysql::mariadb_user_name(dbward_name)
            .as_str()
            .to_string(),
    }
}

/// Activates the database user when the decision asks for provisioning. With provisioning
/// off, the requested db user is used as is and nothing is locked.
pub async fn provision(
    gw: &Gateway,
    authorized: &mut Authorized,
) -> Result<Provisioned, SessionError> {
    let mode = authorized.decision.mode;
    if mode == ProvisioningMode::Off {
        return Ok(Provisioned {
            db_user: authorized.decision.db_user.clone(),
            mode,
            admin: None,
            key: None,
            lock: None,
            recorded: false,
        });
    }
    let dbward_name = authorized.decision.db_user.clone();
    // The final (possibly hashed) name is known before the lock is taken.
    let (admin, db_user) = match authorized.db.spec.protocol {
        Protocol::Postgres => (
            EngineAdmin::Postgres(admin_target(
                gw,
                &authorized.db,
                &authorized.decision.db_name,
            )?),
            dbward_provision::names::pg_name(&dbward_name),
        ),
        Protocol::Mysql => {
            let target = mysql_admin_target(gw, &authorized.db)?;
            let version = gw
                .maria_provisioner
                .server_version(&target)
                .await
                .map_err(|err| provision_error(authorized, err))?;
            let flavor = dbward_proxy::mysql::parse_server_version(&version);
            dbward_proxy::mysql::provisioning_supported(&flavor)
                .map_err(SessionError::Provisioning)?;
            let name = match flavor {
                dbward_proxy::mysql::ServerFlavor::MySql(..) => {
                    dbward_provision::mysql::mysql_user_name(&dbward_name)
                }
                _ => dbward_provision::mysql::mariadb_user_name(&dbward_name),
            };
            (EngineAdmin::Mysql(target), name.as_str().to_string())
        }
    };
    authorized.fields.db_user = db_user.clone();
    gw.sessions.set_db_user(&authorized.fields.sid, &db_user);

    let key = DbUserKey::of(&authorized.db, &db_user);
    let lock = take_lock(gw, &key).await?;
    let user = DbUserName::new(db_user.clone());
    let roles = &authorized.decision.db_roles;
    let activating = std::time::Instant::now();
    let outcome = match &admin {
        EngineAdmin::Postgres(target) => gw.pg_provisioner.activate(target, &user, roles).await,
        EngineAdmin::Mysql(target) => {
            gw.maria_provisioner
                .activate(target, &user, &dbward_name, roles)
                .await
        }
    }
    .map_err(|err| provision_error(authorized, err))?;
    gw.metrics.activated(&authorized.fields, activating);
    record_activation(gw, authorized, &key, mode, outcome).await;
    if matches!(outcome, ActivateOutcome::Created) {
        gw.audit
            .emit(
                audit::USER_CREATE,
                &authorized.fields,
                json!({"success": true}),
            )
            .await;
    }
    let provisioned = Provisioned {
        db_user,
        mode,
        admin: Some(admin),
        key: Some(key),
        lock: Some(lock),
        recorded: false,
    };
    // Table privileges (db_permissions) are applied under the same lock; a session that
    // cannot get them does not start, and the user is torn down as after any failed start.
    if let Err(err) = super::permissions::apply(gw, authorized, &provisioned.db_user).await {
        provisioned.teardown(gw, authorized).await;
        return Err(err);
    }
    Ok(provisioned)
}

/// Records the activation's mode under the user's key (the lock is held). When the user was
/// already active through another session, the weaker of the two modes is kept, so a user
/// that some session activated in `keep` mode is never dropped.
async fn record_activation(
    gw: &Gateway,
    authorized: &Authorized,
    key: &DbUserKey,
    mode: ProvisioningMode,
    outcome: ActivateOutcome,
) {
    let store_key = key.store_key();
    let mode = if outcome == ActivateOutcome::AlreadyActive {
        match gw.store.get_activation(&store_key).await {
            Ok(Some(existing)) => weakest(mode, stored_mode(&existing.mode)),
            // Active, but nobody recorded how: assume the weakest.
            Ok(None) | Err(_) => ProvisioningMode::Keep,
        }
    } else {
        mode
    };
    let record = ActivationRecord {
        user_key: store_key,
        db_service: authorized.db.metadata.name.clone(),
        dbward_user: authorized.fields.user.clone(),
        mode: mode.as_str().to_string(),
        instance_id: gw.instance_id.clone(),
        updated_unix_ms: 0,
    };
    if let Err(err) = gw.store.put_activation(record).await {
        tracing::warn!(sid = %authorized.fields.sid, %err, "activation could not be recorded");
    }
}

impl Provisioned {
    /// The user's own connection is up: other sessions of the same user may proceed.
    pub async fn connected(&mut self) {
        if let Some(lock) = self.lock.take() {
            // Off the client's path: the next holder of the same key waits for this release
            // anyway, and nobody else has to.
            tokio::spawn(async move {
                if let Err(err) = lock.release().await {
                    tracing::warn!(%err, "provisioning lock release failed");
                }
            });
        }
    }

    /// The upstream connection is up: records the session in the store with its upstream
    /// connection (PostgreSQL backend pid, MariaDB connection id), so that, should this
    /// gateway die, another instance (or this one restarted) can end it and tear the user
    /// down. Only provisioned sessions are recorded: there is nothing to undo for others.
    pub async fn record_live(
        &mut self,
        gw: &Gateway,
        authorized: &Authorized,
        backend_id: Option<i64>,
    ) {
        let Some(key) = &self.key else {
            return;
        };
        let record = SessionRecord {
            sid: authorized.fields.sid.clone(),
            instance_id: gw.instance_id.clone(),
            db_service: authorized.db.metadata.name.clone(),
            db_user: self.db_user.clone(),
            dbward_user: authorized.fields.user.clone(),
            mode: self.mode.as_str().to_string(),
            started_unix_ms: unix_ms_now(),
            engine: key.engine.to_string(),
            server: key.server.clone(),
            backend_id,
        };
        // Removed at the end even when this write failed or timed out: it may still land.
        self.recorded = true;
        match tokio::time::timeout(RECORD_WAIT, gw.store.register_session(record)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(sid = %authorized.fields.sid, %err, "live session could not be recorded")
            }
            Err(_) => {
                tracing::warn!(sid = %authorized.fields.sid, "recording the live session timed out")
            }
        }
    }

    /// Teardown after the server connection closed: lock → deactivate or drop → unlock, then
    /// the session's record is removed from the store. Never fails the caller: problems are
    /// logged; a store that cannot be reached is waited for, with backoff.
    pub async fn teardown(mut self, gw: &Gateway, authorized: &Authorized) {
        self.connected().await;
        if let (Some(admin), Some(key)) = (self.admin.take(), self.key.clone()) {
            // Before lock or drop: table privileges would keep DROP ROLE from succeeding.
            super::permissions::revoke_at_end(gw, authorized, &self.db_user, &key).await;
            self.deactivate(gw, authorized, &admin, &key).await;
        }
        if self.recorded {
            forget_live_session(gw, &authorized.fields.sid).await;
        }
    }

    async fn deactivate(
        &self,
        gw: &Gateway,
        authorized: &Authorized,
        admin: &EngineAdmin,
        key: &DbUserKey,
    ) {
        let sid = &authorized.fields.sid;
        // Another session of this gateway still uses the user (through any resource on the
        // same server): its own teardown, the last one, deactivates it. Checking the database
        // here would only wait for that session.
        if gw.sessions.count_for(key) > 0 {
            return;
        }
        // A backend that is still finishing (a cancelled statement, a killed client's
        // socket not yet noticed) counts as live. When no session of this gateway uses the
        // user any more, look again a few times before leaving it to the reconciler.
        for pause in [0u64, 1, 3, 8] {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let lock = take_lock_patiently(gw, key, sid).await;
            if gw.sessions.count_for(key) > 0 {
                release(lock).await;
                return;
            }
            let mode = match gw.store.get_activation(&key.store_key()).await {
                Ok(Some(record)) => weakest(self.mode, stored_mode(&record.mode)),
                Ok(None) => self.mode,
                // Unknown: never drop on a guess.
                Err(_) => ProvisioningMode::Keep,
            };
            let user = DbUserName::new(self.db_user.clone());
            let deactivating = std::time::Instant::now();
            let result = match admin {
                EngineAdmin::Postgres(target) => {
                    gw.pg_provisioner
                        .deactivate(target, &user, teardown_mode(mode))
                        .await
                }
                EngineAdmin::Mysql(target) => {
                    gw.maria_provisioner
                        .deactivate(target, &user, teardown_mode(mode))
                        .await
                }
            };
            gw.metrics.torn_down(&authorized.fields, deactivating);
            if matches!(
                result,
                Ok(DeactivateOutcome::Missing
                    | DeactivateOutcome::Locked
                    | DeactivateOutcome::Dropped
                    | DeactivateOutcome::DropFellBackToLock)
            ) {
                if let Err(err) = gw.store.delete_activation(&key.store_key()).await {
                    tracing::warn!(%sid, %err, "activation record could not be removed");
                }
            }
            release(lock).await;
            match result {
                Ok(DeactivateOutcome::Kept(_)) => {
                    if gw.sessions.count_for(key) > 0 {
                        tracing::debug!(%sid, user = %self.db_user, "user still has live sessions; left active");
                        return;
                    }
                    tracing::debug!(%sid, user = %self.db_user, "backend still listed; checking again");
                }
                Ok(DeactivateOutcome::Missing) => return,
                Ok(outcome) => {
                    let deleted = matches!(outcome, DeactivateOutcome::Dropped);
                    gw.audit
                        .emit(
                            audit::USER_DEACTIVATE,
                            &authorized.fields,
                            json!({"success": true, "delete": deleted}),
                        )
                        .await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(%sid, user = %self.db_user, %err, "teardown failed; the reconciler will retry");
                    gw.audit
                        .emit(
                            audit::USER_DEACTIVATE,
                            &authorized.fields,
                            json!({"success": false, "error": err.to_string(), "delete": false}),
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

fn unix_ms_now() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

pub(super) async fn release(lock: LockGuard) {
    if let Err(err) = lock.release().await {
        tracing::warn!(%err, "provisioning lock release failed");
    }
}

async fn take_lock(gw: &Gateway, key: &DbUserKey) -> Result<LockGuard, SessionError> {
    gw.store
        .lock(&key.lock_key(), &gw.instance_id, LOCK_WAIT)
        .await
        .map_err(|err| match err {
            dbward_store::StoreError::LockTimeout { .. } => SessionError::Busy(format!(
                "timed out waiting for another connection of database user \"{}\" to finish provisioning; try again",
                key.db_user
            )),
            other => SessionError::Internal(other.to_string()),
        })
}

/// The lock for a teardown: waits for it however long the store is unreachable or the lock
/// is held (a teardown skipped would leave the user able to log in), retrying with backoff.
pub(super) async fn take_lock_patiently(gw: &Gateway, key: &DbUserKey, sid: &str) -> LockGuard {
    let mut pause = STORE_RETRY_FIRST;
    loop {
        match take_lock(gw, key).await {
            Ok(lock) => return lock,
            Err(err) => {
                tracing::warn!(%sid, user = %key.db_user, %err, retry_in = ?pause, "teardown waits for the provisioning lock");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(STORE_RETRY_MAX);
            }
        }
    }
}

/// Removes a session's record from the store, retrying with backoff in the background while
/// the store is unreachable: a record left behind would make the session look alive.
async fn forget_live_session(gw: &Gateway, sid: &str) {
    if gw.store.end_session(sid).await.is_ok() {
        return;
    }
    let store = gw.store.clone();
    let sid = sid.to_string();
    tokio::spawn(async move {
        let mut pause = STORE_RETRY_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            match store.end_session(&sid).await {
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(%sid, %err, retry_in = ?pause, "live session record could not be removed")
                }
            }
            pause = (pause * 2).min(STORE_RETRY_MAX);
        }
    });
}

/// An error with its causes, for the log (the driver's own message is often just "db error").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// The error a client gets for a failed activation: a documented user-facing text, or the
/// generic one with the session id. The detail is logged with the session id either way.
pub(super) fn provision_error(authorized: &Authorized, err: ProvisionError) -> SessionError {
    let sid = &authorized.fields.sid;
    let db = &authorized.db.metadata.name;
    let detail = error_chain(&err);
    match err.user_facing() {
        Some(text) => {
            tracing::info!(%sid, user = %authorized.fields.user, %db, error = %detail, "activation refused");
            SessionError::Provisioning(text)
        }
        None => {
            tracing::warn!(%sid, user = %authorized.fields.user, %db, error = %detail, "database user provisioning failed");
            SessionError::Provisioning(format!(
                "database user provisioning failed (session {sid}); ask an administrator to run `dbward db check {db}`"
            ))
        }
    }
}

/// `dbward db check DB`: what the admin user lacks for provisioning every db role some user
/// could be granted on this database, each with the statement that fixes it.
pub async fn preflight(
    gw: &Gateway,
    db_name: &str,
) -> Result<Vec<crate::api::DbCheckFinding>, crate::GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    let db = snapshot.dbs.get(db_name).ok_or_else(|| {
        crate::GatewayError::NotFound(format!("database \"{db_name}\" not found"))
    })?;
    let admin =
        engine_admin(gw, db).map_err(|e| crate::GatewayError::BadRequest(e.user_message()))?;
    let mut roles = std::collections::BTreeSet::new();
    for user in snapshot.users.values() {
        if let Ok(checker) = snapshot.checker(user) {
            if let Ok(Some(p)) = checker.provisioning(db) {
                roles.extend(p.roles);
            }
        }
    }
    let roles: Vec<String> = roles.into_iter().collect();
    let findings = match &admin {
        EngineAdmin::Postgres(target) => gw.pg_provisioner.preflight(target, &roles).await,
        EngineAdmin::Mysql(target) => gw.maria_provisioner.preflight(target, &roles).await,
    }
    .map_err(|e| crate::GatewayError::BadRequest(e.to_string()))?;
    Ok(findings
        .into_iter()
        .map(|f| crate::api::DbCheckFinding {
            problem: f.problem,
            fix: f.fix,
        })
        .collect())
}
