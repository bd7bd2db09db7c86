//! The audit records of a session's life: refused (before or after authorization), started,
//! ended. The pipeline calls these at its steps; the queries in between go through the
//! relay's tap (`relay::SessionTap`).

use dbward_model::Protocol;
use serde_json::json;

use super::{Authenticated, Authorized, SessionError};
use crate::audit::{self, SessionFields};
use crate::Gateway;

/// Records a session refused before authorization had produced its fields.
pub(crate) async fn refused_unauthorized(
    gw: &Gateway,
    auth: &Authenticated,
    protocol: Protocol,
    db_user: &str,
    db_name: &str,
    err: &SessionError,
) {
    gw.metrics.failed(protocol.as_str(), err);
    let route = &auth.route;
    let fields = SessionFields {
        user: auth.identity.username.clone(),
        sid: auth.sid.clone(),
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
    tracing::info!(%err, "session refused");
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
    tracing::info!(db_user = %authorized.fields.db_user, "session started");
}

/// Records the end of a session that had started, after its teardown; `reason` says why the
/// gateway ended it, when it did for a reason the record keeps (an idle client).
pub(crate) async fn ended(gw: &Gateway, authorized: &Authorized, reason: Option<&str>) {
    let extra = match reason {
        Some(reason) => json!({ "reason": reason }),
        None => json!({}),
    };
    gw.audit
        .emit(audit::SESSION_END, &authorized.fields, extra)
        .await;
    tracing::info!("session ended");
}
