//! A throwaway local PostgreSQL for `dbward quickstart`: initdb in a directory, TLS with a
//! certificate from dbward's db CA, client-certificate authentication over TCP, and trust over
//! its private Unix socket for setup. Runs as the `postgres` system user when started as root
//! (initdb and postgres refuse root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::GatewayError;

pub struct LocalPostgres {
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
}

/// The newest PostgreSQL server binaries Debian installed.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

impl LocalPostgres {
    /// Creates (first time) and starts a server in `dir` on `port` using the given server
    /// certificate, key and client CA files.
    pub fn start(
        dir: &Path,
        port: u16,
        crt: &Path,
        key: &Path,
        cas: &Path,
    ) -> Result<Self, GatewayError> {
        let bin = postgres_bin_dir().ok_or_else(|| {
            GatewayError::Config(
                "PostgreSQL server binaries not found under /usr/lib/postgresql: install the Debian package postgresql".into(),
            )
        })?;
        let run_as = is_root().then(|| "postgres".to_string());
        let data_dir = dir.join("data");
        let socket_dir = dir.join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        for (src, name) in [
            (crt, "server.crt"),
            (key, "server.key"),
            (cas, "client-ca.crt"),
        ] {
            std::fs::copy(src, tls_dir.join(name))?;
        }
        set_mode(&tls_dir.join("server.key"), 0o600)?;
        let pg = LocalPostgres {
            data_dir: data_dir.clone(),
            socket_dir: socket_dir.clone(),
            port,
            bin,
            run_as,
        };
        if let Some(user) = &pg.run_as {
            chown_tree(dir, user)?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            pg.run(
                "initdb",
                &[
                    "-D",
                    path_str(&data_dir)?,
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )?;
        }
        let conf = format!(
            "# written by dbward quickstart\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\nmax_connections = 100\nfsync = off\n",
            socket_dir.display(),
            tls_dir.join("server.crt").display(),
            tls_dir.join("server.key").display(),
            tls_dir.join("client-ca.crt").display(),
        );
        std::fs::write(data_dir.join("dbward.conf"), conf)?;
        let main_conf = data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&main_conf)?;
        if !text.contains("include_if_exists = 'dbward.conf'") {
            std::fs::write(
                &main_conf,
                format!("{text}\ninclude_if_exists = 'dbward.conf'\n"),
            )?;
        }
        std::fs::write(
            data_dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )?;
        if let Some(user) = &pg.run_as {
            chown_tree(dir, user)?;
        }
        let log = dir.join("postgres.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data_dir)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(pg)
    }

    /// Runs SQL as the superuser over the private socket; returns psql's unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, GatewayError> {
        let psql = self.bin.join("psql");
        let mut cmd = self.command(&psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ]);
        output(cmd, "psql")
    }

    pub fn stop(&self) {
        if let Ok(data) = path_str(&self.data_dir) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"]);
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, GatewayError> {
        let mut cmd = self.command(&self.bin.join(program));
        cmd.args(args);
        output(cmd, program)
    }

    fn command(&self, program: &Path) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }
}

fn output(mut cmd: Command, what: &str) -> Result<String, GatewayError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GatewayError::Config(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(GatewayError::Config(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn path_str(path: &Path) -> Result<&str, GatewayError> {
    path.to_str()
        .ok_or_else(|| GatewayError::Config(format!("path is not UTF-8: {}", path.display())))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chown_tree(dir: &Path, user: &str) -> Result<(), GatewayError> {
    let status = Command::new("chown").args(["-R", user]).arg(dir).status()?;
    if !status.success() {
        return Err(GatewayError::Config(format!(
            "chown -R {user} {} failed",
            dir.display()
        )));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A throwaway local MariaDB for `dbward quickstart`, when its binaries are installed: TLS
/// with a certificate from dbward's db CA, client certificates checked against the db-client
/// CA, root only over its private socket.
pub struct LocalMariaDb {
    pub port: u16,
    socket: PathBuf,
    client: PathBuf,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl LocalMariaDb {
    /// True when `mariadbd`, `mariadb-install-db` and `mariadb` are installed.
    pub fn available() -> bool {
        ["mariadbd", "mariadb-install-db", "mariadb"]
            .iter()
            .all(|p| find_program(p).is_some())
    }

    pub fn start(
        dir: &Path,
        port: u16,
        crt: &Path,
        key: &Path,
        cas: &Path,
    ) -> Result<Self, GatewayError> {
        let missing = |p: &str| {
            GatewayError::Config(format!(
                "{p} not found: install the Debian package mariadb-server"
            ))
        };
        let install =
            find_program("mariadb-install-db").ok_or_else(|| missing("mariadb-install-db"))?;
        let server = find_program("mariadbd").ok_or_else(|| missing("mariadbd"))?;
        let client = find_program("mariadb").ok_or_else(|| missing("mariadb"))?;
        let data_dir = dir.join("data");
        let tmp_dir = dir.join("tmp");
        let tls_dir = dir.join("tls");
        for d in [&tmp_dir, &tls_dir] {
            std::fs::create_dir_all(d)?;
        }
        for (src, name) in [
            (crt, "server.crt"),
            (key, "server.key"),
            (cas, "client-ca.crt"),
        ] {
            std::fs::copy(src, tls_dir.join(name))?;
        }
        set_mode(&tls_dir.join("server.key"), 0o600)?;
        let user_arg: Vec<String> = if is_root() {
            chown_tree(dir, "mysql")?;
            vec!["--user=mysql".to_string()]
        } else {
            Vec::new()
        };
        if !data_dir.join("mysql").exists() {
            let mut cmd = Command::new(install);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data_dir.display()))
                .args(&user_arg)
                .args([
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ])
                // Concurrent installs sharing /tmp collide on temporary table names.
                .env("TMPDIR", &tmp_dir);
            output(cmd, "mariadb-install-db")?;
        }
        let socket = dir.join("my.sock");
        let log = std::fs::File::create(dir.join("mariadb.log"))?;
        let child = Command::new(server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir.display()))
            .args(&user_arg)
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", tmp_dir.display()))
            .arg(format!(
                "--ssl-cert={}",
                tls_dir.join("server.crt").display()
            ))
            .arg(format!(
                "--ssl-key={}",
                tls_dir.join("server.key").display()
            ))
            .arg(format!(
                "--ssl-ca={}",
                tls_dir.join("client-ca.crt").display()
            ))
            .args(["--skip-name-resolve", "--character-set-server=utf8mb4"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let db = LocalMariaDb {
            port,
            socket,
            client,
            child: std::sync::Mutex::new(Some(child)),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while db.sql("SELECT 1").is_err() {
            if std::time::Instant::now() > deadline {
                db.stop();
                return Err(GatewayError::Config(format!(
                    "MariaDB did not start; see {}",
                    dir.join("mariadb.log").display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Only root over the socket: no anonymous users, no passwordless root over TCP.
        db.sql(
            "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost'); FLUSH PRIVILEGES;",
        )?;
        Ok(db)
    }

    /// Runs SQL as root over the private socket.
    pub fn sql(&self, sql: &str) -> Result<String, GatewayError> {
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "-N", "-B", "-e", sql]);
        output(cmd, "mariadb")
    }

    pub fn stop(&self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            // SAFETY: kill(2) on our own child's pid; SIGTERM makes mariadbd shut down cleanly.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
