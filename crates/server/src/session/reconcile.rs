//! The reconciler (PROVISIONING.md §7): users left active by a crash or a kill (managed,
//! able to log in, no live session) are deactivated or dropped per their current mode, at
//! start-up and then every minute. Each user is handled under the same lock as a session's
//! activation, and the provisioner re-checks live sessions, so a user being connected right
//! now is never touched.

use std::sync::Arc;
use std::time::Duration;

use dbward_provision::{DbUserName, TeardownMode};
use dbward_rbac::ProvisioningMode;
use tokio_util::sync::CancellationToken;

use super::provisioning::EngineAdmin;
use crate::Gateway;

const EVERY: Duration = Duration::from_secs(60);

pub async fn reconcile_loop(gw: Arc<Gateway>, shutdown: CancellationToken) {
    loop {
        if let Err(err) = reconcile_once(&gw).await {
            tracing::warn!(%err, "reconcile pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One pass over every database with an admin user.
pub async fn reconcile_once(gw: &Gateway) -> Result<(), crate::GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    for db in snapshot.dbs.values() {
        if db.admin_user().is_none() {
            continue;
        }
        let Ok(admin) = super::provisioning::engine_admin(gw, db) else {
            continue;
        };
        let leftovers = match &admin {
            EngineAdmin::Postgres(target) => gw.pg_provisioner.list_active_managed(target).await,
            EngineAdmin::Mysql(target) => gw.maria_provisioner.list_active_managed(target).await,
        };
        let leftovers = match leftovers {
            Ok(users) => users,
            Err(err) => {
                tracing::debug!(db = %db.metadata.name, %err, "reconcile: database not reachable");
                continue;
            }
        };
        for db_user in leftovers {
            if gw.sessions.count_for(&db.metadata.name, &db_user) > 0 {
                continue;
            }
            // The mode the owner's roles ask for on this database now. A user whose owner
            // is provisioned on another database of the same server is that database's to
            // reconcile (its admin may be another one); unknown owners are only locked.
            let owner = snapshot
                .users
                .values()
                .find(|u| super::provisioning::in_db_name(db, &u.metadata.name) == db_user);
            let mode = match owner {
                Some(u) => {
                    let provisioning = snapshot
                        .checker(u)
                        .ok()
                        .and_then(|c| c.provisioning(db).ok().flatten());
                    match provisioning {
                        Some(p) => p.mode,
                        None => continue,
                    }
                }
                None => ProvisioningMode::Keep,
            };
            let teardown = if mode == ProvisioningMode::BestEffortDrop {
                TeardownMode::Drop
            } else {
                TeardownMode::Keep
            };
            let key = format!("provision/{}/{}", db.metadata.name, db_user);
            let Ok(lock) = gw
                .store
                .lock(&key, &gw.instance_id, Duration::from_secs(5))
                .await
            else {
                continue;
            };
            let user = DbUserName::new(db_user.clone());
            let outcome = match &admin {
                EngineAdmin::Postgres(target) => {
                    gw.pg_provisioner.deactivate(target, &user, teardown).await
                }
                EngineAdmin::Mysql(target) => {
                    gw.maria_provisioner
                        .deactivate(target, &user, teardown)
                        .await
                }
            };
            match outcome {
                Ok(outcome) => {
                    tracing::info!(db = %db.metadata.name, %db_user, ?outcome, "reconciler tore down a leftover user")
                }
                Err(err) => {
                    tracing::warn!(db = %db.metadata.name, %db_user, %err, "reconciler teardown failed")
                }
            }
            let _ = lock.release().await;
        }
    }
    Ok(())
}
