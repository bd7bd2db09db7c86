//! Turns results into the report (`docs/BENCHMARKS.md`) and the chart (`docs/benchmarks.svg`):
//! the targets with their ratios and PASS/MISS, the figures per measurement, the machine, the
//! exact commands and configuration.

use std::fmt::Write as _;

use crate::measure::{
    Memory, Params, RateRow, RelayRow, Results, Series, DBWARD, DBWARD_NEW, DBWARD_NO_AUDIT,
    DBWARD_STEADY, DIRECT, HAPROXY, PGBOUNCER,
};
use crate::stats::{median, percentile};

/// Markers around the hand-written analysis, which regenerating the report keeps.
pub const ANALYSIS_START: &str = "<!-- analysis:start (kept when the report is regenerated) -->";
pub const ANALYSIS_END: &str = "<!-- analysis:end -->";

/// Everything about the run that is not a measurement.
pub struct RunInfo {
    pub quick: bool,
    pub date: String,
    pub command: String,
    pub postgres_version: String,
    pub pgbouncer_version: Option<String>,
    pub pgbouncer_skipped: Option<String>,
    pub pgbouncer_config: Option<String>,
    pub gateway_config: String,
    pub gateway_command: String,
    pub pg_notes: Vec<String>,
    pub mariadb_version: String,
    pub haproxy_config: Option<String>,
    /// Whether sysbench was there to measure the MariaDB relay.
    pub sysbench: bool,
    pub fd_limit: u64,
    pub chart_file: Option<String>,
    pub analysis: Option<String>,
}

/// One target: a ratio against its baseline and the bound it must meet.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub ratio: f64,
    pub bound: f64,
    /// `true`: the ratio must be at least the bound; `false`: at most.
    pub at_least: bool,
    /// Strictly above the bound (for "faster than pgbouncer").
    pub strict: bool,
}

impl Target {
    pub fn pass(&self) -> bool {
        if !self.ratio.is_finite() {
            return false;
        }
        match (self.at_least, self.strict) {
            (true, true) => self.ratio > self.bound,
            (true, false) => self.ratio >= self.bound,
            (false, _) => self.ratio <= self.bound,
        }
    }

    pub fn bound_text(&self) -> String {
        let op = match (self.at_least, self.strict) {
            (true, true) => ">",
            (true, false) => "≥",
            (false, _) => "≤",
        };
        format!("{op} {:.2}×", self.bound)
    }
}

fn p50(results: &[Series], path: &str) -> Option<f64> {
    results
        .iter()
        .find(|s| s.path == path)
        .and_then(|s| median(&s.samples))
}

fn relay_row<'a>(rows: &'a [RelayRow], path: &str, clients: u32) -> Option<&'a RelayRow> {
    rows.iter().find(|x| x.path == path && x.clients == clients)
}

fn relay_tps(rows: &[RelayRow], path: &str, clients: u32) -> Option<f64> {
    relay_row(rows, path, clients).and_then(|x| median(&x.tps))
}

fn relay_cpu(rows: &[RelayRow], path: &str, clients: u32) -> Option<f64> {
    relay_row(rows, path, clients).and_then(|x| median(&x.cpu_us))
}

fn at_most(name: String, measured: String, ratio: f64, bound: f64) -> Target {
    Target {
        name,
        measured,
        ratio,
        bound,
        at_least: false,
        strict: false,
    }
}

fn at_least(name: String, measured: String, ratio: f64, bound: f64) -> Target {
    Target {
        name,
        measured,
        ratio,
        bound,
        at_least: true,
        strict: false,
    }
}

/// Connection setup, relay against the HAProxy floor and provisioning rate of one engine.
fn engine_targets(
    t: &mut Vec<Target>,
    engine: &str,
    connect: &[Series],
    relay: &[RelayRow],
    rate: &[RateRow],
) {
    let direct_p50 = p50(connect, DIRECT);
    for (path, what, bound) in [
        (DBWARD_STEADY, "existing locked user", 1.5),
        (DBWARD_NEW, "new user", 2.0),
    ] {
        if let (Some(d), Some(s)) = (direct_p50, p50(connect, path)) {
            t.push(at_most(
                format!("{engine}: connection setup, {what} (p50)"),
                format!("{s:.2} ms vs {d:.2} ms direct"),
                s / d,
                bound,
            ));
        }
    }
    for clients in [1u32, 8] {
        if let (Some(h), Some(w)) = (
            relay_tps(relay, HAPROXY, clients),
            relay_tps(relay, DBWARD, clients),
        ) {
            t.push(at_least(
                format!(
                    "{engine}: relay vs HAProxy floor, {clients} client{}",
                    plural(clients)
                ),
                format!("{w:.0} vs {h:.0} per second via HAProxy"),
                w / h,
                0.95,
            ));
        }
    }
    let per_s = |p: &str| rate.iter().find(|x| x.path == p).map(|x| x.per_second());
    if let (Some(d), Some(w)) = (per_s(DIRECT), per_s(DBWARD)) {
        t.push(at_least(
            format!("{engine}: provisioning rate, 8 parallel clients"),
            format!("{w:.1} vs {d:.1} sessions/s direct"),
            w / d,
            0.7,
        ));
    }
}

/// The targets of the issue, computed from the results (a target whose inputs are missing,
/// e.g. pgbouncer not installed, is left out).
pub fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    engine_targets(&mut t, "PostgreSQL", &r.connect, &r.relay, &r.rate);
    let mut clients: Vec<u32> = r.relay.iter().map(|x| x.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    for &c in &clients {
        if let (Some(b), Some(w)) = (
            relay_tps(&r.relay, PGBOUNCER, c),
            relay_tps(&r.relay, DBWARD, c),
        ) {
            t.push(Target {
                name: format!(
                    "PostgreSQL: relay TPS above pgbouncer, {c} client{}",
                    plural(c)
                ),
                measured: format!("{w:.0} vs {b:.0} TPS pgbouncer"),
                ratio: w / b,
                bound: 1.0,
                at_least: true,
                strict: true,
            });
        }
    }
    for &c in &clients {
        if let (Some(b), Some(w)) = (
            relay_cpu(&r.relay, PGBOUNCER, c),
            relay_cpu(&r.relay, DBWARD, c),
        ) {
            t.push(at_most(
                format!(
                    "PostgreSQL: gateway CPU per query vs pgbouncer, {c} client{}",
                    plural(c)
                ),
                format!("{w:.1} vs {b:.1} µs pgbouncer"),
                w / b,
                1.0,
            ));
        }
    }
    if let (Some(d), Some(w)) = (p50(&r.bulk, DIRECT), p50(&r.bulk, DBWARD)) {
        t.push(at_least(
            "PostgreSQL: bulk COPY throughput".into(),
            format!("{w:.0} vs {d:.0} MB/s direct"),
            w / d,
            0.9,
        ));
    }
    if let Some(m) = r.memory.iter().max_by_key(|m| m.sessions) {
        let per = m.per_session_kib();
        t.push(at_most(
            format!(
                "PostgreSQL: memory per idle session at {} sessions (vs 64 KiB)",
                m.sessions
            ),
            format!("{per:.1} KiB per session"),
            per / 64.0,
            1.0,
        ));
    }
    if let Some(s) = r.storm.iter().find(|s| s.path == DBWARD) {
        t.push(at_most(
            format!(
                "PostgreSQL: connection storm of {}, share of errors",
                s.clients
            ),
            format!("{} errors", s.errors),
            s.errors as f64 / s.clients.max(1) as f64,
            0.0,
        ));
        t.push(at_most(
            format!(
                "PostgreSQL: connection storm of {}, share of users left active",
                s.clients
            ),
            format!("{} users still able to log in", s.left_active),
            s.left_active as f64 / s.clients.max(1) as f64,
            0.0,
        ));
    }
    engine_targets(
        &mut t,
        "MariaDB",
        &r.maria_connect,
        &r.maria_relay,
        &r.maria_rate,
    );
    if let Some(m) = &r.maria_memory {
        let per = m.per_session_kib();
        t.push(at_most(
            format!(
                "MariaDB: memory per idle session at {} sessions (vs 64 KiB)",
                m.sessions
            ),
            format!("{per:.1} KiB per session"),
            per / 64.0,
            1.0,
        ));
    }
    t
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Machine description from `/proc`.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let mut out = vec![
        ("CPU".to_string(), model),
        ("Logical CPUs".to_string(), cpus.to_string()),
    ];
    if let Some(mhz) = mhz {
        out.push(("CPU MHz (at report time)".into(), mhz));
    }
    out.push((
        "Memory".into(),
        format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
    ));
    out.push(("Kernel".into(), kernel));
    out.push(("OS".into(), os));
    out
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

/// The Markdown report.
pub fn markdown(r: &Results, p: &Params, info: &RunInfo) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Reproduce with:\n\n```sh\n{}\n```\n\nGenerated {} by `dbward-bench`{}. All paths were measured in the same run, interleaved (round robin per iteration or per round), against one PostgreSQL and one MariaDB started for the run. Ratios are dbward against the baseline named in the row; the figures below the summary are the raw measurements.\n",
        info.command,
        info.date,
        if info.quick { " in quick mode (small counts, not representative)" } else { "" }
    );
    let _ = writeln!(w, "## Summary against the targets\n");
    let _ = writeln!(w, "| Target | Measured | Ratio | Bound | Result |");
    let _ = writeln!(w, "|---|---|---:|---:|---|");
    for t in targets(r) {
        let _ = writeln!(
            w,
            "| {} | {} | {:.2}× | {} | {} |",
            t.name,
            t.measured,
            t.ratio,
            t.bound_text(),
            if t.pass() { "PASS" } else { "MISS" }
        );
    }
    if let Some(why) = &info.pgbouncer_skipped {
        let _ = writeln!(w, "\npgbouncer was not measured: {why}.");
    }
    if info.haproxy_config.is_none() {
        let _ = writeln!(w, "\nHAProxy was not measured: it is not installed.");
    }
    if !info.sysbench {
        let _ = writeln!(
            w,
            "\nThe MariaDB relay was not measured: sysbench is not installed."
        );
    }
    if let Some(chart) = &info.chart_file {
        let _ = writeln!(
            w,
            "\n![Ratios against the baselines, with each target]({chart})"
        );
    }

    if let Some(analysis) = &info.analysis {
        let _ = writeln!(w, "\n{ANALYSIS_START}\n{}\n{ANALYSIS_END}", analysis.trim());
    }

    cpu_section(w, r);

    let _ = writeln!(w, "\n## Connection setup\n");
    let _ = writeln!(
        w,
        "Time from starting the TCP connection until the server is ready for queries (TCP, TLS with a client certificate, authentication; through dbward also access checks and provisioning), {} iterations per path after {} warm-up round(s). Every connection then ran `select current_user` (MariaDB: `SELECT CURRENT_USER()`) and had to return the expected user (not timed). TLS session resumption is off in the client, so every connection pays a full handshake, as a new `psql` or `mariadb` process does.\n",
        p.conn_iterations, p.conn_warmup.max(1)
    );
    let _ = writeln!(w, "### PostgreSQL\n");
    connect_table(w, &r.connect);
    let _ = writeln!(
        w,
        "\nTeardown: time from the client's disconnect (Terminate sent, socket closed) until `pg_roles.rolcanlogin` of the user is false again, polled every 2 ms through a superuser connection.\n"
    );
    teardown_table(w, &r.teardown);
    let _ = writeln!(w, "\n### MariaDB\n");
    connect_table(w, &r.maria_connect);
    let _ = writeln!(
        w,
        "\nTeardown: time from the client's disconnect (`COM_QUIT`, socket closed) until `account_locked` of `user@%` in `mysql.global_priv` is true again, polled every 2 ms through a monitoring connection.\n"
    );
    teardown_table(w, &r.maria_teardown);

    let _ = writeln!(w, "\n## Query relay\n");
    let _ = writeln!(w, "### PostgreSQL (`pgbench -S`)\n");
    let _ = writeln!(
        w,
        "`pgbench -n -S -T {} -c C -j C` (select-only, scale {}), {} round(s) per path and client count; the table shows the median TPS (without initial connection time), the median average latency and the median CPU of the process in the middle per query, with every round's TPS.\n",
        p.pgbench_seconds, p.pgbench_scale, p.pgbench_rounds
    );
    relay_table(w, &r.relay, "TPS");
    let _ = writeln!(w, "\n### MariaDB (sysbench `oltp_point_select`)\n");
    let _ = writeln!(
        w,
        "`sysbench oltp_point_select --threads=C --time={} --db-ps-mode=disable --mysql-ssl=on` (one primary-key `SELECT` per transaction, sent as a text query; {} rows), {} round(s) per path and thread count; queries per second, average latency, and the CPU of the process in the middle per query.\n",
        p.pgbench_seconds, p.sysbench_rows, p.pgbench_rounds
    );
    relay_table(w, &r.maria_relay, "Queries/s");

    audit_section(w, r);

    let _ = writeln!(w, "\n## Bulk transfer (COPY TO STDOUT)\n");
    let _ = writeln!(
        w,
        "`COPY (SELECT repeat('x', 1000) FROM generate_series(1, {})) TO STDOUT`: {:.1} MB per run (every run's byte count was checked), read with tokio-postgres `copy_out`; MB = 10^6 bytes, {} round(s).\n",
        p.bulk_rows,
        r.bulk_bytes as f64 / 1e6,
        p.bulk_rounds
    );
    let _ = writeln!(w, "| Path | MB/s (median) | MB/s per round |");
    let _ = writeln!(w, "|---|---:|---|");
    for s in &r.bulk {
        let rounds: Vec<String> = s.samples.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            s.path,
            fmt_opt(median(&s.samples), 0),
            rounds.join(", ")
        );
    }

    let _ = writeln!(w, "\n## Gateway memory per idle session\n");
    let _ = writeln!(
        w,
        "The gateway runs as its own process; `VmRSS` from `/proc/<pid>/status` after 8 warm-up sessions, then with idle sessions open (each had run `select current_user`; the database showed one backend or connection per session). PostgreSQL sessions are added in steps and all stay open until the last step; the MariaDB sessions are measured in a freshly started gateway process.\n"
    );
    let _ = writeln!(
        w,
        "| Engine | Sessions | RSS before KiB | RSS with sessions KiB | KiB per session |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|");
    let rows = r
        .memory
        .iter()
        .map(|m| ("PostgreSQL", m))
        .chain(r.maria_memory.iter().map(|m| ("MariaDB", m)));
    for (engine, m) in rows {
        memory_row(w, engine, m);
    }

    let _ = writeln!(w, "\n## Provisioning rate\n");
    let _ = writeln!(
        w,
        "{} parallel clients, each connecting, running `select current_user` and disconnecting in a loop; {} round(s) of {:.1} s per path. Through dbward every client is a different dbward user with `create_db_user_mode: keep`, so every session unlocks and grants its database user and its end locks it again.\n",
        p.rate_clients,
        p.rate_rounds,
        p.rate_round.as_secs_f64()
    );
    let _ = writeln!(w, "| Engine | Path | Sessions | Seconds | Sessions/s |");
    let _ = writeln!(w, "|---|---|---:|---:|---:|");
    let rows = r
        .rate
        .iter()
        .map(|x| ("PostgreSQL", x))
        .chain(r.maria_rate.iter().map(|x| ("MariaDB", x)));
    for (engine, x) in rows {
        let _ = writeln!(
            w,
            "| {engine} | {} | {} | {:.2} | {:.1} |",
            x.path,
            x.sessions,
            x.seconds,
            x.per_second()
        );
    }

    let _ = writeln!(w, "\n## Connection storm\n");
    let _ = writeln!(
        w,
        "{} clients start connecting at the same moment (a barrier releases them), each runs `select current_user` and disconnects. Through dbward every client is a different dbward user the database has never seen (`create_db_user_mode: keep`, so each session creates its user and its end locks it), connecting from its own loopback address (127.0.1.2, 127.0.1.3, …), as a crowd arrives from many addresses: the gateway admits at most `max_pending_per_address` (64) handshakes at once from one address and closes the rest. The direct path uses one database user for every client, from 127.0.0.1 (PostgreSQL's `pg_hba.conf` admits only that), for reference. Afterwards every storm user must be locked again: *left active* counts those still able to log in when the wait (at most 60 s) ended, *settled* is the time from the last disconnect until none was left.\n",
        p.storm_clients
    );
    let _ = writeln!(
        w,
        "| Path | Clients | p50 ms | p99 ms | max ms | Errors | Left active | Settled ms |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in &r.storm {
        let max = s.setup_ms.iter().copied().fold(f64::NAN, f64::max);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.path,
            s.clients,
            fmt_opt(percentile(&s.setup_ms, 50.0), 2),
            fmt_opt(percentile(&s.setup_ms, 99.0), 2),
            fmt_opt(max.is_finite().then_some(max), 2),
            s.errors,
            if s.path == DBWARD {
                s.left_active.to_string()
            } else {
                "–".into()
            },
            if s.path == DBWARD {
                format!("{:.0}", s.settled_ms)
            } else {
                "–".into()
            },
        );
    }
    for s in r.storm.iter().filter(|s| s.first_error.is_some()) {
        let _ = writeln!(
            w,
            "\nFirst error on {}: `{}`",
            s.path,
            s.first_error
                .as_deref()
                .unwrap_or_default()
                .replace('`', "'")
        );
    }

    let _ = writeln!(w, "\n## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let _ = writeln!(w, "| PostgreSQL | {} |", info.postgres_version);
    let _ = writeln!(w, "| MariaDB | {} |", info.mariadb_version);
    if let Some(v) = &info.pgbouncer_version {
        let _ = writeln!(w, "| pgbouncer | {v} |");
    }
    let _ = writeln!(w, "| Open-file limit | {} |", info.fd_limit);
    let _ = writeln!(
        w,
        "\nPostgreSQL, MariaDB, pgbouncer, HAProxy, the gateway and the clients share this machine's CPUs."
    );

    let _ = writeln!(w, "\n## What each path is\n");
    let _ = writeln!(w, "- **direct**: TLS to the database with a db-client certificate `CN=bench_direct` from dbward's db-client CA, verifying the server against dbward's db CA (PostgreSQL: `sslmode=verify-full`, `pg_hba.conf` is `hostssl all all 127.0.0.1/32 cert`; MariaDB: `REQUIRE SUBJECT '/CN=bench_direct'`). The user exists and may read the benchmark tables.");
    let _ = writeln!(w, "- **HAProxy (TCP passthrough)**: the direct path's client and certificate, through HAProxy in `mode tcp`: the TLS bytes pass untouched, TLS is end to end between client and database. It pays neither TLS nor protocol work, only the second pair of loopback sockets: the floor of any extra hop.");
    let _ = writeln!(w, "- **dbward**: TLS to the gateway (`verify-full` against dbward's host CA) with a dbward database certificate for the route `bench` (PostgreSQL) or `bench-maria` (MariaDB); role `bench-keep` has `create_db_user_mode: keep` and `db_roles: [bench_reader]`. The gateway connects to the database over TLS with a db-client certificate `CN=<user>`. Every client statement is audited (`db.session.query`) unless the row says *query audit off*. *Existing locked user*: the same dbward user every time, locked between sessions. *New user each time*: a dbward user the database has never seen, created in that session.");
    let _ = writeln!(w, "- **pgbouncer** (PostgreSQL only): session pooling; clients connect with TLS and a db-client certificate `CN=bench_pgb` (`auth_type = cert`, `client_tls_sslmode = verify-full`); pgbouncer connects to PostgreSQL with TLS (`server_tls_sslmode = verify-full`) presenting its one client certificate `CN=bench_pgb`. Server connections are pooled, so after the first connection pgbouncer's clients skip the PostgreSQL backend start and its TLS handshake.");
    let _ = writeln!(w, "- The gateway is a separate process started as `{}` with this configuration (the audit comparison restarts it with `audit_queries: false` added, then again without):\n\n```yaml\n{}```", info.gateway_command, info.gateway_config);
    if let Some(cfg) = &info.pgbouncer_config {
        let _ = writeln!(w, "\npgbouncer configuration (`$DIR` is the run's temporary directory):\n\n```ini\n{cfg}```");
    }
    if let Some(cfg) = &info.haproxy_config {
        let _ = writeln!(
            w,
            "\nHAProxy configuration (`haproxy -db -f haproxy.cfg`):\n\n```\n{cfg}```"
        );
    }
    let _ = writeln!(w, "\nPostgreSQL: the test kit's configuration (`ssl = on`, `fsync = off`, `synchronous_commit = off`, `full_page_writes = off`, `max_connections = 200`, certificate authentication over TCP). MariaDB: the test kit's configuration (TLS with client certificates verified against the db-client CA, `max_connections` raised at run time to fit the idle sessions).");
    for n in &info.pg_notes {
        let _ = writeln!(w, "Changed for this run: {n}.");
    }

    let _ = writeln!(w, "\n## Exact commands\n");
    let _ = writeln!(w, "```sh\n# setup, as the superuser over the Unix socket\npgbench -i -q -s {} -h $SOCKET_DIR -p $PGPORT -U postgres postgres\nsysbench oltp_point_select --db-driver=mysql --mysql-socket=$SOCKET --mysql-user=root --mysql-db=sbtest --tables=1 --table-size={} prepare\n# relay, per path (PORT and USER of the path)\nPGSSLMODE=verify-full PGSSLROOTCERT=$CA PGSSLCERT=$CRT PGSSLKEY=$KEY \\\n  pgbench -n -S -T {} -c C -j C -h 127.0.0.1 -p $PORT -U $USER postgres\n# in a directory holding client-cert.pem, client-key.pem and cacert.pem of the path\nsysbench oltp_point_select --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port=$PORT \\\n  --mysql-user=$USER --mysql-db=sbtest --mysql-ssl=on --db-ps-mode=disable \\\n  --tables=1 --table-size={} --threads=C --time={} run\n```", p.pgbench_scale, p.sysbench_rows, p.pgbench_seconds, p.sysbench_rows, p.pgbench_seconds);
    let _ = writeln!(w, "\nCPU per query: user plus system time of the process in the middle (the gateway, pgbouncer or HAProxy; fields 14 and 15 of `/proc/<pid>/stat`, all threads) over the run, divided by the queries the run reported. Connection setup, COPY, memory, rate and the storm use tokio-postgres with rustls (the `ring` provider), and for MariaDB dbward's own MySQL-protocol client code, from the `dbward-bench` process.");
    md
}

fn connect_table(w: &mut String, rows: &[Series]) {
    let _ = writeln!(w, "| Path | p50 ms | p99 ms | mean ms | n |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|");
    for s in rows {
        let mean = s.samples.iter().sum::<f64>() / s.samples.len().max(1) as f64;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {mean:.2} | {} |",
            s.path,
            fmt_opt(percentile(&s.samples, 50.0), 2),
            fmt_opt(percentile(&s.samples, 99.0), 2),
            s.samples.len()
        );
    }
}

fn teardown_table(w: &mut String, rows: &[Series]) {
    let _ = writeln!(w, "| Path | p50 ms | p99 ms | n |");
    let _ = writeln!(w, "|---|---:|---:|---:|");
    for s in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            s.path,
            fmt_opt(percentile(&s.samples, 50.0), 2),
            fmt_opt(percentile(&s.samples, 99.0), 2),
            s.samples.len()
        );
    }
}

fn relay_table(w: &mut String, rows: &[RelayRow], unit: &str) {
    let _ = writeln!(
        w,
        "| Path | Clients | {unit} (median) | Latency avg ms | CPU µs per query | {unit} per round |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---|");
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|x| x.clients);
    for x in &sorted {
        let rounds: Vec<String> = x.tps.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            x.path,
            x.clients,
            fmt_opt(median(&x.tps), 0),
            fmt_opt(median(&x.latency_ms), 3),
            fmt_opt(median(&x.cpu_us), 1),
            rounds.join(", ")
        );
    }
}

fn memory_row(w: &mut String, engine: &str, m: &Memory) {
    let _ = writeln!(
        w,
        "| {engine} | {} | {} | {} | {:.1} |",
        m.sessions,
        m.rss_before_kib,
        m.rss_after_kib,
        m.per_session_kib()
    );
}

/// CPU of the process in the middle per query, side by side, with dbward's ratio to
/// pgbouncer and to HAProxy.
fn cpu_section(w: &mut String, r: &Results) {
    let _ = writeln!(w, "\n## Gateway CPU per query\n");
    let _ = writeln!(
        w,
        "User plus system CPU of the process in the middle over a relay run, divided by the queries relayed (medians over the rounds; from the relay runs below). On a machine whose two CPUs also run the database and the clients, this is what decides throughput at many clients.\n"
    );
    let _ = writeln!(
        w,
        "| Engine | Clients | dbward µs | dbward, audit off µs | pgbouncer µs | HAProxy µs | dbward / pgbouncer | dbward / HAProxy |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (engine, rows) in [("PostgreSQL", &r.relay), ("MariaDB", &r.maria_relay)] {
        let mut clients: Vec<u32> = rows.iter().map(|x| x.clients).collect();
        clients.sort_unstable();
        clients.dedup();
        for c in clients {
            let d = relay_cpu(rows, DBWARD, c);
            let b = relay_cpu(rows, PGBOUNCER, c);
            let h = relay_cpu(rows, HAPROXY, c);
            let ratio = |x: Option<f64>| match (d, x) {
                (Some(d), Some(x)) if x > 0.0 => format!("{:.2}×", d / x),
                _ => "–".into(),
            };
            let _ = writeln!(
                w,
                "| {engine} | {c} | {} | {} | {} | {} | {} | {} |",
                fmt_opt(d, 1),
                fmt_opt(relay_cpu(rows, DBWARD_NO_AUDIT, c), 1),
                fmt_opt(b, 1),
                fmt_opt(h, 1),
                ratio(b),
                ratio(h)
            );
        }
    }
}

/// The same dbward relay runs with the statement audit on and off.
fn audit_section(w: &mut String, r: &Results) {
    let _ = writeln!(w, "\n## What the statement audit costs\n");
    let _ = writeln!(
        w,
        "The dbward relay runs above (every statement recorded as `db.session.query`) against the same runs with the gateway restarted with `audit_queries: false` (nothing else changes; session and provisioning events are still recorded), in the same rounds.\n"
    );
    let _ = writeln!(
        w,
        "| Engine | Clients | Throughput, audit on | Throughput, audit off | On / off | CPU µs, audit on | CPU µs, audit off | Audit share of CPU |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (engine, rows) in [("PostgreSQL", &r.relay), ("MariaDB", &r.maria_relay)] {
        let mut clients: Vec<u32> = rows
            .iter()
            .filter(|x| x.path == DBWARD_NO_AUDIT)
            .map(|x| x.clients)
            .collect();
        clients.sort_unstable();
        for c in clients {
            let (on, off) = (
                relay_tps(rows, DBWARD, c),
                relay_tps(rows, DBWARD_NO_AUDIT, c),
            );
            let (con, coff) = (
                relay_cpu(rows, DBWARD, c),
                relay_cpu(rows, DBWARD_NO_AUDIT, c),
            );
            let ratio = match (on, off) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let share = match (con, coff) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.0}%", (a - b) / a * 100.0),
                _ => "–".into(),
            };
            let _ = writeln!(
                w,
                "| {engine} | {c} | {} | {} | {ratio} | {} | {} | {share} |",
                fmt_opt(on, 0),
                fmt_opt(off, 0),
                fmt_opt(con, 1),
                fmt_opt(coff, 1)
            );
        }
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of every target's ratio, with the target bound marked on each row
/// and the baseline (1.0×) across the chart.
pub fn svg(targets: &[Target], date: &str) -> String {
    let label_w = 470.0;
    let plot_w = 470.0;
    let right = 150.0;
    let row_h = 34.0;
    let top = 50.0;
    let width = label_w + plot_w + right;
    let height = top + row_h * targets.len() as f64 + 50.0;
    let max = targets
        .iter()
        .flat_map(|t| [t.ratio, t.bound])
        .filter(|v| v.is_finite())
        .fold(2.0_f64, f64::max)
        * 1.1;
    let x = |v: f64| label_w + (v.clamp(0.0, max) / max) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"13\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">dbward against its baselines (ratio; the black tick on each row is the target)</text>\n<text x=\"10\" y=\"40\" fill=\"#555\">{}; green: target met, red: missed</text>",
        xml(date)
    );
    // Grid and axis labels.
    let mut g = 0.0;
    while g <= max + 1e-9 {
        let gx = x(g);
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{top:.0}\" x2=\"{gx:.1}\" y2=\"{:.0}\" stroke=\"#ddd\"/>\n<text x=\"{gx:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{g:.1}×</text>",
            top + row_h * targets.len() as f64,
            top + row_h * targets.len() as f64 + 18.0
        );
        g += 0.5;
    }
    for (i, t) in targets.iter().enumerate() {
        let y = top + row_h * i as f64;
        let color = if t.pass() { "#2e8b57" } else { "#c0392b" };
        let bar = if t.ratio.is_finite() {
            x(t.ratio) - label_w
        } else {
            0.0
        };
        let tx = x(t.bound);
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n<rect x=\"{label_w:.0}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{:.2}× (target {}) {}</text>",
            label_w - 8.0,
            y + row_h * 0.62,
            xml(&t.name),
            y + 6.0,
            row_h - 12.0,
            y + 2.0,
            y + row_h - 2.0,
            label_w + plot_w + 6.0,
            y + row_h * 0.62,
            t.ratio,
            xml(&t.bound_text()),
            if t.pass() { "PASS" } else { "MISS" }
        );
    }
    let bx = x(1.0);
    let _ = writeln!(
        s,
        "<line x1=\"{bx:.1}\" y1=\"{:.0}\" x2=\"{bx:.1}\" y2=\"{:.0}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>",
        top - 4.0,
        top + row_h * targets.len() as f64
    );
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ratio: f64, bound: f64, at_least: bool, strict: bool) -> Target {
        Target {
            name: "x".into(),
            measured: String::new(),
            ratio,
            bound,
            at_least,
            strict,
        }
    }

    #[test]
    fn targets_pass_by_their_direction() {
        assert!(t(1.4, 1.5, false, false).pass());
        assert!(!t(1.6, 1.5, false, false).pass());
        assert!(t(0.9, 0.85, true, false).pass());
        assert!(!t(0.8, 0.85, true, false).pass());
        assert!(!t(1.0, 1.0, true, true).pass());
        assert!(!t(f64::NAN, 1.0, false, false).pass());
    }

    #[test]
    fn chart_escapes_labels_and_has_a_row_per_target() {
        let mut a = t(1.2, 1.5, false, false);
        a.name = "a <b> & c".into();
        let svg = svg(&[a, t(0.5, 0.9, true, false)], "today");
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("PASS").count(), 1);
        assert_eq!(svg.matches("MISS").count(), 1);
    }
}
