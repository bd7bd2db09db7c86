//! Audit events (DESIGN §7): built here, persisted in the store, optionally appended as JSON
//! lines to a file for log shippers.
//!
//! Emitting never waits for storage and never fails a connection: events go into one
//! process-wide queue, and a single writer stores them in batches (one store transaction and
//! one buffered file write per batch). Queries tapped from the relay therefore cost the
//! connection one channel send, not a database commit. [`AuditLog::flush`] waits until
//! everything emitted so far is stored, for readers that must see it (audit search).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use dbward_store::{AuditRecord, Store};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub const SESSION_START: &str = "db.session.start";
pub const SESSION_END: &str = "db.session.end";
pub const SESSION_QUERY: &str = "db.session.query";
pub const USER_CREATE: &str = "db.session.user.create";
pub const PERMISSIONS_UPDATE: &str = "db.session.permissions.update";
pub const USER_DEACTIVATE: &str = "db.session.user.deactivate";

/// Most events stored in one transaction.
const MAX_BATCH: usize = 2048;

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

#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::UnboundedSender<Pending>,
}

impl AuditLog {
    /// Starts the writer on the current runtime.
    pub fn new(store: Store, file: Option<PathBuf>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, file, rx));
        Self { queue }
    }

    /// Records `event` with the session's common fields and `extra` merged in.
    pub async fn emit(&self, event: &'static str, fields: &SessionFields, extra: Value) {
        self.emit_shared(event, &Arc::new(fields.clone()), extra);
    }

    /// Like [`AuditLog::emit`] with fields shared between the events of one session.
    pub fn emit_shared(&self, event: &'static str, fields: &Arc<SessionFields>, extra: Value) {
        let _ = self.queue.send(Pending::Event {
            event,
            fields: fields.clone(),
            extra,
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Records a `db.session.query`; called from the relay's tap, so it only queues.
    pub fn query(&self, fields: &Arc<SessionFields>, sql: &str) {
        let _ = self.queue.send(Pending::Query {
            fields: fields.clone(),
            sql: sql.to_string(),
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Waits until every event emitted before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Pending::Flush(tx)).is_ok() {
            let _ = rx.await;
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

async fn write_loop(store: Store, file: Option<PathBuf>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::new();
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(pending) = next.take() {
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
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let records = std::mem::take(&mut batch);
            if let Some(path) = &file {
                if let Err(err) = append_lines(path, &records) {
                    tracing::error!(%err, path = %path.display(), "audit file append failed");
                }
            }
            let count = records.len();
            if let Err(err) = store.append_audit_batch(records).await {
                tracing::error!(%err, count, "audit events could not be stored");
            }
        }
        for done in waiters.drain(..) {
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
