//! A local PostgreSQL: `initdb` into `DIR/data` (unless a cluster is already there), TLS from
//! copies of the given files in `DIR/tls`, `cert` authentication for every TCP connection, and
//! `trust` over the Unix socket in `DIR` (mode 0700), the owner's superuser access.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{LocalDbError, Result};
use crate::pg_versions;
use crate::process::{
    copy_file, create_dir, find_program, free_port, log_tail, run, run_with_input, wait_until_gone,
    ServerAccount,
};
use crate::ServerTls;

/// The superuser `initdb` creates; usable only over the Unix socket.
pub const PG_SUPERUSER: &str = "postgres";

/// How many times start is tried with a new port when another process took the port.
const START_ATTEMPTS: usize = 5;

/// The settings file the launcher writes and `postgresql.conf` includes.
const SETTINGS_FILE: &str = "dbward-localdb.conf";

/// How the server is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgShutdown {
    /// `pg_ctl -m fast`: a clean checkpoint, for a cluster that is started again later.
    Fast,
    /// `pg_ctl -m immediate`: for a cluster that is deleted right after.
    Immediate,
}

/// A running local PostgreSQL, stopped on [`LocalPostgres::stop`] or drop.
///
/// - TCP on `127.0.0.1:port`, TLS only, `cert` authentication: a client presents a
///   certificate from the db-client CA whose CN is the user name.
/// - Unix socket in `socket_dir`, `trust` authentication ([`LocalPostgres::psql`]).
#[derive(Debug)]
pub struct LocalPostgres {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory of the Unix socket (`host=` for libpq): the directory given to `start`.
    pub socket_dir: PathBuf,
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    bin_dir: PathBuf,
    major_version: u32,
    postmaster_pid: u32,
    account: ServerAccount,
    shutdown: PgShutdown,
    stopped: AtomicBool,
}

impl LocalPostgres {
    /// Starts the cluster in `dir` with the binaries of `bin_dir`, creating the cluster when
    /// `dir` holds none.
    ///
    /// `postgresql.conf` includes a settings file with `ssl = on`, the three TLS files,
    /// `listen_addresses = '127.0.0.1'`, a free port, the socket directory,
    /// `max_connections = 200` and no durability (`fsync = off`); `pg_hba.conf` is exactly
    /// `local all all trust` and `hostssl all all 127.0.0.1/32 cert`.
    pub fn start(
        dir: &Path,
        bin_dir: &Path,
        tls: &ServerTls,
        shutdown: PgShutdown,
    ) -> Result<LocalPostgres> {
        let account = ServerAccount::for_service("postgres")?;
        let bin_dir = if account.switch_to.is_some() {
            pg_versions::runnable_by_others(bin_dir)?
        } else {
            bin_dir.to_path_buf()
        };
        create_dir(dir)?;
        let root = dir
            .canonicalize()
            .map_err(LocalDbError::io(format!("resolving {}", dir.display())))?;
        private_dir(&root)?;
        let data_dir = root.join("data");
        let tls_dir = root.join("tls");
        create_dir(&tls_dir)?;
        let crt = copy_file(&tls.crt, &tls_dir.join("server.crt"), 0o644)?;
        let key = copy_file(&tls.key, &tls_dir.join("server.key"), 0o600)?;
        let cas = copy_file(&tls.cas, &tls_dir.join("server.cas"), 0o644)?;
        account.own(&root)?;

        if !data_dir.join("PG_VERSION").is_file() {
            run(
                account
                    .command(&bin_dir.join("initdb"))
                    .current_dir(&root)
                    .arg("-D")
                    .arg(&data_dir)
                    .args([
                        "-U",
                        PG_SUPERUSER,
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                        "--no-sync",
                    ]),
                "initdb",
            )?;
        }
        let major_version = read_major_version(&data_dir)?;

        let conf = data_dir.join("postgresql.conf");
        let text =
            fs::read_to_string(&conf).map_err(LocalDbError::io("reading postgresql.conf"))?;
        let include = format!("include '{SETTINGS_FILE}'");
        if !text.contains(&include) {
            fs::write(&conf, format!("{text}\n{include}\n"))
                .map_err(LocalDbError::io("writing postgresql.conf"))?;
        }
        fs::write(
            data_dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .map_err(LocalDbError::io("writing pg_hba.conf"))?;

        let log = root.join("postgres.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let settings = format!(
                "# written by dbward's local database launcher\n\
                 port = {port}\n\
                 listen_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{socket}'\n\
                 max_connections = 200\n\
                 ssl = on\n\
                 ssl_cert_file = '{crt}'\n\
                 ssl_key_file = '{key}'\n\
                 ssl_ca_file = '{cas}'\n\
                 # Durability is irrelevant for a throw-away cluster; speed is not.\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n",
                socket = conf_path(&root)?,
                crt = conf_path(&crt)?,
                key = conf_path(&key)?,
                cas = conf_path(&cas)?,
            );
            fs::write(data_dir.join(SETTINGS_FILE), settings)
                .map_err(LocalDbError::io(format!("writing {SETTINGS_FILE}")))?;
            account.own(&root)?;
            let started = run(
                account
                    .command(&bin_dir.join("pg_ctl"))
                    .current_dir(&root)
                    .arg("-D")
                    .arg(&data_dir)
                    .arg("-l")
                    .arg(&log)
                    .args(["-w", "-t", "60", "start"]),
                "pg_ctl start",
            );
            match started {
                Ok(_) => {
                    let mut server = LocalPostgres {
                        port,
                        socket_dir: root.clone(),
                        data_dir: data_dir.clone(),
                        bin_dir: bin_dir.clone(),
                        major_version,
                        postmaster_pid: 0,
                        account: account.clone(),
                        shutdown,
                        stopped: AtomicBool::new(false),
                    };
                    // From here on, dropping `server` (also on this error) stops the cluster.
                    server.postmaster_pid = read_postmaster_pid(&data_dir)?;
                    return Ok(server);
                }
                Err(e) => {
                    // `pg_ctl` may have given up waiting on a server that did start.
                    if data_dir.join("postmaster.pid").is_file() {
                        let _ = run(
                            account
                                .command(&bin_dir.join("pg_ctl"))
                                .current_dir("/")
                                .arg("-D")
                                .arg(&data_dir)
                                .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
                            "pg_ctl stop",
                        );
                    }
                    let tail = log_tail(&log);
                    if !tail.contains("could not bind") && !tail.contains("already in use") {
                        return Err(LocalDbError::Start(format!("{e}\nserver log:\n{tail}")));
                    }
                    last_error = Some(format!("{e}\nserver log:\n{tail}"));
                }
            }
        }
        Err(LocalDbError::Start(format!(
            "PostgreSQL could not bind a free port: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Runs `sql` as the superuser in `dbname` through the Unix socket with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1`; returns stdout trimmed. Statements run one by one
    /// (so `CREATE DATABASE` may follow other statements) and the first error stops the script.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let out = run_with_input(
            Command::new(self.psql_bin()?)
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    PG_SUPERUSER,
                    "-d",
                    dbname,
                    "-f",
                    "-",
                ]),
            "psql",
            Some(sql),
        )?;
        Ok(out.trim().to_string())
    }

    /// The `psql` to run against this server: its own, else the system's (the npm builds ship
    /// none; a newer client talks to every older server).
    pub fn psql_bin(&self) -> Result<PathBuf> {
        let own = self.bin_dir.join("psql");
        if own.is_file() {
            return Ok(own);
        }
        find_program("psql")
    }

    /// The server's major version, e.g. 15.
    pub fn major_version(&self) -> u32 {
        self.major_version
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.postmaster_pid
    }

    /// The end of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.socket_dir.join("postgres.log"))
    }

    /// Stops the server and waits until the postmaster is gone (SIGKILL after a grace period).
    /// Idempotent.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mode = match self.shutdown {
            PgShutdown::Fast => "fast",
            PgShutdown::Immediate => "immediate",
        };
        let _ = run(
            self.account
                .command(&self.bin_dir.join("pg_ctl"))
                .current_dir("/")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode, "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        );
        // `pg_ctl -w` returns once the pid file is removed, a moment before the process exits.
        if self.postmaster_pid != 0 {
            wait_until_gone(self.postmaster_pid, Duration::from_secs(10));
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mode 0700: the directory holds the Unix socket, where the superuser needs no password.
fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(LocalDbError::io(format!("chmod 0700 {}", path.display())))
}

/// A path as a single-quoted `postgresql.conf` value.
fn conf_path(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .ok_or_else(|| LocalDbError::Start(format!("path is not UTF-8: {}", path.display())))?;
    Ok(text.replace('\'', "''"))
}

fn read_major_version(data_dir: &Path) -> Result<u32> {
    let text = fs::read_to_string(data_dir.join("PG_VERSION"))
        .map_err(LocalDbError::io("reading PG_VERSION"))?;
    text.trim()
        .parse()
        .map_err(|_| LocalDbError::Start(format!("PG_VERSION holds {text:?}")))
}

fn read_postmaster_pid(data_dir: &Path) -> Result<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid"))
        .map_err(LocalDbError::io("reading postmaster.pid"))?;
    let first = text.lines().next().unwrap_or_default();
    first
        .trim()
        .parse()
        .map_err(|_| LocalDbError::Start(format!("postmaster.pid starts with {first:?}")))
}
