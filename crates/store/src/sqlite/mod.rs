//! The embedded SQLite backend: one file `dbward.db` in the data directory.
//!
//! WAL mode lets readers run beside the writer and lets several processes share the file;
//! every write that reads first (lease takeover, create-only puts) runs in an IMMEDIATE
//! transaction so two processes never both decide from the same snapshot. Migrations are
//! versioned in `schema_migrations` and applied under the same write lock, so two processes
//! opening a fresh directory at once apply them exactly once.

use std::fs::{self, DirBuilder, OpenOptions};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::backend::{ActivationRecord, AuditQuery, AuditRecord, Backend, PutMode, SessionRecord};
use crate::error::{Result, StoreError};

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "dbward.db";

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations in order; a migration's version is its position plus one. Append only:
/// an applied migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_crash_recovery.sql"),
];

/// The SQLite backend. One connection, serialized by a mutex: SQLite allows one writer at a
/// time anyway, and the store's calls are short.
pub struct SqliteBackend {
    conn: Mutex<Connection>,
}

impl SqliteBackend {
    /// Opens (creating when needed) `data_dir/dbward.db`, creating `data_dir` with mode 0700
    /// and the file with mode 0600 since they hold CA keys, then applies pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE_NAME);
        create_private_file(&path)?;
        Self::open_file(&path)
    }

    fn open_file(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let journal_mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "{} cannot use WAL journal mode (got {journal_mode})",
                path.display()
            )));
        }
        // NORMAL is durable across process crashes in WAL mode; only a power loss can lose
        // the last commits, which is acceptable for this data and much faster for audit.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection cannot leave a transaction open (rusqlite
        // rolls back on drop), so a poisoned mutex still guards a usable connection.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let io_err = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err)
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite gives its WAL and
/// shared-memory files the same mode), and tightens an existing file that others could read.
fn create_private_file(path: &Path) -> Result<()> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "store file was readable by others; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        }
    }
    Ok(())
}

/// Applies the migrations not yet recorded in `schema_migrations`, each in the write
/// transaction that records it.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             applied_unix_ms BIGINT NOT NULL
         )",
    )?;
    let applied: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
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
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_unix_ms) VALUES (?1, ?2)",
            params![version, system_now_unix_ms()],
        )?;
        tracing::debug!(version, "applied store migration");
    }
    tx.commit()?;
    Ok(())
}

fn system_now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn bump_revision(conn: &Connection) -> Result<()> {
    let changed = conn.execute(
        "UPDATE resources_revision SET revision = revision + 1 WHERE id = 1",
        [],
    )?;
    if changed != 1 {
        return Err(StoreError::Corrupt(
            "resources revision row is missing".to_owned(),
        ));
    }
    Ok(())
}

impl Backend for SqliteBackend {
    fn put_resource(&self, kind: &str, name: &str, body: &str, mode: PutMode) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = match mode {
            PutMode::CreateOnly => tx.execute(
                "INSERT INTO resources (kind, name, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO NOTHING",
                params![kind, name, body],
            )?,
            PutMode::Upsert => tx.execute(
                "INSERT INTO resources (kind, name, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body",
                params![kind, name, body],
            )?,
        };
        if changed == 0 {
            return Err(StoreError::AlreadyExists {
                kind: kind.to_owned(),
                name: name.to_owned(),
            });
        }
        bump_revision(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn get_resource(&self, kind: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT body FROM resources WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn list_resources(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT name, body FROM resources WHERE kind = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![kind], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_resource(&self, kind: &str, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute(
            "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
            params![kind, name],
        )? > 0;
        if deleted {
            bump_revision(&tx)?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    fn resources_revision(&self) -> Result<i64> {
        self.conn()
            .query_row(
                "SELECT revision FROM resources_revision WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::Corrupt("resources revision row is missing".to_owned()))
    }

    fn get_cas(&self) -> Result<Vec<(String, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT kind, cert_pem, key_pem FROM cert_authorities ORDER BY kind")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_ca_if_absent(&self, kind: &str, cert_pem: &str, key_pem: &str) -> Result<bool> {
        let inserted = self.conn().execute(
            "INSERT INTO cert_authorities (kind, cert_pem, key_pem) VALUES (?1, ?2, ?3)
             ON CONFLICT (kind) DO NOTHING",
            params![kind, cert_pem, key_pem],
        )?;
        Ok(inserted == 1)
    }

    fn set_password_hash(&self, user: &str, phc: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO password_hashes (user_name, phc) VALUES (?1, ?2)
             ON CONFLICT (user_name) DO UPDATE SET phc = excluded.phc",
            params![user, phc],
        )?;
        Ok(())
    }

    fn get_password_hash(&self, user: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT phc FROM password_hashes WHERE user_name = ?1",
                params![user],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn delete_password(&self, user: &str) -> Result<bool> {
        let deleted = self.conn().execute(
            "DELETE FROM password_hashes WHERE user_name = ?1",
            params![user],
        )?;
        Ok(deleted > 0)
    }

    fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let now = system_now_unix_ms();
        let expires = now.saturating_add(duration_ms(ttl));
        // One statement decides and writes, so no other connection can slip between the
        // check for expiry and the takeover. An expired lease (its holder died or stalled
        // past the ttl) is taken over.
        let changed = self.conn().execute(
            "INSERT INTO lock_leases (lock_key, holder, token, expires_unix_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (lock_key) DO UPDATE
                 SET holder = excluded.holder,
                     token = excluded.token,
                     expires_unix_ms = excluded.expires_unix_ms
                 WHERE lock_leases.expires_unix_ms <= ?5",
            params![key, holder, token, expires, now],
        )?;
        Ok(changed == 1)
    }

    fn renew_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let expires = system_now_unix_ms().saturating_add(duration_ms(ttl));
        let changed = self.conn().execute(
            "UPDATE lock_leases SET expires_unix_ms = ?3 WHERE lock_key = ?1 AND token = ?2",
            params![key, token, expires],
        )?;
        Ok(changed == 1)
    }

    fn release_lease(&self, key: &str, token: &str) -> Result<bool> {
        let deleted = self.conn().execute(
            "DELETE FROM lock_leases WHERE lock_key = ?1 AND token = ?2",
            params![key, token],
        )?;
        Ok(deleted == 1)
    }

    fn append_audit(
        &self,
        body: &str,
        event_type: &str,
        user: &str,
        time_unix_ms: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit_events (time_unix_ms, event_type, user_name, body)
             VALUES (?1, ?2, ?3, ?4)",
            params![time_unix_ms, event_type, user, body],
        )?;
        Ok(())
    }

    fn append_audit_batch(&self, records: &[AuditRecord]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit_events (time_unix_ms, event_type, user_name, body)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                stmt.execute(params![r.time_unix_ms, r.event_type, r.user, r.body])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn search_audit(&self, query: &AuditQuery) -> Result<Vec<String>> {
        // NULL parameters switch a filter off, so one cached statement serves every query.
        // The newest `limit` matches are picked, then returned oldest first.
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM (
                 SELECT id, time_unix_ms, body FROM audit_events
                 WHERE (?1 IS NULL OR event_type = ?1)
                   AND (?2 IS NULL OR user_name = ?2)
                   AND (?3 IS NULL OR time_unix_ms >= ?3)
                 ORDER BY time_unix_ms DESC, id DESC
                 LIMIT ?4
             ) AS recent
             ORDER BY time_unix_ms ASC, id ASC",
        )?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![query.event_type, query.user, query.since_unix_ms, limit],
            |row| row.get(0),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn register_session(&self, session: &SessionRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO live_sessions
                 (sid, instance_id, db_service, db_user, dbward_user, mode, started_unix_ms,
                  engine, server, backend_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
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
            params![
                session.sid,
                session.instance_id,
                session.db_service,
                session.db_user,
                session.dbward_user,
                session.mode,
                session.started_unix_ms,
                session.engine,
                session.server,
                session.backend_id
            ],
        )?;
        Ok(())
    }

    fn end_session(&self, sid: &str) -> Result<bool> {
        let deleted = self
            .conn()
            .execute("DELETE FROM live_sessions WHERE sid = ?1", params![sid])?;
        Ok(deleted > 0)
    }

    fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT sid, instance_id, db_service, db_user, dbward_user, mode, started_unix_ms,
                    engine, server, backend_id
             FROM live_sessions ORDER BY started_unix_ms, sid",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(SessionRecord {
                sid: row.get(0)?,
                instance_id: row.get(1)?,
                db_service: row.get(2)?,
                db_user: row.get(3)?,
                dbward_user: row.get(4)?,
                mode: row.get(5)?,
                started_unix_ms: row.get(6)?,
                engine: row.get(7)?,
                server: row.get(8)?,
                backend_id: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn end_sessions_of_instance(&self, instance_id: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM live_sessions WHERE instance_id = ?1",
            params![instance_id],
        )?)
    }

    fn heartbeat_instance(&self, instance_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO instances (instance_id, last_seen_unix_ms) VALUES (?1, ?2)
             ON CONFLICT (instance_id) DO UPDATE SET last_seen_unix_ms = excluded.last_seen_unix_ms",
            params![instance_id, system_now_unix_ms()],
        )?;
        Ok(())
    }

    fn live_instances(&self, since_unix_ms: i64) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT instance_id FROM instances WHERE last_seen_unix_ms >= ?1 ORDER BY instance_id",
        )?;
        let rows = stmt.query_map(params![since_unix_ms], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn now_unix_ms(&self) -> Result<i64> {
        Ok(system_now_unix_ms())
    }

    fn put_activation(&self, record: &ActivationRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO activations
                 (user_key, db_service, dbward_user, mode, instance_id, updated_unix_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user_key) DO UPDATE SET
                 db_service = excluded.db_service,
                 dbward_user = excluded.dbward_user,
                 mode = excluded.mode,
                 instance_id = excluded.instance_id,
                 updated_unix_ms = excluded.updated_unix_ms",
            params![
                record.user_key,
                record.db_service,
                record.dbward_user,
                record.mode,
                record.instance_id,
                system_now_unix_ms()
            ],
        )?;
        Ok(())
    }

    fn get_activation(&self, user_key: &str) -> Result<Option<ActivationRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT user_key, db_service, dbward_user, mode, instance_id, updated_unix_ms
                 FROM activations WHERE user_key = ?1",
                params![user_key],
                |row| {
                    Ok(ActivationRecord {
                        user_key: row.get(0)?,
                        db_service: row.get(1)?,
                        dbward_user: row.get(2)?,
                        mode: row.get(3)?,
                        instance_id: row.get(4)?,
                        updated_unix_ms: row.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    fn delete_activation(&self, user_key: &str) -> Result<bool> {
        let deleted = self.conn().execute(
            "DELETE FROM activations WHERE user_key = ?1",
            params![user_key],
        )?;
        Ok(deleted > 0)
    }

    fn kv_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM kv WHERE kv_key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn kv_put(&self, key: &str, value: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO kv (kv_key, value) VALUES (?1, ?2)
             ON CONFLICT (kv_key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn kv_delete(&self, key: &str) -> Result<bool> {
        let deleted = self
            .conn()
            .execute("DELETE FROM kv WHERE kv_key = ?1", params![key])?;
        Ok(deleted > 0)
    }
}
