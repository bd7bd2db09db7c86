//! An ephemeral MariaDB server: `mariadb-install-db` into a temporary directory, TLS with the
//! given certificates, and `root` access for the test over a Unix socket in that directory
//! only. Accounts the installer creates besides `root@localhost` (remote roots, anonymous
//! users) are dropped, so a connection can only succeed as a user the test created.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::certs::DbServerCerts;
use crate::process::{
    find_program, free_port, log_tail, run, short_temp_dir, wait_until_gone, ServerAccount,
    Watchdog,
};

/// Binaries the MariaDB part needs.
pub(crate) const MARIA_TOOLS: [&str; 3] = ["mariadb-install-db", "mariadbd", "mariadb"];

/// How many times start is tried with a new port when another process took the port.
const START_ATTEMPTS: usize = 5;

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running MariaDB server, stopped and deleted on drop.
///
/// - TCP on `127.0.0.1:port` with TLS from the given certificates; client certificates are
///   verified against the db-client CA, so `CREATE USER 'x'@'%' REQUIRE SUBJECT '/CN=x'`
///   admits a dbward db-client certificate for `x`.
/// - Unix socket `socket`: `root` without password, for the test's own setup and checks
///   ([`MariaServer::sql_root`]). `root` cannot log in over TCP.
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
    client: PathBuf,
    pid: u32,
    child: Mutex<Option<Child>>,
    watchdog: Watchdog,
    // Last field: removed after the server has stopped.
    dir: TempDir,
}

impl MariaServer {
    /// Installs a data directory in a new temporary directory and starts `mariadbd` on a free
    /// port with `--ssl-cert`, `--ssl-key` and `--ssl-ca` from `certs`, `--skip-name-resolve`
    /// (accounts match client IP addresses, never reverse DNS), `max_connections = 200` and
    /// `utf8mb4`.
    pub fn start(certs: &DbServerCerts) -> anyhow::Result<MariaServer> {
        let install_db = find_program("mariadb-install-db")?;
        let mariadbd = find_program("mariadbd")?;
        let client = find_program("mariadb")?;
        let account = ServerAccount::for_service("mysql")?;
        let dir = short_temp_dir("dbwmy")?;
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");
        let tls_dir = root.join("tls");
        let tmp_dir = root.join("tmp");
        fs::create_dir(&tls_dir).context("creating the TLS directory")?;
        fs::create_dir(&tmp_dir).context("creating the server's tmpdir")?;
        let crt = copy_private(&certs.crt, &tls_dir.join("server.crt"))?;
        let key = copy_private(&certs.key, &tls_dir.join("server.key"))?;
        let cas = copy_private(&certs.cas, &tls_dir.join("server.cas"))?;
        account.own(&root)?;

        let user_arg = account
            .switch_to
            .as_ref()
            .map(|(name, _, _)| format!("--user={name}"));
        let mut install = Command::new(&install_db);
        // `--no-defaults` must come first: no my.cnf of the machine leaks into the tests.
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir.display()))
            .args(user_arg.iter())
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            // The bootstrap server names its temporary tables after its pid in $TMPDIR;
            // concurrent installs sharing /tmp collide ("Unknown table 'mysql.tmp_user_sys'").
            .env("TMPDIR", &tmp_dir)
            .current_dir(&root);
        run(&mut install, "mariadb-install-db")?;

        let socket = root.join("my.sock");
        let log = root.join("error.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let mut cmd = Command::new(&mariadbd);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data_dir.display()))
                .args(user_arg.iter())
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    root.join("mariadbd.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--tmpdir={}", tmp_dir.display()))
                .arg(format!("--ssl-cert={}", crt.display()))
                .arg(format!("--ssl-key={}", key.display()))
                .arg(format!("--ssl-ca={}", cas.display()))
                .args([
                    "--skip-name-resolve",
                    "--max-connections=200",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_general_ci",
                    // Durability is irrelevant for a throw-away server; speed is not.
                    "--innodb-flush-log-at-trx-commit=0",
                    "--innodb-buffer-pool-size=32M",
                ])
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // The server is stopped by its owner or the watchdog, not by a Ctrl-C meant
                // for the test run.
                .process_group(0);
            let mut child = cmd.spawn().context("starting mariadbd")?;
            let pid = child.id();
            let watchdog = match Watchdog::spawn(pid, "TERM", &root) {
                Ok(w) => w,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            };
            match wait_ready(&mut child, &client, &socket, &log) {
                Ok(()) => {
                    let server = MariaServer {
                        port,
                        host: "127.0.0.1".to_string(),
                        socket,
                        data_dir,
                        client,
                        pid,
                        child: Mutex::new(Some(child)),
                        watchdog,
                        dir,
                    };
                    server.drop_extra_accounts()?;
                    return Ok(server);
                }
                Err(e) => {
                    watchdog.disarm();
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = log_tail(&log);
                    if !tail.contains("already in use") && !tail.contains("Can't start server") {
                        bail!("{e:#}\nserver log:\n{tail}");
                    }
                    last_error = Some(e.context(tail));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context("MariaDB could not bind a free port"))
    }

    /// Runs `sql` as `root` through the Unix socket with `mariadb -N -B` (no column names,
    /// tab-separated rows); returns stdout trimmed. The first failing statement stops the
    /// script; the error message holds the client's stderr.
    pub fn sql_root(&self, sql: &str) -> anyhow::Result<String> {
        let out = run(
            Command::new(&self.client)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args([
                    "-u",
                    "root",
                    "-N",
                    "-B",
                    "--default-character-set=utf8mb4",
                    "-e",
                    sql,
                ]),
            "mariadb",
        )?;
        Ok(out.trim().to_string())
    }

    /// The server's error log, for diagnosing a failing test.
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("error.log"))
    }

    /// Drops every account except `root@localhost` and the internal `mariadb.sys`: the
    /// installer also creates passwordless `root` for 127.0.0.1, ::1 and the host name, and
    /// possibly anonymous users, any of which would let a test pass for the wrong reason.
    fn drop_extra_accounts(&self) -> anyhow::Result<()> {
        let accounts = self.sql_root(
            "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.global_priv \
             WHERE NOT (User = 'root' AND Host = 'localhost') \
             AND NOT (User = 'mariadb.sys' AND Host = 'localhost')",
        )?;
        let drops: Vec<String> = accounts
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|account| format!("DROP USER {account};"))
            .collect();
        if !drops.is_empty() {
            self.sql_root(&drops.concat())?;
        }
        Ok(())
    }

    /// Stops the server (SIGTERM, SIGKILL after a grace period) and deletes its files.
    /// Idempotent.
    pub(crate) fn shutdown(&self) {
        let child = match self.child.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(mut child) = child else {
            return;
        };
        self.watchdog.disarm();
        if let Ok(raw) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        wait_until_gone(self.pid, Duration::from_secs(5));
        let _ = fs::remove_dir_all(self.dir.path());
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until the server answers on its socket; fails early if it exits.
fn wait_ready(child: &mut Child, client: &Path, socket: &Path, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("checking mariadbd")? {
            bail!("mariadbd exited during start ({status})");
        }
        if socket.exists() {
            let ping = Command::new(client)
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-u", "root", "-N", "-B", "-e", "SELECT 1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ping.is_ok_and(|s| s.success()) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "mariadbd did not accept connections within {READY_TIMEOUT:?}\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Copies a certificate file; the server account becomes its owner later, so mode 0600 suits
/// the key and does no harm to the certificates.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", to.display()))?;
    Ok(to.to_path_buf())
}
