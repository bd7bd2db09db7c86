//! A local MariaDB: `mariadb-install-db` into `DIR/data` (unless installed already), TLS from
//! copies of the given files in `DIR/tls`, and `root` without password over the Unix socket in
//! `DIR` (mode 0700) only. Accounts a fresh install creates besides `root@localhost` (remote
//! roots, anonymous users) are dropped, so a TCP connection can only succeed as a user created
//! afterwards.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{LocalDbError, Result};
use crate::process::{
    copy_file, create_dir, find_program, free_port, log_tail, run, send_signal, wait_until_gone,
    ServerAccount,
};
use crate::ServerTls;

/// The programs a local MariaDB needs.
pub const MARIADB_TOOLS: [&str; 3] = ["mariadb-install-db", "mariadbd", "mariadb"];

/// How many times start is tried with a new port when another process took the port.
const START_ATTEMPTS: usize = 5;

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to shut down cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A running local MariaDB, stopped on [`LocalMariaDb::stop`] or drop.
///
/// - TCP on `127.0.0.1:port` with TLS; client certificates are verified against the
///   db-client CA, so `CREATE USER 'x'@'%' REQUIRE SUBJECT '/CN=x'` admits a dbward db-client
///   certificate for `x`.
/// - Unix socket `socket`: `root` without password ([`LocalMariaDb::sql`]); `root` cannot log
///   in over TCP.
#[derive(Debug)]
pub struct LocalMariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The Unix socket.
    pub socket: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    root: PathBuf,
    client: PathBuf,
    pid: u32,
    child: Mutex<Option<Child>>,
}

impl LocalMariaDb {
    /// True when `mariadbd`, `mariadb-install-db` and `mariadb` are installed.
    pub fn available() -> bool {
        MARIADB_TOOLS.iter().all(|p| find_program(p).is_ok())
    }

    /// Starts the server in `dir`, installing a data directory when `dir` holds none, with
    /// `--ssl-cert`, `--ssl-key` and `--ssl-ca` from `tls`, `--skip-name-resolve` (accounts
    /// match client addresses, never reverse DNS), `max_connections = 200` and `utf8mb4`.
    ///
    /// The server runs in its own process group: a Ctrl-C meant for its owner does not kill
    /// it mid-write; its owner stops it.
    pub fn start(dir: &Path, tls: &ServerTls) -> Result<LocalMariaDb> {
        let install_db = find_program("mariadb-install-db")?;
        let mariadbd = find_program("mariadbd")?;
        let client = find_program("mariadb")?;
        let account = ServerAccount::for_service("mysql")?;
        create_dir(dir)?;
        let root = dir
            .canonicalize()
            .map_err(LocalDbError::io(format!("resolving {}", dir.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The socket admits root without a password.
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .map_err(LocalDbError::io(format!("chmod 0700 {}", root.display())))?;
        }
        let data_dir = root.join("data");
        let tls_dir = root.join("tls");
        let tmp_dir = root.join("tmp");
        create_dir(&tls_dir)?;
        create_dir(&tmp_dir)?;
        // The server account becomes the owner, so 0600 suits all three.
        let crt = copy_file(&tls.crt, &tls_dir.join("server.crt"), 0o600)?;
        let key = copy_file(&tls.key, &tls_dir.join("server.key"), 0o600)?;
        let cas = copy_file(&tls.cas, &tls_dir.join("server.cas"), 0o600)?;
        account.own(&root)?;

        let user_arg = account.name().map(|name| format!("--user={name}"));
        let fresh = !data_dir.join("mysql").is_dir();
        if fresh {
            let mut install = Command::new(&install_db);
            // `--no-defaults` must come first: no my.cnf of the machine leaks in.
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
                .current_dir(&root)
                // Like the server: stopped by its owner, not by a Ctrl-C meant for the owner.
                .process_group(0);
            run(&mut install, "mariadb-install-db")?;
        }

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
                .process_group(0);
            let child = cmd.spawn().map_err(LocalDbError::io("starting mariadbd"))?;
            // From here on, dropping `server` (also on an error below) stops the process.
            let server = LocalMariaDb {
                port,
                socket: socket.clone(),
                data_dir: data_dir.clone(),
                root: root.clone(),
                client: client.clone(),
                pid: child.id(),
                child: Mutex::new(Some(child)),
            };
            match server.wait_ready(&log) {
                Ok(()) => {
                    if fresh {
                        server.drop_extra_accounts()?;
                    }
                    return Ok(server);
                }
                Err(e) => {
                    server.kill();
                    let tail = log_tail(&log);
                    if !tail.contains("already in use") && !tail.contains("Can't start server") {
                        return Err(LocalDbError::Start(format!("{e}\nserver log:\n{tail}")));
                    }
                    last_error = Some(format!("{e}\nserver log:\n{tail}"));
                }
            }
        }
        Err(LocalDbError::Start(format!(
            "MariaDB could not bind a free port: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Runs `sql` as `root` through the Unix socket with `mariadb -N -B` (no column names,
    /// tab-separated rows); returns stdout trimmed. The first failing statement stops the
    /// script.
    pub fn sql(&self, sql: &str) -> Result<String> {
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

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The end of the server's error log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.root.join("error.log"))
    }

    /// Stops the server (SIGTERM: a clean shutdown; SIGKILL after a grace period) and waits
    /// until it is gone. Idempotent.
    pub fn stop(&self) {
        let Some(mut child) = self.take_child() else {
            return;
        };
        send_signal(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
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
    }

    /// Kills a server that did not come up.
    fn kill(&self) {
        if let Some(mut child) = self.take_child() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn take_child(&self) -> Option<Child> {
        match self.child.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Waits until the server answers on its socket; fails early if it exits.
    fn wait_ready(&self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match self.child.lock() {
                Ok(mut guard) => match guard.as_mut() {
                    Some(child) => child
                        .try_wait()
                        .map_err(LocalDbError::io("checking mariadbd"))?,
                    None => None,
                },
                Err(_) => None,
            };
            if let Some(status) = exited {
                return Err(LocalDbError::Start(format!(
                    "mariadbd exited during start ({status})"
                )));
            }
            if self.socket.exists() {
                let ping = Command::new(&self.client)
                    .arg("--no-defaults")
                    .arg(format!("--socket={}", self.socket.display()))
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
                return Err(LocalDbError::Start(format!(
                    "mariadbd did not accept connections within {READY_TIMEOUT:?}\n{}",
                    log_tail(log)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Drops every account except `root@localhost` and the internal `mariadb.sys`: the
    /// installer also creates passwordless `root` for 127.0.0.1, ::1 and the host name, and
    /// possibly anonymous users, any of which would let a connection succeed for the wrong
    /// reason.
    fn drop_extra_accounts(&self) -> Result<()> {
        let accounts = self.sql(
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
            self.sql(&drops.concat())?;
        }
        Ok(())
    }
}

impl Drop for LocalMariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}
