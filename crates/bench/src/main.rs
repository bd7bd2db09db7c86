//! `dbward-bench`: the benchmark command line (see the library for what it measures).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks dbward on PostgreSQL and MariaDB against direct connections, HAProxy (TCP
/// passthrough) and pgbouncer, in one run, and writes docs/BENCHMARKS.md and
/// docs/benchmarks.svg.
#[derive(Parser)]
#[command(name = "dbward-bench")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Small counts (a few seconds per measurement); writes to a temporary path unless --out.
    #[arg(long)]
    quick: bool,
    /// Run only these measurements (comma separated: memory, setup, relay, bulk, rate,
    /// storm); the report then holds only their rows.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Vec<String>,
    /// The number of clients of the connection storm (default 500, or 40 with --quick).
    #[arg(long, value_name = "N")]
    storm_clients: Option<usize>,
    /// Where to write the report (default docs/BENCHMARKS.md; a temporary path with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the chart (default docs/benchmarks.svg, or the report path with .svg).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Run the gateway as `BIN start -c FILE` (a built `dbward`) instead of the built-in one.
    #[arg(long, value_name = "BIN")]
    gateway_bin: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway as `dbward start` does (used by the benchmark for its child process).
    #[command(hide = true)]
    ServeGateway {
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ServeGateway { config }) = cli.command {
        return match dbward_bench::serve_gateway(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut command = "scripts/bench".to_string();
    for arg in std::env::args().skip(1) {
        command.push(' ');
        command.push_str(&arg);
    }
    let opts = dbward_bench::Options {
        quick: cli.quick,
        only: cli.only,
        storm_clients: cli.storm_clients,
        out: cli.out,
        chart: cli.chart,
        gateway_bin: cli.gateway_bin,
        command,
    };
    match dbward_bench::run(&opts) {
        Ok(outcome) => {
            for t in &outcome.targets {
                println!(
                    "{:<5} {:<50} {:>6.2}× ({}) {}",
                    if t.pass() { "PASS" } else { "MISS" },
                    t.name,
                    t.ratio,
                    t.bound_text(),
                    t.measured
                );
            }
            println!("report: {}", outcome.report.display());
            println!("chart:  {}", outcome.chart.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
