//! README's first command: `dbward quickstart`, then the commands it prints, give a psql
//! session as an automatically provisioned user.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM: the gateway stops and quickstart stops its PostgreSQL.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
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
            std::process::Command::new("sh")
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
