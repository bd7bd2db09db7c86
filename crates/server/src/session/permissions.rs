//! Database Access Controls at session start and end (PROVISIONING.md §6, PostgreSQL).
//!
//! At start, once the user is active and while the provisioning lock is held: the tables of
//! the session's database are listed, labelled by the import rules, the session's
//! `db_permissions` give each one a privilege set, and the user's table privileges in that
//! database become exactly that set (unless another session of the user is live there: then
//! they must already be that set, or the session is refused). At the end of the last session
//! in that database they are revoked, before the user is locked or dropped, so that a drop is
//! not kept from happening by them.
//!
//! What the rules compute is `dbward_rbac`'s; how it is applied is `dbward_provision`'s.

use std::collections::BTreeSet;
use std::time::Duration;

use dbward_model::db::DBWARD_LABEL_ALLOW_TRIGGER;
use dbward_model::{Permission, Protocol};
use dbward_provision::postgres::{AdminTarget, TableName, TablePrivilege};
use dbward_provision::DbUserName;
use dbward_rbac::{object_permissions, DbObject, ImportRules, ProvisioningMode};
use serde_json::json;

use super::provisioning::{admin_target, provision_error, release, take_lock_patiently, DbUserKey};
use super::{Authorized, SessionError};
use crate::{audit, Gateway};

/// Whether the session's table privileges are managed by dbward.
pub(crate) fn applies(authorized: &Authorized) -> bool {
    authorized.decision.mode != ProvisioningMode::Off
        && authorized.db.spec.protocol == Protocol::Postgres
        && !authorized.decision.db_permissions.is_empty()
}

/// The admin connection to the session's own database: privileges are per database, so the
/// admin's `default_database` does not apply here.
fn session_target(gw: &Gateway, authorized: &Authorized) -> Result<AdminTarget, SessionError> {
    let mut target = admin_target(gw, &authorized.db, &authorized.decision.db_name)?;
    target.database = authorized.decision.db_name.clone();
    Ok(target)
}

/// The privileges the session's rules give on the tables of its database, and those left out
/// by policy (TRIGGER where the `db` resource does not allow it).
async fn compute(
    gw: &Gateway,
    authorized: &Authorized,
    target: &AdminTarget,
) -> Result<(BTreeSet<TablePrivilege>, Vec<String>), SessionError> {
    let tables = gw
        .pg_provisioner
        .list_tables(target)
        .await
        .map_err(|err| provision_error(authorized, err))?;
    let snapshot = gw.catalog.snapshot().await?;
    let rules = ImportRules::new(&snapshot.import_rules).map_err(|err| {
        tracing::warn!(sid = %authorized.fields.sid, %err, "import rules cannot be compiled");
        SessionError::Provisioning(format!(
            "the database object import rules cannot be used ({err}); ask an administrator to fix them"
        ))
    })?;
    let mut privileges = BTreeSet::new();
    let mut withheld = Vec::new();
    let trigger_allowed = authorized.db.allows_trigger_permission();
    for TableName { schema, name } in tables {
        let object = DbObject::table(&authorized.decision.db_name, &schema, &name);
        let Some(labels) = rules.label(&authorized.db, &object) else {
            continue;
        };
        for permission in object_permissions(&authorized.decision.db_permissions, &labels) {
            if permission == Permission::Trigger && !trigger_allowed {
                withheld.push(format!(
                    "TRIGGER on TABLE {schema}.{name} (not allowed by the db resource: label {DBWARD_LABEL_ALLOW_TRIGGER})"
                ));
                continue;
            }
            privileges.insert(TablePrivilege {
                table: TableName {
                    schema: schema.clone(),
                    name: name.clone(),
                },
                privilege: permission.as_str().to_string(),
            });
        }
    }
    Ok((privileges, withheld))
}

/// Applies the session's table privileges (the provisioning lock is held) and records
/// `db.session.permissions.update` with what was granted and what the admin could not give.
pub(crate) async fn apply(
    gw: &Gateway,
    authorized: &Authorized,
    db_user: &str,
) -> Result<(), SessionError> {
    if !applies(authorized) {
        return Ok(());
    }
    let map = |err| provision_error(authorized, err);
    let target = session_target(gw, authorized)?;
    let user = DbUserName::new(db_user.to_owned());
    let (wanted, withheld) = compute(gw, authorized, &target).await?;
    // The computed set as far as the admin may give it: what a session gets.
    let grantable = gw
        .pg_provisioner
        .grantable_table_privileges(&target, &wanted)
        .await
        .map_err(map)?;
    let mut not_granted: Vec<String> = wanted
        .difference(&grantable)
        .map(|p| {
            format!(
                "{} on TABLE {}.{}",
                p.privilege, p.table.schema, p.table.name
            )
        })
        .chain(withheld)
        .collect();
    let live = gw
        .pg_provisioner
        .sessions_in_database(&target, &user)
        .await
        .map_err(map)?;
    if live > 0 {
        let current = gw
            .pg_provisioner
            .table_privileges(&target, &user)
            .await
            .map_err(map)?;
        if current != grantable {
            tracing::info!(sid = %authorized.fields.sid, held = current.len(), wanted = grantable.len(), "table permissions differ from those of a live session");
            return Err(SessionError::Provisioning(format!(
                "database user \"{db_user}\" has another session in database \"{}\" with \
                 different permissions; end that session and connect again",
                authorized.decision.db_name
            )));
        }
    } else {
        let skipped = gw
            .pg_provisioner
            .set_table_privileges(&target, &user, &wanted)
            .await
            .map_err(map)?;
        // Tables were listed as skipped above already; schemas are only known here.
        not_granted.extend(
            skipped
                .into_iter()
                .filter(|s| s.starts_with("USAGE on SCHEMA")),
        );
    }
    if !not_granted.is_empty() {
        tracing::warn!(
            sid = %authorized.fields.sid,
            admin = %target.admin_user,
            ?not_granted,
            "db_permissions give privileges the admin user does not hold WITH GRANT OPTION; the session goes without them"
        );
    }
    gw.audit
        .emit(
            audit::PERMISSIONS_UPDATE,
            &authorized.fields,
            json!({
                "success": true,
                "permission_summary": summary(&grantable),
                "affected_object_counts": { "table": tables_of(&grantable) },
                "not_granted": not_granted,
            }),
        )
        .await;
    Ok(())
}

/// How many tables each privilege was given on, as Teleport's event lists them.
fn summary(privileges: &BTreeSet<TablePrivilege>) -> serde_json::Value {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in privileges {
        *counts.entry(p.privilege.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(permission, n)| json!({"permission": permission, "counts": {"table": n}}))
        .collect()
}

fn tables_of(privileges: &BTreeSet<TablePrivilege>) -> usize {
    privileges
        .iter()
        .map(|p| &p.table)
        .collect::<BTreeSet<_>>()
        .len()
}

/// At the end of a session: once no session of the user is connected to that database any
/// more, revokes its table privileges there, under the provisioning lock (a session being
/// set up in the same database holds it until its own connection is up, so it is either
/// seen or applies its privileges afterwards). Never fails the caller.
pub(crate) async fn revoke_at_end(
    gw: &Gateway,
    authorized: &Authorized,
    db_user: &str,
    key: &DbUserKey,
) {
    if !applies(authorized) {
        return;
    }
    let sid = &authorized.fields.sid;
    let Ok(target) = session_target(gw, authorized) else {
        return;
    };
    let user = DbUserName::new(db_user.to_owned());
    // The session's own backend may be listed for a moment after it closed.
    for pause in [0u64, 1, 3] {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let lock = take_lock_patiently(gw, key, sid).await;
        let result = match gw.pg_provisioner.sessions_in_database(&target, &user).await {
            Ok(0) => gw
                .pg_provisioner
                .revoke_table_privileges(&target, &user)
                .await
                .map(Some),
            Ok(_) => Ok(None),
            Err(err) => Err(err),
        };
        release(lock).await;
        match result {
            Ok(Some(tables)) => {
                tracing::debug!(%sid, tables, "table permissions revoked");
                return;
            }
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(%sid, %err, "table permissions could not be revoked");
                return;
            }
        }
    }
    tracing::debug!(%sid, "another session of the user is in the database; its end revokes the permissions");
}
