//! Command-line interface: parsing, the tracing session shared by the
//! commands, and the background workload.

pub mod annotate;
pub mod bench;
pub mod check;
pub mod daemon;
pub mod export;
pub mod leaks;
pub mod record;
pub mod report;
pub mod stat;
pub mod top;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::bpf::probes::{LatencySample, ProbeMode};
use crate::error::EXIT_CODES_HELP;
use crate::model::ids::Family;
use crate::session::{LiveSource, SessionOptions, WorkloadOptions};
use crate::workload::WorkloadArgs;

#[derive(Debug, Parser)]
#[command(
    name = "skprof",
    version,
    about = "Live profiler for the BPF socket-lookup helpers (bpf_sk_lookup_tcp/udp, \
             bpf_skc_lookup_tcp and their tc/XDP/sock_addr variants, bpf_sk_release): \
             calls, latency, hit ratio and socket-reference balance.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this kernel allows (BTF, fentry, kprobes, helper functions,
    /// privileges) and whether skprof can trace here.
    Check(check::CheckArgs),
    /// Print per-helper calls, hit ratio, latency percentiles and references
    /// every INTERVAL seconds, COUNT times.
    Stat(stat::StatArgs),
    /// Interactive dashboard: calls/s, hit ratio, latency, references per
    /// (program, helper), with drill-down histograms and history; live, or
    /// from a recording (--replay).
    Top(top::TopArgs),
    /// List socket references acquired by traced lookups and not released
    /// after --older-than, grouped by program, helper and kernel stack, and
    /// every traced program run that ended holding one (exit code 5); with
    /// --watch, a daemon logging each leak once as structured lines.
    Leaks(leaks::LeaksArgs),
    /// Measure what tracing costs per program run: the workload's tc program
    /// with no tracer, with the helper probes, and with attribution too.
    Bench(bench::BenchArgs),
    /// Record what `stat` measures (every histogram and counter per
    /// program, helper and outcome, each interval) and leak events to a
    /// file, for `skprof report`.
    Record(record::RecordArgs),
    /// Summarize a recording as Markdown, JSON, CSV or one self-contained
    /// HTML page, plot its figures (SVG, PNG), or compare two (--compare
    /// BASE NEW, exit code 6 on a p99 regression).
    Report(report::ReportArgs),
    /// Run the built-in workload alone: BPF programs of skprof's own that
    /// call every lookup helper family with exact, known counts.
    Workload(WorkloadArgs),
    /// One BPF program's source lines (BTF line info) with, at every call
    /// site of a lookup helper or bpf_sk_release, its calls, hits, misses,
    /// latency, references acquired, where they were released and how many
    /// are outstanding (records call sites: --sites).
    Annotate(annotate::AnnotateArgs),
    /// Serve the measurements as Prometheus/OpenMetrics metrics on
    /// /metrics (a daemon: loopback by default, structured logs, SIGHUP
    /// rescans the programs).
    Export(export::ExportArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    crate::bpf::init_logging();
    match cli.command {
        Command::Check(a) => check::run(&a),
        Command::Stat(a) => stat::run(&a),
        Command::Top(a) => top::run(a),
        Command::Leaks(a) => leaks::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Workload(a) => crate::workload::run_cli(&a),
        Command::Export(a) => export::run(&a),
        Command::Annotate(a) => annotate::run(&a),
        Command::Record(a) => record::run(&a),
        Command::Report(a) => report::run(&a),
    }
}

/// `--attribute-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttributeBy {
    Auto,
    Trace,
    Stack,
}

/// Flags shared by every tracing command.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Probe kind: fentry/fexit (cheapest), kprobe/kretprobe, or auto
    /// (fentry, else kprobes).
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,
    /// Do not keep the reference ledger (acquire/release matching and
    /// hold times); lookups and releases are still counted.
    #[arg(long)]
    pub no_ledger: bool,
    /// Do not trace the BPF programs that call the helpers: no per-program
    /// figures, no per-run leak check, less overhead.
    #[arg(long)]
    pub no_attribution: bool,
    /// How calls are charged to programs: trace each program (fentry/fexit
    /// on it: exact, with the per-run leak check), match the helper's kernel
    /// stack against the programs' JIT images (no per-run check, a stack
    /// walk per call), or auto: trace, else stack (always stack in kprobe
    /// mode).
    #[arg(long, value_enum, default_value_t = AttributeBy::Auto, conflicts_with = "no_attribution")]
    pub attribute_by: AttributeBy,
    /// Measure at start what the probes cost per lookup here (about a
    /// second: the built-in tc program timed without, then with, the
    /// probes) and show it with the figures.
    #[arg(long)]
    pub calibrate: bool,
    /// Which calls are timed; every call is counted whatever this says.
    /// auto: every call while a helper is called less than every 50 us on
    /// a CPU, above that a random sample spaced 50 us apart on average
    /// (auto:DURATION sets the spacing); all: every call (the most
    /// overhead); N: one call in N, at random.
    #[arg(long, default_value = "auto", value_parser = LatencySample::parse)]
    pub latency_sample: LatencySample,
    /// BPF programs traced at most (the rest count as not traced).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=255))]
    pub max_programs: u64,
    /// Record the kernel stack of every acquired reference, so leaks are
    /// grouped by stack (a stack walk per acquire: costly on a hot path).
    #[arg(long)]
    pub stacks: bool,
    /// Record each lookup's and release's call site: the instruction and
    /// source line of the calling program (BTF line info), for rows by site
    /// (`stat --by site`), `annotate` and leaks that name their line. Every
    /// call then takes the probes' slow path (see docs/performance.md for
    /// the price).
    #[arg(long)]
    pub sites: bool,
    /// Outstanding references the ledger can hold (more are counted as
    /// drops).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub ledger_size: u32,
    /// (program, helper, outcome) aggregates the kernel can hold (more are
    /// counted as drops).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series: u32,
    /// Also run the built-in workload in the background, so there is
    /// something to see on an idle machine.
    #[arg(long)]
    pub workload: bool,
    /// Workload: lookups per case per round (small, so that every helper
    /// family shows up in every interval at the default rate).
    #[arg(long, default_value_t = 10, requires = "workload")]
    pub workload_count: u64,
    /// Workload: number of rounds, then the command ends (default: until
    /// the command ends).
    #[arg(long, requires = "workload")]
    pub workload_rounds: Option<u64>,
    /// Workload: target lookups per second, all cases together.
    #[arg(long, default_value_t = 2000.0, requires = "workload")]
    pub workload_rate: f64,
    /// Workload: how long to run, then the command ends (e.g. 30s, 2m).
    #[arg(long, value_parser = crate::duration::positive, requires = "workload")]
    pub workload_duration: Option<Duration>,
    /// Workload: load this many copies of its programs and run them one
    /// after the other (several programs calling the same helpers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16), requires = "workload")]
    pub workload_copies: u64,
    /// Workload: program families to drive (default: all).
    #[arg(long, value_enum, value_delimiter = ',', requires = "workload")]
    pub workload_family: Vec<FamilyArg>,
}

impl SessionArgs {
    /// The session's options (the command sets `places` and `ledger_trace`
    /// where it needs them).
    pub fn options(&self) -> SessionOptions {
        SessionOptions {
            probe_mode: self.probe_mode,
            ledger: !self.no_ledger,
            attribution: !self.no_attribution,
            attribute_by: match self.attribute_by {
                AttributeBy::Auto => crate::session::AttributeBy::Auto,
                AttributeBy::Trace => crate::session::AttributeBy::Trace,
                AttributeBy::Stack => crate::session::AttributeBy::Stack,
            },
            calibrate: self.calibrate,
            latency_sample: self.latency_sample,
            max_programs: self.max_programs,
            stacks: self.stacks,
            ledger_size: self.ledger_size,
            max_series: self.max_series,
            places: false,
            ledger_trace: false,
            sites: self.sites,
            workload: self.workload.then(|| WorkloadOptions {
                count: self.workload_count,
                rounds: self.workload_rounds,
                rate: self.workload_rate,
                duration: self.workload_duration,
                copies: self.workload_copies,
                families: self.workload_family.iter().map(|&f| f.into()).collect(),
            }),
        }
    }
}

/// The workload's line on stdout once it stopped (in JSON
/// `{"type":"workload","expected":...}`), if not printed yet.
pub fn print_workload(live: &mut LiveSource, json: bool) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    if let Some(expected) = live.workload_tally()? {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", crate::session::workload_line(&expected, json))
            .context("write to stdout")?;
        out.flush().context("flush stdout")?;
    }
    Ok(())
}

/// `--workload-family` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyArg {
    Generic,
    Tc,
    Xdp,
    SockAddr,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Family {
        match f {
            FamilyArg::Generic => Family::Generic,
            FamilyArg::Tc => Family::Tc,
            FamilyArg::Xdp => Family::Xdp,
            FamilyArg::SockAddr => Family::SockAddr,
        }
    }
}

pub fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v.is_finite() && (0.01..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("'{s}' is out of range (0.01 to 86400 seconds)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals_are_validated() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("abc").is_err());
        assert!(parse_interval("NaN").is_err());
    }

    #[test]
    fn stat_parses_positional_interval_and_count() {
        let cli =
            Cli::try_parse_from(["skprof", "stat", "2", "5", "--json", "--units", "ns"]).unwrap();
        match cli.command {
            Command::Stat(a) => {
                assert_eq!((a.interval, a.count, a.json), (2.0, Some(5), true));
                assert_eq!(a.units, stat::Units::Ns);
            }
            _ => panic!("not stat"),
        }
        assert!(Cli::try_parse_from(["skprof", "stat", "--workload-rounds", "1"]).is_err());
    }
}
