//! Database Access Controls on PostgreSQL (PROVISIONING.md §6): listing the tables import rules
//! label, and making a provisioned user's table privileges in one database exactly the set its
//! `db_permissions` compute, then taking them away at teardown.
//!
//! Which privileges a user gets is decided elsewhere (`dbward_rbac::permissions`); this module
//! only reads the catalogs and applies a given set. The statements run in the database the
//! admin target names, which must be the session's database: privileges are per database.

use std::collections::BTreeSet;

use super::{install_functions, map_error, sqlstate, AdminTarget, PgProvisioner};
use crate::error::ProvisionError;
use crate::names::DbUserName;
use crate::postgres::quote::check_user_name;
use crate::MARKER_ROLE;

const TABLE_PRIVILEGES_SQL: &str = include_str!("sql/table_privileges.sql");

/// A table of the session's database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// One table privilege (`SELECT`, `INSERT`, … in upper case) on one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TablePrivilege {
    pub table: TableName,
    pub privilege: String,
}

/// The seven privileges `db_permissions` may name.
const TABLE_PRIVILEGES: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

impl PgProvisioner {
    /// The tables of the target's database that import rules may label (ordinary and
    /// partitioned tables outside the system schemas).
    pub async fn list_tables(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<TableName>, ProvisionError> {
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        self.with_conn(target, move |conn| {
            let (admin, database) = (admin.clone(), database.clone());
            Box::pin(async move {
                install(conn, &admin, &database).await?;
                let map = |e| map_error(e, &admin, "");
                let rows = conn
                    .client()
                    .query(
                        "SELECT schema_name, table_name FROM pg_temp.dbward_tables()",
                        &[],
                    )
                    .await
                    .map_err(map)?;
                rows.iter()
                    .map(|row| {
                        Ok(TableName {
                            schema: row.try_get(0).map_err(map)?,
                            name: row.try_get(1).map_err(map)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    /// The privileges granted to `user` itself on relations of the target's database.
    pub async fn table_privileges(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<BTreeSet<TablePrivilege>, ProvisionError> {
        check_user_name(user.as_str())?;
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, database, user) = (admin.clone(), database.clone(), user.clone());
            Box::pin(async move {
                install(conn, &admin, &database).await?;
                let map = |e| map_error(e, &admin, &user);
                let rows = conn
                    .client()
                    .query(
                        "SELECT schema_name, table_name, privilege \
                         FROM pg_temp.dbward_table_privileges($1)",
                        &[&user],
                    )
                    .await
                    .map_err(map)?;
                rows.iter()
                    .map(|row| {
                        Ok(TablePrivilege {
                            table: TableName {
                                schema: row.try_get(0).map_err(map)?,
                                name: row.try_get(1).map_err(map)?,
                            },
                            privilege: row.try_get(2).map_err(map)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    /// Makes the table privileges of the managed `user` in the target's database
    /// `privileges` (plus USAGE on their schemas) as far as the admin may give them:
    /// everything it held there is revoked first, then each privilege the admin holds WITH
    /// GRANT OPTION (or as owner) is granted. Returns what could not be given
    /// (`SELECT on TABLE public.t`, `USAGE on SCHEMA s`), so the caller can say so: a table
    /// the admin cannot share costs the session that table, not the session. One
    /// transaction; each grant is verified in the catalog afterwards.
    pub async fn set_table_privileges(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        privileges: &BTreeSet<TablePrivilege>,
    ) -> Result<Vec<String>, ProvisionError> {
        check_user_name(user.as_str())?;
        if let Some(bad) = privileges
            .iter()
            .find(|p| !TABLE_PRIVILEGES.contains(&p.privilege.as_str()))
        {
            return Err(ProvisionError::UnexpectedAnswer(format!(
                "{:?} is not a table privilege",
                bad.privilege
            )));
        }
        let schemas: Vec<String> = privileges.iter().map(|p| p.table.schema.clone()).collect();
        let tables: Vec<String> = privileges.iter().map(|p| p.table.name.clone()).collect();
        let names: Vec<String> = privileges.iter().map(|p| p.privilege.clone()).collect();
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, database, user) = (admin.clone(), database.clone(), user.clone());
            let (schemas, tables, names) = (schemas.clone(), tables.clone(), names.clone());
            Box::pin(async move {
                install(conn, &admin, &database).await?;
                let row = conn
                    .client()
                    .query_one(
                        "SELECT pg_temp.dbward_set_table_privileges($1, $2, $3, $4, $5)",
                        &[&user, &MARKER_ROLE, &schemas, &tables, &names],
                    )
                    .await
                    .map_err(|e| grant_error(e, &admin, &user))?;
                row.try_get::<_, Vec<String>>(0)
                    .map_err(|e| map_error(e, &admin, &user))
            })
        })
        .await
    }

    /// The part of `privileges` the admin may grant (holds WITH GRANT OPTION, or owns the
    /// table): what [`PgProvisioner::set_table_privileges`] gives.
    pub async fn grantable_table_privileges(
        &self,
        target: &AdminTarget,
        privileges: &BTreeSet<TablePrivilege>,
    ) -> Result<BTreeSet<TablePrivilege>, ProvisionError> {
        let list: Vec<TablePrivilege> = privileges.iter().cloned().collect();
        let schemas: Vec<String> = list.iter().map(|p| p.table.schema.clone()).collect();
        let tables: Vec<String> = list.iter().map(|p| p.table.name.clone()).collect();
        let names: Vec<String> = list.iter().map(|p| p.privilege.clone()).collect();
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let flags = self
            .with_conn(target, move |conn| {
                let (admin, database) = (admin.clone(), database.clone());
                let (schemas, tables, names) = (schemas.clone(), tables.clone(), names.clone());
                Box::pin(async move {
                    install(conn, &admin, &database).await?;
                    let map = |e| map_error(e, &admin, "");
                    let row = conn
                        .client()
                        .query_one(
                            "SELECT pg_temp.dbward_grantable($1, $2, $3)",
                            &[&schemas, &tables, &names],
                        )
                        .await
                        .map_err(map)?;
                    row.try_get::<_, Vec<bool>>(0).map_err(map)
                })
            })
            .await?;
        Ok(list
            .into_iter()
            .zip(flags)
            .filter_map(|(p, ok)| ok.then_some(p))
            .collect())
    }

    /// Revokes every privilege `user` holds on relations of the target's database and USAGE
    /// on its schemas; returns on how many relations it held privileges. Nothing happens to a
    /// user that does not exist or that dbward does not manage.
    pub async fn revoke_table_privileges(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<usize, ProvisionError> {
        check_user_name(user.as_str())?;
        let admin = target.admin_user.clone();
        let database = target.database.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, database, user) = (admin.clone(), database.clone(), user.clone());
            Box::pin(async move {
                install(conn, &admin, &database).await?;
                let map = |e| map_error(e, &admin, &user);
                let row = conn
                    .client()
                    .query_one(
                        "SELECT CASE WHEN pg_temp.dbward_is_managed($1, $2) \
                         THEN pg_temp.dbward_revoke_table_privileges($1) ELSE 0 END",
                        &[&user, &MARKER_ROLE],
                    )
                    .await
                    .map_err(map)?;
                let revoked: i32 = row.try_get(0).map_err(map)?;
                Ok(usize::try_from(revoked).unwrap_or(0))
            })
        })
        .await
    }

    /// Backends of `user` connected to the target's database right now.
    pub async fn sessions_in_database(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
    ) -> Result<i64, ProvisionError> {
        let admin = target.admin_user.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, user) = (admin.clone(), user.clone());
            Box::pin(async move {
                let map = |e| map_error(e, &admin, &user);
                let row = conn
                    .client()
                    .query_one(
                        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity \
                         WHERE usename = $1 AND datname = pg_catalog.current_database()",
                        &[&user],
                    )
                    .await
                    .map_err(map)?;
                row.try_get::<_, i64>(0).map_err(map)
            })
        })
        .await
    }
}

/// The connection's helpers (functions.sql) and this module's, in `pg_temp`.
async fn install(
    conn: &mut super::pool::AdminConn,
    admin: &str,
    database: &str,
) -> Result<(), ProvisionError> {
    install_functions(conn, admin, database).await?;
    conn.client()
        .batch_execute(TABLE_PRIVILEGES_SQL)
        .await
        .map_err(|e| map_error(e, admin, ""))
}

fn grant_error(error: tokio_postgres::Error, admin: &str, user: &str) -> ProvisionError {
    if sqlstate(&error) == Some("DWP03") {
        let detail = error
            .as_db_error()
            .and_then(|d| d.detail())
            .unwrap_or_default();
        return ProvisionError::UnexpectedAnswer(format!(
            "granted {detail} to {user}, but the catalog does not show it"
        ));
    }
    map_error(error, admin, user)
}
