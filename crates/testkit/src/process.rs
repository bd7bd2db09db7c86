//! The test kit's own process handling: checking that the database binaries are installed,
//! short private temporary directories, and the watchdog that stops a server when the test
//! process dies without running destructors. Starting and stopping servers is
//! `dbward-localdb`'s.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};
use dbward_localdb::process::find_program;
use dbward_localdb::{MARIADB_TOOLS, PACKAGES};

/// Checks that PostgreSQL and MariaDB server and client binaries are installed, and names the
/// Debian packages to install when they are not.
pub fn require_binaries() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    match crate::pg::PgServer::bin_dir() {
        Ok(dir) => {
            for tool in ["initdb", "pg_ctl", "postgres"] {
                if !dir.join(tool).is_file() {
                    missing.push(format!("{}/{tool}", dir.display()));
                }
            }
            if find_program("psql").is_err() && !dir.join("psql").is_file() {
                missing.push("psql".to_string());
            }
        }
        Err(_) => missing.push("PostgreSQL server (initdb, pg_ctl, postgres)".to_string()),
    }
    for tool in MARIADB_TOOLS {
        if find_program(tool).is_err() {
            missing.push(tool.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!(
            "database binaries missing for the tests: {}; install the Debian packages: \
             apt-get install {PACKAGES}",
            missing.join(", ")
        )
    }
}

/// A process that stops a server and deletes its directory when the test process exits in a
/// way that skips destructors (killed, aborted, `process::exit`).
///
/// It blocks reading a pipe whose only writer is this process; the kernel closes the pipe
/// when the process ends, however it ends. The normal teardown disarms it first.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Mutex<Option<(Child, ChildStdin)>>,
}

/// `$1` pid, `$2` signal that asks for a quick shutdown, `$3` directory to delete.
const WATCHDOG_SCRIPT: &str = r#"
read _ignored
kill -"$2" "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null
rm -rf "$3"
"#;

impl Watchdog {
    pub(crate) fn spawn(pid: u32, signal: &str, dir: &Path) -> anyhow::Result<Watchdog> {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT, "dbward-testkit-watchdog"])
            .arg(pid.to_string())
            .arg(signal)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C on the test run must not kill it before it cleans up.
            .process_group(0)
            .spawn()
            .context("starting the server watchdog (sh)")?;
        let stdin = child.stdin.take().context("watchdog stdin")?;
        Ok(Watchdog {
            child: Mutex::new(Some((child, stdin))),
        })
    }

    /// Ends the watchdog without letting it act: the server is being stopped normally.
    pub(crate) fn disarm(&self) {
        let taken = match self.child.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((mut child, stdin)) = taken {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// A short private directory under `/tmp`: Unix socket paths must stay under 107 bytes, and
/// `$TMPDIR` may be long.
///
/// Mode 0700: it holds the servers' Unix sockets, where the superuser needs no password.
pub(crate) fn short_temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in("/tmp")
        .context("creating a temporary directory in /tmp")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.path().display()))?;
    Ok(dir)
}
