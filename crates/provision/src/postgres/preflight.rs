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
    let AdminFacts { admin, version_num } = admin_checks(conn, admin_name, &mut findings).await?;
    let q_admin = quote_ident(&admin);

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

/// What [`admin_checks`] learnt about the admin and the server.
pub(super) struct AdminFacts {
    pub admin: String,
    pub version_num: i32,
}

/// What the admin lacks in the database it is connected to: a writable primary, CREATEROLE,
/// CONNECT and TEMPORARY there. Adds one finding each to `findings`.
pub(super) async fn admin_checks(
    conn: &mut AdminConn,
    admin_name: &str,
    findings: &mut Vec<Finding>,
) -> Result<AdminFacts, ProvisionError> {
    admin_checks_in(conn, admin_name, findings, false).await
}

/// [`admin_checks`]; with `mention_database` for a further database of the same server:
/// what holds for the whole server (recovery, CREATEROLE) is left to the first database's
/// check, and problems name the database.
pub(super) async fn admin_checks_in(
    conn: &mut AdminConn,
    admin_name: &str,
    findings: &mut Vec<Finding>,
    mention_database: bool,
) -> Result<AdminFacts, ProvisionError> {
    let map = |e| map_error(e, admin_name, "");
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
    let in_database = |text: String| {
        if mention_database {
            format!("{text} (in database \"{database}\")")
        } else {
            text
        }
    };

    if in_recovery && !mention_database {
        findings.push(Finding {
            problem:
                "the database is a read-only replica (in recovery); users cannot be created there"
                    .into(),
            fix: "point the database resource at the primary server".into(),
        });
    }
    if read_only_default {
        findings.push(Finding {
            problem: in_database(format!(
                "transactions of admin user \"{admin}\" are read-only (default_transaction_read_only = on)"
            )),
            fix: format!("ALTER ROLE {q_admin} SET default_transaction_read_only = off;"),
        });
    }
    if !superuser && !createrole && !mention_database {
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

    Ok(AdminFacts { admin, version_num })
}

const DATABASE_SQL: &str = include_str!("sql/preflight_database.sql");

/// What one further database `database` needs that the catalogs tell from anywhere on the
/// server: whether it exists, CONNECT for the admin (when `admin_enters`) and for each of
/// `roles` (a provisioned user holds them all; with none, the marker role that every
/// provisioned user holds). Returns whether the admin may connect there, to look further.
pub(super) async fn database_checks(
    conn: &mut AdminConn,
    admin_name: &str,
    database: &str,
    roles: &[String],
    admin_enters: bool,
    findings: &mut Vec<Finding>,
) -> Result<bool, ProvisionError> {
    let map = |e| map_error(e, admin_name, "");
    let mut grantees: Vec<String> = roles.to_vec();
    if grantees.is_empty() {
        grantees.push(MARKER_ROLE.to_owned());
    }
    let statement = conn.statement(DATABASE_SQL).await.map_err(map)?;
    let row = conn
        .client()
        .query_one(&statement, &[&database, &grantees])
        .await
        .map_err(map)?;
    let exists: bool = row.try_get("database_exists").map_err(map)?;
    if !exists {
        findings.push(Finding {
            problem: format!(
                "database \"{database}\", which dbward roles let users enter, does not exist"
            ),
            fix: format!(
                "CREATE DATABASE {}; (or remove \"{database}\" from the db_names of dbward roles)",
                quote_ident(database)
            ),
        });
        return Ok(false);
    }
    let admin_connect: bool = row.try_get("admin_connect").map_err(map)?;
    let without: Vec<String> = row.try_get("roles_without_connect").map_err(map)?;
    let q_database = quote_ident(database);
    let q_admin = quote_ident(admin_name);
    if admin_enters && !admin_connect {
        findings.push(Finding {
            problem: format!(
                "admin user \"{admin_name}\" lacks the CONNECT privilege on database \"{database}\""
            ),
            fix: format!("GRANT CONNECT ON DATABASE {q_database} TO {q_admin};"),
        });
    }
    for role in without {
        findings.push(Finding {
            problem: format!(
                "database role \"{role}\" lacks the CONNECT privilege on database \"{database}\": provisioned users cannot log in there"
            ),
            fix: format!(
                "GRANT CONNECT ON DATABASE {q_database} TO {};",
                quote_ident(&role)
            ),
        });
    }
    Ok(admin_enters && admin_connect)
}
