//! Servers do not outlive a test process that is killed outright (no destructors, no exit
//! hooks): the watchdog stops them and deletes their directories.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

/// The killed process: starts both servers, reports them, and waits to be killed.
fn run_as_child() -> anyhow::Result<()> {
    let cas = CaSet::generate("kill-test")?;
    let dir = tempfile::tempdir()?;
    let certs = DbServerCerts::from_cas(&cas, dir.path())?;
    let pg = PgServer::start(&certs)?;
    let maria = MariaServer::start(&certs)?;
    let pg_pid = std::fs::read_to_string(pg.data_dir.join("postmaster.pid"))?;
    let maria_pid = std::fs::read_to_string(maria.socket.with_file_name("mariadbd.pid"))?;
    println!(
        "SERVERS {} {} {} {}",
        pg_pid.lines().next().unwrap_or_default().trim(),
        pg.data_dir.display(),
        maria_pid.trim(),
        maria.data_dir.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn killed_test_process_leaves_no_server_running() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return run_as_child();
    }
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut report = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("SERVERS ") {
            report = Some(rest.to_string());
            break;
        }
    }
    let Some(report) = report else {
        let status = child.wait()?;
        anyhow::bail!("child test process ended ({status}) without starting the servers");
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
