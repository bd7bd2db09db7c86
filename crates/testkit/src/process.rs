//! Running the database binaries: finding them, running them as an unprivileged user when the
//! tests run as root, free ports, and the watchdog that stops a server when the test process
//! dies without running destructors.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};
use nix::unistd::{Gid, Uid, User};

/// The Debian packages that provide everything the test kit runs.
pub(crate) const PACKAGES: &str = "postgresql postgresql-client mariadb-server mariadb-client";

/// Where the database binaries may live besides `PATH` (`mariadbd` is in `/usr/sbin`, which
/// is not on an ordinary user's `PATH`).
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

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
    for tool in crate::maria::MARIA_TOOLS {
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

/// Finds `name` on `PATH` or in the usual system directories.
pub(crate) fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!("{name} not found; install the Debian packages: apt-get install {PACKAGES}")
        })
}

/// The operating-system account a server runs as.
///
/// PostgreSQL refuses to run as root, and MariaDB wants `--user` then; when the tests run as
/// root the servers run as the distribution's service account (`postgres`, `mysql`), otherwise
/// as the current user.
#[derive(Debug, Clone)]
pub(crate) struct ServerAccount {
    /// `Some` when the tests run as root and the server must switch to this account.
    pub(crate) switch_to: Option<(String, Uid, Gid)>,
}

impl ServerAccount {
    pub(crate) fn for_service(name: &str) -> anyhow::Result<ServerAccount> {
        if !Uid::effective().is_root() {
            return Ok(ServerAccount { switch_to: None });
        }
        let user = User::from_name(name)
            .with_context(|| format!("looking up the {name} account"))?
            .with_context(|| {
                format!(
                    "the tests run as root, so the server must run as the {name} account, which \
                     does not exist; install the Debian packages: apt-get install {PACKAGES}"
                )
            })?;
        Ok(ServerAccount {
            switch_to: Some((name.to_string(), user.uid, user.gid)),
        })
    }

    /// A command that runs `program` as this account.
    pub(crate) fn command(&self, program: &Path) -> Command {
        match &self.switch_to {
            Some((name, _, _)) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", name, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Gives the account ownership of `path` and everything below it.
    pub(crate) fn own(&self, path: &Path) -> anyhow::Result<()> {
        let Some((_, uid, gid)) = &self.switch_to else {
            return Ok(());
        };
        chown_recursive(path, *uid, *gid)
    }
}

fn chown_recursive(path: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
        .with_context(|| format!("chown {}", path.display()))?;
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs a command to completion; fails with its stderr when it exits unsuccessfully.
pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    run_with_input(cmd, what, None)
}

/// Like [`run`], feeding `input` on stdin.
pub(crate) fn run_with_input(
    cmd: &mut Command,
    what: &str,
    input: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::Write;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // Written from a thread: a large output could otherwise fill the stdout pipe while
        // we are still writing.
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("{what}: waiting"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        )
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before the
/// server binds it, so server start retries on a clash.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
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

/// Whether `pid` is a live process (an exited process waiting to be reaped does not count).
pub(crate) fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Waits until `pid` has exited; sends SIGKILL if it has not within `grace`.
pub(crate) fn wait_until_gone(pid: u32, grace: std::time::Duration) {
    let deadline = std::time::Instant::now() + grace;
    while process_running(pid) {
        if std::time::Instant::now() >= deadline {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
