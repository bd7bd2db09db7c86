//! Step 3 of the pipeline: make the database user ready (PROVISIONING.md §3).
//!
//! `authorize → lock(D, db user) → activate → connect as the user → unlock → relay … → close →
//! lock → deactivate or drop → unlock`. The lock is the store's cross-instance lease, so two
//! gateways sharing a store never activate and tear down the same user at once.

use std::time::Duration;

use dbward_model::{Db, Protocol};
use dbward_provision::postgres::AdminTarget;
use dbward_provision::{
    ActivateOutcome, DbUserName, DeactivateOutcome, ProvisionError, TeardownMode,
};
use dbward_rbac::ProvisioningMode;
use dbward_store::LockGuard;
use serde_json::json;

use super::{Authorized, SessionError};
use crate::{audit, Gateway};

/// How long a connection waits for another session's activation or teardown of the same user.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The admin connection of one engine.
#[derive(Clone)]
pub(crate) enum EngineAdmin {
    Postgres(AdminTarget),
    Mysql(dbward_provision::mysql::AdminTarget),
}

/// Step 3 done: the user the upstream connection logs in as, and what teardown needs.
pub struct Provisioned {
    /// The in-database user name (hashed when the dbward name is too long).
    pub db_user: String,
    mode: ProvisioningMode,
    admin: Option<EngineAdmin>,
    lock: Option<LockGuard>,
}

fn lock_key(db: &str, db_user: &str) -> String {
    format!("provision/{db}/{db_user}")
}

/// The PostgreSQL admin connection target of a database, or the PROVISIONING §1.5 error.
pub(crate) fn admin_target(
    gw: &Gateway,
    db: &Db,
    session_db_name: &str,
) -> Result<AdminTarget, SessionError> {
    let (admin, target) = admin_credentials(gw, db)?;
    let database = admin
        .default_database
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| session_db_name.to_string());
    Ok(AdminTarget {
        host: target.host,
        port: target.port,
        server_name: target.server_name_text,
        client_config: target.tls,
        admin_user: admin.name,
        database,
        allowed_predefined_roles: db.allowed_predefined_roles(),
    })
}

fn admin_credentials(
    gw: &Gateway,
    db: &Db,
) -> Result<(dbward_model::AdminUser, super::upstream::UpstreamTarget), SessionError> {
    let admin = db.admin_user().ok_or_else(|| {
        SessionError::Provisioning(format!(
            "database \"{}\" has no admin user configured: automatic user provisioning needs spec.admin_user in the db resource",
            db.metadata.name
        ))
    })?;
    let target = gw.upstream.target(&gw.cas, db, &admin.name)?;
    Ok((admin, target))
}

/// The MySQL/MariaDB admin target: the admin's default database is the schema that keeps
/// `user_attributes`.
fn mysql_admin_target(
    gw: &Gateway,
    db: &Db,
) -> Result<dbward_provision::mysql::AdminTarget, SessionError> {
    let (admin, target) = admin_credentials(gw, db)?;
    Ok(dbward_provision::mysql::AdminTarget {
        host: target.host,
        port: target.port,
        server_name: target.server_name_text,
        client_config: target.tls,
        admin_user: admin.name,
        default_schema: admin
            .default_database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| dbward_provision::mysql::DEFAULT_SCHEMA.to_string()),
    })
}

/// The admin connection of a database for maintenance (reconciler): PostgreSQL connects to
/// the admin's default database, else `postgres`.
pub(crate) fn engine_admin(gw: &Gateway, db: &Db) -> Result<EngineAdmin, SessionError> {
    Ok(match db.spec.protocol {
        Protocol::Postgres => EngineAdmin::Postgres(admin_target(gw, db, "postgres")?),
        Protocol::Mysql => EngineAdmin::Mysql(mysql_admin_target(gw, db)?),
    })
}

/// The in-database name of a dbward user on this database (MariaDB's limit; a MySQL 8
/// server's shorter one is applied at connect time from its version).
pub(crate) fn in_db_name(db: &Db, dbward_name: &str) -> String {
    match db.spec.protocol {
        Protocol::Postgres => dbward_provision::names::pg_name(dbward_name),
        Protocol::Mysql => dbward_provision::mysql::mariadb_user_name(dbward_name)
            .as_str()
            .to_string(),
    }
}

/// Activates the database user when the decision asks for provisioning. With provisioning
/// off, the requested db user is used as is and nothing is locked.
pub async fn provision(
    gw: &Gateway,
    authorized: &mut Authorized,
) -> Result<Provisioned, SessionError> {
    let mode = authorized.decision.mode;
    if mode == ProvisioningMode::Off {
        return Ok(Provisioned {
            db_user: authorized.decision.db_user.clone(),
            mode,
            admin: None,
            lock: None,
        });
    }
    let dbward_name = authorized.decision.db_user.clone();
    // The final (possibly hashed) name is known before the lock is taken.
    let (admin, db_user) = match authorized.db.spec.protocol {
        Protocol::Postgres => (
            EngineAdmin::Postgres(admin_target(
                gw,
                &authorized.db,
                &authorized.decision.db_name,
            )?),
            dbward_provision::names::pg_name(&dbward_name),
        ),
        Protocol::Mysql => {
            let target = mysql_admin_target(gw, &authorized.db)?;
            let version = gw
                .maria_provisioner
                .server_version(&target)
                .await
                .map_err(provision_error)?;
            let flavor = dbward_proxy::mysql::parse_server_version(&version);
            dbward_proxy::mysql::provisioning_supported(&flavor)
                .map_err(SessionError::Provisioning)?;
            let name = match flavor {
                dbward_proxy::mysql::ServerFlavor::MySql(..) => {
                    dbward_provision::mysql::mysql_user_name(&dbward_name)
                }
                _ => dbward_provision::mysql::mariadb_user_name(&dbward_name),
            };
            (EngineAdmin::Mysql(target), name.as_str().to_string())
        }
    };
    authorized.fields.db_user = db_user.clone();
    gw.sessions.set_db_user(&authorized.fields.sid, &db_user);

    let lock = take_lock(gw, &authorized.db.metadata.name, &db_user).await?;
    let user = DbUserName::new(db_user.clone());
    let roles = &authorized.decision.db_roles;
    let outcome = match &admin {
        EngineAdmin::Postgres(target) => gw.pg_provisioner.activate(target, &user, roles).await,
        EngineAdmin::Mysql(target) => {
            gw.maria_provisioner
                .activate(target, &user, &dbward_name, roles)
                .await
        }
    }
    .map_err(|err| {
        tracing::info!(user = %authorized.fields.user, db = %authorized.db.metadata.name, %err, "activation failed");
        provision_error(err)
    })?;
    if matches!(outcome, ActivateOutcome::Created) {
        gw.audit
            .emit(
                audit::USER_CREATE,
                &authorized.fields,
                json!({"success": true}),
            )
            .await;
    }
    Ok(Provisioned {
        db_user,
        mode,
        admin: Some(admin),
        lock: Some(lock),
    })
}

impl Provisioned {
    /// The user's own connection is up: other sessions of the same user may proceed.
    pub async fn connected(&mut self) {
        if let Some(lock) = self.lock.take() {
            // Off the client's path: the next holder of the same key waits for this release
            // anyway, and nobody else has to.
            tokio::spawn(async move {
                if let Err(err) = lock.release().await {
                    tracing::warn!(%err, "provisioning lock release failed");
                }
            });
        }
    }

    /// Teardown after the server connection closed: lock → deactivate or drop → unlock.
    /// Never fails the caller; problems are logged and left to the reconciler.
    pub async fn teardown(mut self, gw: &Gateway, authorized: &Authorized) {
        self.connected().await;
        let Some(admin) = self.admin.take() else {
            return;
        };
        let teardown_mode = match self.mode {
            ProvisioningMode::BestEffortDrop => TeardownMode::Drop,
            _ => TeardownMode::Keep,
        };
        // Another session of this gateway still uses the user: its own teardown, the last
        // one, deactivates it. Checking the database here would only wait for that session.
        if gw
            .sessions
            .count_for(&authorized.db.metadata.name, &self.db_user)
            > 0
        {
            return;
        }
        // A backend that is still finishing (a cancelled statement, a killed client's
        // socket not yet noticed) counts as live. When no session of this gateway uses the
        // user any more, look again a few times before leaving it to the reconciler.
        for pause in [0u64, 1, 3, 8] {
            tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
            let lock = match take_lock(gw, &authorized.db.metadata.name, &self.db_user).await {
                Ok(lock) => lock,
                Err(err) => {
                    tracing::warn!(user = %self.db_user, %err, "teardown skipped: lock not available; the reconciler will retry");
                    return;
                }
            };
            let user = DbUserName::new(self.db_user.clone());
            let result = match &admin {
                EngineAdmin::Postgres(target) => {
                    gw.pg_provisioner
                        .deactivate(target, &user, teardown_mode)
                        .await
                }
                EngineAdmin::Mysql(target) => {
                    gw.maria_provisioner
                        .deactivate(target, &user, teardown_mode)
                        .await
                }
            };
            if let Err(err) = lock.release().await {
                tracing::warn!(%err, "provisioning lock release failed");
            }
            match result {
                Ok(DeactivateOutcome::Kept(_)) => {
                    if gw
                        .sessions
                        .count_for(&authorized.db.metadata.name, &self.db_user)
                        > 0
                    {
                        tracing::debug!(user = %self.db_user, "user still has live sessions; left active");
                        return;
                    }
                    tracing::debug!(user = %self.db_user, "backend still listed; checking again");
                }
                Ok(DeactivateOutcome::Missing) => return,
                Ok(outcome) => {
                    let deleted = matches!(outcome, DeactivateOutcome::Dropped);
                    gw.audit
                        .emit(
                            audit::USER_DEACTIVATE,
                            &authorized.fields,
                            json!({"success": true, "delete": deleted}),
                        )
                        .await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(user = %self.db_user, %err, "teardown failed; the reconciler will retry");
                    gw.audit
                        .emit(
                            audit::USER_DEACTIVATE,
                            &authorized.fields,
                            json!({"success": false, "error": err.to_string(), "delete": false}),
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

async fn take_lock(gw: &Gateway, db: &str, db_user: &str) -> Result<LockGuard, SessionError> {
    gw.store
        .lock(&lock_key(db, db_user), &gw.instance_id, LOCK_WAIT)
        .await
        .map_err(|err| match err {
            dbward_store::StoreError::LockTimeout { .. } => SessionError::Busy(format!(
                "timed out waiting for another connection of database user \"{db_user}\" to finish provisioning; try again"
            )),
            other => SessionError::Internal(other.to_string()),
        })
}

fn provision_error(err: ProvisionError) -> SessionError {
    match err {
        ProvisionError::Postgres(_)
        | ProvisionError::Timeout(_)
        | ProvisionError::UnexpectedAnswer(_) => SessionError::Internal(err.to_string()),
        other => SessionError::Provisioning(other.to_string()),
    }
}

/// `dbward db check DB`: what the admin user lacks for provisioning every db role some user
/// could be granted on this database, each with the statement that fixes it.
pub async fn preflight(
    gw: &Gateway,
    db_name: &str,
) -> Result<Vec<crate::api::DbCheckFinding>, crate::GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    let db = snapshot.dbs.get(db_name).ok_or_else(|| {
        crate::GatewayError::NotFound(format!("database \"{db_name}\" not found"))
    })?;
    let admin =
        engine_admin(gw, db).map_err(|e| crate::GatewayError::BadRequest(e.user_message()))?;
    let mut roles = std::collections::BTreeSet::new();
    for user in snapshot.users.values() {
        if let Ok(checker) = snapshot.checker(user) {
            if let Ok(Some(p)) = checker.provisioning(db) {
                roles.extend(p.roles);
            }
        }
    }
    let roles: Vec<String> = roles.into_iter().collect();
    let findings = match &admin {
        EngineAdmin::Postgres(target) => gw.pg_provisioner.preflight(target, &roles).await,
        EngineAdmin::Mysql(target) => gw.maria_provisioner.preflight(target, &roles).await,
    }
    .map_err(|e| crate::GatewayError::BadRequest(e.to_string()))?;
    Ok(findings
        .into_iter()
        .map(|f| crate::api::DbCheckFinding {
            problem: f.problem,
            fix: f.fix,
        })
        .collect())
}
