//! One admin connection to a PostgreSQL server over TLS, with its prepared statements and
//! the helper functions installed in `pg_temp`. Pooled by [`crate::pool::Pool`].
//!
//! Every connection pins its `search_path` to `pg_catalog, pg_temp` before anything else
//! runs on it: the users the admin manages may create objects in schemas the admin's default
//! search path would look in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Statement};

use super::tls::MakeRustlsConnect;
use crate::error::ProvisionError;
use crate::pool::PooledConn;
use crate::AdminTarget;

/// The helper functions, created in `pg_temp` once per connection: `functions.sql`, then
/// `forbidden_roles.sql` (shared with the preflight) wrapped as
/// `pg_temp.dbward_forbidden_roles`, in PL/pgSQL like the others so that its plan is kept.
const FUNCTIONS_SQL: &str = concat!(
    include_str!("sql/functions.sql"),
    "\nCREATE OR REPLACE FUNCTION pg_temp.dbward_forbidden_roles(text[], text, text[])\n",
    "RETURNS TABLE (role_name text, why text, reached text)\n",
    "LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$\n",
    "BEGIN\nRETURN QUERY\n",
    include_str!("sql/forbidden_roles.sql"),
    ";\nEND\n$fn$;\n"
);

/// First statement on every admin connection: names resolve in `pg_catalog` (and relations
/// in `pg_temp`) only, so no function, operator or table a database user created can be
/// picked up by a statement the admin runs.
const PIN_SEARCH_PATH_SQL: &str = "SET search_path = pg_catalog, pg_temp";

/// Sent with [`PIN_SEARCH_PATH_SQL`]: every statement and helper query of the connection is
/// planned once and its plan reused. The default would plan the first five executions of
/// each again, and may keep doing so (the role checks of an activation cost far more to plan
/// than to run).
const GENERIC_PLANS_SQL: &str = "SET plan_cache_mode = force_generic_plan";

/// One open admin connection with its prepared statements.
pub(crate) struct AdminConn {
    client: Client,
    functions_installed: bool,
    statements: HashMap<&'static str, Statement>,
    task: JoinHandle<()>,
    opened_at: Instant,
}

impl Drop for AdminConn {
    fn drop(&mut self) {
        // Dropping the client ends the connection task on its own; aborting only makes sure a
        // connection stuck on a dead network does not linger.
        self.task.abort();
    }
}

impl AdminConn {
    /// Opens a connection as the target's admin user over TLS.
    pub(crate) async fn open(
        target: &AdminTarget,
        connect_timeout: Duration,
    ) -> Result<AdminConn, ProvisionError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.admin_user)
            .dbname(&target.database)
            .ssl_mode(SslMode::Require)
            .application_name("dbward-provision")
            .connect_timeout(connect_timeout);
        let tls = MakeRustlsConnect::new(target.client_config.clone(), target.server_name.clone());
        let address = target.address();
        let (client, connection) =
            config
                .connect(tls)
                .await
                .map_err(|source| ProvisionError::AdminConnect {
                    admin: target.admin_user.clone(),
                    address: address.clone(),
                    source: Box::new(source),
                })?;
        let task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, %error, "admin connection closed");
            }
        });
        let conn = AdminConn {
            client,
            functions_installed: false,
            statements: HashMap::new(),
            task,
            opened_at: Instant::now(),
        };
        conn.client
            .batch_execute(&format!("{PIN_SEARCH_PATH_SQL}; {GENERIC_PLANS_SQL}"))
            .await?;
        Ok(conn)
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Installs the helper functions in `pg_temp` unless this connection already has them.
    pub(crate) async fn ensure_functions(&mut self) -> Result<(), tokio_postgres::Error> {
        if !self.functions_installed {
            self.client.batch_execute(FUNCTIONS_SQL).await?;
            self.functions_installed = true;
        }
        Ok(())
    }

    /// The prepared form of `sql`, prepared once per connection.
    pub(crate) async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl PooledConn for AdminConn {
    fn opened_at(&self) -> Instant {
        self.opened_at
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
