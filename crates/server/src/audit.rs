//! Audit events (DESIGN §7): built here, persisted in the store, optionally appended as JSON
//! lines to a file for log shippers. Writing an event never fails a connection: a storage
//! error is logged instead.

use std::path::PathBuf;

use dbward_store::Store;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

pub const SESSION_START: &str = "db.session.start";
pub const SESSION_END: &str = "db.session.end";
pub const SESSION_QUERY: &str = "db.session.query";
pub const USER_CREATE: &str = "db.session.user.create";
pub const PERMISSIONS_UPDATE: &str = "db.session.permissions.update";
pub const USER_DEACTIVATE: &str = "db.session.user.deactivate";

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

#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    file: Option<PathBuf>,
}

impl AuditLog {
    pub fn new(store: Store, file: Option<PathBuf>) -> Self {
        Self { store, file }
    }

    /// Records `event` with the session's common fields and `extra` merged in.
    pub async fn emit(&self, event: &str, fields: &SessionFields, extra: Value) {
        let now = OffsetDateTime::now_utc();
        let mut obj = Map::new();
        obj.insert("event".into(), json!(event));
        obj.insert(
            "time".into(),
            json!(now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()),
        );
        obj.insert("user".into(), json!(fields.user));
        obj.insert("sid".into(), json!(fields.sid));
        obj.insert("db_service".into(), json!(fields.db_service));
        obj.insert("db_protocol".into(), json!(fields.db_protocol));
        obj.insert("db_uri".into(), json!(fields.db_uri));
        obj.insert("db_name".into(), json!(fields.db_name));
        obj.insert("db_user".into(), json!(fields.db_user));
        obj.insert("db_roles".into(), json!(fields.db_roles));
        if let Value::Object(extra) = extra {
            obj.extend(extra);
        }
        let line = Value::Object(obj).to_string();
        let millis = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        if let Err(err) = self
            .store
            .append_audit(&line, event, &fields.user, millis)
            .await
        {
            tracing::error!(%err, event, "audit event could not be stored");
        }
        if let Some(path) = &self.file {
            let result = async {
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                f.write_all(format!("{line}\n").as_bytes()).await
            }
            .await;
            if let Err(err) = result {
                tracing::error!(%err, path = %path.display(), "audit file append failed");
            }
        }
    }
}
