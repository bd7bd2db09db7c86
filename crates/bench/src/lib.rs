//! `dbward-bench`: measures dbward on PostgreSQL and MariaDB against direct connections,
//! HAProxy in TCP mode (the floor of an extra hop) and pgbouncer, in one run: connection setup
//! and teardown, query relay (pgbench, sysbench) with the CPU the process in the middle spends
//! per query, the statement audit on and off, bulk COPY, gateway memory per idle session (up to
//! thousands of sessions), provisioning rate and a connection storm; and writes the report with
//! the targets (`docs/BENCHMARKS.md`) and a chart (`docs/benchmarks.svg`).
//!
//! Start at [`run`]: it builds the world ([`env::Env`]), runs the measurements
//! ([`measure`]) and writes the report ([`report`]).

pub mod env;
pub mod haproxy;
pub mod maria;
pub mod measure;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

/// What `dbward-bench` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Small counts, a few seconds per measurement; the report goes to a temporary path unless
    /// `out` is given.
    pub quick: bool,
    /// Only these measurements (`memory`, `setup`, `relay`, `bulk`, `rate`, `storm`); all when
    /// empty.
    pub only: Vec<String>,
    /// Overrides the number of storm clients.
    pub storm_clients: Option<usize>,
    /// Report path (default: `docs/BENCHMARKS.md`, or a temporary file in quick mode).
    pub out: Option<PathBuf>,
    /// Chart path (default: `docs/benchmarks.svg` next to the default report, otherwise the
    /// report path with the extension `.svg`).
    pub chart: Option<PathBuf>,
    /// Run the gateway as `BIN start -c FILE` (a `dbward` binary) instead of this binary's own
    /// `serve-gateway` (the same `dbward_server::run`).
    pub gateway_bin: Option<PathBuf>,
    /// The command line shown in the report.
    pub command: String,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: PathBuf,
    pub chart: PathBuf,
    pub targets: Vec<report::Target>,
    pub pgbouncer_skipped: Option<String>,
}

/// The repository's `docs` directory.
fn docs_dir() -> PathBuf {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    docs.canonicalize().unwrap_or(docs)
}

/// pgbouncer's binary, or why there is none.
fn find_pgbouncer() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "pgbouncer is not installed (Debian package pgbouncer; scripts/bench installs it)"
                .to_string()
        })
}

fn progress(started: Instant, what: &str) {
    eprintln!("[{:7.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Runs every measurement and writes the report and the chart. Fails when any path failed
/// functionally.
pub fn run(opts: &Options) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut params = if opts.quick {
        measure::Params::quick()
    } else {
        measure::Params::full()
    };
    if let Some(n) = opts.storm_clients {
        params.storm_clients = n;
    }
    const MEASUREMENTS: [&str; 6] = ["memory", "setup", "relay", "bulk", "rate", "storm"];
    if let Some(unknown) = opts
        .only
        .iter()
        .find(|m| !MEASUREMENTS.contains(&m.as_str()))
    {
        anyhow::bail!(
            "unknown measurement {unknown:?} in --only (known: {})",
            MEASUREMENTS.join(", ")
        );
    }
    let wanted = |m: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == m);
    let (report_path, chart_path) = match (&opts.out, opts.quick) {
        (Some(out), _) => (
            out.clone(),
            opts.chart
                .clone()
                .unwrap_or_else(|| out.with_extension("svg")),
        ),
        (None, false) => (
            docs_dir().join("BENCHMARKS.md"),
            opts.chart
                .clone()
                .unwrap_or_else(|| docs_dir().join("benchmarks.svg")),
        ),
        (None, true) => {
            let dir = std::env::temp_dir().join(format!("dbward-bench-{}", std::process::id()));
            (
                dir.join("BENCHMARKS.md"),
                opts.chart
                    .clone()
                    .unwrap_or_else(|| dir.join("benchmarks.svg")),
            )
        }
    };
    let fd_limit = env::raise_fd_limit()?;
    let sizing = env::Sizing {
        new_users: params.conn_iterations,
        rate_users: params.rate_clients,
        storm_users: params.storm_clients,
        pgbench_scale: params.pgbench_scale,
        max_connections: (params.max_memory_sessions().max(2 * params.storm_clients) as u32 + 150)
            .max(200),
        maria_max_connections: (params.maria_memory_sessions as u32 + 150).max(200),
        sysbench_rows: params.sysbench_rows,
    };
    let gateway = match &opts.gateway_bin {
        Some(bin) => env::GatewayCommand::Cli(bin.clone()),
        None => env::GatewayCommand::BuiltIn(
            std::env::current_exe().context("locating the dbward-bench binary")?,
        ),
    };
    let gateway_command = match &gateway {
        env::GatewayCommand::Cli(_) => "dbward start -c dbward.yaml".to_string(),
        env::GatewayCommand::BuiltIn(_) => {
            "dbward-bench serve-gateway -c dbward.yaml (the same dbward_server::run as `dbward start`)"
                .to_string()
        }
    };
    let (pgbouncer, pgbouncer_skipped) = match find_pgbouncer() {
        Ok(p) => (Some(p), None),
        Err(why) => {
            eprintln!("skipping pgbouncer: {why}");
            (None, Some(why))
        }
    };
    progress(
        started,
        "starting PostgreSQL, MariaDB, the gateway, HAProxy and pgbouncer",
    );
    let mut world = env::Env::start(&sizing, &gateway, pgbouncer.clone())?;
    let postgres_version = world.pg.psql_super("select version()")?;
    let pgbouncer_version = pgbouncer.as_ref().and_then(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = measure::Results::default();
    let measured: anyhow::Result<()> = (|| {
        let world = &mut world;
        if wanted("memory") {
            progress(started, "memory per idle session (PostgreSQL)");
            rt.block_on(measure::memory(world, &params, &mut results))?;
            // A fresh gateway process: the memory of the PostgreSQL sessions, freed but kept
            // by the allocator, would otherwise hold the MariaDB sessions at no cost.
            world.gateway.restart(true)?;
            progress(started, "memory per idle session (MariaDB)");
            rt.block_on(maria::memory(world, &params, &mut results))?;
        }
        if wanted("setup") {
            progress(started, "connection setup and teardown (PostgreSQL)");
            rt.block_on(measure::connection_setup(world, &params, &mut results))?;
            progress(started, "connection setup and teardown (MariaDB)");
            rt.block_on(maria::connection_setup(world, &params, &mut results))?;
        }
        if wanted("relay") {
            progress(
                started,
                "query relay (pgbench -S, sysbench), audit on and off",
            );
            measure::relay(world, &params, &mut results)?;
        }
        if wanted("bulk") {
            progress(started, "bulk COPY");
            rt.block_on(measure::bulk(world, &params, &mut results))?;
        }
        if wanted("rate") {
            progress(started, "provisioning rate (PostgreSQL)");
            rt.block_on(measure::rate(world, &params, &mut results))?;
            progress(started, "provisioning rate (MariaDB)");
            rt.block_on(maria::rate(world, &params, &mut results))?;
        }
        if wanted("storm") {
            progress(started, "connection storm");
            rt.block_on(measure::storm(world, &params, &mut results))?;
        }
        Ok(())
    })();
    if let Err(err) = measured {
        let bouncer_log = world
            .pgbouncer
            .as_ref()
            .map(|b| b.log())
            .unwrap_or_default();
        return Err(err.context(format!(
            "a benchmark path failed\n--- gateway log (tail) ---\n{}\n--- pgbouncer log (tail) ---\n{bouncer_log}\n--- haproxy log (tail) ---\n{}\n--- postgres log (tail) ---\n{}\n--- mariadb log (tail) ---\n{}",
            world.gateway_log(),
            world.haproxy.as_ref().map(|h| h.log()).unwrap_or_default(),
            world.pg.log(),
            world.maria.server.log()
        )));
    }
    drop(rt);

    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default();
    let analysis = std::fs::read_to_string(&report_path).ok().and_then(|old| {
        let start = old.find(report::ANALYSIS_START)? + report::ANALYSIS_START.len();
        let end = old[start..].find(report::ANALYSIS_END)? + start;
        Some(old[start..end].to_string())
    });
    let chart_rel = if chart_path.parent() == report_path.parent() {
        chart_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
    } else {
        Some(chart_path.display().to_string())
    };
    let info = report::RunInfo {
        quick: opts.quick,
        date: date.clone(),
        command: opts.command.clone(),
        postgres_version,
        pgbouncer_version,
        pgbouncer_skipped: pgbouncer_skipped.clone(),
        pgbouncer_config: world.pgbouncer_config.clone(),
        gateway_config: world
            .gateway_config
            .lines()
            .map(|l| {
                if l.starts_with("data_dir:") {
                    "data_dir: $DIR/gateway-data".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        gateway_command,
        pg_notes: world.pg_notes.clone(),
        mariadb_version: world.maria.version.clone(),
        haproxy_config: world.haproxy.as_ref().map(|h| h.config.clone()),
        sysbench: world.maria.sysbench.is_some(),
        fd_limit,
        chart_file: chart_rel,
        analysis,
    };
    let targets = report::targets(&results);
    env::write_file(&report_path, &report::markdown(&results, &params, &info))?;
    env::write_file(&chart_path, &report::svg(&targets, &date))?;
    drop(world);
    progress(started, &format!("wrote {}", report_path.display()));
    Ok(Outcome {
        report: report_path,
        chart: chart_path,
        targets,
        pgbouncer_skipped,
    })
}

/// `dbward-bench serve-gateway -c FILE`: the gateway exactly as `dbward start -c FILE` runs it
/// (logging at `info` unless `RUST_LOG` says otherwise).
pub fn serve_gateway(config: &Path) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let config = dbward_model::Config::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(dbward_server::run(config))?;
    Ok(())
}
