//! Throwaway local PostgreSQL and MariaDB servers, configured the way a user configures them
//! for dbward: TLS on, client-certificate authentication over TCP on `127.0.0.1`, and the
//! superuser (`postgres`, `root`) only over a Unix socket in the server's own directory.
//!
//! One launcher for everything that needs such a server: `dbward quickstart` and the test kit.
//! It creates the data directory (`initdb`, `mariadb-install-db`) unless it exists, writes the
//! configuration, copies the TLS files, starts the server on a free port (retrying when another
//! process takes the port first), waits until it answers, and stops it on [`LocalPostgres::stop`],
//! [`LocalMariaDb::stop`] or drop. When run as root the servers run as the distribution's
//! service accounts (`postgres`, `mysql`), which PostgreSQL requires.
//!
//! It does not remove the directory it was given, and it does not outlive its owner by itself:
//! callers that must survive being killed (the test kit) add a watchdog.
//!
//! PostgreSQL 13–18 are supported through [`pg_versions`]: the system's binaries, else pinned
//! builds fetched by `scripts/lib/fetch-pg`.

mod error;
mod mariadb;
pub mod pg_versions;
mod postgres;
pub mod process;

use std::path::PathBuf;

pub use error::LocalDbError;
pub use mariadb::{LocalMariaDb, MARIADB_TOOLS};
pub use postgres::{LocalPostgres, PgShutdown, PG_SUPERUSER};

/// The three files a database server needs for TLS with client-certificate authentication, as
/// `dbward auth sign --format db --out PREFIX` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Server certificate (`PREFIX.crt`), signed by dbward's db CA.
    pub crt: PathBuf,
    /// Server private key (`PREFIX.key`).
    pub key: PathBuf,
    /// CA certificates trusted for client certificates (`PREFIX.cas`): the db-client CA.
    pub cas: PathBuf,
}

/// The Debian packages that provide everything this crate runs.
pub const PACKAGES: &str = "postgresql postgresql-client mariadb-server mariadb-client";
