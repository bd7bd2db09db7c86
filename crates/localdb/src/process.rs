//! Running the database programs: finding them, running them as the service account when
//! started as root, free ports, log tails, and waiting for a process to be gone.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::error::{LocalDbError, Result};
use crate::PACKAGES;

/// Where the database binaries may live besides `PATH` (`mariadbd` is in `/usr/sbin`, which
/// is not on an ordinary user's `PATH`).
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

/// Finds `name` on `PATH` or in the usual system directories.
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            LocalDbError::NotInstalled(format!(
                "{name} not found; install the Debian packages: apt-get install {PACKAGES}"
            ))
        })
}

/// The operating-system account a server runs as.
///
/// PostgreSQL refuses to run as root, and MariaDB wants `--user` then; when started as root
/// the servers run as the distribution's service account (`postgres`, `mysql`), otherwise as
/// the current user.
#[derive(Debug, Clone)]
pub(crate) struct ServerAccount {
    /// `Some` when running as root and the server must switch to this account.
    pub(crate) switch_to: Option<(String, Uid, Gid)>,
}

impl ServerAccount {
    pub(crate) fn for_service(name: &str) -> Result<ServerAccount> {
        if !Uid::effective().is_root() {
            return Ok(ServerAccount { switch_to: None });
        }
        let user = User::from_name(name)
            .map_err(|e| LocalDbError::Io {
                what: format!("looking up the {name} account"),
                source: e.into(),
            })?
            .ok_or_else(|| {
                LocalDbError::NotInstalled(format!(
                    "running as root, the server must run as the {name} account, which does not \
                     exist; install the Debian packages: apt-get install {PACKAGES}"
                ))
            })?;
        Ok(ServerAccount {
            switch_to: Some((name.to_string(), user.uid, user.gid)),
        })
    }

    /// The account's name when the server switches to it (`--user=` for MariaDB).
    pub(crate) fn name(&self) -> Option<&str> {
        self.switch_to.as_ref().map(|(name, _, _)| name.as_str())
    }

    /// A command that runs `program` as this account, in its own process group: a Ctrl-C
    /// meant for the owner must not kill `initdb` or `pg_ctl` halfway (a `pg_ctl start` killed
    /// after the server started would leave a server nobody knows of); the owner decides.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = match &self.switch_to {
            Some((name, _, _)) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", name, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.process_group(0);
        cmd
    }

    /// Gives the account ownership of `path` and everything below it.
    pub(crate) fn own(&self, path: &Path) -> Result<()> {
        let Some((_, uid, gid)) = &self.switch_to else {
            return Ok(());
        };
        chown_recursive(path, *uid, *gid)
    }
}

fn chown_recursive(path: &Path, uid: Uid, gid: Gid) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
        .map_err(LocalDbError::io(format!("chown {}", path.display())))?;
    let meta =
        fs::symlink_metadata(path).map_err(LocalDbError::io(format!("stat {}", path.display())))?;
    if meta.is_dir() {
        let entries =
            fs::read_dir(path).map_err(LocalDbError::io(format!("listing {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(LocalDbError::io(format!("listing {}", path.display())))?;
            chown_recursive(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs a command to completion; fails with its stderr when it exits unsuccessfully.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    run_with_input(cmd, what, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(cmd: &mut Command, what: &str, input: Option<&str>) -> Result<String> {
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
        .map_err(LocalDbError::io(format!("{what}: cannot start {cmd:?}")))?;
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
        .map_err(LocalDbError::io(format!("{what}: waiting")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    Err(LocalDbError::Failed {
        what: what.to_string(),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        ),
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before the
/// server binds it, so server start retries on a clash.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(LocalDbError::io("binding 127.0.0.1:0"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(LocalDbError::io("reading a bound port"))
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Whether `pid` is a live process (an exited process waiting to be reaped does not count).
pub fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn send_signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Waits until `pid` has exited; sends SIGKILL if it has not within `grace`, then waits a
/// little more for the kernel to finish it.
pub fn wait_until_gone(pid: u32, grace: Duration) {
    let deadline = Instant::now() + grace;
    while process_running(pid) {
        if Instant::now() >= deadline {
            send_signal(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while process_running(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `from` to `to` with `mode`: the server account must own the key (mode 0600) and be
/// able to read all TLS files, wherever the originals are.
pub(crate) fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(from, to).map_err(LocalDbError::io(format!(
        "copying {} to {}",
        from.display(),
        to.display()
    )))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(LocalDbError::io(format!("chmod {}", to.display())))?;
    Ok(to.to_path_buf())
}

pub(crate) fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(LocalDbError::io(format!("creating {}", path.display())))
}
