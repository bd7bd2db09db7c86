//! The role option `max_connections`: how many database sessions one dbward user may have at
//! once, counted across every gateway sharing the store.
//!
//! A session of a user with a limit takes a slot before anything is provisioned: under a
//! store lock keyed on the user (so two gateways, or two connections of one, cannot both take
//! the last slot), the user's recorded live sessions are counted and, below the limit, this
//! session is recorded at once. The record is the one provisioned sessions keep anyway (the
//! connect step fills in its server connection); for sessions without provisioning it exists
//! only to be counted, and crash recovery merely forgets it. A session's slot is freed when
//! its record goes: at the end of its teardown, or when another instance finds its gateway
//! dead (no heartbeat for `reconcile::DEAD_AFTER`). Records of instances already silent that
//! long are not counted.

use std::time::Duration;

use dbward_store::{SessionRecord, StoreError};

use super::provisioning::DbUserKey;
use super::reconcile::DEAD_AFTER;
use super::{Authorized, SessionError};
use crate::Gateway;

/// How long a connection waits for another connection of the same user to take its slot.
const SLOT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// A slot held by one session; its record is removed when the guard goes (in the
/// background, retrying while the store is unreachable). Removing a record the teardown
/// already removed changes nothing.
pub(crate) struct Slot {
    gw: std::sync::Arc<Gateway>,
    sid: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gw = self.gw.clone();
        let sid = std::mem::take(&mut self.sid);
        runtime.spawn(async move { super::provisioning::forget_live_session(&gw, &sid).await });
    }
}

/// Takes a session slot for a user whose roles set `max_connections`; `None` without a
/// limit. `db_user` is the planned in-database user. Refuses with the limit named when the
/// user has that many sessions already.
pub(crate) async fn take_slot(
    gw: &std::sync::Arc<Gateway>,
    authorized: &Authorized,
    db_user: &str,
) -> Result<Option<Slot>, SessionError> {
    let Some(limit) = authorized.decision.limits.max_connections else {
        return Ok(None);
    };
    let user = &authorized.fields.user;
    let internal = |err: StoreError| SessionError::Internal(format!("max_connections: {err}"));
    let _lock = gw
        .store
        .lock(
            &format!("connections/{user}"),
            &gw.instance_id,
            SLOT_LOCK_WAIT,
        )
        .await
        .map_err(|err| match err {
            StoreError::LockTimeout { .. } => SessionError::Busy(
                "timed out waiting for another connection of this user to start; try again".into(),
            ),
            other => internal(other),
        })?;
    let now = gw.store.now_unix_ms().await.map_err(internal)?;
    let since = now.saturating_sub(i64::try_from(DEAD_AFTER.as_millis()).unwrap_or(0));
    let live = gw.store.live_instances(since).await.map_err(internal)?;
    let held = gw
        .store
        .list_sessions()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| &s.dbward_user == user)
        .filter(|s| s.instance_id == gw.instance_id || live.contains(&s.instance_id))
        .count();
    if u64::try_from(held).unwrap_or(u64::MAX) >= limit {
        tracing::info!(%user, held, limit, "session refused: max_connections reached");
        return Err(SessionError::TooManyConnections(format!(
            "too many concurrent database sessions for user \"{user}\": the max_connections of your roles is {limit}; end another session first"
        )));
    }
    let key = DbUserKey::of(&authorized.db, db_user);
    let record = SessionRecord {
        sid: authorized.fields.sid.clone(),
        instance_id: gw.instance_id.clone(),
        db_service: authorized.db.metadata.name.clone(),
        db_user: db_user.to_string(),
        dbward_user: user.clone(),
        mode: authorized.decision.mode.as_str().to_string(),
        started_unix_ms: now,
        engine: key.engine.as_str().to_string(),
        server: key.server,
        backend_id: None,
    };
    let slot = Slot {
        gw: gw.clone(),
        sid: authorized.fields.sid.clone(),
    };
    // From here on the guard removes the record, even if this write fails after landing.
    gw.store.register_session(record).await.map_err(internal)?;
    Ok(Some(slot))
}
