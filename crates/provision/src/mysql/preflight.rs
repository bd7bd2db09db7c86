//! `dbward db check` for MariaDB/MySQL: what the admin user lacks for provisioning
//! (PROVISIONING.md §5), each with the statement that fixes it. Reads
//! `information_schema` privilege tables and `mysql.roles_mapping`; changes nothing.

use super::conn::{hex_literal, AdminConn as Conn};
use super::quote::quote_ident;
use super::{
    admin_of_role, count, map_error, render, role_exists, schema_fix, server_version, AdminTarget,
};
use crate::{Finding, ProvisionError, MARKER_ROLE};

const GLOBAL_PRIVILEGES_SQL: &str = include_str!("sql/global_privileges.sql");
const SCHEMA_PRIVILEGES_SQL: &str = include_str!("sql/schema_privileges.sql");

/// Global privileges provisioning needs on `*.*`.
const GLOBAL: [&str; 3] = ["PROCESS", "CREATE USER", "SELECT"];

pub(super) async fn preflight(
    conn: &mut Conn,
    target: &AdminTarget,
    roles: &[String],
) -> Result<Vec<Finding>, ProvisionError> {
    let admin = target.admin_user.as_str();
    let account = format!("{}@`%`", quote_ident(admin));
    let grantee = hex_literal(&format!("'{admin}'@'%'"));
    let mut findings = Vec::new();

    let global = privileges(
        conn,
        admin,
        &render(GLOBAL_PRIVILEGES_SQL, &[("grantee", &grantee)]),
    )
    .await?;
    let missing: Vec<&str> = GLOBAL
        .iter()
        .copied()
        .filter(|p| !global.iter().any(|g| g == p))
        .collect();
    if !missing.is_empty() {
        findings.push(Finding {
            problem: format!("admin user \"{admin}\" lacks {} on *.*", missing.join(", ")),
            fix: format!("GRANT {} ON *.* TO {account};", missing.join(", ")),
        });
    }

    // Ending the connection of a session whose gateway died (or whose backend ignores the
    // client going away) is `KILL CONNECTION` on another account's connection.
    let version = server_version(conn, admin).await?;
    let connection_admin = if version.contains("MariaDB") {
        "CONNECTION ADMIN"
    } else {
        "CONNECTION_ADMIN"
    };
    if !global.iter().any(|g| g == connection_admin || g == "SUPER") {
        findings.push(Finding {
            problem: format!(
                "admin user \"{admin}\" cannot end the connections of sessions that outlive their client or gateway ({connection_admin})"
            ),
            fix: format!("GRANT {connection_admin} ON *.* TO {account};"),
        });
    }

    let on_mysql = privileges(
        conn,
        admin,
        &render(
            SCHEMA_PRIVILEGES_SQL,
            &[("grantee", &grantee), ("schema", &hex_literal("mysql"))],
        ),
    )
    .await?;
    if !global.iter().any(|g| g == "UPDATE") && !on_mysql.iter().any(|g| g == "UPDATE") {
        findings.push(Finding {
            problem: format!(
                "admin user \"{admin}\" cannot set the default role of other users (UPDATE on mysql.*)"
            ),
            fix: format!("GRANT UPDATE ON mysql.* TO {account};"),
        });
    }

    let schema = &target.database;
    let schema_exists = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            hex_literal(schema)
        ),
        admin,
    )
    .await?
        > 0;
    let on_schema = privileges(
        conn,
        admin,
        &render(
            SCHEMA_PRIVILEGES_SQL,
            &[("grantee", &grantee), ("schema", &hex_literal(schema))],
        ),
    )
    .await?;
    if !schema_exists {
        findings.push(Finding {
            problem: format!(
                "schema \"{schema}\" does not exist: admin user \"{admin}\" logs into it and keeps user_attributes there (spec.admin_user.default_database in the db resource names another schema, such as one created for Teleport)"
            ),
            fix: schema_fix(schema, admin),
        });
    } else {
        for needed in ["CREATE", "INSERT", "UPDATE", "DELETE", "SELECT"] {
            if !on_schema.iter().any(|g| g == needed) && !global.iter().any(|g| g == needed) {
                findings.push(Finding {
                    problem: format!(
                        "admin user \"{admin}\" cannot keep user_attributes in schema \"{schema}\""
                    ),
                    fix: schema_fix(schema, admin),
                });
                break;
            }
        }
    }

    let mut wanted: Vec<&str> = vec![MARKER_ROLE];
    wanted.extend(roles.iter().map(String::as_str));
    for role in wanted {
        let exists = role_exists(conn, role, admin).await?;
        if !exists {
            if role != MARKER_ROLE {
                findings.push(Finding {
                    problem: format!("database role \"{role}\" does not exist"),
                    fix: format!("CREATE ROLE {} WITH ADMIN {account};", quote_ident(role)),
                });
            }
            continue;
        }
        if !admin_of_role(conn, admin, role).await? {
            findings.push(Finding {
                problem: format!("admin user \"{admin}\" is not an ADMIN of role \"{role}\""),
                fix: format!(
                    "GRANT {} TO {account} WITH ADMIN OPTION;",
                    quote_ident(role)
                ),
            });
        }
    }

    let read_only = conn
        .query_value("SELECT @@GLOBAL.read_only")
        .await
        .map_err(|e| map_error(e, admin))?;
    if matches!(read_only.as_deref(), Some("1") | Some("ON")) {
        findings.push(Finding {
            problem: "the server is read-only (a replica, or read_only is on)".into(),
            fix: "connect the db resource to the primary, or SET GLOBAL read_only = OFF".into(),
        });
    }
    Ok(findings)
}

async fn privileges(
    conn: &mut Conn,
    admin: &str,
    sql: &str,
) -> Result<Vec<String>, ProvisionError> {
    let rows = conn.query(sql).await.map_err(|e| map_error(e, admin))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}
