//! `dbward start` with `log_format: json` and `metrics_listen_addr`: every log line is one
//! JSON object, and `/metrics` answers on the configured address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

fn free_port() -> u16 {
    dbward_testkit::listen_port()
}

/// Stops the gateway when the test ends, also on panic.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over plain HTTP; the whole answer, or `None` when nothing listens yet.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn json_logs_and_metrics_listener_come_from_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("dbward.yaml");
    std::fs::write(
        &config,
        format!(
            "version: v1\ncluster_name: obs\ndata_dir: {data}\nweb_listen_addr: 127.0.0.1:{web}\n\
             postgres_listen_addr: 127.0.0.1:{pg}\nmysql_listen_addr: \"\"\n\
             metrics_listen_addr: {metrics}\nlog_format: json\n",
            data = dir.path().join("data").display(),
            web = free_port(),
            pg = free_port(),
        ),
    )
    .expect("write config");
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let gateway = Gateway(
        Command::new(BIN)
            .args(["start", "-c"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("dbward start"),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Some(answer) = http_get(&metrics, "/metrics") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics listener: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("# TYPE dbward_audit_queue_depth gauge"),
        "{answer}"
    );

    // The start-up line is logged once the listeners serve; wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("dbward gateway started") {
            break text;
        }
        assert!(Instant::now() < deadline, "no start-up line: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(gateway);
    let mut started = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
        if value["message"] == "dbward gateway started" {
            started = Some(value);
        }
    }
    let started = started.expect("the start-up line");
    assert_eq!(started["cluster"], "obs", "{started}");
    assert_eq!(
        started["metrics"],
        format!("Some(\"{metrics}\")"),
        "{started}"
    );
}
