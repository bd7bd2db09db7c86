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
    let haproxy = !stderr.contains("skipping HAProxy");
    let sysbench = !stderr.contains("skipping the MariaDB relay");
    let mut rows: Vec<String> = Vec::new();
    for engine in ["PostgreSQL", "MariaDB"] {
        rows.push(format!(
            "| {engine}: connection setup, existing locked user (p50) |"
        ));
        rows.push(format!("| {engine}: connection setup, new user (p50) |"));
        rows.push(format!(
            "| {engine}: provisioning rate, 8 parallel clients |"
        ));
        if haproxy && (engine == "PostgreSQL" || sysbench) {
            rows.push(format!("| {engine}: relay vs HAProxy floor, 1 client |"));
            rows.push(format!("| {engine}: relay vs HAProxy floor, 8 clients |"));
        }
    }
    rows.push("| PostgreSQL: bulk COPY throughput |".into());
    rows.push("| PostgreSQL: memory per idle session at 60 sessions (vs 64 KiB) |".into());
    rows.push("| MariaDB: memory per idle session at 30 sessions (vs 64 KiB) |".into());
    rows.push("| PostgreSQL: connection storm of 40, share of errors |".into());
    rows.push("| PostgreSQL: connection storm of 40, share of users left active |".into());
    if pgbouncer {
        for c in ["1 client", "8 clients", "32 clients"] {
            rows.push(format!("| PostgreSQL: relay TPS above pgbouncer, {c} |"));
            rows.push(format!(
                "| PostgreSQL: gateway CPU per query vs pgbouncer, {c} |"
            ));
        }
        assert!(
            text.contains("auth_type = cert"),
            "pgbouncer configuration shown"
        );
    } else {
        eprintln!("pgbouncer rows not checked: {stderr}");
    }
    for row in &rows {
        assert!(text.contains(row.as_str()), "missing {row}:\n{text}");
    }
    // Every summary row has a verdict, and the chart has one bar per summary row.
    let verdicts = text.matches("| PASS |").count() + text.matches("| MISS |").count();
    assert_eq!(verdicts, rows.len(), "{text}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg"));
    assert_eq!(svg.matches("<rect x=").count(), rows.len(), "{svg}");

    // The measurement rows behind the targets, on both engines.
    let section = |title: &str| -> String {
        let start = text
            .find(title)
            .unwrap_or_else(|| panic!("missing {title}:\n{text}"));
        let rest = &text[start + title.len()..];
        rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
    };
    let setup = section("## Connection setup");
    let (pg_setup, maria_setup) = setup.split_once("### MariaDB").expect("both engines");
    for part in [pg_setup, maria_setup] {
        for path in [
            "direct",
            "dbward (existing locked user)",
            "dbward (new user each time)",
        ] {
            assert!(
                part.contains(&format!("\n| {path} | ")),
                "connection row {path}:\n{part}"
            );
        }
        for path in [
            "dbward (existing locked user)",
            "dbward (new user each time)",
        ] {
            assert!(
                part.matches(&format!("\n| {path} | ")).count() >= 2,
                "teardown row {path}:\n{part}"
            );
        }
    }
    let relay = section("## Query relay");
    let (pg_relay, maria_relay) = relay.split_once("### MariaDB").expect("both engines");
    for clients in [1, 8] {
        for path in ["direct", "dbward", "dbward (query audit off)"] {
            assert!(
                pg_relay.contains(&format!("\n| {path} | {clients} | ")),
                "PostgreSQL relay row {path} {clients}:\n{pg_relay}"
            );
            if sysbench {
                assert!(
                    maria_relay.contains(&format!("\n| {path} | {clients} | ")),
                    "MariaDB relay row {path} {clients}:\n{maria_relay}"
                );
            }
        }
    }
    assert!(pg_relay.contains("\n| dbward | 32 | "), "{pg_relay}");
    if haproxy {
        assert!(
            pg_relay.contains("\n| HAProxy (TCP passthrough) | 8 | "),
            "{pg_relay}"
        );
        assert!(text.contains("mode tcp"), "HAProxy configuration shown");
    }
    if pgbouncer {
        assert!(pg_relay.contains("\n| pgbouncer | 32 | "), "{pg_relay}");
    }
    assert!(section("## What the statement audit costs").contains("| MariaDB | 8 |") || !sysbench);
    let storm = section("## Connection storm");
    assert!(storm.contains("\n| dbward | 40 | "), "{storm}");
    for section_title in [
        "## Gateway CPU per query",
        "## Machine",
        "## Exact commands",
        "| Memory |",
        "| MariaDB |",
        "pgbench -n -S",
        "sysbench oltp_point_select",
    ] {
        assert!(
            text.contains(section_title),
            "missing {section_title}:\n{text}"
        );
    }
}
