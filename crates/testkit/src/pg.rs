//! An ephemeral PostgreSQL server: `initdb` into a temporary directory, TLS with the given
//! certificates, client-certificate authentication over TCP, and the test's own superuser
//! access over a Unix socket in that directory.
//!
//! Any major from 13 to 18 can be started ([`PgServer::start_major`]); [`PgServer::start`]
//! starts the one `$DBWARD_PG_MAJOR` names, else the system's newest (Debian's 15).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::certs::DbServerCerts;
use crate::pg_versions;
use crate::process::{
    find_program, free_port, log_tail, run, run_with_input, short_temp_dir, wait_until_gone,
    ServerAccount, Watchdog, PACKAGES,
};

/// Environment variable naming a PostgreSQL `bin` directory to use instead of the newest one
/// under `/usr/lib/postgresql`.
pub const PG_BIN_ENV: &str = "DBWARD_TEST_PG_BIN";

/// Environment variable naming the PostgreSQL major [`PgServer::start`] (and so the shared
/// server of every test binary) runs, e.g. `17`; see [`crate::pg_versions`].
pub const PG_MAJOR_ENV: &str = "DBWARD_PG_MAJOR";

/// How many times start is tried with a new port when another process took the port.
const START_ATTEMPTS: usize = 5;

/// The superuser `initdb` creates; the tests use it over the Unix socket.
pub const PG_SUPERUSER: &str = "postgres";

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
    bin_dir: PathBuf,
    major_version: u32,
    postmaster_pid: u32,
    account: ServerAccount,
    watchdog: Watchdog,
    stopped: AtomicBool,
    // Last field: removed after the server has stopped.
    dir: TempDir,
}

impl PgServer {
    /// Creates a cluster in a new temporary directory and starts it with TLS from `certs`.
    ///
    /// `postgresql.conf` gets `ssl = on`, the three certificate files, `listen_addresses =
    /// '127.0.0.1'`, a free port, the socket directory and `max_connections = 200`;
    /// `pg_hba.conf` is exactly `local all all trust` and `hostssl all all 127.0.0.1/32 cert`.
    pub fn start(certs: &DbServerCerts) -> anyhow::Result<PgServer> {
        Self::start_in(certs, Self::bin_dir()?)
    }

    /// Like [`PgServer::start`], with PostgreSQL `major` (13–18): the system's binaries when
    /// installed, else the pinned build cached by `scripts/lib/fetch-pg`.
    pub fn start_major(certs: &DbServerCerts, major: u32) -> anyhow::Result<PgServer> {
        let server = Self::start_in(certs, pg_versions::bin_dir_for_major(major)?)?;
        if server.major_version != major {
            bail!(
                "asked for PostgreSQL {major}, the binaries are {}",
                server.major_version
            );
        }
        Ok(server)
    }

    fn start_in(certs: &DbServerCerts, bin_dir: PathBuf) -> anyhow::Result<PgServer> {
        let account = ServerAccount::for_service("postgres")?;
        let bin_dir = if account.switch_to.is_some() {
            pg_versions::runnable_by_others(&bin_dir)?
        } else {
            bin_dir
        };
        let dir = short_temp_dir("dbwpg")?;
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");
        let tls_dir = root.join("tls");
        fs::create_dir(&tls_dir).context("creating the TLS directory")?;
        // Copies, because the server account must own the key (mode 0600) and must be able to
        // read all three, wherever the originals are.
        let crt = copy_file(&certs.crt, &tls_dir.join("server.crt"), 0o644)?;
        let key = copy_file(&certs.key, &tls_dir.join("server.key"), 0o600)?;
        let cas = copy_file(&certs.cas, &tls_dir.join("server.cas"), 0o644)?;
        account.own(&root)?;

        run(
            account
                .command(&bin_dir.join("initdb"))
                .current_dir(&root)
                .args(["-D"])
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
        let major_version = read_major_version(&data_dir)?;

        let conf = data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str("\ninclude 'dbward-test.conf'\n");
        fs::write(&conf, text).context("writing postgresql.conf")?;
        fs::write(
            data_dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .context("writing pg_hba.conf")?;

        let log = root.join("postgres.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let settings = format!(
                "port = {port}\n\
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
            fs::write(data_dir.join("dbward-test.conf"), settings)
                .context("writing dbward-test.conf")?;
            account.own(&data_dir)?;
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
                    let pid = read_postmaster_pid(&data_dir)?;
                    let watchdog = match Watchdog::spawn(pid, "QUIT", &root) {
                        Ok(w) => w,
                        Err(e) => {
                            stop_cluster(&account, &bin_dir, &data_dir, pid);
                            return Err(e);
                        }
                    };
                    return Ok(PgServer {
                        port,
                        host: "127.0.0.1".to_string(),
                        socket_dir: root.clone(),
                        data_dir,
                        bin_dir,
                        major_version,
                        postmaster_pid: pid,
                        account,
                        watchdog,
                        stopped: AtomicBool::new(false),
                        dir,
                    });
                }
                Err(e) => {
                    let tail = log_tail(&log);
                    if !tail.contains("could not bind") && !tail.contains("already in use") {
                        bail!("{e:#}\nserver log:\n{tail}");
                    }
                    last_error = Some(e.context(tail));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context("PostgreSQL could not bind a free port"))
    }

    /// The `psql` to run against this server (its own, else the system's).
    pub fn psql_bin(&self) -> anyhow::Result<PathBuf> {
        psql_program(&self.bin_dir)
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
        let out = run_with_input(
            Command::new(psql_program(&self.bin_dir)?)
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
        self.major_version
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
            return pg_versions::bin_dir_for_major(major);
        }
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((major, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin).with_context(|| {
            format!(
                "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install the Debian \
                 packages: apt-get install {PACKAGES}"
            )
        })
    }

    /// The server log, for diagnosing a failing test.
    pub fn log(&self) -> String {
        log_tail(&self.socket_dir.join("postgres.log"))
    }

    /// Stops the server now (immediate shutdown) and deletes its files. Idempotent.
    pub(crate) fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.watchdog.disarm();
        stop_cluster(
            &self.account,
            &self.bin_dir,
            &self.data_dir,
            self.postmaster_pid,
        );
        let _ = fs::remove_dir_all(self.dir.path());
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `psql` from the server's `bin` directory, else the system's (the npm builds ship none; a
/// newer client talks to every older server).
fn psql_program(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let own = bin_dir.join("psql");
    if own.is_file() {
        return Ok(own);
    }
    find_program("psql")
}

/// Immediate shutdown, then waits for the postmaster to be gone: `pg_ctl -w` returns once the
/// pid file is removed, a moment before the process exits.
fn stop_cluster(account: &ServerAccount, bin_dir: &Path, data_dir: &Path, pid: u32) {
    let _ = run(
        account
            .command(&bin_dir.join("pg_ctl"))
            .current_dir("/")
            .arg("-D")
            .arg(data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
        "pg_ctl stop",
    );
    wait_until_gone(pid, Duration::from_secs(10));
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))?;
    Ok(to.to_path_buf())
}

/// A path as a single-quoted `postgresql.conf` value.
fn conf_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().context("non-UTF-8 temporary path")?;
    Ok(text.replace('\'', "''"))
}

fn read_major_version(data_dir: &Path) -> anyhow::Result<u32> {
    let text = fs::read_to_string(data_dir.join("PG_VERSION")).context("reading PG_VERSION")?;
    text.trim()
        .parse()
        .with_context(|| format!("PG_VERSION {text:?}"))
}

fn read_postmaster_pid(data_dir: &Path) -> anyhow::Result<u32> {
    let text =
        fs::read_to_string(data_dir.join("postmaster.pid")).context("reading postmaster.pid")?;
    let first = text.lines().next().unwrap_or_default();
    first
        .trim()
        .parse()
        .with_context(|| format!("postmaster.pid starts with {first:?}"))
}
