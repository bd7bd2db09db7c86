//! Cleaning up after crashes (PROVISIONING §7, §8).
//!
//! - **Heartbeat and recovery**, every two seconds: this instance says it is alive in the
//!   store, then ends the recorded live sessions of instances that are not (no heartbeat for
//!   [`DEAD_AFTER`], or this process's own previous run, whose id it finds in `data_dir`):
//!   their upstream connection is terminated in the database (guarded: only a connection of
//!   the recorded managed user), then the user is locked or dropped, under the same lock as an
//!   activation. A session busy in a long statement when its gateway was killed therefore
//!   ends within seconds of a restart, or of any other instance noticing. The dead
//!   instances' cancel keys are forgotten in a shared store.
//! - **Reconciler**, at start-up and every minute: users left active with no session at all
//!   (managed, able to log in, no backend) are deactivated or dropped. One pass per server,
//!   whichever `db` resources point at it.
//!
//! The mode of such a teardown is the weakest of the recorded activation and of every
//! resource on the server that provisions the user's owner: a user is dropped only when all
//! of them say `best_effort_drop`, and locked otherwise (also when its owner is unknown).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbward_model::Db;
use dbward_provision::{error_chain, DbUserName, DeactivateOutcome};
use dbward_rbac::ProvisioningMode;
use dbward_store::SessionRecord;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::provisioning::{
    deactivate_user, engine_of, in_db_name, lock_user, maintenance_target, server_of, stored_mode,
    weakest, DbUserKey,
};
use crate::audit::{self, SessionFields};
use crate::catalog::Snapshot;
use crate::Gateway;

const EVERY: Duration = Duration::from_secs(60);
/// How often an instance says it is alive and looks for sessions of dead ones.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// An instance silent for this long is dead: three missed heartbeats and some slack.
pub(crate) const DEAD_AFTER: Duration = Duration::from_millis(7_000);
/// A record of this instance older than this whose session is not running here is removed
/// (a session is registered here right after its record is written, without a pause).
const STALE_OWN_RECORD_AFTER: Duration = Duration::from_secs(30);
/// This data directory's previous run is dead once silent for this long: a restart after a
/// kill waits only for its last heartbeat to age, and a second process started on the same
/// data directory by mistake does not take a live one for its predecessor.
const PREVIOUS_DEAD_AFTER: Duration = Duration::from_millis(3_000);
/// How long cleaning up one user waits for its lock before trying again next round.
const CLEANUP_LOCK_WAIT: Duration = Duration::from_secs(5);
/// The file in `data_dir` that names the instance running from it, so a restart knows
/// its previous run's sessions are dead without waiting for the heartbeat to go stale.
const INSTANCE_FILE: &str = "instance-id";

pub async fn reconcile_loop(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let previous = take_over_instance_file(&gw);
    let recovery = recovery_loop(gw.clone(), previous, shutdown.clone());
    let periodic = async {
        loop {
            if let Err(err) = reconcile_once(&gw).await {
                tracing::warn!(%err, "reconcile pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    };
    tokio::join!(recovery, periodic);
}

/// Reads the id of this data directory's previous instance and writes this one's.
fn take_over_instance_file(gw: &Gateway) -> Option<String> {
    let path = gw.config.data_dir.join(INSTANCE_FILE);
    let previous = std::fs::read_to_string(&path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|id| !id.is_empty() && *id != gw.instance_id);
    if let Err(err) = std::fs::write(&path, &gw.instance_id) {
        tracing::warn!(%err, path = %path.display(), "cannot record the instance id");
    }
    previous
}

async fn recovery_loop(gw: Arc<Gateway>, previous: Option<String>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Other instances are judged only once this one has been heard for DEAD_AFTER without a
    // gap: after a store outage every instance's heartbeat is stale, and none may end the
    // others' sessions before they have had the chance to heartbeat again.
    let mut heard_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match gw.store.heartbeat_instance(&gw.instance_id).await {
            Ok(()) => {
                heard_since.get_or_insert_with(Instant::now);
            }
            Err(err) => {
                heard_since = None;
                tracing::warn!(%err, "heartbeat could not be stored");
            }
        }
        let judge_others = heard_since.is_some_and(|since| since.elapsed() >= DEAD_AFTER);
        if let Err(err) = recover_once(&gw, previous.as_deref(), judge_others).await {
            tracing::warn!(%err, "recovery of dead instances' sessions failed");
        }
    }
}

/// Ends the recorded sessions of `previous` (this data directory's previous run) and, with
/// `judge_others`, of every instance without a heartbeat for [`DEAD_AFTER`]: terminates
/// their upstream connections, then tears their users down.
pub async fn recover_once(
    gw: &Gateway,
    previous: Option<&str>,
    judge_others: bool,
) -> Result<(), crate::GatewayError> {
    if previous.is_none() && !judge_others {
        return Ok(());
    }
    let now = gw.store.now_unix_ms().await?;
    let since =
        |silence: Duration| now.saturating_sub(i64::try_from(silence.as_millis()).unwrap_or(0));
    let live: HashSet<String> = gw
        .store
        .live_instances(since(DEAD_AFTER))
        .await?
        .into_iter()
        .collect();
    // The cancel keys of dead instances match no live session any more.
    if judge_others && super::cancel::shared_store(gw) {
        let silent_since = since(DEAD_AFTER);
        if let Err(err) = gw
            .store
            .forget_cancel_keys_of_silent_instances(silent_since)
            .await
        {
            tracing::debug!(%err, "dead instances' cancel keys could not be removed");
        }
    }
    let previous = match previous {
        Some(id)
            if !gw
                .store
                .live_instances(since(PREVIOUS_DEAD_AFTER))
                .await?
                .iter()
                .any(|l| l == id) =>
        {
            Some(id)
        }
        _ => None,
    };
    let records = gw.store.list_sessions().await?;
    // A record of this instance whose session is not running here: a write that landed
    // after the teardown removed it (a slow store). It would count against the user's
    // max_connections on every gateway until this one stops.
    let stale_before = since(STALE_OWN_RECORD_AFTER);
    for stale in records.iter().filter(|s| {
        s.instance_id == gw.instance_id
            && s.started_unix_ms < stale_before
            && !gw.sessions.contains(&s.sid)
    }) {
        tracing::info!(sid = %stale.sid, "record of a session that has ended removed");
        let _ = gw.store.end_session(&stale.sid).await;
    }
    let orphaned: Vec<SessionRecord> = records
        .into_iter()
        .filter(|s| {
            s.instance_id != gw.instance_id
                && (Some(s.instance_id.as_str()) == previous
                    || (judge_others && !live.contains(&s.instance_id)))
        })
        .collect();
    if orphaned.is_empty() {
        return Ok(());
    }
    let snapshot = gw.catalog.snapshot().await?;
    let mut by_user: BTreeMap<DbUserKey, Vec<SessionRecord>> = BTreeMap::new();
    for session in orphaned {
        // Recorded only to count the user's sessions (max_connections): its database user
        // is not dbward's, so there is nothing to end or tear down, only the record.
        if session.mode == ProvisioningMode::Off.as_str() {
            let _ = gw.store.end_session(&session.sid).await;
            continue;
        }
        match DbUserKey::of_record(&session) {
            Some(key) => by_user.entry(key).or_default().push(session),
            None => {
                tracing::warn!(sid = %session.sid, engine = %session.engine, "a dead instance's session names an unknown engine; its record is dropped");
                let _ = gw.store.end_session(&session.sid).await;
            }
        }
    }
    for sessions in by_user.into_values() {
        recover_user(gw, &snapshot, &sessions).await;
    }
    Ok(())
}

/// The `db` resource to reach a recorded session's server through: its own when it still
/// exists and has an admin, else any resource with an admin on the same server.
fn resource_for<'a>(snapshot: &'a Snapshot, session: &SessionRecord) -> Option<&'a Db> {
    let same_server = |db: &&Db| {
        db.admin_user().is_some()
            && (session.server.is_empty()
                || DbUserKey::of(db, &session.db_user).server == session.server)
    };
    snapshot
        .dbs
        .get(&session.db_service)
        .filter(same_server)
        .or_else(|| {
            snapshot.dbs.values().find(|db| {
                same_server(db) && engine_of(db.spec.protocol).as_str() == session.engine
            })
        })
}

async fn recover_user(gw: &Gateway, snapshot: &Snapshot, sessions: &[SessionRecord]) {
    let Some(first) = sessions.first() else {
        return;
    };
    let Some(db) = resource_for(snapshot, first) else {
        tracing::warn!(sid = %first.sid, db = %first.db_service, "no db resource with an admin user reaches this session's server; its record is dropped");
        for s in sessions {
            let _ = gw.store.end_session(&s.sid).await;
        }
        return;
    };
    let Ok(admin) = maintenance_target(gw, db) else {
        return;
    };
    let key = DbUserKey::of(db, &first.db_user);
    let Ok(_lock) = lock_user(gw, &key, CLEANUP_LOCK_WAIT).await else {
        return;
    };
    let user = DbUserName::new(first.db_user.clone());
    let mut unended = false;
    for s in sessions {
        let Some(id) = s.backend_id else {
            continue;
        };
        // A negative id names no connection.
        let ended = match u64::try_from(id) {
            Ok(id) => gw.provisioners.terminate_backend(&admin, &user, id).await,
            Err(_) => Ok(false),
        };
        unended |= ended.is_err();
        match ended {
            Ok(ended) => {
                tracing::info!(sid = %s.sid, instance = %s.instance_id, db_user = %s.db_user, backend = id, ended, "ended a session whose gateway instance is gone")
            }
            Err(err) => {
                tracing::warn!(sid = %s.sid, db_user = %s.db_user, error = %error_chain(&err), "could not end a session whose gateway instance is gone")
            }
        }
    }
    // Kept for another round when a connection could not be ended and the user stays in
    // use: it is torn down as soon as that connection is gone.
    let mut done = !unended;
    if gw.sessions.count_for(&key) == 0 {
        let recorded: Vec<ProvisioningMode> =
            sessions.iter().map(|s| stored_mode(&s.mode)).collect();
        let plan = leftover_plan(gw, snapshot, &key, Some(&first.dbward_user), &recorded).await;
        let outcome = deactivate_user(gw, &admin, &key, plan.mode).await;
        gw.metrics.recovered_dead_instance(outcome.as_ref().ok());
        match &outcome {
            Ok(DeactivateOutcome::Kept) => {
                tracing::info!(db_user = %key.db_user, "user of a dead instance's session is still in use; left active")
            }
            Ok(outcome) => {
                done = true;
                tracing::info!(db_user = %key.db_user, ?outcome, "tore down the user of a dead instance's session");
                let fields = SessionFields {
                    user: first.dbward_user.clone(),
                    sid: first.sid.clone(),
                    db_service: first.db_service.clone(),
                    db_protocol: db.spec.protocol.to_string(),
                    db_uri: db.spec.uri.clone(),
                    db_user: first.db_user.clone(),
                    ..Default::default()
                };
                gw.audit
                    .emit(
                        audit::USER_DEACTIVATE,
                        &fields,
                        json!({"success": true, "delete": matches!(outcome, DeactivateOutcome::Dropped)}),
                    )
                    .await;
            }
            Err(err) => {
                done = false;
                tracing::warn!(db_user = %key.db_user, error = %error_chain(err), "teardown after a dead instance failed; retrying");
            }
        }
    }
    if done {
        for s in sessions {
            if let Err(err) = gw.store.end_session(&s.sid).await {
                tracing::warn!(sid = %s.sid, %err, "dead session record could not be removed");
            }
        }
    }
}

/// How a user left active is torn down.
struct Plan<'a> {
    /// `best_effort_drop` only when its recorded activation, the `also` modes and every
    /// resource on its server that provisions its owner all say so; `keep` otherwise, also
    /// when the owner is unknown or the store unreadable.
    mode: ProvisioningMode,
    /// The resource whose admin should do it: the one of the recorded activation, else one
    /// that provisions the owner (another resource's admin may not hold the user's roles).
    via: Option<&'a Db>,
}

async fn leftover_plan<'a>(
    gw: &Gateway,
    snapshot: &'a Snapshot,
    key: &DbUserKey,
    owner_hint: Option<&str>,
    also: &[ProvisioningMode],
) -> Plan<'a> {
    let mut modes: Vec<ProvisioningMode> = also.to_vec();
    let keep = |via| Plan {
        mode: ProvisioningMode::Keep,
        via,
    };
    let recorded = match gw.store.get_activation(&key.store_key()).await {
        Ok(record) => record,
        Err(_) => return keep(None),
    };
    let on_server: Vec<&'a Db> = snapshot
        .dbs
        .values()
        .filter(|db| db.admin_user().is_some() && DbUserKey::of(db, &key.db_user) == *key)
        .collect();
    let mut via = None;
    if let Some(record) = &recorded {
        modes.push(stored_mode(&record.mode));
        via = on_server
            .iter()
            .copied()
            .find(|db| db.metadata.name == record.db_service);
    }
    let owner_name = recorded
        .as_ref()
        .map(|r| r.dbward_user.as_str())
        .or(owner_hint)
        .filter(|name| !name.is_empty());
    let owner = match owner_name {
        Some(name) => snapshot.users.get(name),
        None => snapshot.users.values().find(|u| {
            on_server
                .iter()
                .any(|db| in_db_name(db, &u.metadata.name) == key.db_user)
        }),
    };
    let Some(owner) = owner else {
        return keep(via);
    };
    if let Ok(checker) = snapshot.checker(owner) {
        for db in &on_server {
            if let Ok(Some(p)) = checker.provisioning(db) {
                modes.push(p.mode);
                via = via.or(Some(*db));
            }
        }
    }
    let mode = match modes.split_first() {
        Some((first, rest)) => rest.iter().fold(*first, |a, b| weakest(a, *b)),
        None => ProvisioningMode::Keep,
    };
    Plan { mode, via }
}

/// One pass over every server that some `db` resource with an admin user points at.
pub async fn reconcile_once(gw: &Gateway) -> Result<(), crate::GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    let mut done: HashSet<(String, String)> = HashSet::new();
    for db in snapshot.dbs.values() {
        if db.admin_user().is_none() {
            continue;
        }
        let server = (db.spec.protocol.to_string(), server_of(db));
        if done.contains(&server) {
            continue;
        }
        let Ok(admin) = maintenance_target(gw, db) else {
            continue;
        };
        let leftovers = match gw.provisioners.list_active_managed(&admin).await {
            Ok(users) => users,
            Err(err) => {
                // Another resource on the same server may have a working admin.
                tracing::debug!(db = %db.metadata.name, %err, "reconcile: database not reachable");
                continue;
            }
        };
        done.insert(server);
        for db_user in leftovers {
            let key = DbUserKey::of(db, &db_user);
            if gw.sessions.count_for(&key) > 0 {
                continue;
            }
            let Ok(_lock) = lock_user(gw, &key, CLEANUP_LOCK_WAIT).await else {
                continue;
            };
            let plan = leftover_plan(gw, &snapshot, &key, None, &[]).await;
            let via_admin = match plan.via {
                Some(via) if via.metadata.name != db.metadata.name => {
                    maintenance_target(gw, via).ok()
                }
                _ => None,
            };
            match deactivate_user(gw, via_admin.as_ref().unwrap_or(&admin), &key, plan.mode).await {
                Ok(outcome) => {
                    gw.metrics.reconciled_leftover(Some(&outcome));
                    tracing::info!(db = %db.metadata.name, %db_user, ?outcome, "reconciler tore down a leftover user")
                }
                Err(err) => {
                    gw.metrics.reconciled_leftover(None);
                    tracing::warn!(db = %db.metadata.name, %db_user, error = %error_chain(&err), "reconciler teardown failed")
                }
            }
        }
    }
    Ok(())
}
