//! The PostgreSQL backend, for several gateway instances sharing one store (DESIGN §8).
//!
//! The [`Backend`] trait is synchronous and called on blocking threads, while the driver,
//! tokio-postgres, is async. The backend therefore owns a small runtime of its own (one worker
//! thread, which drives the connections' sockets) and blocks the calling thread on each query.
//! Connections are kept in a small pool so calls from several threads run side by side.
//!
//! Every time that matters across instances (lease expiry, heartbeats, [`Backend::now_unix_ms`])
//! is read from the database clock, so instances with drifting clocks agree. Migrations are
//! versioned in `schema_migrations` and applied under a transaction-scoped advisory lock, so
//! instances starting together against an empty database apply them exactly once.

mod dsn;
mod tls;

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{Client, Config, NoTls};

use crate::backend::{ActivationRecord, AuditQuery, AuditRecord, Backend, PutMode, SessionRecord};
use crate::error::{Result, StoreError};

use dbward_pgtls::MakeRustlsConnect;

/// Schema migrations in order; a migration's version is its position plus one. Append only.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_crash_recovery.sql"),
    include_str!("migrations/0003_cancel_keys.sql"),
];

/// Key of the advisory lock that serializes migrations across instances ("dbwardmg").
const MIGRATION_LOCK_KEY: i64 = 0x6462_7761_7264_6d67;

/// Idle connections kept for reuse; more are opened when more threads call at once.
const MAX_IDLE_CONNECTIONS: usize = 4;

/// Connect timeout when the DSN sets none, so a dead store fails calls instead of hanging.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database clock in Unix milliseconds. `clock_timestamp()` rather than `now()`: the
/// latter is frozen at the start of the transaction.
const NOW_MS: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The PostgreSQL backend. See the module documentation.
///
/// Like every [`Backend`], its calls block: make them from blocking threads (as
/// [`crate::Store`] does), never from an async worker, where blocking on the backend's runtime
/// panics.
pub struct PostgresBackend {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    idle: Mutex<Vec<Client>>,
    handle: Handle,
    // Only taken in `drop`; calls go through `handle`.
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold a password.
        f.debug_struct("PostgresBackend").finish_non_exhaustive()
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // The error enum has no PostgreSQL variant yet, so this is an I/O error naming the
        // store. The driver's top message is generic ("db error", "error performing TLS
        // handshake"); the causes say what went wrong, so they are spelled out.
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        StoreError::Io {
            path: "postgres store".into(),
            source: std::io::Error::other(message),
        }
    }
}

impl PostgresBackend {
    /// Connects to the database named by `dsn` (libpq URL or keyword form, see
    /// [`crate::Store::open_postgres`]) and applies pending migrations. Blocks; may be called
    /// from async code.
    pub fn connect(dsn: &str) -> Result<Self> {
        let dsn::Dsn { mut config, tls } = dsn::parse(dsn)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let tls = match tls.mode {
            dsn::TlsMode::Disable => None,
            _ => Some(MakeRustlsConnect::for_dialled_host(tls::client_config(
                &tls,
            )?)),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dbward-store-pg")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: "postgres store runtime".into(),
                source,
            })?;
        let backend = PostgresBackend {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        };
        // Blocking on the runtime panics on an async worker thread, and `connect` is called
        // from async code (like `Store::open_sqlite`), so the first connection and the
        // migrations run on a thread of their own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = backend.client()?;
                    backend.block_on(migrate(&mut client))
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(StoreError::Corrupt(
                        "postgres store migration panicked".to_owned(),
                    ))
                })
        })?;
        Ok(backend)
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Client>> {
        // Clients are pushed and popped whole; a panic cannot leave the vector half-changed.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle connection, or a new one.
    fn client(&self) -> Result<Pooled<'_>> {
        loop {
            let Some(client) = self.idle().pop() else {
                break;
            };
            if !client.is_closed() {
                return Ok(Pooled {
                    client: Some(client),
                    backend: self,
                });
            }
        }
        let client = self.block_on(self.open_connection())?;
        Ok(Pooled {
            client: Some(client),
            backend: self,
        })
    }

    async fn open_connection(&self) -> Result<Client> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres store connection ended");
                    }
                });
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres store connection ended");
                    }
                });
                Ok(client)
            }
        }
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.idle().clear();
        // Dropping a runtime blocks, which panics on an async thread; the last store handle
        // is often dropped there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection taken from the pool; returned to it on drop unless it was closed.
struct Pooled<'a> {
    client: Option<Client>,
    backend: &'a PostgresBackend,
}

impl Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled client is present until dropped")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled client is present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // An unfinished transaction was rolled back when it was dropped (tokio-postgres
            // queues the ROLLBACK), so the connection is clean for the next caller.
            if !client.is_closed() {
                let mut idle = self.backend.idle();
                if idle.len() < MAX_IDLE_CONNECTIONS {
                    idle.push(client);
                }
            }
        }
    }
}

/// Applies the migrations not yet recorded in `schema_migrations`, in one transaction.
async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY});
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
         );"
    ))
    .await?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(StoreError::Corrupt(format!(
            "schema version {applied} is newer than this dbward knows ({known})"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::debug!(version, "applied postgres store migration");
    }
    tx.commit().await?;
    Ok(())
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn bump_revision(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let changed = tx
        .execute(
            "UPDATE resources_revision SET revision = revision + 1 WHERE id = 1",
            &[],
        )
        .await?;
    if changed != 1 {
        return Err(StoreError::Corrupt(
            "resources revision row is missing".to_owned(),
        ));
    }
    Ok(())
}

impl Backend for PostgresBackend {
    fn put_resource(&self, kind: &str, name: &str, body: &str, mode: PutMode) -> Result<()> {
        let mut client = self.client()?;
        self.block_on(async {
            let tx = client.transaction().await?;
            let sql = match mode {
                PutMode::CreateOnly => {
                    "INSERT INTO resources (kind, name, body) VALUES ($1, $2, $3)
                     ON CONFLICT (kind, name) DO NOTHING"
                }
                PutMode::Upsert => {
                    "INSERT INTO resources (kind, name, body) VALUES ($1, $2, $3)
                     ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body"
                }
            };
            if tx.execute(sql, &[&kind, &name, &body]).await? == 0 {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                });
            }
            bump_revision(&tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_resource(&self, kind: &str, name: &str) -> Result<Option<String>> {
        let client = self.client()?;
        self.block_on(async {
            let row = client
                .query_opt(
                    "SELECT body FROM resources WHERE kind = $1 AND name = $2",
                    &[&kind, &name],
                )
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    fn list_resources(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let client = self.client()?;
        self.block_on(async {
            let rows = client
                .query(
                    "SELECT name, body FROM resources WHERE kind = $1 ORDER BY name",
                    &[&kind],
                )
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    fn delete_resource(&self, kind: &str, name: &str) -> Result<bool> {
        let mut client = self.client()?;
        self.block_on(async {
            let tx = client.transaction().await?;
            let deleted = tx
                .execute(
                    "DELETE FROM resources WHERE kind = $1 AND name = $2",
                    &[&kind, &name],
                )
                .await?
                > 0;
            if deleted {
                bump_revision(&tx).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    fn resources_revision(&self) -> Result<i64> {
        let client = self.client()?;
        self.block_on(async {
            client
                .query_opt("SELECT revision FROM resources_revision WHERE id = 1", &[])
                .await?
                .map(|row| row.try_get(0))
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt("resources revision row is missing".to_owned()))
        })
    }

    fn get_cas(&self) -> Result<Vec<(String, String, String)>> {
        let client = self.client()?;
        self.block_on(async {
            let rows = client
                .query(
                    "SELECT kind, cert_pem, key_pem FROM cert_authorities ORDER BY kind",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect()
        })
    }

    fn put_ca_if_absent(&self, kind: &str, cert_pem: &str, key_pem: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let inserted = client
                .execute(
                    "INSERT INTO cert_authorities (kind, cert_pem, key_pem) VALUES ($1, $2, $3)
                     ON CONFLICT (kind) DO NOTHING",
                    &[&kind, &cert_pem, &key_pem],
                )
                .await?;
            Ok(inserted == 1)
        })
    }

    fn set_password_hash(&self, user: &str, phc: &str) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    "INSERT INTO password_hashes (user_name, phc) VALUES ($1, $2)
                     ON CONFLICT (user_name) DO UPDATE SET phc = excluded.phc",
                    &[&user, &phc],
                )
                .await?;
            Ok(())
        })
    }

    fn get_password_hash(&self, user: &str) -> Result<Option<String>> {
        let client = self.client()?;
        self.block_on(async {
            let row = client
                .query_opt(
                    "SELECT phc FROM password_hashes WHERE user_name = $1",
                    &[&user],
                )
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    fn delete_password(&self, user: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute("DELETE FROM password_hashes WHERE user_name = $1", &[&user])
                .await?;
            Ok(deleted > 0)
        })
    }

    fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let client = self.client()?;
        let ttl_ms = duration_ms(ttl);
        self.block_on(async {
            // One statement decides and writes: ON CONFLICT DO UPDATE locks the conflicting
            // row and re-checks the expiry, so two instances never both take the key.
            let changed = client
                .execute(
                    "INSERT INTO lock_leases (lock_key, holder, token, expires_at)
                     VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond')
                     ON CONFLICT (lock_key) DO UPDATE
                         SET holder = excluded.holder,
                             token = excluded.token,
                             expires_at = excluded.expires_at
                         WHERE lock_leases.expires_at <= clock_timestamp()",
                    &[&key, &holder, &token, &ttl_ms],
                )
                .await?;
            Ok(changed == 1)
        })
    }

    fn renew_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let client = self.client()?;
        let ttl_ms = duration_ms(ttl);
        self.block_on(async {
            let changed = client
                .execute(
                    "UPDATE lock_leases
                     SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                     WHERE lock_key = $1 AND token = $2",
                    &[&key, &token, &ttl_ms],
                )
                .await?;
            Ok(changed == 1)
        })
    }

    fn release_lease(&self, key: &str, token: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute(
                    "DELETE FROM lock_leases WHERE lock_key = $1 AND token = $2",
                    &[&key, &token],
                )
                .await?;
            Ok(deleted == 1)
        })
    }

    fn append_audit(
        &self,
        body: &str,
        event_type: &str,
        user: &str,
        time_unix_ms: i64,
    ) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    "INSERT INTO audit_events (time_unix_ms, event_type, user_name, body)
                     VALUES ($1, $2, $3, $4)",
                    &[&time_unix_ms, &event_type, &user, &body],
                )
                .await?;
            Ok(())
        })
    }

    fn append_audit_batch(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let times: Vec<i64> = records.iter().map(|r| r.time_unix_ms).collect();
        let types: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
        let users: Vec<&str> = records.iter().map(|r| r.user.as_str()).collect();
        let bodies: Vec<&str> = records.iter().map(|r| r.body.as_str()).collect();
        let client = self.client()?;
        self.block_on(async {
            // One statement is one transaction and one round trip; rows get their ids in
            // batch order, so equal times keep the order they were given in.
            client
                .execute(
                    "INSERT INTO audit_events (time_unix_ms, event_type, user_name, body)
                     SELECT t, e, u, b
                     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                          WITH ORDINALITY AS batch (t, e, u, b, n)
                     ORDER BY n",
                    &[&times, &types, &users, &bodies],
                )
                .await?;
            Ok(())
        })
    }

    fn search_audit(&self, query: &AuditQuery) -> Result<Vec<String>> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let client = self.client()?;
        self.block_on(async {
            // NULL parameters switch a filter off. The newest `limit` matches are picked, then
            // returned oldest first.
            let rows = client
                .query(
                    "SELECT body FROM (
                         SELECT id, time_unix_ms, body FROM audit_events
                         WHERE ($1::text IS NULL OR event_type = $1::text)
                           AND ($2::text IS NULL OR user_name = $2::text)
                           AND ($3::bigint IS NULL OR time_unix_ms >= $3::bigint)
                         ORDER BY time_unix_ms DESC, id DESC
                         LIMIT $4::bigint
                     ) AS recent
                     ORDER BY time_unix_ms ASC, id ASC",
                    &[&query.event_type, &query.user, &query.since_unix_ms, &limit],
                )
                .await?;
            rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
        })
    }

    fn register_session(&self, session: &SessionRecord) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    "INSERT INTO live_sessions
                         (sid, instance_id, db_service, db_user, dbward_user, mode, started_unix_ms,
                          engine, server, backend_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (sid) DO UPDATE SET
                         instance_id = excluded.instance_id,
                         db_service = excluded.db_service,
                         db_user = excluded.db_user,
                         dbward_user = excluded.dbward_user,
                         mode = excluded.mode,
                         started_unix_ms = excluded.started_unix_ms,
                         engine = excluded.engine,
                         server = excluded.server,
                         backend_id = excluded.backend_id",
                    &[
                        &session.sid,
                        &session.instance_id,
                        &session.db_service,
                        &session.db_user,
                        &session.dbward_user,
                        &session.mode,
                        &session.started_unix_ms,
                        &session.engine,
                        &session.server,
                        &session.backend_id,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn end_session(&self, sid: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute("DELETE FROM live_sessions WHERE sid = $1", &[&sid])
                .await?;
            Ok(deleted > 0)
        })
    }

    fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let client = self.client()?;
        self.block_on(async {
            let rows = client
                .query(
                    "SELECT sid, instance_id, db_service, db_user, dbward_user, mode,
                            started_unix_ms, engine, server, backend_id
                     FROM live_sessions ORDER BY started_unix_ms, sid",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(SessionRecord {
                        sid: row.try_get(0)?,
                        instance_id: row.try_get(1)?,
                        db_service: row.try_get(2)?,
                        db_user: row.try_get(3)?,
                        dbward_user: row.try_get(4)?,
                        mode: row.try_get(5)?,
                        started_unix_ms: row.try_get(6)?,
                        engine: row.try_get(7)?,
                        server: row.try_get(8)?,
                        backend_id: row.try_get(9)?,
                    })
                })
                .collect()
        })
    }

    fn end_sessions_of_instance(&self, instance_id: &str) -> Result<usize> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute(
                    "DELETE FROM live_sessions WHERE instance_id = $1",
                    &[&instance_id],
                )
                .await?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    fn heartbeat_instance(&self, instance_id: &str) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    &format!(
                        "INSERT INTO instances (instance_id, last_seen_unix_ms)
                         VALUES ($1, {NOW_MS})
                         ON CONFLICT (instance_id)
                         DO UPDATE SET last_seen_unix_ms = excluded.last_seen_unix_ms"
                    ),
                    &[&instance_id],
                )
                .await?;
            Ok(())
        })
    }

    fn live_instances(&self, since_unix_ms: i64) -> Result<Vec<String>> {
        let client = self.client()?;
        self.block_on(async {
            let rows = client
                .query(
                    "SELECT instance_id FROM instances WHERE last_seen_unix_ms >= $1
                     ORDER BY instance_id",
                    &[&since_unix_ms],
                )
                .await?;
            rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
        })
    }

    fn now_unix_ms(&self) -> Result<i64> {
        let client = self.client()?;
        self.block_on(async {
            Ok(client
                .query_one(&format!("SELECT {NOW_MS}"), &[])
                .await?
                .try_get(0)?)
        })
    }

    fn add_cancel_key(&self, key_hash: &str, instance_id: &str, sid: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let inserted = client
                .execute(
                    "INSERT INTO cancel_keys (key_hash, instance_id, sid) VALUES ($1, $2, $3)
                     ON CONFLICT (key_hash) DO NOTHING",
                    &[&key_hash, &instance_id, &sid],
                )
                .await?;
            Ok(inserted > 0)
        })
    }

    fn remove_cancel_key(&self, key_hash: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute("DELETE FROM cancel_keys WHERE key_hash = $1", &[&key_hash])
                .await?;
            Ok(deleted > 0)
        })
    }

    fn request_cancel(&self, key_hash: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let marked = client
                .execute(
                    &format!(
                        "UPDATE cancel_keys SET requested_unix_ms = {NOW_MS} WHERE key_hash = $1"
                    ),
                    &[&key_hash],
                )
                .await?;
            Ok(marked > 0)
        })
    }

    fn take_cancel_requests(&self, instance_id: &str, max_age: Duration) -> Result<Vec<String>> {
        let client = self.client()?;
        let max_age = duration_ms(max_age);
        self.block_on(async {
            // Every mark is cleared; only those younger than `max_age` are returned. The rows
            // are locked first so a mark set meanwhile is kept for the next call.
            let rows = client
                .query(
                    &format!(
                        "WITH taken AS (
                             SELECT key_hash, requested_unix_ms FROM cancel_keys
                             WHERE instance_id = $1 AND requested_unix_ms IS NOT NULL
                             FOR UPDATE
                         ), cleared AS (
                             UPDATE cancel_keys AS c SET requested_unix_ms = NULL
                             FROM taken AS t WHERE c.key_hash = t.key_hash
                             RETURNING c.key_hash, t.requested_unix_ms
                         )
                         SELECT key_hash FROM cleared
                         WHERE requested_unix_ms >= {NOW_MS} - $2::bigint
                         ORDER BY key_hash"
                    ),
                    &[&instance_id, &max_age],
                )
                .await?;
            rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
        })
    }

    fn forget_cancel_keys_of_silent_instances(&self, since_unix_ms: i64) -> Result<usize> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute(
                    "DELETE FROM cancel_keys AS c WHERE NOT EXISTS (
                         SELECT 1 FROM instances AS i
                         WHERE i.instance_id = c.instance_id AND i.last_seen_unix_ms >= $1
                     )",
                    &[&since_unix_ms],
                )
                .await?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    fn put_activation(&self, record: &ActivationRecord) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    &format!(
                        "INSERT INTO activations
                             (user_key, db_service, dbward_user, mode, instance_id,
                              updated_unix_ms)
                         VALUES ($1, $2, $3, $4, $5, {NOW_MS})
                         ON CONFLICT (user_key) DO UPDATE SET
                             db_service = excluded.db_service,
                             dbward_user = excluded.dbward_user,
                             mode = excluded.mode,
                             instance_id = excluded.instance_id,
                             updated_unix_ms = excluded.updated_unix_ms"
                    ),
                    &[
                        &record.user_key,
                        &record.db_service,
                        &record.dbward_user,
                        &record.mode,
                        &record.instance_id,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn get_activation(&self, user_key: &str) -> Result<Option<ActivationRecord>> {
        let client = self.client()?;
        self.block_on(async {
            let row = client
                .query_opt(
                    "SELECT user_key, db_service, dbward_user, mode, instance_id, updated_unix_ms
                     FROM activations WHERE user_key = $1",
                    &[&user_key],
                )
                .await?;
            row.map(|row| {
                Ok(ActivationRecord {
                    user_key: row.try_get(0)?,
                    db_service: row.try_get(1)?,
                    dbward_user: row.try_get(2)?,
                    mode: row.try_get(3)?,
                    instance_id: row.try_get(4)?,
                    updated_unix_ms: row.try_get(5)?,
                })
            })
            .transpose()
        })
    }

    fn delete_activation(&self, user_key: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute("DELETE FROM activations WHERE user_key = $1", &[&user_key])
                .await?;
            Ok(deleted > 0)
        })
    }

    fn kv_get(&self, key: &str) -> Result<Option<String>> {
        let client = self.client()?;
        self.block_on(async {
            let row = client
                .query_opt("SELECT value FROM kv WHERE kv_key = $1", &[&key])
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    fn kv_put(&self, key: &str, value: &str) -> Result<()> {
        let client = self.client()?;
        self.block_on(async {
            client
                .execute(
                    "INSERT INTO kv (kv_key, value) VALUES ($1, $2)
                     ON CONFLICT (kv_key) DO UPDATE SET value = excluded.value",
                    &[&key, &value],
                )
                .await?;
            Ok(())
        })
    }

    fn kv_delete(&self, key: &str) -> Result<bool> {
        let client = self.client()?;
        self.block_on(async {
            let deleted = client
                .execute("DELETE FROM kv WHERE kv_key = $1", &[&key])
                .await?;
            Ok(deleted > 0)
        })
    }
}
