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
//! The session pipeline plans the user ([`plan_db_user`]: its final, possibly hashed name)
//! before it registers the session, then activates it ([`activate_db_user`]) under the lock;
//! [`provision`] does both for callers that registered first. The lock is a guard, released
//! when the user's own connection is up ([`Provisioned::connected`]) or when it is dropped.
//!
//! Every engine goes through one interface (`dbward_provision::Provisioners`), for sessions,
//! the reconciler and `dbward db check` alike; [`admin_target`] is the one place an admin
//! connection is described.
//!
//! Clients are told only what each error says they may read
//! (`dbward_provision::UserFacingError`), followed, for what an operator fixes in the
//! database, by the session id and the `dbward db check` command to run; PostgreSQL's own
//! refusal of the admin's login (no CONNECT privilege, no such database) is relayed as the
//! server wrote it. Every other provisioning failure reaches them as a generic message with
//! the session id, and its detail (admin name, missing grant) goes to the log and to
//! `dbward db check`.

use std::time::Duration;

use dbward_model::{Db, Protocol};
use dbward_provision::{
    error_chain, ActivateOutcome, AdminTarget, DbUserName, DeactivateOutcome, Engine,
    ProvisionError, Settle, TeardownMode, UserFacingError,
};
use dbward_rbac::ProvisioningMode;
use dbward_store::{ActivationRecord, LockGuard, SessionRecord, StoreError};
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

/// How long ending a session's server connection may take.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// When no session of this gateway uses the user any more but the database still lists a
/// backend of it after the provisioner's own wait (a cancelled statement, a killed client's
/// socket not yet noticed), teardown looks again for this long, 1 s after the first look and
/// then less often (at most 8 s apart), before leaving the user to the reconciler.
const TEARDOWN_SETTLE: Duration = Duration::from_secs(12);
const TEARDOWN_FIRST_PAUSE: Duration = Duration::from_secs(1);
const TEARDOWN_LONGEST_PAUSE: Duration = Duration::from_secs(8);

/// A database user as every gateway and every `db` resource sees it: the engine, the server
/// (`host:port`) and the in-database name. Two resources that point at one server name the
/// same user, so they share its provisioning lock, its live-session count and its activation
/// record. The only place these keys are built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbUserKey {
    pub engine: Engine,
    pub server: String,
    pub db_user: String,
}

impl DbUserKey {
    pub fn of(db: &Db, db_user: &str) -> DbUserKey {
        DbUserKey {
            engine: engine_of(db.spec.protocol),
            server: server_of(db),
            db_user: db_user.to_string(),
        }
    }

    /// The user of a recorded live session; `None` for an engine this version does not know.
    pub(crate) fn of_record(record: &SessionRecord) -> Option<DbUserKey> {
        Some(DbUserKey {
            engine: Engine::from_name(&record.engine)?,
            server: record.server.clone(),
            db_user: record.db_user.clone(),
        })
    }

    /// `<engine>/<host:port>/<db user>`: the key of the user's activation record.
    pub fn store_key(&self) -> String {
        format!("{}/{}/{}", self.engine.as_str(), self.server, self.db_user)
    }

    /// The key of the user's provisioning lock.
    pub fn lock_key(&self) -> String {
        format!("provision/{}", self.store_key())
    }
}

pub(crate) fn engine_of(protocol: Protocol) -> Engine {
    match protocol {
        Protocol::Postgres => Engine::Postgres,
        Protocol::Mysql => Engine::Mysql,
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

/// What teardown does for a provisioning mode.
fn teardown_mode(mode: ProvisioningMode) -> TeardownMode {
    match mode {
        ProvisioningMode::BestEffortDrop => TeardownMode::Drop,
        _ => TeardownMode::Keep,
    }
}

/// The admin connection of a `db` resource, or the PROVISIONING §1.5 error. The admin
/// enters `admin_user.default_database` when set; else PostgreSQL's enters
/// `session_db_name` and MariaDB's the schema [`dbward_provision::mysql::DEFAULT_SCHEMA`]
/// (which keeps `user_attributes`).
pub(crate) fn admin_target(
    gw: &Gateway,
    db: &Db,
    session_db_name: &str,
) -> Result<AdminTarget, SessionError> {
    let admin = db.admin_user().ok_or_else(|| {
        SessionError::Provisioning(format!(
            "database \"{}\" has no admin user configured: automatic user provisioning needs spec.admin_user in the db resource",
            db.metadata.name
        ))
    })?;
    let upstream = gw.upstream.target(&gw.cas, db, &admin.name)?;
    let engine = engine_of(db.spec.protocol);
    let database = admin
        .default_database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| match engine {
            Engine::Postgres => session_db_name.to_string(),
            Engine::Mysql => dbward_provision::mysql::DEFAULT_SCHEMA.to_string(),
        });
    Ok(AdminTarget {
        engine,
        host: upstream.host,
        port: upstream.port,
        server_name: upstream.server_name_text,
        client_config: upstream.tls,
        admin_user: admin.name,
        database,
        allowed_predefined_roles: db.allowed_predefined_roles(),
    })
}

/// The admin connection for work outside a session (reconciler, `db check`): PostgreSQL's
/// admin enters its default database, else `postgres`.
pub(crate) fn maintenance_target(gw: &Gateway, db: &Db) -> Result<AdminTarget, SessionError> {
    admin_target(gw, db, "postgres")
}

/// The in-database name of a dbward user on this database (MariaDB's limit; a MySQL 8
/// server's shorter one is applied at connect time from its version).
pub(crate) fn in_db_name(db: &Db, dbward_name: &str) -> String {
    match engine_of(db.spec.protocol) {
        Engine::Postgres => dbward_provision::names::pg_name(dbward_name),
        Engine::Mysql => dbward_provision::mysql::mariadb_user_name(dbward_name)
            .as_str()
            .to_string(),
    }
}

/// The provisioning lock of one database user, waiting at most `wait`; released when the
/// guard is dropped (or, awaited, by `LockGuard::release`).
pub(crate) async fn lock_user(
    gw: &Gateway,
    key: &DbUserKey,
    wait: Duration,
) -> Result<LockGuard, StoreError> {
    gw.store.lock(&key.lock_key(), &gw.instance_id, wait).await
}

/// A provisioned user: where its admin connection goes and what it is keyed by.
#[derive(Clone)]
struct Managed {
    admin: AdminTarget,
    key: DbUserKey,
}

/// Step 3, first half: the user the session will run as, known before the session is
/// registered and before the lock is taken.
pub struct PlannedUser {
    /// The in-database user name (hashed when the dbward name is too long).
    pub db_user: String,
    mode: ProvisioningMode,
    /// `None` when provisioning is off.
    managed: Option<Managed>,
}

/// Step 3 done: the user the upstream connection logs in as, and what teardown needs.
pub struct Provisioned {
    /// The in-database user name (hashed when the dbward name is too long).
    pub db_user: String,
    mode: ProvisioningMode,
    /// `None` when provisioning is off.
    managed: Option<Managed>,
    /// Held from activation until the user's own connection is up; released on drop.
    lock: Option<LockGuard>,
    /// What activation did, until it is recorded in the store (see
    /// [`Provisioned::record_activation`]).
    unrecorded: Option<ActivateOutcome>,
    /// The session was recorded in the store's live sessions.
    recorded: bool,
}

/// Plans the database user of a session: with provisioning off, the requested db user as
/// is; else the final (possibly hashed) name on this server, which is also written to the
/// session's audit fields. Checks that the database has an admin user and (MariaDB, MySQL)
/// that the server can provision users. Changes nothing in the database.
pub async fn plan_db_user(
    gw: &Gateway,
    authorized: &mut Authorized,
) -> Result<PlannedUser, SessionError> {
    let mode = authorized.decision.mode;
    if mode == ProvisioningMode::Off {
        return Ok(PlannedUser {
            db_user: authorized.decision.db_user.clone(),
            mode,
            managed: None,
        });
    }
    let admin = admin_target(gw, &authorized.db, &authorized.decision.db_name)?;
    let user = gw
        .provisioners
        .plan_user(&admin, &authorized.decision.db_user)
        .await
        .map_err(|err| provision_error(authorized, err))?;
    let db_user = user.as_str().to_string();
    authorized.fields.db_user = db_user.clone();
    let key = DbUserKey::of(&authorized.db, &db_user);
    Ok(PlannedUser {
        db_user,
        mode,
        managed: Some(Managed { admin, key }),
    })
}

/// Activates the planned user under its lock, which the returned value holds until
/// [`Provisioned::connected`]. With provisioning off, nothing is locked or changed.
pub async fn activate_db_user(
    gw: &Gateway,
    authorized: &Authorized,
    planned: PlannedUser,
) -> Result<Provisioned, SessionError> {
    let PlannedUser {
        db_user,
        mode,
        managed,
    } = planned;
    let Some(managed) = managed else {
        return Ok(Provisioned {
            db_user,
            mode,
            managed: None,
            lock: None,
            unrecorded: None,
            recorded: false,
        });
    };
    let lock = take_lock(gw, &managed.key).await?;
    let activating = std::time::Instant::now();
    let outcome = gw
        .provisioners
        .activate(
            &managed.admin,
            &DbUserName::new(db_user.clone()),
            &authorized.decision.db_user,
            &authorized.decision.db_roles,
        )
        .await
        .map_err(|err| provision_error(authorized, err))?;
    gw.metrics.activated(&authorized.fields, activating);
    if matches!(outcome, ActivateOutcome::Created) {
        gw.audit
            .emit(
                audit::USER_CREATE,
                &authorized.fields,
                json!({"success": true}),
            )
            .await;
    }
    Ok(Provisioned {
        db_user,
        mode,
        managed: Some(managed),
        lock: Some(lock),
        unrecorded: Some(outcome),
        recorded: false,
    })
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
    /// The activation still to be recorded, once: for [`Provisioned::record_activation`].
    pub(crate) fn take_unrecorded(&mut self) -> Option<ActivateOutcome> {
        self.unrecorded.take()
    }

    /// Records the activation `outcome` (taken with [`Provisioned::take_unrecorded`]) under
    /// the user's key while the lock is still held: the connect step runs this alongside
    /// opening the user's connection, so the store write costs the client no time. A session
    /// that never gets that far records nothing, and its teardown uses its own mode.
    pub(crate) async fn record_activation(
        &self,
        gw: &Gateway,
        authorized: &Authorized,
        outcome: Option<ActivateOutcome>,
    ) {
        if let (Some(managed), Some(outcome)) = (&self.managed, outcome) {
            record_activation(gw, authorized, &managed.key, self.mode, outcome).await;
        }
    }

    /// The user's own connection is up: other sessions of the same user may proceed. The
    /// lock is released off the client's path (the next holder of the same key waits for
    /// the release anyway, and nobody else has to).
    pub async fn connected(&mut self) {
        drop(self.lock.take());
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
        let Some(managed) = &self.managed else {
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
            engine: managed.key.engine.as_str().to_string(),
            server: managed.key.server.clone(),
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
        if let Some(managed) = self.managed.take() {
            // Before lock or drop: table privileges would keep DROP ROLE from succeeding.
            super::permissions::revoke_at_end(gw, authorized, &self.db_user, &managed.key).await;
            self.deactivate(gw, authorized, &managed).await;
        }
        if self.recorded {
            forget_live_session(gw, &authorized.fields.sid).await;
        }
    }

    async fn deactivate(&self, gw: &Gateway, authorized: &Authorized, managed: &Managed) {
        let sid = &authorized.fields.sid;
        let key = &managed.key;
        // Another session of this gateway still uses the user (through any resource on the
        // same server): its own teardown, the last one, deactivates it. Checking the database
        // here would only wait for that session.
        if gw.sessions.count_for(key) > 0 {
            return;
        }
        let mut settle = Settle::new(
            TEARDOWN_SETTLE,
            TEARDOWN_FIRST_PAUSE,
            TEARDOWN_LONGEST_PAUSE,
        );
        loop {
            let lock = take_lock_patiently(gw, key, sid).await;
            if gw.sessions.count_for(key) > 0 {
                return;
            }
            let mode = match gw.store.get_activation(&key.store_key()).await {
                Ok(Some(record)) => weakest(self.mode, stored_mode(&record.mode)),
                Ok(None) => self.mode,
                // Unknown: never drop on a guess.
                Err(_) => ProvisioningMode::Keep,
            };
            let deactivating = std::time::Instant::now();
            let result = deactivate_user(gw, &managed.admin, key, mode).await;
            gw.metrics.torn_down(&authorized.fields, deactivating);
            drop(lock);
            match result {
                Ok(DeactivateOutcome::Kept) => {
                    if gw.sessions.count_for(key) > 0 {
                        tracing::debug!(%sid, user = %self.db_user, "user still has live sessions; left active");
                        return;
                    }
                    tracing::debug!(%sid, user = %self.db_user, "backend still listed; checking again");
                    if !settle.wait().await {
                        return;
                    }
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
                    tracing::warn!(%sid, user = %self.db_user, error = %error_chain(&err), kind = err.kind().as_str(), "teardown failed; the reconciler will retry");
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

/// Deactivates or drops a user per its mode, under its lock (held by the caller); forgets
/// its activation once it is no longer active. Sessions and the reconciler alike.
pub(crate) async fn deactivate_user(
    gw: &Gateway,
    admin: &AdminTarget,
    key: &DbUserKey,
    mode: ProvisioningMode,
) -> Result<DeactivateOutcome, ProvisionError> {
    let user = DbUserName::new(key.db_user.clone());
    let outcome = gw
        .provisioners
        .deactivate(admin, &user, teardown_mode(mode))
        .await?;
    if outcome != DeactivateOutcome::Kept {
        if let Err(err) = gw.store.delete_activation(&key.store_key()).await {
            tracing::warn!(db_user = %key.db_user, %err, "activation record could not be removed");
        }
    }
    Ok(outcome)
}

/// Ends a session's server connection for good (PostgreSQL backend pid, MariaDB connection
/// id) after the session ended. A cancel is not enough: a statement may swallow it, MariaDB
/// notices a closed socket only when the running statement looks at it, and a Terminate
/// pipelined behind a statement is read only once that statement ends; either way the
/// connection would go on with the user's roles, and keep the user active. Only for
/// provisioned users: the admin ends nothing but a connection of the managed user this
/// session used (MariaDB: needs `CONNECTION ADMIN`).
pub(crate) async fn terminate_session_backend(
    gw: &Gateway,
    authorized: &Authorized,
    db_user: &str,
    backend_id: u64,
) {
    if authorized.decision.mode == ProvisioningMode::Off {
        return;
    }
    let Ok(admin) = admin_target(gw, &authorized.db, &authorized.decision.db_name) else {
        return;
    };
    let user = DbUserName::new(db_user.to_owned());
    let ended = tokio::time::timeout(
        TERMINATE_WAIT,
        gw.provisioners.terminate_backend(&admin, &user, backend_id),
    )
    .await;
    let sid = &authorized.fields.sid;
    match ended {
        Ok(Ok(true)) => {
            tracing::info!(%sid, backend = backend_id, "server connection outlived its session; ended")
        }
        Ok(Ok(false)) => {}
        Ok(Err(err)) => {
            tracing::warn!(%sid, backend = backend_id, error = %error_chain(&err), "could not end the server connection of an ended session")
        }
        Err(_) => {
            tracing::warn!(%sid, backend = backend_id, "ending the server connection of an ended session timed out")
        }
    }
}

fn unix_ms_now() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

async fn take_lock(gw: &Gateway, key: &DbUserKey) -> Result<LockGuard, SessionError> {
    lock_user(gw, key, LOCK_WAIT).await.map_err(|err| match err {
        StoreError::LockTimeout { .. } => SessionError::Busy(format!(
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
pub(super) async fn forget_live_session(gw: &Gateway, sid: &str) {
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

/// The error a client gets for a failed provisioning step: what the error says a client may
/// read, or the generic text with the session id. The detail is logged with the session id
/// either way.
pub(super) fn provision_error(authorized: &Authorized, err: ProvisionError) -> SessionError {
    let sid = &authorized.fields.sid;
    let db = &authorized.db.metadata.name;
    let detail = error_chain(&err);
    let kind = err.kind().as_str();
    // The server refused the admin's login to the session's database: its own words
    // (`permission denied for database "x"`, `DETAIL: User does not have CONNECT privilege.`).
    if let Some((sqlstate, message, server_detail)) = err.admin_login_refused() {
        tracing::warn!(%sid, user = %authorized.fields.user, %db, error = %detail, kind, "database user provisioning failed");
        return SessionError::Database {
            sqlstate,
            message,
            detail: server_detail,
        };
    }
    match err.client_message() {
        Some(text) if err.fixed_by_db_check() => {
            tracing::warn!(%sid, user = %authorized.fields.user, %db, error = %detail, kind, "database user provisioning failed");
            SessionError::Provisioning(format!(
                "{text} (session {sid}); ask an administrator to run `dbward db check {db}`"
            ))
        }
        Some(text) => {
            tracing::info!(%sid, user = %authorized.fields.user, %db, error = %detail, kind, "activation refused");
            SessionError::Provisioning(text)
        }
        None => {
            tracing::warn!(%sid, user = %authorized.fields.user, %db, error = %detail, kind, "database user provisioning failed");
            SessionError::Provisioning(format!(
                "database user provisioning failed (session {sid}); ask an administrator to run `dbward db check {db}`"
            ))
        }
    }
}

/// `dbward db check DB`: what the admin user lacks for provisioning every db role some user
/// could be granted on this database, each with the statement that fixes it. On PostgreSQL
/// also every database sessions may enter where that is knowable: the literal `db_names` of
/// the roles that reach `DB`, and `extra_db_names` (`--db-name`).
pub async fn preflight(
    gw: &Gateway,
    db_name: &str,
    extra_db_names: &[String],
) -> Result<Vec<crate::api::DbCheckFinding>, crate::GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    let db = snapshot.dbs.get(db_name).ok_or_else(|| {
        crate::GatewayError::NotFound(format!("database \"{db_name}\" not found"))
    })?;
    let admin = maintenance_target(gw, db)
        .map_err(|e| crate::GatewayError::BadRequest(e.user_message()))?;
    let mut roles = std::collections::BTreeSet::new();
    let mut databases: std::collections::BTreeSet<String> =
        extra_db_names.iter().cloned().collect();
    // Table permissions are granted from inside the session's database.
    let mut permissions_apply = false;
    for user in snapshot.users.values() {
        if let Ok(checker) = snapshot.checker(user) {
            if let Ok(Some(p)) = checker.provisioning(db) {
                roles.extend(p.roles);
                databases.extend(checker.literal_db_names(db));
                permissions_apply |= !checker.permission_rules(db).is_empty();
            }
        }
    }
    let roles: Vec<String> = roles.into_iter().collect();
    // The operator asked: the whole detail, with its causes (admin, server, grant).
    let detail = |e: ProvisionError| crate::GatewayError::BadRequest(error_chain(&e));
    let mut findings = gw
        .provisioners
        .preflight(&admin, &roles)
        .await
        .map_err(detail)?;
    if admin.engine == Engine::Postgres {
        let default_database = db
            .admin_user()
            .and_then(|a| a.default_database)
            .is_some_and(|d| !d.is_empty());
        let databases: Vec<String> = databases.into_iter().collect();
        findings.extend(
            gw.provisioners
                .postgres()
                .preflight_databases(
                    &admin,
                    &roles,
                    &databases,
                    !default_database || permissions_apply,
                )
                .await
                .map_err(detail)?,
        );
    }
    // One fix for a setting of the admin's own (read-only transactions) may be found in
    // several databases: printed once.
    let mut fixes = std::collections::BTreeSet::new();
    findings.retain(|f| f.fix.is_empty() || fixes.insert(f.fix.clone()));
    Ok(findings
        .into_iter()
        .map(|f| crate::api::DbCheckFinding {
            problem: f.problem,
            fix: f.fix,
        })
        .collect())
}
