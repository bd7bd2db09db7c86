//! Audit events (DESIGN §7): built here, persisted in the store, optionally appended as JSON
//! lines to a file for log shippers.
//!
//! Emitting never waits for storage and never fails a connection: events are pushed onto one
//! process-wide queue (a mutex-guarded vector: no task is woken per event), and a single
//! writer drains it every few tens of milliseconds, storing each drain as one batch (one store
//! transaction, one buffered file write). Queries tapped from the relay therefore cost the
//! connection a push, not a database commit or a thread hand-off. [`AuditLog::flush`] wakes
//! the writer and waits until everything emitted so far is stored (or spooled), for readers
//! that must see it (audit search).
//!
//! Nothing is lost silently (PROVISIONING §8). The queue is bounded ([`Limits::max_queued`]):
//! when the writer falls behind (the store is slow or down), the push that finds it full moves
//! the queued events to the spool. A batch the store refuses goes to the spool as well, and
//! while the store is failing new batches go there directly, retried with backoff. The spool
//! is a directory of JSON-lines files under `data_dir/audit-spool`, bounded in bytes, replayed
//! oldest first once the store answers again. Only events the spool cannot take (full, or not
//! writable) are refused, and every refusal is logged with its count. The audit file, when
//! configured, receives events when they reach the store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbward_store::{AuditRecord, Store};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};

use crate::metrics::Metrics;

pub const SESSION_START: &str = "db.session.start";
pub const SESSION_END: &str = "db.session.end";
pub const SESSION_QUERY: &str = "db.session.query";
pub const USER_CREATE: &str = "db.session.user.create";
pub const PERMISSIONS_UPDATE: &str = "db.session.permissions.update";
pub const USER_DEACTIVATE: &str = "db.session.user.deactivate";
/// A single sign-on login (`method: oidc`), with `success`, `connector` and `error`.
pub const USER_LOGIN: &str = "user.login";

/// How often the writer drains the queue when nobody asks it to flush. Each drain is a store
/// transaction and a hand-off to a blocking thread; at thousands of statements a second,
/// fewer and larger batches cost the gateway less per statement.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// First and longest pause before the store is tried again after it refused a batch.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Spool files replayed per drain at most, so new events are not held up for long.
const REPLAY_FILES_PER_DRAIN: usize = 16;

/// The directory of the spool inside `data_dir`.
pub const SPOOL_DIR: &str = "audit-spool";

/// Bounds of the audit pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events held in memory before they are moved to the spool.
    pub max_queued: usize,
    /// Bytes the spool may hold; events beyond are refused (and logged).
    pub max_spool_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queued: 50_000,
            max_spool_bytes: 256 << 20,
        }
    }
}

/// Fields common to every event of one database session.
#[derive(Debug, Clone, Default)]
pub struct SessionFields {
    pub user: String,
    /// The user's home cluster when it is not this one (a trusted root's user on a leaf).
    pub user_cluster: Option<String>,
    /// The trusted leaf cluster a root forwarded the session to.
    pub leaf_cluster: Option<String>,
    pub sid: String,
    pub db_service: String,
    pub db_protocol: String,
    pub db_uri: String,
    pub db_name: String,
    pub db_user: String,
    pub db_roles: Vec<String>,
}

enum Pending {
    Event {
        event: &'static str,
        fields: Arc<SessionFields>,
        extra: Value,
        time: OffsetDateTime,
    },
    Query {
        fields: Arc<SessionFields>,
        sql: String,
        time: OffsetDateTime,
    },
}

impl Pending {
    fn render(self) -> AuditRecord {
        match self {
            Pending::Event {
                event,
                fields,
                extra,
                time,
            } => render(event, &fields, None, extra, time),
            Pending::Query { fields, sql, time } => {
                render(SESSION_QUERY, &fields, Some(&sql), Value::Null, time)
            }
        }
    }
}

#[derive(Default)]
struct Queued {
    events: Vec<Pending>,
    flushes: Vec<oneshot::Sender<()>>,
}

struct Queue {
    queued: Mutex<Queued>,
    wake: Notify,
    max_queued: usize,
    spool: Option<Spool>,
    refused: AtomicU64,
    /// Events written to the spool since start.
    spooled: AtomicU64,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, pending: Pending) {
        let overflow = {
            let mut queued = self.lock();
            queued.events.push(pending);
            (queued.events.len() >= self.max_queued).then(|| std::mem::take(&mut queued.events))
        };
        if let Some(events) = overflow {
            let records: Vec<AuditRecord> = events.into_iter().map(Pending::render).collect();
            tracing::warn!(
                count = records.len(),
                "audit queue full (the store is not keeping up): events moved to the spool"
            );
            self.spool_or_refuse(&records);
        }
    }

    /// Everything queued so far. The queue keeps a vector as large as the one taken, so that
    /// at a steady rate pushes never grow it (no allocation on the relay's path but the SQL).
    fn take(&self) -> Queued {
        let mut queued = self.lock();
        let room = queued.events.len();
        Queued {
            events: std::mem::replace(&mut queued.events, Vec::with_capacity(room)),
            flushes: std::mem::take(&mut queued.flushes),
        }
    }

    /// Keeps `records` in the spool; when that fails they are refused, which is logged with
    /// the count and counted.
    fn spool_or_refuse(&self, records: &[AuditRecord]) {
        let result = match &self.spool {
            Some(spool) => spool.write(records),
            None => Err(SpoolError::NotConfigured),
        };
        if result.is_ok() {
            self.spooled
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        if let Err(err) = result {
            self.refused
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            tracing::error!(count = records.len(), %err, "audit events refused: they could be neither stored nor spooled");
        }
    }
}

#[derive(Clone)]
pub struct AuditLog {
    queue: Arc<Queue>,
    /// Session starts and ends are counted as they are emitted.
    metrics: Metrics,
    /// Whether client statements are recorded (`audit_queries`, on by default).
    queries: bool,
}

/// The audit pipeline's state at one moment, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditState {
    /// Events in memory waiting for the writer.
    pub queued: u64,
    /// Events written to the spool since start.
    pub spooled_events: u64,
    /// Bytes waiting in the spool.
    pub spooled_bytes: u64,
    /// Events refused since start.
    pub refused_events: u64,
}

impl AuditLog {
    /// Starts the writer on the current runtime, with the spool in `spool_dir` (normally
    /// `data_dir/audit-spool`) and default limits.
    pub fn new(store: Store, file: Option<PathBuf>, spool_dir: Option<PathBuf>) -> Self {
        Self::with_limits(store, file, spool_dir, Limits::default())
    }

    /// [`AuditLog::new`] with explicit bounds.
    pub fn with_limits(
        store: Store,
        file: Option<PathBuf>,
        spool_dir: Option<PathBuf>,
        limits: Limits,
    ) -> Self {
        let spool = spool_dir.and_then(|dir| match Spool::open(&dir, limits.max_spool_bytes) {
            Ok(spool) => Some(spool),
            Err(err) => {
                tracing::error!(%err, dir = %dir.display(), "audit spool unavailable: events the store refuses will be lost");
                None
            }
        });
        let queue = Arc::new(Queue {
            queued: Mutex::new(Queued::default()),
            wake: Notify::new(),
            max_queued: limits.max_queued.max(1),
            spool,
            refused: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(store, file, Arc::downgrade(&queue)));
        Self {
            queue,
            metrics: Metrics::disabled(),
            queries: true,
        }
    }

    /// Counts session starts and ends in `metrics` as they are emitted.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Drops client statements (`audit_queries: false`); every other event is still recorded.
    pub fn without_queries(mut self) -> Self {
        self.queries = false;
        self
    }

    /// Records `event` with the session's common fields and `extra` merged in.
    pub async fn emit(&self, event: &'static str, fields: &SessionFields, extra: Value) {
        self.metrics.audit_event(event, fields, &extra);
        self.queue.push(Pending::Event {
            event,
            fields: Arc::new(fields.clone()),
            extra,
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Records a `db.session.query`; called from the relay's tap, so it only queues.
    pub fn query(&self, fields: &Arc<SessionFields>, sql: &str) {
        if !self.queries {
            return;
        }
        self.queue.push(Pending::Query {
            fields: fields.clone(),
            sql: sql.to_string(),
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Waits until every event emitted before this call is stored, or spooled when the store
    /// is failing.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.queue.lock().flushes.push(tx);
        self.queue.wake.notify_one();
        let _ = rx.await;
    }

    /// Events refused since start: neither stored nor spooled (each refusal is logged).
    pub fn refused_events(&self) -> u64 {
        self.queue.refused.load(Ordering::Relaxed)
    }

    /// Events waiting in the spool for the store.
    pub fn spooled_bytes(&self) -> u64 {
        self.queue.spool.as_ref().map_or(0, Spool::used)
    }

    /// Queue depth and spool counts now.
    pub fn state(&self) -> AuditState {
        AuditState {
            queued: self.queue.lock().events.len() as u64,
            spooled_events: self.queue.spooled.load(Ordering::Relaxed),
            spooled_bytes: self.spooled_bytes(),
            refused_events: self.refused_events(),
        }
    }
}

/// One event as written: the common fields, then the event's own.
#[derive(serde::Serialize)]
struct Line<'a> {
    event: &'a str,
    time: &'a str,
    user: &'a str,
    sid: &'a str,
    db_service: &'a str,
    db_protocol: &'a str,
    db_uri: &'a str,
    db_name: &'a str,
    db_user: &'a str,
    db_roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    user_cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf_cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_query: Option<&'a str>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn render(
    event: &str,
    fields: &SessionFields,
    query: Option<&str>,
    extra: Value,
    time: OffsetDateTime,
) -> AuditRecord {
    let stamp = time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let extra = match extra {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let line = Line {
        event,
        time: &stamp,
        user: &fields.user,
        sid: &fields.sid,
        db_service: &fields.db_service,
        db_protocol: &fields.db_protocol,
        db_uri: &fields.db_uri,
        db_name: &fields.db_name,
        db_user: &fields.db_user,
        db_roles: &fields.db_roles,
        user_cluster: fields.user_cluster.as_deref(),
        leaf_cluster: fields.leaf_cluster.as_deref(),
        db_query: query,
        extra,
    };
    AuditRecord {
        body: serde_json::to_string(&line).unwrap_or_default(),
        event_type: event.to_string(),
        user: fields.user.clone(),
        time_unix_ms: (time.unix_timestamp_nanos() / 1_000_000) as i64,
    }
}

/// When the store may be tried again after refusing.
struct Backoff {
    until: Option<Instant>,
    pause: Duration,
}

impl Backoff {
    fn ready(&self) -> bool {
        self.until.is_none_or(|until| Instant::now() >= until)
    }

    fn failed(&mut self) {
        self.until = Some(Instant::now() + self.pause);
        self.pause = (self.pause * 2).min(RETRY_MAX);
    }

    fn succeeded(&mut self) {
        self.until = None;
        self.pause = RETRY_FIRST;
    }
}

async fn write_loop(store: Store, file: Option<PathBuf>, queue: std::sync::Weak<Queue>) {
    let mut backoff = Backoff {
        until: None,
        pause: RETRY_FIRST,
    };
    loop {
        // Runs as long as some AuditLog handle exists; the last drain happens after that.
        let Some(queue) = queue.upgrade() else {
            return;
        };
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(DRAIN_EVERY) => {}
        }
        let Queued { events, flushes } = queue.take();
        let batch: Vec<AuditRecord> = events.into_iter().map(Pending::render).collect();

        // Older events first: the spool is replayed before a new batch may go to the store.
        let mut spool_waiting = queue.spool.as_ref().is_some_and(|s| !s.is_empty());
        if spool_waiting && backoff.ready() {
            if let Some(spool) = &queue.spool {
                match replay(&store, file.as_deref(), spool).await {
                    Ok(()) => {
                        backoff.succeeded();
                        spool_waiting = !spool.is_empty();
                    }
                    Err(err) => {
                        tracing::warn!(%err, spooled_bytes = spool.used(), "audit spool not replayed yet: the store is failing");
                        backoff.failed();
                    }
                }
            }
        }
        if !batch.is_empty() {
            if spool_waiting || !backoff.ready() {
                queue.spool_or_refuse(&batch);
            } else {
                let count = batch.len();
                match store_batch(&store, batch).await {
                    Ok(batch) => {
                        backoff.succeeded();
                        append_to_file(file.as_deref(), &batch);
                    }
                    Err((err, batch)) => {
                        tracing::error!(%err, count, "audit events could not be stored; keeping them in the spool");
                        backoff.failed();
                        queue.spool_or_refuse(&batch);
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Stores a batch; gives it back with the error when the store refuses it.
async fn store_batch(
    store: &Store,
    batch: Vec<AuditRecord>,
) -> Result<Vec<AuditRecord>, (String, Vec<AuditRecord>)> {
    let backend = store.backend().clone();
    let batch = Arc::new(batch);
    let shared = batch.clone();
    let result = tokio::task::spawn_blocking(move || backend.append_audit_batch(&shared)).await;
    let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
    match result {
        Ok(Ok(())) => Ok(batch),
        Ok(Err(err)) => Err((err.to_string(), batch)),
        Err(err) => Err((err.to_string(), batch)),
    }
}

/// Writes spooled batches to the store, oldest first, removing each file once stored.
async fn replay(store: &Store, file: Option<&Path>, spool: &Spool) -> Result<(), String> {
    for _ in 0..REPLAY_FILES_PER_DRAIN {
        let Some(path) = spool.oldest() else {
            spool.waiting.store(0, Ordering::Relaxed);
            return Ok(());
        };
        let records = match spool.read(&path) {
            Ok(records) => records,
            Err(err) => {
                // Kept on disk under another name for an operator, never deleted.
                tracing::error!(%err, path = %path.display(), "audit spool file unreadable; set aside");
                spool.set_aside(&path);
                continue;
            }
        };
        let count = records.len();
        let records = store_batch(store, records).await.map_err(|(err, _)| err)?;
        append_to_file(file, &records);
        spool.remove(&path);
        tracing::info!(count, "spooled audit events stored");
    }
    Ok(())
}

fn append_to_file(path: Option<&Path>, records: &[AuditRecord]) {
    let Some(path) = path else {
        return;
    };
    if let Err(err) = append_lines(path, records) {
        tracing::error!(%err, path = %path.display(), count = records.len(), "audit file append failed");
    }
}

fn append_lines(path: &Path, records: &[AuditRecord]) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut out = std::io::BufWriter::new(f);
    for r in records {
        out.write_all(r.body.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[derive(Debug, thiserror::Error)]
enum SpoolError {
    #[error("no audit spool is configured")]
    NotConfigured,
    #[error("the audit spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("audit spool: {0}")]
    Io(#[from] std::io::Error),
}

/// One spooled event.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    time_unix_ms: i64,
    event_type: String,
    user: String,
    body: String,
}

/// Batches the store could not take, one JSON-lines file each, named so that file names sort
/// oldest first. Files appear whole (written aside, then renamed).
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    /// Spool files waiting, so the writer need not list the directory on every drain.
    waiting: AtomicU64,
    seq: AtomicU64,
    /// Serialises the size check and the write of concurrent spillers.
    io: Mutex<()>,
}

const SPOOL_EXT: &str = "jsonl";

impl Spool {
    fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir)?;
        let files = Self::files(dir)?;
        let used = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            used: AtomicU64::new(used),
            waiting: AtomicU64::new(files.len() as u64),
            seq: AtomicU64::new(0),
            io: Mutex::new(()),
        })
    }

    fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == SPOOL_EXT))
            .collect();
        files.sort();
        Ok(files)
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) == 0
    }

    /// One file fewer waiting, `size` bytes fewer used.
    fn forget(&self, size: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(size))
            });
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    fn oldest(&self) -> Option<PathBuf> {
        Self::files(&self.dir).ok()?.into_iter().next()
    }

    fn write(&self, records: &[AuditRecord]) -> Result<(), SpoolError> {
        let mut text = Vec::new();
        for r in records {
            let line = Spooled {
                time_unix_ms: r.time_unix_ms,
                event_type: r.event_type.clone(),
                user: r.user.clone(),
                body: r.body.clone(),
            };
            serde_json::to_writer(&mut text, &line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.used();
        let size = text.len() as u64;
        if used.saturating_add(size) > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{now:016}-{seq:010}");
        let partial = self.dir.join(format!("{name}.partial"));
        let done = self.dir.join(format!("{name}.{SPOOL_EXT}"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options.open(&partial)?;
        out.write_all(&text)?;
        out.sync_data()?;
        drop(out);
        std::fs::rename(&partial, &done)?;
        self.used.fetch_add(size, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<AuditRecord>> {
        let text = std::fs::read_to_string(path)?;
        let mut records = Vec::new();
        let mut bad = 0usize;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Spooled>(line) {
                Ok(s) => records.push(AuditRecord {
                    body: s.body,
                    event_type: s.event_type,
                    user: s.user,
                    time_unix_ms: s.time_unix_ms,
                }),
                Err(_) => bad += 1,
            }
        }
        if bad > 0 {
            return Err(std::io::Error::other(format!(
                "{bad} malformed lines in {}",
                path.display()
            )));
        }
        Ok(records)
    }

    fn remove(&self, path: &Path) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(path) {
            Ok(()) => self.forget(size),
            Err(err) => {
                tracing::error!(%err, path = %path.display(), "stored audit spool file could not be removed; setting it aside");
                self.set_aside(path);
            }
        }
    }

    fn set_aside(&self, path: &Path) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if std::fs::rename(path, path.with_extension("unreadable")).is_ok() {
            self.forget(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbward_store::{
        ActivationRecord, AuditQuery, Backend, PutMode, SessionRecord, SqliteBackend, StoreError,
    };
    use std::sync::atomic::AtomicBool;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A store whose audit writes can be made to fail, as during an outage.
    struct Refusing {
        inner: SqliteBackend,
        refuse: AtomicBool,
    }

    impl Refusing {
        fn check(&self) -> dbward_store::Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt("store unavailable".into()));
            }
            Ok(())
        }
    }

    impl Backend for Refusing {
        fn put_resource(&self, k: &str, n: &str, b: &str, m: PutMode) -> dbward_store::Result<()> {
            self.inner.put_resource(k, n, b, m)
        }
        fn get_resource(&self, k: &str, n: &str) -> dbward_store::Result<Option<String>> {
            self.inner.get_resource(k, n)
        }
        fn list_resources(&self, k: &str) -> dbward_store::Result<Vec<(String, String)>> {
            self.inner.list_resources(k)
        }
        fn delete_resource(&self, k: &str, n: &str) -> dbward_store::Result<bool> {
            self.inner.delete_resource(k, n)
        }
        fn resources_revision(&self) -> dbward_store::Result<i64> {
            self.inner.resources_revision()
        }
        fn get_cas(&self) -> dbward_store::Result<Vec<(String, String, String)>> {
            self.inner.get_cas()
        }
        fn put_ca_if_absent(&self, k: &str, c: &str, key: &str) -> dbward_store::Result<bool> {
            self.inner.put_ca_if_absent(k, c, key)
        }
        fn set_password_hash(&self, u: &str, p: &str) -> dbward_store::Result<()> {
            self.inner.set_password_hash(u, p)
        }
        fn get_password_hash(&self, u: &str) -> dbward_store::Result<Option<String>> {
            self.inner.get_password_hash(u)
        }
        fn delete_password(&self, u: &str) -> dbward_store::Result<bool> {
            self.inner.delete_password(u)
        }
        fn try_acquire_lease(
            &self,
            key: &str,
            holder: &str,
            token: &str,
            ttl: Duration,
        ) -> dbward_store::Result<bool> {
            self.inner.try_acquire_lease(key, holder, token, ttl)
        }
        fn renew_lease(&self, key: &str, token: &str, ttl: Duration) -> dbward_store::Result<bool> {
            self.inner.renew_lease(key, token, ttl)
        }
        fn release_lease(&self, key: &str, token: &str) -> dbward_store::Result<bool> {
            self.inner.release_lease(key, token)
        }
        fn append_audit(&self, b: &str, e: &str, u: &str, t: i64) -> dbward_store::Result<()> {
            self.check()?;
            self.inner.append_audit(b, e, u, t)
        }
        fn append_audit_batch(&self, records: &[AuditRecord]) -> dbward_store::Result<()> {
            self.check()?;
            self.inner.append_audit_batch(records)
        }
        fn search_audit(&self, q: &AuditQuery) -> dbward_store::Result<Vec<String>> {
            self.inner.search_audit(q)
        }
        fn register_session(&self, s: &SessionRecord) -> dbward_store::Result<()> {
            self.inner.register_session(s)
        }
        fn end_session(&self, sid: &str) -> dbward_store::Result<bool> {
            self.inner.end_session(sid)
        }
        fn list_sessions(&self) -> dbward_store::Result<Vec<SessionRecord>> {
            self.inner.list_sessions()
        }
        fn end_sessions_of_instance(&self, i: &str) -> dbward_store::Result<usize> {
            self.inner.end_sessions_of_instance(i)
        }
        fn heartbeat_instance(&self, i: &str) -> dbward_store::Result<()> {
            self.inner.heartbeat_instance(i)
        }
        fn live_instances(&self, since: i64) -> dbward_store::Result<Vec<String>> {
            self.inner.live_instances(since)
        }
        fn now_unix_ms(&self) -> dbward_store::Result<i64> {
            self.inner.now_unix_ms()
        }
        fn put_activation(&self, r: &ActivationRecord) -> dbward_store::Result<()> {
            self.inner.put_activation(r)
        }
        fn get_activation(&self, k: &str) -> dbward_store::Result<Option<ActivationRecord>> {
            self.inner.get_activation(k)
        }
        fn delete_activation(&self, k: &str) -> dbward_store::Result<bool> {
            self.inner.delete_activation(k)
        }
        fn kv_get(&self, k: &str) -> dbward_store::Result<Option<String>> {
            self.inner.kv_get(k)
        }
        fn kv_put(&self, k: &str, v: &str) -> dbward_store::Result<()> {
            self.inner.kv_put(k, v)
        }
        fn kv_delete(&self, k: &str) -> dbward_store::Result<bool> {
            self.inner.kv_delete(k)
        }
    }

    fn refusing_store(dir: &Path) -> Result<(Arc<Refusing>, Store), Box<dyn std::error::Error>> {
        let backend = Arc::new(Refusing {
            inner: SqliteBackend::open(&dir.join("data"))?,
            refuse: AtomicBool::new(true),
        });
        Ok((backend.clone(), Store::from_backend(backend)))
    }

    async fn stored(store: &Store) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        Ok(store
            .search_audit(AuditQuery {
                limit: 1_000_000,
                ..AuditQuery::default()
            })
            .await?)
    }

    fn fields() -> Arc<SessionFields> {
        Arc::new(SessionFields {
            user: "alice".into(),
            sid: "s1".into(),
            ..SessionFields::default()
        })
    }

    /// Waits (bounded) until the store holds `count` events.
    async fn until_stored(
        store: &Store,
        count: usize,
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = stored(store).await?;
            if events.len() >= count || Instant::now() >= deadline {
                return Ok(events);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn events_beyond_the_queue_bound_wait_in_the_spool_until_the_store_returns() -> TestResult
    {
        let dir = tempfile::tempdir()?;
        let (backend, store) = refusing_store(dir.path())?;
        let spool = dir.path().join(SPOOL_DIR);
        let audit = AuditLog::with_limits(
            store.clone(),
            None,
            Some(spool.clone()),
            Limits {
                max_queued: 10,
                max_spool_bytes: 10 << 20,
            },
        );
        let fields = fields();
        for n in 0..1_000 {
            audit.query(&fields, &format!("SELECT {n}"));
        }
        audit.flush().await;
        assert!(stored(&store).await?.is_empty());
        assert!(audit.spooled_bytes() > 0, "the events are in the spool");
        assert!(std::fs::read_dir(&spool)?.count() > 0);
        assert_eq!(audit.refused_events(), 0);
        let state = audit.state();
        assert_eq!(state.spooled_events, 1_000, "every event went to the spool");
        assert_eq!(state.queued, 0);

        backend.refuse.store(false, Ordering::SeqCst);
        audit.query(&fields, "SELECT 'after'");
        let events = until_stored(&store, 1_001).await?;
        assert_eq!(events.len(), 1_001, "every event stored exactly once");
        for n in 0..1_000 {
            let sql = format!("\"db_query\":\"SELECT {n}\"");
            assert!(events.iter().any(|e| e.contains(&sql)), "{sql} missing");
        }
        // A replayed file is removed just after its events are stored: let that drain end.
        audit.flush().await;
        assert_eq!(audit.spooled_bytes(), 0);
        assert_eq!(audit.refused_events(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_spool_refuses_events_and_counts_them() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (backend, store) = refusing_store(dir.path())?;
        let audit = AuditLog::with_limits(
            store.clone(),
            None,
            Some(dir.path().join(SPOOL_DIR)),
            Limits {
                max_queued: 5,
                max_spool_bytes: 2_000,
            },
        );
        let fields = fields();
        for n in 0..200 {
            audit.query(&fields, &format!("SELECT {n}"));
        }
        audit.flush().await;
        let refused = audit.refused_events();
        assert!(refused > 0, "a bounded spool refuses");
        assert!(audit.spooled_bytes() <= 2_000);

        backend.refuse.store(false, Ordering::SeqCst);
        let expected = 200 - usize::try_from(refused)?;
        let events = until_stored(&store, expected).await?;
        assert_eq!(
            events.len(),
            expected,
            "all but the refused ones are stored"
        );
        Ok(())
    }

    #[tokio::test]
    async fn without_queries_statements_are_dropped_and_every_other_event_kept() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (backend, store) = refusing_store(dir.path())?;
        backend.refuse.store(false, Ordering::SeqCst);
        let fields = fields();
        let audited = AuditLog::new(store.clone(), None, None);
        audited.query(&fields, "SELECT 'kept'");
        audited.flush().await;
        let quiet = AuditLog::new(store.clone(), None, None).without_queries();
        quiet.query(&fields, "SELECT 'dropped'");
        quiet
            .emit(SESSION_END, &fields, serde_json::json!({"success": true}))
            .await;
        quiet.flush().await;
        let events = stored(&store).await?;
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].contains("SELECT 'kept'"), "{events:?}");
        assert!(events[1].contains(SESSION_END), "{events:?}");
        assert!(!events.iter().any(|e| e.contains("dropped")), "{events:?}");
        Ok(())
    }
}
