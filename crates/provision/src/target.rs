//! Where and as whom an admin connection goes, for every engine.

use std::sync::Arc;

use rustls::ClientConfig;

/// The database engines dbward provisions users in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    Postgres,
    /// MariaDB, and MySQL 8 where cheap.
    Mysql,
}

impl Engine {
    /// The engine's name in store keys and records (`postgres`, `mysql`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    /// The engine [`Engine::as_str`] names.
    pub fn from_name(name: &str) -> Option<Engine> {
        [Engine::Postgres, Engine::Mysql]
            .into_iter()
            .find(|engine| engine.as_str() == name)
    }
}

/// The admin connection of one database server.
#[derive(Clone)]
pub struct AdminTarget {
    /// Which provisioner serves it.
    pub engine: Engine,
    /// Host name or IP address to dial.
    pub host: String,
    pub port: u16,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// Carries the admin's db-client certificate (`CN=<admin_user>`) and the server
    /// verification configured for the database.
    pub client_config: Arc<ClientConfig>,
    /// The admin user (`admin_user.name`).
    pub admin_user: String,
    /// What the admin logs into: `admin_user.default_database`, else the session's database
    /// (PostgreSQL) or [`crate::mysql::DEFAULT_SCHEMA`] (MariaDB, where this schema also keeps
    /// `user_attributes`).
    pub database: String,
    /// PostgreSQL predefined roles (`pg_*`) the `db` resource allows as db roles (label
    /// `dbward.dev/allow-predefined-roles`); every other predefined role is refused.
    pub allowed_predefined_roles: Vec<String>,
}

impl AdminTarget {
    /// `host:port`, as error messages name the server.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTarget")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .field("admin_user", &self.admin_user)
            .field("database", &self.database)
            .field("allowed_predefined_roles", &self.allowed_predefined_roles)
            .finish_non_exhaustive()
    }
}
