//! Preflight (`dbward db check`): what the admin user lacks for provisioning, each with the
//! statement that fixes it.
//!
//! Uses plain catalog queries only, never the helper functions, so that it also works for an
//! admin that lacks TEMPORARY (one of the things it reports).

use super::conn::AdminConn;
use super::quote::quote_ident;
use super::{map_error, Finding};
use crate::error::ProvisionError;
use crate::MARKER_ROLE;

const ADMIN_SQL: &str = include_str!("sql/preflight_admin.sql");
const ROLES_SQL: &str = include_str!("sql/preflight_roles.sql");
const FORBIDDEN_SQL: &str = include_str!("sql/forbidden_roles.sql");

/// First PostgreSQL version where CREATEROLE alone no longer lets a role grant others.
const PG16: i32 = 160_000;

/// `allowed_predefined` is the list of predefined roles the `db` resource allows.
pub(super) async fn run(
    conn: &mut AdminConn,
    admin_name: &str,
    roles_to_check: &[String],
    allowed_predefined: &[String],
) -> Result<Vec<Finding>, ProvisionError> {
    let map = |e| map_error(e, admin_name, "");
    let mut findings = Vec::new();

    let statement = conn.statement(ADMIN_SQL).await.map_err(map)?;
    let row = conn
        .client()
        .query_one(&statement, &[])
        .await
        .map_err(map)?;
    let admin: String = row.try_get("admin").map_err(map)?;
    let database: String = row.try_get("database").map_err(map)?;
    let superuser: bool = row.try_get("superuser").map_err(map)?;
    let createrole: bool = row.try_get("createrole").map_err(map)?;
    let can_connect: bool = row.try_get("can_connect").map_err(map)?;
    let can_temp: bool = row.try_get("can_temp").map_err(map)?;
    let in_recovery: bool = row.try_get("in_recovery").map_err(map)?;
    let read_only_default: bool = row.try_get("read_only_default").map_err(map)?;
    let version_num: i32 = row.try_get("version_num").map_err(map)?;
    let q_admin = quote_ident(&admin);
    let q_database = quote_ident(&database);

    if in_recovery {
        findings.push(Finding {
            problem:
                "the database is a read-only replica (in recovery); users cannot be created there"
                    .into(),
            fix: "point the database resource at the primary server".into(),
        });
    }
    if read_only_default {
        findings.push(Finding {
            problem: format!(
                "transactions of admin user \"{admin}\" are read-only (default_transaction_read_only = on)"
            ),
            fix: format!("ALTER ROLE {q_admin} SET default_transaction_read_only = off;"),
        });
    }
    if !superuser && !createrole {
        findings.push(Finding {
            problem: format!("admin user \"{admin}\" lacks the CREATEROLE attribute"),
            fix: format!("ALTER ROLE {q_admin} CREATEROLE;"),
        });
    }
    if !can_connect {
        findings.push(Finding {
            problem: format!(
                "admin user \"{admin}\" lacks the CONNECT privilege on database \"{database}\""
            ),
            fix: format!("GRANT CONNECT ON DATABASE {q_database} TO {q_admin};"),
        });
    }
    if !can_temp {
        findings.push(Finding {
            problem: format!(
                "admin user \"{admin}\" lacks the TEMPORARY privilege on database \"{database}\""
            ),
            fix: format!("GRANT TEMPORARY ON DATABASE {q_database} TO {q_admin};"),
        });
    }

    // Roles that activation would refuse whatever the admin's privileges.
    let statement = conn.statement(FORBIDDEN_SQL).await.map_err(map)?;
    let rows = conn
        .client()
        .query(
            &statement,
            &[&roles_to_check, &MARKER_ROLE, &allowed_predefined],
        )
        .await
        .map_err(map)?;
    let mut forbidden = Vec::new();
    for row in &rows {
        let name: String = row.try_get("role").map_err(map)?;
        let reason: String = row.try_get("reason").map_err(map)?;
        let reached: String = row.try_get("reached").map_err(map)?;
        let fix = if reached.starts_with("pg_") {
            format!(
                "remove \"{name}\" from the db_roles of dbward roles, or allow \"{reached}\" with the db resource label dbward.dev/allow-predefined-roles"
            )
        } else {
            format!("remove \"{name}\" from the db_roles of dbward roles")
        };
        findings.push(Finding {
            problem: format!(
                "database role \"{name}\" may not be granted to provisioned users: {reason}"
            ),
            fix,
        });
        forbidden.push(name);
    }

    let mut names: Vec<String> = roles_to_check.to_vec();
    names.push(MARKER_ROLE.to_owned());
    let statement = conn.statement(ROLES_SQL).await.map_err(map)?;
    let rows = conn
        .client()
        .query(&statement, &[&names])
        .await
        .map_err(map)?;
    for (index, row) in rows.iter().enumerate() {
        let is_marker = index == names.len() - 1;
        let name: String = row.try_get("name").map_err(map)?;
        let exists: bool = row.try_get("role_exists").map_err(map)?;
        let admin_option: bool = row.try_get("admin_option").map_err(map)?;
        let q_role = quote_ident(&name);
        if !exists {
            // A missing marker role is created on first use.
            if !is_marker {
                findings.push(Finding {
                    problem: format!("database role \"{name}\" does not exist"),
                    fix: format!("CREATE ROLE {q_role};"),
                });
            }
            continue;
        }
        if forbidden.contains(&name) {
            continue;
        }
        // Every db role needs ADMIN OPTION (activation refuses the others); the marker from
        // PostgreSQL 16 on, where CREATEROLE alone no longer lets the admin grant it.
        if !admin_option && (!is_marker || version_num >= PG16) {
            findings.push(Finding {
                problem: format!(
                    "admin user \"{admin}\" does not hold role \"{name}\" WITH ADMIN OPTION"
                ),
                fix: format!("GRANT {q_role} TO {q_admin} WITH ADMIN OPTION;"),
            });
        }
    }
    Ok(findings)
}
