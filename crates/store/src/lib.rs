//! dbward's persistent state: resources, CAs, password hashes, the audit log, live sessions
//! and the cross-instance provisioning lock.
//!
//! [`Store`] is the async handle the gateway uses. It wraps a synchronous [`Backend`] and runs
//! every call on tokio's blocking pool, so a slow disk or a busy database never stalls the
//! async workers. The embedded backend is SQLite ([`Store::open_sqlite`]); several gateways
//! share a PostgreSQL store ([`Store::open_postgres`]), and the lock holds across them (see
//! [`lock`]).

mod backend;
mod error;
pub mod lock;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{ActivationRecord, AuditQuery, AuditRecord, Backend, PutMode, SessionRecord};
pub use error::{Result, StoreError};
pub use lock::LockGuard;
pub use postgres::PostgresBackend;
pub use sqlite::{SqliteBackend, DB_FILE_NAME};

use lock::LocalLocks;

/// How long a lock's lease lives without renewal. The holder renews it every third of this;
/// when a gateway dies holding a lock, others take it over after at most this long.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

/// The async handle to the store. Cheap to clone; clones share the backend and the
/// in-process lock queue.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    locals: Arc<LocalLocks>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Runs one backend call on the blocking pool.
macro_rules! blocking {
    ($self:ident, |$b:ident| $body:expr) => {{
        let $b = $self.backend.clone();
        tokio::task::spawn_blocking(move || $body).await?
    }};
}

impl Store {
    /// Opens the SQLite store in `data_dir` (`data_dir/dbward.db`), creating the directory
    /// and the database and applying migrations as needed.
    pub fn open_sqlite(data_dir: &Path) -> Result<Store> {
        Ok(Store::from_backend(Arc::new(SqliteBackend::open(
            data_dir,
        )?)))
    }

    /// Connects to the shared PostgreSQL store named by `dsn` (`storage.dsn`: a libpq URL
    /// such as `postgres://dbward@db1:5432/dbward?sslmode=verify-full&sslrootcert=/ca.pem`,
    /// or keyword form such as `host=/run/postgresql dbname=dbward`) and applies pending
    /// migrations. TLS follows `sslmode` (`disable`; `prefer`, the default; `require` or
    /// `verify-ca`; `verify-full`), always verifying the server's chain against `sslrootcert`
    /// (public web roots when absent or `system`); `sslcert` and `sslkey` name a client
    /// certificate. Blocks while connecting; may be called from async code.
    pub fn open_postgres(dsn: &str) -> Result<Store> {
        Ok(Store::from_backend(Arc::new(PostgresBackend::connect(
            dsn,
        )?)))
    }

    /// A store over any backend.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            locals: Arc::default(),
        }
    }

    /// The backend, for callers that are already on a blocking thread.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    // Resources.

    /// See [`Backend::put_resource`]; fails with [`StoreError::AlreadyExists`] for a
    /// [`PutMode::CreateOnly`] write to a taken name.
    pub async fn put_resource(
        &self,
        kind: &str,
        name: &str,
        body: &str,
        mode: PutMode,
    ) -> Result<()> {
        let (kind, name, body) = (kind.to_owned(), name.to_owned(), body.to_owned());
        blocking!(self, |b| b.put_resource(&kind, &name, &body, mode))
    }

    /// See [`Backend::get_resource`].
    pub async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<String>> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        blocking!(self, |b| b.get_resource(&kind, &name))
    }

    /// See [`Backend::list_resources`].
    pub async fn list_resources(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let kind = kind.to_owned();
        blocking!(self, |b| b.list_resources(&kind))
    }

    /// See [`Backend::delete_resource`].
    pub async fn delete_resource(&self, kind: &str, name: &str) -> Result<bool> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        blocking!(self, |b| b.delete_resource(&kind, &name))
    }

    /// See [`Backend::resources_revision`].
    pub async fn resources_revision(&self) -> Result<i64> {
        blocking!(self, |b| b.resources_revision())
    }

    // Certificate authorities.

    /// See [`Backend::get_cas`].
    pub async fn get_cas(&self) -> Result<Vec<(String, String, String)>> {
        blocking!(self, |b| b.get_cas())
    }

    /// See [`Backend::put_ca_if_absent`].
    pub async fn put_ca_if_absent(
        &self,
        kind: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<bool> {
        let (kind, cert_pem, key_pem) = (kind.to_owned(), cert_pem.to_owned(), key_pem.to_owned());
        blocking!(self, |b| b.put_ca_if_absent(&kind, &cert_pem, &key_pem))
    }

    // Passwords.

    /// See [`Backend::set_password_hash`].
    pub async fn set_password_hash(&self, user: &str, phc: &str) -> Result<()> {
        let (user, phc) = (user.to_owned(), phc.to_owned());
        blocking!(self, |b| b.set_password_hash(&user, &phc))
    }

    /// See [`Backend::get_password_hash`].
    pub async fn get_password_hash(&self, user: &str) -> Result<Option<String>> {
        let user = user.to_owned();
        blocking!(self, |b| b.get_password_hash(&user))
    }

    /// See [`Backend::delete_password`].
    pub async fn delete_password(&self, user: &str) -> Result<bool> {
        let user = user.to_owned();
        blocking!(self, |b| b.delete_password(&user))
    }

    // Audit.

    /// See [`Backend::append_audit_batch`].
    pub async fn append_audit_batch(&self, records: Vec<AuditRecord>) -> Result<()> {
        blocking!(self, |b| b.append_audit_batch(&records))
    }

    /// See [`Backend::append_audit`].
    pub async fn append_audit(
        &self,
        body: &str,
        event_type: &str,
        user: &str,
        time_unix_ms: i64,
    ) -> Result<()> {
        let (body, event_type, user) = (body.to_owned(), event_type.to_owned(), user.to_owned());
        blocking!(self, |b| b.append_audit(
            &body,
            &event_type,
            &user,
            time_unix_ms
        ))
    }

    /// See [`Backend::search_audit`].
    pub async fn search_audit(&self, query: AuditQuery) -> Result<Vec<String>> {
        blocking!(self, |b| b.search_audit(&query))
    }

    // Live sessions and instances.

    /// See [`Backend::register_session`].
    pub async fn register_session(&self, session: SessionRecord) -> Result<()> {
        blocking!(self, |b| b.register_session(&session))
    }

    /// See [`Backend::end_session`].
    pub async fn end_session(&self, sid: &str) -> Result<bool> {
        let sid = sid.to_owned();
        blocking!(self, |b| b.end_session(&sid))
    }

    /// See [`Backend::list_sessions`].
    pub async fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        blocking!(self, |b| b.list_sessions())
    }

    /// See [`Backend::end_sessions_of_instance`].
    pub async fn end_sessions_of_instance(&self, instance_id: &str) -> Result<usize> {
        let instance_id = instance_id.to_owned();
        blocking!(self, |b| b.end_sessions_of_instance(&instance_id))
    }

    /// See [`Backend::heartbeat_instance`].
    pub async fn heartbeat_instance(&self, instance_id: &str) -> Result<()> {
        let instance_id = instance_id.to_owned();
        blocking!(self, |b| b.heartbeat_instance(&instance_id))
    }

    /// See [`Backend::live_instances`].
    pub async fn live_instances(&self, since_unix_ms: i64) -> Result<Vec<String>> {
        blocking!(self, |b| b.live_instances(since_unix_ms))
    }

    /// See [`Backend::now_unix_ms`].
    pub async fn now_unix_ms(&self) -> Result<i64> {
        blocking!(self, |b| b.now_unix_ms())
    }

    // Cancel keys.

    /// See [`Backend::add_cancel_key`].
    pub async fn add_cancel_key(
        &self,
        key_hash: &str,
        instance_id: &str,
        sid: &str,
    ) -> Result<bool> {
        let (key_hash, instance_id, sid) =
            (key_hash.to_owned(), instance_id.to_owned(), sid.to_owned());
        blocking!(self, |b| b.add_cancel_key(&key_hash, &instance_id, &sid))
    }

    /// See [`Backend::remove_cancel_key`].
    pub async fn remove_cancel_key(&self, key_hash: &str) -> Result<bool> {
        let key_hash = key_hash.to_owned();
        blocking!(self, |b| b.remove_cancel_key(&key_hash))
    }

    /// See [`Backend::request_cancel`].
    pub async fn request_cancel(&self, key_hash: &str) -> Result<bool> {
        let key_hash = key_hash.to_owned();
        blocking!(self, |b| b.request_cancel(&key_hash))
    }

    /// See [`Backend::take_cancel_requests`].
    pub async fn take_cancel_requests(
        &self,
        instance_id: &str,
        max_age: Duration,
    ) -> Result<Vec<String>> {
        let instance_id = instance_id.to_owned();
        blocking!(self, |b| b.take_cancel_requests(&instance_id, max_age))
    }

    /// See [`Backend::forget_cancel_keys_of_silent_instances`].
    pub async fn forget_cancel_keys_of_silent_instances(
        &self,
        since_unix_ms: i64,
    ) -> Result<usize> {
        blocking!(self, |b| b
            .forget_cancel_keys_of_silent_instances(since_unix_ms))
    }

    // Activations.

    /// See [`Backend::put_activation`].
    pub async fn put_activation(&self, record: ActivationRecord) -> Result<()> {
        blocking!(self, |b| b.put_activation(&record))
    }

    /// See [`Backend::get_activation`].
    pub async fn get_activation(&self, user_key: &str) -> Result<Option<ActivationRecord>> {
        let user_key = user_key.to_owned();
        blocking!(self, |b| b.get_activation(&user_key))
    }

    /// See [`Backend::delete_activation`].
    pub async fn delete_activation(&self, user_key: &str) -> Result<bool> {
        let user_key = user_key.to_owned();
        blocking!(self, |b| b.delete_activation(&user_key))
    }

    // Small values.

    /// See [`Backend::kv_get`].
    pub async fn kv_get(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        blocking!(self, |b| b.kv_get(&key))
    }

    /// See [`Backend::kv_put`].
    pub async fn kv_put(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        blocking!(self, |b| b.kv_put(&key, &value))
    }

    /// See [`Backend::kv_delete`].
    pub async fn kv_delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        blocking!(self, |b| b.kv_delete(&key))
    }

    // Locks.

    /// Takes the cross-instance lock on `key` (for example `provision/<db>/<db user>`) with
    /// the default lease ttl, waiting at most `wait`; fails with [`StoreError::LockTimeout`]
    /// when another holder keeps it that long. `holder` names the taker in diagnostics.
    pub async fn lock(&self, key: &str, holder: &str, wait: Duration) -> Result<LockGuard> {
        self.lock_with_ttl(key, holder, DEFAULT_LOCK_TTL, wait)
            .await
    }

    /// [`Store::lock`] with an explicit lease ttl: how long the lock survives its holder
    /// stopping to renew it (a crash, a stalled process).
    pub async fn lock_with_ttl(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard> {
        lock::acquire(
            self.backend.clone(),
            self.locals.clone(),
            key,
            holder,
            ttl,
            wait,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn open() -> std::result::Result<(tempfile::TempDir, Store), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open_sqlite(&dir.path().join("data"))?;
        Ok((dir, store))
    }

    #[tokio::test]
    async fn resources_put_get_list_delete_and_bump_the_revision() -> TestResult {
        let (_dir, store) = open()?;
        let start = store.resources_revision().await?;
        store
            .put_resource("role", "b", r#"{"n":"b"}"#, PutMode::CreateOnly)
            .await?;
        store
            .put_resource("role", "a", r#"{"n":"a"}"#, PutMode::CreateOnly)
            .await?;
        store
            .put_resource("user", "a", "{}", PutMode::CreateOnly)
            .await?;
        assert_eq!(store.resources_revision().await?, start + 3);

        assert_eq!(
            store.get_resource("role", "a").await?.as_deref(),
            Some(r#"{"n":"a"}"#)
        );
        assert_eq!(store.get_resource("role", "c").await?, None);
        let names: Vec<String> = store
            .list_resources("role")
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["a", "b"]);

        store
            .put_resource("role", "a", "{}", PutMode::Upsert)
            .await?;
        assert_eq!(
            store.get_resource("role", "a").await?.as_deref(),
            Some("{}")
        );
        assert_eq!(store.resources_revision().await?, start + 4);

        assert!(store.delete_resource("role", "a").await?);
        assert!(!store.delete_resource("role", "a").await?);
        assert_eq!(store.resources_revision().await?, start + 5);
        assert_eq!(store.list_resources("role").await?.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn create_only_put_of_a_taken_name_fails_and_changes_nothing() -> TestResult {
        let (_dir, store) = open()?;
        store
            .put_resource("db", "orders", "v1", PutMode::CreateOnly)
            .await?;
        let revision = store.resources_revision().await?;
        let err = store
            .put_resource("db", "orders", "v2", PutMode::CreateOnly)
            .await
            .err();
        match err {
            Some(StoreError::AlreadyExists { kind, name }) => {
                assert_eq!((kind.as_str(), name.as_str()), ("db", "orders"));
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(
            store.get_resource("db", "orders").await?.as_deref(),
            Some("v1")
        );
        assert_eq!(store.resources_revision().await?, revision);
        Ok(())
    }

    #[tokio::test]
    async fn first_ca_of_a_kind_wins() -> TestResult {
        let (_dir, store) = open()?;
        assert!(store.put_ca_if_absent("user", "cert1", "key1").await?);
        assert!(!store.put_ca_if_absent("user", "cert2", "key2").await?);
        assert!(store.put_ca_if_absent("host", "cert3", "key3").await?);
        let cas = store.get_cas().await?;
        assert_eq!(
            cas,
            [
                ("host".to_owned(), "cert3".to_owned(), "key3".to_owned()),
                ("user".to_owned(), "cert1".to_owned(), "key1".to_owned()),
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn password_hashes_are_set_replaced_and_deleted() -> TestResult {
        let (_dir, store) = open()?;
        assert_eq!(store.get_password_hash("alice").await?, None);
        store.set_password_hash("alice", "$argon2id$one").await?;
        store.set_password_hash("alice", "$argon2id$two").await?;
        assert_eq!(
            store.get_password_hash("alice").await?.as_deref(),
            Some("$argon2id$two")
        );
        assert!(store.delete_password("alice").await?);
        assert!(!store.delete_password("alice").await?);
        assert_eq!(store.get_password_hash("alice").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn audit_search_filters_and_keeps_the_most_recent_matches() -> TestResult {
        let (_dir, store) = open()?;
        let events = [
            (1_000, "db.session.start", "alice"),
            (2_000, "db.session.query", "alice"),
            (3_000, "db.session.start", "bob"),
            (4_000, "db.session.query", "alice"),
            (5_000, "db.session.end", "alice"),
        ];
        for (time, event, user) in events {
            let body = format!("{event}@{time}");
            store.append_audit(&body, event, user, time).await?;
        }
        let search = |query: AuditQuery| store.search_audit(query);
        let all = search(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await?;
        assert_eq!(all.len(), 5);
        assert_eq!(
            all.first().map(String::as_str),
            Some("db.session.start@1000")
        );

        let queries = search(AuditQuery {
            event_type: Some("db.session.query".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await?;
        assert_eq!(queries, ["db.session.query@2000", "db.session.query@4000"]);

        let bob = search(AuditQuery {
            user: Some("bob".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await?;
        assert_eq!(bob, ["db.session.start@3000"]);

        let recent = search(AuditQuery {
            user: Some("alice".into()),
            since_unix_ms: Some(2_000),
            limit: 2,
            ..AuditQuery::default()
        })
        .await?;
        assert_eq!(recent, ["db.session.query@4000", "db.session.end@5000"]);
        Ok(())
    }

    #[tokio::test]
    async fn sessions_instances_and_values_round_trip() -> TestResult {
        let (_dir, store) = open()?;
        let session = |sid: &str, instance: &str, started| SessionRecord {
            sid: sid.into(),
            instance_id: instance.into(),
            db_service: "orders".into(),
            db_user: "alice".into(),
            dbward_user: "alice".into(),
            mode: "keep".into(),
            started_unix_ms: started,
            engine: "postgres".into(),
            server: "db1:5432".into(),
            backend_id: Some(started * 10),
        };
        store.register_session(session("s2", "i1", 20)).await?;
        store.register_session(session("s1", "i2", 10)).await?;
        store.register_session(session("s3", "i1", 30)).await?;
        let listed = store.list_sessions().await?;
        let sids: Vec<&str> = listed.iter().map(|s| s.sid.as_str()).collect();
        assert_eq!(sids, ["s1", "s2", "s3"]);
        assert_eq!(listed[0], session("s1", "i2", 10));
        assert!(store.end_session("s1").await?);
        assert!(!store.end_session("s1").await?);
        assert_eq!(store.end_sessions_of_instance("i1").await?, 2);
        assert!(store.list_sessions().await?.is_empty());

        let before = store.now_unix_ms().await?;
        store.heartbeat_instance("i1").await?;
        assert_eq!(store.live_instances(before).await?, ["i1"]);
        assert!(store.live_instances(before + 60_000).await?.is_empty());

        assert_eq!(store.kv_get("k").await?, None);
        store.kv_put("k", "v1").await?;
        store.kv_put("k", "v2").await?;
        assert_eq!(store.kv_get("k").await?.as_deref(), Some("v2"));
        assert!(store.kv_delete("k").await?);
        assert!(!store.kv_delete("k").await?);
        Ok(())
    }

    #[tokio::test]
    async fn activations_are_recorded_replaced_and_forgotten() -> TestResult {
        let (_dir, store) = open()?;
        let key = "postgres/db1:5432/alice";
        let record = |mode: &str| ActivationRecord {
            user_key: key.into(),
            db_service: "orders".into(),
            dbward_user: "alice".into(),
            mode: mode.into(),
            instance_id: "i1".into(),
            updated_unix_ms: 0,
        };
        assert_eq!(store.get_activation(key).await?, None);
        let before = store.now_unix_ms().await?;
        store.put_activation(record("best_effort_drop")).await?;
        store.put_activation(record("keep")).await?;
        let stored = store.get_activation(key).await?.ok_or("no record")?;
        assert_eq!(stored.mode, "keep");
        assert!(stored.updated_unix_ms >= before);
        assert_eq!(
            ActivationRecord {
                updated_unix_ms: 0,
                ..stored
            },
            record("keep")
        );
        assert!(store.delete_activation(key).await?);
        assert!(!store.delete_activation(key).await?);
        assert_eq!(store.get_activation(key).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn reopening_the_data_dir_keeps_everything() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        {
            let store = Store::open_sqlite(&data)?;
            store
                .put_resource("role", "dev", "{}", PutMode::CreateOnly)
                .await?;
            store.put_ca_if_absent("user", "cert", "key").await?;
            store.set_password_hash("alice", "phc").await?;
            store
                .append_audit("{}", "db.session.start", "alice", 1)
                .await?;
            store.kv_put("k", "v").await?;
        }
        let store = Store::open_sqlite(&data)?;
        assert_eq!(
            store.get_resource("role", "dev").await?.as_deref(),
            Some("{}")
        );
        assert_eq!(store.resources_revision().await?, 1);
        assert_eq!(store.get_cas().await?.len(), 1);
        assert_eq!(
            store.get_password_hash("alice").await?.as_deref(),
            Some("phc")
        );
        let audit = store
            .search_audit(AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await?;
        assert_eq!(audit.len(), 1);
        assert_eq!(store.kv_get("k").await?.as_deref(), Some("v"));
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn data_dir_and_database_file_are_private() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let _store = Store::open_sqlite(&data)?;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&data)?, 0o700);
        assert_eq!(mode(&data.join(DB_FILE_NAME))?, 0o600);
        Ok(())
    }
}
