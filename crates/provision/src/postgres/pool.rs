//! Warm admin connections, pooled per (database server, admin user, database).
//!
//! Opening a TLS connection and installing the helper functions costs several round trips;
//! keeping a few connections open makes an activation one round trip. A connection that the
//! server or the network closed is noticed on checkout and replaced.
//!
//! A warm connection keeps the session settings it started with (`ALTER ROLE … SET …` only
//! reaches new sessions), so it must not live forever: connections older than the pool's
//! maximum lifetime are dropped on checkout and on return, and after a failed operation the
//! provisioner drops the connection and every idle one of the same key.
//!
//! Every connection pins its `search_path` to `pg_catalog, pg_temp` before anything else
//! runs on it: the users the admin manages may create objects in schemas the admin's default
//! search path would look in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Statement};

use super::tls::MakeRustlsConnect;
use super::AdminTarget;
use crate::error::ProvisionError;

/// The helper functions, created in `pg_temp` once per connection: `functions.sql`, then
/// `forbidden_roles.sql` (shared with the preflight) wrapped as
/// `pg_temp.dbward_forbidden_roles`.
const FUNCTIONS_SQL: &str = concat!(
    include_str!("sql/functions.sql"),
    "\nCREATE OR REPLACE FUNCTION pg_temp.dbward_forbidden_roles(text[], text, text[])\n",
    "RETURNS TABLE (role_name text, why text, reached text)\n",
    "LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$\n",
    include_str!("sql/forbidden_roles.sql"),
    "\n$fn$;\n"
);

/// First statement on every admin connection: names resolve in `pg_catalog` (and relations
/// in `pg_temp`) only, so no function, operator or table a database user created can be
/// picked up by a statement the admin runs.
const PIN_SEARCH_PATH_SQL: &str = "SET search_path = pg_catalog, pg_temp";

/// What identifies interchangeable admin connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    host: String,
    port: u16,
    server_name: String,
    admin_user: String,
    database: String,
}

impl PoolKey {
    pub(crate) fn of(target: &AdminTarget) -> Self {
        PoolKey {
            host: target.host.clone(),
            port: target.port,
            server_name: target.server_name.clone(),
            admin_user: target.admin_user.clone(),
            database: target.database.clone(),
        }
    }
}

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
        let (client, connection) =
            config
                .connect(tls)
                .await
                .map_err(|source| ProvisionError::AdminConnect {
                    admin: target.admin_user.clone(),
                    address: format!("{}:{}", target.host, target.port),
                    source,
                })?;
        let address = format!("{}:{}", target.host, target.port);
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
        conn.client.batch_execute(PIN_SEARCH_PATH_SQL).await?;
        Ok(conn)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// True when the connection was opened `max_lifetime` ago or earlier.
    fn is_older_than(&self, max_lifetime: Duration) -> bool {
        self.opened_at.elapsed() >= max_lifetime
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

/// Idle connections by key.
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<AdminConn>>>,
    max_idle_per_key: usize,
    max_lifetime: Duration,
}

impl Pool {
    pub(crate) fn new(max_idle_per_key: usize, max_lifetime: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_key,
            max_lifetime,
        }
    }

    fn usable(&self, conn: &AdminConn) -> bool {
        !conn.is_closed() && !conn.is_older_than(self.max_lifetime)
    }

    /// An idle connection that is still open and younger than the maximum lifetime, if any;
    /// the others are discarded.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<AdminConn> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let conns = idle.get_mut(key)?;
        while let Some(conn) = conns.pop() {
            if self.usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Drops every idle connection of `key` (their session state may be stale).
    pub(crate) fn discard(&self, key: &PoolKey) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.remove(key);
    }

    /// Returns a connection after a successful use; closed, too old or surplus ones are
    /// dropped.
    pub(crate) fn put(&self, key: PoolKey, conn: AdminConn) {
        if !self.usable(&conn) {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let conns = idle.entry(key).or_default();
        if conns.len() < self.max_idle_per_key {
            conns.push(conn);
        }
    }

    /// Number of idle connections kept for `key`.
    pub(crate) fn idle_count(&self, key: &PoolKey) -> usize {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.get(key).map_or(0, Vec::len)
    }
}
