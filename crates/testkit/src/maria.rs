//! An ephemeral MariaDB server for a test: [`dbward_localdb::LocalMariaDb`] in a new temporary
//! directory, guarded by a watchdog, stopped and deleted on drop.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use dbward_localdb::LocalMariaDb;
use tempfile::TempDir;

use crate::certs::DbServerCerts;
use crate::process::{short_temp_dir, Watchdog};

/// A running MariaDB server, stopped and deleted on drop.
///
/// - TCP on `127.0.0.1:port` with TLS from the given certificates; client certificates are
///   verified against the db-client CA, so `CREATE USER 'x'@'%' REQUIRE SUBJECT '/CN=x'`
///   admits a dbward db-client certificate for `x`.
/// - Unix socket `socket`: `root` without password, for the test's own setup and checks
///   ([`MariaServer::sql_root`]). `root` cannot log in over TCP, and no other account exists
///   until the test creates one.
#[derive(Debug)]
pub struct MariaServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Always `127.0.0.1`.
    pub host: String,
    /// The Unix socket.
    pub socket: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    server: LocalMariaDb,
    watchdog: Watchdog,
    stopped: AtomicBool,
    // Last field: removed after the server has stopped.
    dir: TempDir,
}

impl MariaServer {
    /// Installs a data directory in a new temporary directory and starts `mariadbd` on a free
    /// port with TLS from `certs` (see [`LocalMariaDb::start`] for the configuration).
    pub fn start(certs: &DbServerCerts) -> anyhow::Result<MariaServer> {
        let dir = short_temp_dir("dbwmy")?;
        // On an error below, `server` is stopped (its drop) before `dir` is deleted (its drop).
        let server = LocalMariaDb::start(dir.path(), &certs.tls()).context("starting MariaDB")?;
        let watchdog = Watchdog::spawn(server.pid(), "TERM", dir.path())?;
        Ok(MariaServer {
            port: server.port,
            host: "127.0.0.1".to_string(),
            socket: server.socket.clone(),
            data_dir: server.data_dir.clone(),
            server,
            watchdog,
            stopped: AtomicBool::new(false),
            dir,
        })
    }

    /// Runs `sql` as `root` through the Unix socket with `mariadb -N -B` (no column names,
    /// tab-separated rows); returns stdout trimmed. The first failing statement stops the
    /// script; the error message holds the client's stderr.
    pub fn sql_root(&self, sql: &str) -> anyhow::Result<String> {
        Ok(self.server.sql(sql)?)
    }

    /// The server's error log, for diagnosing a failing test.
    pub fn log(&self) -> String {
        self.server.log_tail()
    }

    /// Stops the server (SIGTERM, SIGKILL after a grace period) and deletes its files.
    /// Idempotent.
    pub(crate) fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.watchdog.disarm();
        self.server.stop();
        let _ = fs::remove_dir_all(self.dir.path());
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
