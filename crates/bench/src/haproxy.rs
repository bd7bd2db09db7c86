//! HAProxy in TCP mode: the floor of what any extra hop costs. It passes the bytes through
//! untouched (TLS stays end to end between client and database), so it pays neither TLS nor
//! any protocol work, only the second pair of loopback sockets.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::env::{free_port, stop_child, tail};

/// A running HAProxy with one TCP frontend per database.
pub struct HaProxy {
    child: Child,
    pub pid: u32,
    /// Forwards to PostgreSQL.
    pub pg_port: u16,
    /// Forwards to MariaDB.
    pub maria_port: u16,
    /// The configuration, with the run's directory shown as `$DIR`.
    pub config: String,
    log: PathBuf,
}

impl HaProxy {
    /// HAProxy's binary, or why there is none.
    pub fn find() -> Result<PathBuf, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|d| d.join("haproxy"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                "HAProxy is not installed (Debian package haproxy; scripts/bench installs it)"
                    .to_string()
            })
    }

    /// Starts HAProxy in the foreground (`-db`) with a TCP frontend for each database.
    pub fn start(bin: &Path, root: &Path, pg_port: u16, maria_port: u16) -> anyhow::Result<Self> {
        let dir = root.join("haproxy");
        fs::create_dir_all(&dir)?;
        let log = dir.join("haproxy.log");
        let mut last_err = None;
        for _ in 0..5 {
            let (front_pg, front_maria) = (free_port()?, free_port()?);
            let config = format!(
                "global\n    maxconn 4000\n\n\
                 defaults\n    mode tcp\n    timeout connect 10s\n    timeout client 1h\n    timeout server 1h\n\n\
                 frontend postgres\n    bind 127.0.0.1:{front_pg}\n    default_backend postgres\n\n\
                 backend postgres\n    server pg 127.0.0.1:{pg_port}\n\n\
                 frontend mariadb\n    bind 127.0.0.1:{front_maria}\n    default_backend mariadb\n\n\
                 backend mariadb\n    server maria 127.0.0.1:{maria_port}\n"
            );
            let file = dir.join("haproxy.cfg");
            fs::write(&file, &config)?;
            let log_file = fs::File::create(&log)?;
            let child = Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .context("starting haproxy")?;
            let pid = child.id();
            let mut proxy = HaProxy {
                child,
                pid,
                pg_port: front_pg,
                maria_port: front_maria,
                config,
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut up = false;
            while Instant::now() < deadline {
                let listening = [front_pg, front_maria]
                    .iter()
                    .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
                if listening {
                    up = true;
                    break;
                }
                if proxy.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                return Ok(proxy);
            }
            last_err = Some(anyhow::anyhow!("haproxy did not start:\n{}", tail(&log)));
            stop_child(&mut proxy.child, proxy.pid);
        }
        match last_err {
            Some(err) => Err(err),
            None => bail!("haproxy did not start"),
        }
    }

    /// HAProxy's log, for diagnosing a failed path.
    pub fn log(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.pid);
    }
}
