//! The storage contract every backend implements, and the records that cross it.
//!
//! The trait is synchronous: the async [`crate::Store`] handle runs each call on a blocking
//! thread. It speaks only of text keyed by names (resources are JSON the store never reads), so
//! it knows nothing of resource types or wire protocols. Semantics are chosen so a PostgreSQL
//! backend can provide them with plain SQL: "insert unless present" (`ON CONFLICT DO NOTHING`),
//! counters bumped inside the writing transaction, and times taken from the backend's own
//! clock, so instances sharing one store agree on lease expiry even if their clocks drift.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How [`Backend::put_resource`] treats a name that is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`crate::StoreError::AlreadyExists`] when the name is taken.
    CreateOnly,
    /// Replace what is stored under the name, or create it.
    Upsert,
}

/// A filter over the audit log. Every `Some` field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events of this type (`db.session.start`, …).
    pub event_type: Option<String>,
    /// Only events of this dbward user.
    pub user: Option<String>,
    /// Only events at or after this time.
    pub since_unix_ms: Option<i64>,
    /// At most this many events: the most recent ones that match.
    pub limit: usize,
}

/// One audit event as stored: the JSON body and the columns searches filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub body: String,
    pub event_type: String,
    pub user: String,
    pub time_unix_ms: i64,
}

/// A database session relayed by some gateway instance right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id, as in audit events.
    pub sid: String,
    /// The gateway instance relaying the session.
    pub instance_id: String,
    /// Name of the `db` resource.
    pub db_service: String,
    /// The user inside the database (possibly hashed).
    pub db_user: String,
    /// The person, by dbward user name.
    pub dbward_user: String,
    /// Provisioning mode of the session (`off`, `keep`, `best_effort_drop`).
    pub mode: String,
    /// When the session started.
    pub started_unix_ms: i64,
    /// The database engine (`postgres`, `mysql`).
    #[serde(default)]
    pub engine: String,
    /// The database server as `host:port`.
    #[serde(default)]
    pub server: String,
    /// The upstream connection in the database: PostgreSQL backend pid, MariaDB connection id.
    #[serde(default)]
    pub backend_id: Option<i64>,
}

/// The activation that made a database user active, keyed by the same (engine, server, db
/// user) key as the provisioning lock. Teardown and the reconciler apply its mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// `<engine>/<host:port>/<db user>`.
    pub user_key: String,
    /// Name of the `db` resource the activation went through.
    pub db_service: String,
    /// The person, by dbward user name.
    pub dbward_user: String,
    /// Provisioning mode (`keep`, `best_effort_drop`).
    pub mode: String,
    /// The gateway instance that activated the user.
    pub instance_id: String,
    /// When it was recorded (set by the backend's clock on write).
    pub updated_unix_ms: i64,
}

/// A storage backend: SQLite for one process, PostgreSQL for several gateways.
///
/// Calls block; implementations serialize or pool connections as they see fit and must be
/// safe to call from many threads at once.
pub trait Backend: Send + Sync + 'static {
    // Resources.

    /// Stores `body` under (kind, name) and bumps the resources revision in the same
    /// transaction.
    fn put_resource(&self, kind: &str, name: &str, body: &str, mode: PutMode) -> Result<()>;
    /// The body stored under (kind, name).
    fn get_resource(&self, kind: &str, name: &str) -> Result<Option<String>>;
    /// Every (name, body) of one kind, sorted by name.
    fn list_resources(&self, kind: &str) -> Result<Vec<(String, String)>>;
    /// Removes (kind, name); true when it existed (and the revision was bumped).
    fn delete_resource(&self, kind: &str, name: &str) -> Result<bool>;
    /// A counter that grows with every resource write by any process sharing the store.
    fn resources_revision(&self) -> Result<i64>;

    // Certificate authorities.

    /// Every stored CA as (kind, cert PEM, key PEM), sorted by kind.
    fn get_cas(&self) -> Result<Vec<(String, String, String)>>;
    /// Stores a CA unless one of that kind exists; true when this call stored it.
    fn put_ca_if_absent(&self, kind: &str, cert_pem: &str, key_pem: &str) -> Result<bool>;

    // Passwords.

    /// Sets (or replaces) the PHC hash string of a user's password.
    fn set_password_hash(&self, user: &str, phc: &str) -> Result<()>;
    /// The PHC hash string of a user's password.
    fn get_password_hash(&self, user: &str) -> Result<Option<String>>;
    /// Forgets a user's password; true when one was stored.
    fn delete_password(&self, user: &str) -> Result<bool>;

    // Leases behind the cross-instance lock.

    /// Takes the lease on `key` for `ttl` (from the backend's clock) when no one holds it or
    /// the holder let it expire. `token` identifies this acquisition for renew and release;
    /// `holder` is kept for diagnostics. True when taken.
    fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool>;
    /// Extends the lease to `ttl` from now if `token` still holds it; false when it was lost.
    fn renew_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool>;
    /// Gives the lease up if `token` still holds it; true when it did.
    fn release_lease(&self, key: &str, token: &str) -> Result<bool>;

    // Audit.

    /// Appends one event.
    fn append_audit(
        &self,
        body: &str,
        event_type: &str,
        user: &str,
        time_unix_ms: i64,
    ) -> Result<()>;
    /// Appends several events in one transaction (the gateway batches its audit trail).
    fn append_audit_batch(&self, records: &[AuditRecord]) -> Result<()> {
        for r in records {
            self.append_audit(&r.body, &r.event_type, &r.user, r.time_unix_ms)?;
        }
        Ok(())
    }
    /// The bodies of matching events, oldest first (see [`AuditQuery::limit`]).
    fn search_audit(&self, query: &AuditQuery) -> Result<Vec<String>>;

    // Live sessions and instances.

    /// Records a live session (replacing one with the same sid).
    fn register_session(&self, session: &SessionRecord) -> Result<()>;
    /// Forgets a session; true when it was recorded.
    fn end_session(&self, sid: &str) -> Result<bool>;
    /// Every recorded session, oldest first.
    fn list_sessions(&self) -> Result<Vec<SessionRecord>>;
    /// Forgets every session of one instance (a dead one); returns how many.
    fn end_sessions_of_instance(&self, instance_id: &str) -> Result<usize>;
    /// Records that an instance is alive now (backend's clock).
    fn heartbeat_instance(&self, instance_id: &str) -> Result<()>;
    /// Instances whose last heartbeat is at or after `since_unix_ms`, sorted.
    fn live_instances(&self, since_unix_ms: i64) -> Result<Vec<String>>;
    /// The backend's clock, the one heartbeats and leases are measured with.
    fn now_unix_ms(&self) -> Result<i64>;

    // Cancel keys (PostgreSQL sessions), for cancel requests that reach another instance
    // than the one relaying the session. Only a store shared by several instances needs
    // them: the defaults keep nothing, and a key never matches.

    /// Records that the instance `instance_id` relays session `sid`, whose client holds the
    /// cancel key hashed to `key_hash`. False (and nothing changed) when the hash is taken.
    fn add_cancel_key(&self, key_hash: &str, instance_id: &str, sid: &str) -> Result<bool> {
        let _ = (key_hash, instance_id, sid);
        Ok(false)
    }
    /// Forgets a cancel key (its session ended); true when it was recorded.
    fn remove_cancel_key(&self, key_hash: &str) -> Result<bool> {
        let _ = key_hash;
        Ok(false)
    }
    /// Asks the instance holding the key for a cancel (backend's clock); true when a key
    /// matched, false (and nothing changed) otherwise.
    fn request_cancel(&self, key_hash: &str) -> Result<bool> {
        let _ = key_hash;
        Ok(false)
    }
    /// The hashes of this instance's keys with a cancel requested at most `max_age` ago;
    /// clears every request of the instance, older ones included.
    fn take_cancel_requests(&self, instance_id: &str, max_age: Duration) -> Result<Vec<String>> {
        let _ = (instance_id, max_age);
        Ok(Vec::new())
    }
    /// Forgets the cancel keys of instances without a heartbeat at or after `since_unix_ms`
    /// (dead ones); returns how many.
    fn forget_cancel_keys_of_silent_instances(&self, since_unix_ms: i64) -> Result<usize> {
        let _ = since_unix_ms;
        Ok(0)
    }

    // Activations.

    /// Records (or replaces) the activation of one database user; `updated_unix_ms` is taken
    /// from the backend's clock.
    fn put_activation(&self, record: &ActivationRecord) -> Result<()>;
    /// The recorded activation of one database user.
    fn get_activation(&self, user_key: &str) -> Result<Option<ActivationRecord>>;
    /// Forgets the activation of one database user (it was torn down); true when recorded.
    fn delete_activation(&self, user_key: &str) -> Result<bool>;

    // Small values.

    /// The value stored under `key`.
    fn kv_get(&self, key: &str) -> Result<Option<String>>;
    /// Stores (or replaces) the value under `key`.
    fn kv_put(&self, key: &str, value: &str) -> Result<()>;
    /// Removes `key`; true when it existed.
    fn kv_delete(&self, key: &str) -> Result<bool>;
}
