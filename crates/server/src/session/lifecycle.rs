//! The steps every engine's session shares around its protocol work: audit of a refused or
//! started session, the query audit channel, and the end (teardown, then `db.session.end`).
//! Engines call these in order; only the wire protocol differs between them.

use std::sync::Arc;

use dbward_pki::DbRoute;
use serde_json::json;

use super::live::Registration;
use super::{Authorized, Provisioned, SessionError};
use crate::audit::{self, SessionFields};
use crate::Gateway;

/// Records a session refused before authorization had produced its fields.
pub(crate) async fn refused_unauthorized(
    gw: &Gateway,
    user: String,
    route: &DbRoute,
    protocol: &str,
    db_user: &str,
    db_name: &str,
    err: &SessionError,
) {
    gw.metrics.failed(protocol, err);
    let fields = SessionFields {
        user,
        sid: uuid::Uuid::new_v4().to_string(),
        db_service: route.service.clone(),
        db_protocol: protocol.to_string(),
        db_user: if db_user.is_empty() {
            route.db_user.clone().unwrap_or_default()
        } else {
            db_user.to_string()
        },
        db_name: db_name.to_string(),
        db_roles: route.db_roles.clone(),
        ..Default::default()
    };
    gw.audit
        .emit(
            audit::SESSION_START,
            &fields,
            json!({"success": false, "error": err.user_message()}),
        )
        .await;
}

/// Records an authorized session that could not start (the engine tells the client).
pub(crate) async fn refused(gw: &Gateway, authorized: &Authorized, err: &SessionError) {
    tracing::info!(sid = %authorized.fields.sid, user = %authorized.fields.user, %err, "session refused");
    gw.metrics.failed(&authorized.fields.db_protocol, err);
    gw.audit
        .emit(
            audit::SESSION_START,
            &authorized.fields,
            json!({"success": false, "error": err.user_message()}),
        )
        .await;
}

/// Records a session whose client is now connected to the database.
pub(crate) async fn started(gw: &Gateway, authorized: &Authorized) {
    gw.audit
        .emit(
            audit::SESSION_START,
            &authorized.fields,
            json!({"success": true}),
        )
        .await;
    tracing::info!(
        sid = %authorized.fields.sid,
        user = %authorized.fields.user,
        db = %authorized.fields.db_service,
        db_user = %authorized.fields.db_user,
        "session started"
    );
}

/// The sink of the relay's tap: each query is queued for the audit writer, so the relay
/// pays one channel send per statement.
pub(crate) fn query_audit(gw: &Arc<Gateway>, fields: &SessionFields) -> impl Fn(&str) + Send {
    let gw = gw.clone();
    let fields = Arc::new(fields.clone());
    move |sql: &str| gw.audit.query(&fields, sql)
}

/// After the relay: tears the user down and records the end. Shutdown waits for this through the registration.
pub(crate) async fn finish(
    gw: &Gateway,
    registration: Registration,
    provisioned: Provisioned,
    authorized: &Authorized,
) {
    registration.relay_finished();
    provisioned.teardown(gw, authorized).await;
    drop(registration);
    gw.audit
        .emit(audit::SESSION_END, &authorized.fields, json!({}))
        .await;
    tracing::info!(sid = %authorized.fields.sid, "session ended");
}

/// Tears down after a start that failed once provisioning had happened; no `db.session.end`
/// is recorded for a session that never started.
pub(crate) async fn abandon(
    gw: &Gateway,
    registration: Registration,
    provisioned: Provisioned,
    authorized: &Authorized,
) {
    registration.relay_finished();
    provisioned.teardown(gw, authorized).await;
    drop(registration);
}
