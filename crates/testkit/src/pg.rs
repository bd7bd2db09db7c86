//! An ephemeral PostgreSQL server for a test: [`dbward_localdb::LocalPostgres`] in a new
//! temporary directory, guarded by a watchdog, stopped and deleted on drop.
//!
//! Any major from 13 to 18 can be started ([`PgServer::start_major`]); [`PgServer::start`]
//! starts the one `$DBWARD_PG_MAJOR` names, else the system's newest (Debian's 15).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use dbward_localdb::{pg_versions, LocalPostgres, PgShutdown};
use tempfile::TempDir;

use crate::certs::DbServerCerts;
use crate::process::{short_temp_dir, Watchdog};

pub use dbward_localdb::PG_SUPERUSER;

/// Environment variable naming a PostgreSQL `bin` directory to use instead of the newest one
/// under `/usr/lib/postgresql`.
pub const PG_BIN_ENV: &str = "DBWARD_TEST_PG_BIN";

/// Environment variable naming the PostgreSQL major [`PgServer::start`] (and so the shared
/// server of every test binary) runs, e.g. `17`; see [`crate::pg_versions`].
pub const PG_MAJOR_ENV: &str = "DBWARD_PG_MAJOR";

/// A running PostgreSQL server, stopped and deleted on drop.
///
/// - TCP on `host:port` (`127.0.0.1`), TLS only, `cert` authentication: a client must present
///   a certificate from the db-client CA whose CN is the user name.
/// - Unix socket in `socket_dir`, `trust` authentication: the test's superuser access
///   ([`PgServer::psql_super`]).
#[derive(Debug)]
pub struct PgServer {
    /// TCP port on `host`.
    pub port: u16,
    /// Always `127.0.0.1`.
    pub host: String,
    /// Directory of the Unix socket (`host=` for libpq).
    pub socket_dir: PathBuf,
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    server: LocalPostgres,
    watchdog: Watchdog,
    stopped: AtomicBool,
    // Last field: removed after the server has stopped.
    dir: TempDir,
}

impl PgServer {
    /// Creates a cluster in a new temporary directory and starts it with TLS from `certs`
    /// (see [`LocalPostgres::start`] for the configuration).
    pub fn start(certs: &DbServerCerts) -> anyhow::Result<PgServer> {
        Self::start_in(certs, &Self::bin_dir()?)
    }

    /// Like [`PgServer::start`], with PostgreSQL `major` (13–18): the system's binaries when
    /// installed, else the pinned build cached by `scripts/lib/fetch-pg`.
    pub fn start_major(certs: &DbServerCerts, major: u32) -> anyhow::Result<PgServer> {
        let server = Self::start_in(certs, &pg_versions::bin_dir_for_major(major)?)?;
        if server.major_version() != major {
            bail!(
                "asked for PostgreSQL {major}, the binaries are {}",
                server.major_version()
            );
        }
        Ok(server)
    }

    fn start_in(certs: &DbServerCerts, bin_dir: &Path) -> anyhow::Result<PgServer> {
        let dir = short_temp_dir("dbwpg")?;
        // On an error below, `server` is stopped (its drop) before `dir` is deleted (its drop).
        let server = LocalPostgres::start(dir.path(), bin_dir, &certs.tls(), PgShutdown::Immediate)
            .context("starting PostgreSQL")?;
        let watchdog = Watchdog::spawn(server.pid(), "QUIT", dir.path())?;
        Ok(PgServer {
            port: server.port,
            host: "127.0.0.1".to_string(),
            socket_dir: server.socket_dir.clone(),
            data_dir: server.data_dir.clone(),
            server,
            watchdog,
            stopped: AtomicBool::new(false),
            dir,
        })
    }

    /// The `psql` to run against this server (its own, else the system's).
    pub fn psql_bin(&self) -> anyhow::Result<PathBuf> {
        Ok(self.server.psql_bin()?)
    }

    /// Runs `sql` as the superuser `postgres` in database `postgres` through the Unix socket
    /// with `psql -X -A -t -q -v ON_ERROR_STOP=1`; returns stdout trimmed. Statements run one
    /// by one (so `CREATE DATABASE` may follow other statements) and the first error stops the
    /// script; the error message holds psql's stderr.
    pub fn psql_super(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_super_in("postgres", sql)
    }

    /// Like [`PgServer::psql_super`], in database `dbname`.
    pub fn psql_super_in(&self, dbname: &str, sql: &str) -> anyhow::Result<String> {
        Ok(self.server.psql(dbname, sql)?)
    }

    /// A libpq connection string for the superuser over the Unix socket (also understood by
    /// `tokio-postgres`).
    pub fn super_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={PG_SUPERUSER} dbname={dbname}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// The server's major version, e.g. 15.
    pub fn major_version(&self) -> u32 {
        self.server.major_version()
    }

    /// The directory of the PostgreSQL binaries: `$DBWARD_TEST_PG_BIN` if set, else the one
    /// serving `$DBWARD_PG_MAJOR` if set, otherwise the newest
    /// `/usr/lib/postgresql/<major>/bin` that holds `initdb`.
    pub fn bin_dir() -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
            let dir = PathBuf::from(dir);
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
            bail!("{PG_BIN_ENV}={} holds no initdb", dir.display());
        }
        if let Some(major) = std::env::var_os(PG_MAJOR_ENV) {
            let text = major.to_string_lossy();
            let major: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("{PG_MAJOR_ENV}={text:?} is not a major version"))?;
            return Ok(pg_versions::bin_dir_for_major(major)?);
        }
        Ok(pg_versions::newest_system_bin_dir()?)
    }

    /// The server log, for diagnosing a failing test.
    pub fn log(&self) -> String {
        self.server.log_tail()
    }

    /// Stops the server now (immediate shutdown) and deletes its files. Idempotent.
    pub(crate) fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.watchdog.disarm();
        self.server.stop();
        let _ = fs::remove_dir_all(self.dir.path());
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
