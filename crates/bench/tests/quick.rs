//! The benchmark harness end to end in quick mode: real PostgreSQL, the gateway as a child
//! process and pgbouncer (when installed); the run must succeed and the report must hold every
//! measured row.

use std::process::Command;

#[test]
fn quick_run_succeeds_and_reports_every_row() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("BENCHMARKS.md");
    let chart = dir.path().join("benchmarks.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_dbward-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(&report)
        .arg("--chart")
        .arg(&chart)
        .output()
        .expect("running dbward-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dbward-bench failed:\n{stdout}\n{stderr}"
    );

    let text = std::fs::read_to_string(&report).expect("report written");
    let pgbouncer = !stderr.contains("skipping pgbouncer");
    if !pgbouncer {
        eprintln!("pgbouncer rows not checked: {stderr}");
    }
    let mut rows = vec![
        "| Connection setup, existing locked user (p50) |",
        "| Connection setup, new user (p50) |",
        "| Relay TPS, 1 client |",
        "| Relay TPS, 8 clients |",
        "| Bulk COPY throughput |",
        "| Gateway memory per idle session (vs 64 KiB) |",
        "| Provisioning rate, 8 parallel clients |",
    ];
    for path in [
        "direct",
        "dbward (existing locked user)",
        "dbward (new user each time)",
    ] {
        assert!(
            text.contains(&format!("\n| {path} | ")),
            "connection row {path}:\n{text}"
        );
    }
    for path in [
        "dbward (existing locked user)",
        "dbward (new user each time)",
    ] {
        assert!(
            text.matches(&format!("\n| {path} | ")).count() >= 2,
            "teardown row {path}:\n{text}"
        );
    }
    for clients in [1, 8] {
        for path in ["direct", "dbward"] {
            assert!(
                text.contains(&format!("\n| {path} | {clients} | ")),
                "relay row {path} {clients}:\n{text}"
            );
        }
    }
    if pgbouncer {
        rows.push("| Relay TPS above pgbouncer, 1 client |");
        rows.push("| Relay TPS above pgbouncer, 8 clients |");
        assert!(text.contains("\n| pgbouncer | 1 | ") && text.contains("\n| pgbouncer | 8 | "));
        assert!(
            text.contains("auth_type = cert"),
            "pgbouncer configuration shown"
        );
    }
    for row in &rows {
        assert!(text.contains(row), "missing {row}:\n{text}");
    }
    // Every summary row has a verdict, and the chart has one bar per summary row.
    let verdicts = text.matches("| PASS |").count() + text.matches("| MISS |").count();
    assert_eq!(verdicts, rows.len(), "{text}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg"));
    assert_eq!(svg.matches("<rect x=").count(), rows.len(), "{svg}");
    for section in [
        "## Machine",
        "## Exact commands",
        "| Memory |",
        "pgbench -n -S",
    ] {
        assert!(text.contains(section), "missing {section}:\n{text}");
    }
}
