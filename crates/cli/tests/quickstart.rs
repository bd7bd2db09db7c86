//! README's first command: `dbward quickstart`, then the commands it prints, give a psql
//! session as an automatically provisioned user.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Every quickstart listens on the gateway's default ports (3080, 3432, 3036): one at a time.
static ONE_QUICKSTART: Mutex<()> = Mutex::new(());

fn one_quickstart() -> MutexGuard<'static, ()> {
    ONE_QUICKSTART
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM: the gateway stops and quickstart stops its PostgreSQL.
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

/// Starts `dbward proxy db DB` on a free port and waits until it listens.
fn proxy_db(home: &str, db: &str) -> (u16, Running) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Command::new(BIN)
        .args(["proxy", "db", db, "--port", &port.to_string()])
        .env("DBWARD_HOME", home)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(proxy);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (port, running)
}

fn sh(script: &str, path_dir: &Path) -> std::process::Output {
    let path = format!(
        "{}:{}",
        path_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-ec", script])
        .env("PATH", path)
        .env_remove("DBWARD_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn quickstart_then_printed_commands_give_a_provisioned_psql_session() {
    let _one = one_quickstart();
    let dir = tempfile::Builder::new()
        .prefix("dwqs")
        .tempdir_in("/tmp")
        .unwrap();
    let qs_dir = dir.path().join("sandbox");
    let mut child = Command::new(BIN)
        .args(["quickstart", "--dir"])
        .arg(&qs_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout).lines();
    for line in reader.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    // Keep reading what the gateway prints later, as a terminal would.
    std::thread::spawn(move || for _ in reader {});
    let printed = lines.join("\n");
    assert!(
        printed.contains("dbward quickstart is running"),
        "{printed}"
    );
    let commands: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| {
            l.starts_with("export ")
                || l.starts_with("echo ")
                || l.starts_with("dbward db ")
                || l.starts_with("dbward login ")
        })
        .collect();
    let connect = commands
        .iter()
        .find(|c| c.starts_with("dbward db connect quickstart "))
        .expect("a connect command is printed");
    let maria_connect = commands
        .iter()
        .find(|c| c.starts_with("dbward db connect quickstart-mariadb"));
    let setup: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| !c.starts_with("dbward db connect"))
        .collect();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let script = format!(
        "{}\n{} -- -X -A -t -c 'select current_user'\n{} -- -X -A -t -c 'select count(*) from public.notes'\n",
        setup.join("\n"),
        connect,
        connect
    );
    let config = qs_dir.join("dbward.yaml");
    let out = sh(&script, bin_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // db ls -v shows the auto-provisioned database with the roles provisioning grants.
    assert!(stdout.contains("[alice] (Auto-provisioned)"), "{stdout}");
    assert!(
        stdout.contains("reader") && stdout.contains("writer"),
        "{stdout}"
    );
    let tail: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(tail, vec!["1", "alice"], "{stdout}");

    // MariaDB too, when its binaries are installed (scripts/test installs them).
    let home_line = setup[0];

    // `dbward proxy db` for a PostgreSQL client that cannot present a certificate.
    let home = home_line.trim_start_matches("export DBWARD_HOME=");
    let (port, _proxy) = proxy_db(home, "quickstart");
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} sslmode=disable user=alice dbname=postgres"
        ))
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");

    match maria_connect {
        Some(maria) => {
            let out = sh(
                &format!(
                    "{home_line}\n{maria} -- -N -B -e 'select current_user(), current_role()'"
                ),
                bin_dir,
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(stdout.trim(), "alice@%\tdw-role-alice", "{stdout}");

            // `dbward proxy db` for a client that cannot present a certificate.
            let (port, _proxy) = proxy_db(home, "quickstart-mariadb");
            let out = Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "--host=127.0.0.1",
                    "--skip-ssl",
                    "--user=alice",
                ])
                .arg(format!("--port={port}"))
                .args(["-N", "-B", "-e", "select current_user()"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice@%");
        }
        None => assert!(
            Command::new("sh")
                .args(["-c", "command -v mariadbd || test -x /usr/sbin/mariadbd"])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true),
            "MariaDB is installed, so quickstart must offer it"
        ),
    }

    // The client's view of the route, and the audit trail an admin reads.
    let home = setup[0].trim_start_matches("export DBWARD_HOME=");
    let out = sh(
        &format!("DBWARD_HOME={home} dbward db config quickstart --format json"),
        bin_dir,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("db config json");
    for key in [
        "name", "protocol", "host", "port", "user", "database", "ca", "cert", "key", "command",
    ] {
        assert!(json.get(key).is_some(), "db config lacks {key}: {json}");
    }
    assert_eq!(json["user"], "alice");
    let out = sh(
        &format!(
            "dbward audit search -c {} --user alice --format json",
            config.display()
        ),
        bin_dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit json");
    let events = events.as_array().expect("an array of events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for wanted in [
        "db.session.start",
        "db.session.user.create",
        "db.session.query",
        "db.session.end",
    ] {
        assert!(kinds.contains(&wanted), "{wanted} missing: {kinds:?}");
    }
    assert!(events.iter().any(|e| e["db_query"]
        .as_str()
        .is_some_and(|q| q.contains("select current_user"))));
    drop(running);
}

/// What quickstart leaves behind, found from outside: its directory and any process whose
/// command line names it (PostgreSQL's `-D`, MariaDB's `--datadir`). Drop kills such processes
/// and deletes the test's directory, so a failing test does not leak servers itself.
struct Leftovers {
    tmp: tempfile::TempDir,
}

impl Leftovers {
    fn new() -> Leftovers {
        Leftovers {
            tmp: tempfile::Builder::new()
                .prefix("dwqc")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    /// The directory quickstart picks without `--dir` when `$TMPDIR` is ours.
    fn sandbox(&self, pid: u32) -> std::path::PathBuf {
        self.tmp.path().join(format!("dbward-quickstart-{pid}"))
    }

    /// Processes (other than zombies) whose command line mentions our directory.
    fn processes(&self) -> Vec<(u32, String)> {
        let needle = self.tmp.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if cmdline.contains(&needle) && !zombie {
                found.push((pid, cmdline));
            }
        }
        found
    }

    /// Waits a little for processes to finish exiting, then lists what is still running.
    fn running_after_grace(&self) -> Vec<(u32, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.processes();
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dbward quickstart | tee log` without `--dir`, its own process group like a shell job,
/// `$TMPDIR` in the test's directory.
fn quickstart_in_pipe(leftovers: &Leftovers) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(BIN)
        .arg("quickstart")
        .env("TMPDIR", leftovers.tmp.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Ctrl-C in a terminal: SIGINT to every process of the job.
fn ctrl_c(child: &Child) {
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT to the job");
}

fn wait_exit(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("quickstart did not exit within 90 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctrl_c_with_a_closed_output_pipe_stops_the_databases_and_deletes_the_temporary_directory() {
    let _one = one_quickstart();
    let leftovers = Leftovers::new();
    let mut child = quickstart_in_pipe(&leftovers);
    let sandbox = leftovers.sandbox(child.id());
    let stdout = child.stdout.take().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    // The reader (`tee`) is gone, as after Ctrl-C in a terminal.
    assert!(printed.contains("is running"), "{printed}");
    assert!(sandbox.join("pg").join("data").is_dir());
    let servers = leftovers.processes();
    assert!(
        servers.iter().any(|(_, cmd)| cmd.contains("postgres")),
        "{servers:?}"
    );
    ctrl_c(&child);
    wait_exit(child);
    let running = leftovers.running_after_grace();
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(
        !sandbox.exists(),
        "{} was left behind ({})",
        sandbox.display(),
        std::fs::read_dir(&sandbox)
            .map(|d| d.count().to_string())
            .unwrap_or_default()
    );
}

#[test]
fn ctrl_c_while_starting_stops_the_databases_already_started() {
    let _one = one_quickstart();
    let leftovers = Leftovers::new();
    let child = quickstart_in_pipe(&leftovers);
    let sandbox = leftovers.sandbox(child.id());
    // Ctrl-C as soon as PostgreSQL runs, while the rest (setup, MariaDB) is still starting.
    let pid_file = sandbox.join("pg").join("data").join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.is_file() {
        assert!(Instant::now() < deadline, "PostgreSQL did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    ctrl_c(&child);
    wait_exit(child);
    let running = leftovers.running_after_grace();
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(!sandbox.exists(), "{} was left behind", sandbox.display());
}
