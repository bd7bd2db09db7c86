//! Servers do not outlive a test process that is killed outright (no destructors, no exit
//! hooks): the watchdog stops them and deletes their directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbward_pki::CaSet;
use dbward_testkit::{DbServerCerts, MariaServer, PgServer};

const CHILD_ENV: &str = "DBWARD_TESTKIT_KILL_CHILD";
const TEST_NAME: &str = "killed_test_process_leaves_no_server_running";

fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The killed process: starts both servers, reports them in `dir/report`, and waits to be
/// killed.
fn run_as_child(dir: &Path) -> anyhow::Result<()> {
    let cas = CaSet::generate("kill-test")?;
    let certs = DbServerCerts::from_cas(&cas, dir)?;
    let pg = PgServer::start(&certs)?;
    let maria = MariaServer::start(&certs)?;
    let pg_pid = std::fs::read_to_string(pg.data_dir.join("postmaster.pid"))?;
    let maria_pid = std::fs::read_to_string(maria.socket.with_file_name("mariadbd.pid"))?;
    let report = format!(
        "{} {} {} {}",
        pg_pid.lines().next().unwrap_or_default().trim(),
        pg.data_dir.display(),
        maria_pid.trim(),
        maria.data_dir.display()
    );
    // Written whole under another name, then renamed: the parent never reads half a report.
    std::fs::write(dir.join("report.tmp"), report)?;
    std::fs::rename(dir.join("report.tmp"), dir.join("report"))?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn killed_test_process_leaves_no_server_running() -> anyhow::Result<()> {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return run_as_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST_NAME, "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let report_path = dir.path().join("report");
    let started = Instant::now();
    let report = loop {
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            break text;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("child test process ended ({status}) without starting the servers");
        }
        if started.elapsed() > Duration::from_secs(120) {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("child test process did not start the servers in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fields: Vec<&str> = report.split(' ').collect();
    anyhow::ensure!(fields.len() == 4, "unexpected report {report:?}");
    let pg_pid: u32 = fields[0].parse()?;
    let pg_dir = PathBuf::from(fields[1]);
    let maria_pid: u32 = fields[2].parse()?;
    let maria_dir = PathBuf::from(fields[3]);
    assert!(process_alive(pg_pid) && process_alive(maria_pid));

    child.kill()?; // SIGKILL: no unwinding, no atexit.
    child.wait()?;

    let deadline = Instant::now() + Duration::from_secs(30);
    while (process_alive(pg_pid)
        || process_alive(maria_pid)
        || pg_dir.exists()
        || maria_dir.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !process_alive(pg_pid),
        "postmaster {pg_pid} survived its test process"
    );
    assert!(
        !process_alive(maria_pid),
        "mariadbd {maria_pid} survived its test process"
    );
    assert!(!pg_dir.exists(), "{} left behind", pg_dir.display());
    assert!(!maria_dir.exists(), "{} left behind", maria_dir.display());
    Ok(())
}
