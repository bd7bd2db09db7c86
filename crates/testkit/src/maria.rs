//! An ephemeral MariaDB server.

use crate::certs::DbServerCerts;

/// Binaries the MariaDB part needs.
pub(crate) const MARIA_TOOLS: [&str; 3] = ["mariadb-install-db", "mariadbd", "mariadb"];

/// A running MariaDB server, stopped and deleted on drop.
#[derive(Debug)]
pub struct MariaServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

impl MariaServer {
    /// Starts a server.
    pub fn start(_certs: &DbServerCerts) -> anyhow::Result<MariaServer> {
        anyhow::bail!("not yet")
    }

    pub(crate) fn shutdown(&self) {}
}
