//! Audit events (DESIGN §7): built here, persisted in the store, optionally appended as JSON
//! lines to a file for log shippers.
//!
//! Emitting never waits for storage and never fails a connection: events are pushed onto one
//! process-wide queue (a mutex-guarded vector: no task is woken per event), and a single
//! writer drains it every few milliseconds, storing each drain as one batch (one store
//! transaction, one buffered file write). Queries tapped from the relay therefore cost the
//! connection a push, not a database commit or a thread hand-off. [`AuditLog::flush`] wakes
//! the writer and waits until everything emitted so far is stored, for readers that must see
//! it (audit search).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use dbward_store::{AuditRecord, Store};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};

pub const SESSION_START: &str = "db.session.start";
pub const SESSION_END: &str = "db.session.end";
pub const SESSION_QUERY: &str = "db.session.query";
pub const USER_CREATE: &str = "db.session.user.create";
pub const USER_DEACTIVATE: &str = "db.session.user.deactivate";

/// How often the writer drains the queue when nobody asks it to flush.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Fields common to every event of one database session.
#[derive(Debug, Clone, Default)]
pub struct SessionFields {
    pub user: String,
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
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Queue {
    pending: std::sync::Mutex<Vec<Pending>>,
    wake: Notify,
}

impl Queue {
    fn push(&self, pending: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pending);
    }

    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Clone)]
pub struct AuditLog {
    queue: Arc<Queue>,
}

impl AuditLog {
    /// Starts the writer on the current runtime.
    pub fn new(store: Store, file: Option<PathBuf>) -> Self {
        let queue = Arc::new(Queue::default());
        tokio::spawn(write_loop(store, file, Arc::downgrade(&queue)));
        Self { queue }
    }

    /// Records `event` with the session's common fields and `extra` merged in.
    pub async fn emit(&self, event: &'static str, fields: &SessionFields, extra: Value) {
        self.queue.push(Pending::Event {
            event,
            fields: Arc::new(fields.clone()),
            extra,
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Records a `db.session.query`; called from the relay's tap, so it only queues.
    pub fn query(&self, fields: &Arc<SessionFields>, sql: &str) {
        self.queue.push(Pending::Query {
            fields: fields.clone(),
            sql: sql.to_string(),
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Waits until every event emitted before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.queue.push(Pending::Flush(tx));
        self.queue.wake.notify_one();
        let _ = rx.await;
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

async fn write_loop(store: Store, file: Option<PathBuf>, queue: std::sync::Weak<Queue>) {
    loop {
        // Runs as long as some AuditLog handle exists; the last drain happens after that.
        let Some(strong) = queue.upgrade() else {
            return;
        };
        tokio::select! {
            _ = strong.wake.notified() => {}
            _ = tokio::time::sleep(DRAIN_EVERY) => {}
        }
        let drained = strong.take();
        drop(strong);
        if drained.is_empty() {
            continue;
        }
        let mut batch = Vec::with_capacity(drained.len());
        let mut waiters = Vec::new();
        for pending in drained {
            match pending {
                Pending::Event {
                    event,
                    fields,
                    extra,
                    time,
                } => batch.push(render(event, &fields, None, extra, time)),
                Pending::Query { fields, sql, time } => batch.push(render(
                    SESSION_QUERY,
                    &fields,
                    Some(&sql),
                    Value::Null,
                    time,
                )),
                Pending::Flush(done) => waiters.push(done),
            }
        }
        if !batch.is_empty() {
            if let Some(path) = &file {
                if let Err(err) = append_lines(path, &batch) {
                    tracing::error!(%err, path = %path.display(), "audit file append failed");
                }
            }
            let count = batch.len();
            if let Err(err) = store.append_audit_batch(batch).await {
                tracing::error!(%err, count, "audit events could not be stored");
            }
        }
        for done in waiters {
            let _ = done.send(());
        }
    }
}

fn append_lines(path: &PathBuf, records: &[AuditRecord]) -> std::io::Result<()> {
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
