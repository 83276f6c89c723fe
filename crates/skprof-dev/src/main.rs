//! skprof-dev: developer tools kept out of the `skprof` binary.
//!
//! `skprof-dev bench-report` times `skprof report` on a synthetic recording
//! (`scripts/bench-report`).

mod bench_report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "skprof-dev", version, about = "skprof's developer tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time `skprof report` on a synthetic recording of 10 million calls,
    /// as a ratio to reading it (scripts/bench-report).
    BenchReport(bench_report::BenchReportArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::BenchReport(a) => bench_report::run(&a),
    }
}
