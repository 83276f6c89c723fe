//! Command-line interface: parsing, the tracing session shared by the
//! commands, and the background workload.

pub mod bench;
pub mod calibrate;
pub mod check;
pub mod daemon;
pub mod export;
pub mod leaks;
pub mod record;
pub mod report;
pub mod stat;
pub mod top;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

use crate::attrib::Attributor;
use crate::bpf::probes::{LatencySample, ProbeKind, ProbeMode, ProbeOptions, Probes};
use crate::error::{SkprofError, EXIT_CODES_HELP};
use crate::kernel::{self, KernelFunctions, Privileges};
use crate::model::ids::Family;
use crate::model::snapshot::{ProgramRef, UNATTRIBUTED};
use crate::workload::{Workload, WorkloadArgs, WorkloadOpts};

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
    /// Outstanding references the ledger can hold (more are counted as
    /// drops).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub ledger_size: u32,
    /// (program, helper, outcome) aggregates the kernel can hold (more are
    /// counted as drops).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series: u32,
    /// Whether the probes read each call's netns and interface: set by the
    /// command (stat --by netns|interface, top, record), not a flag.
    #[arg(skip)]
    pub places: bool,
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
    /// Workload: seconds to run, then the command ends.
    #[arg(long, value_parser = parse_interval, requires = "workload")]
    pub workload_duration: Option<f64>,
    /// Workload: load this many copies of its programs and run them one
    /// after the other (several programs calling the same helpers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16), requires = "workload")]
    pub workload_copies: u64,
    /// Workload: program families to drive (default: all).
    #[arg(long, value_enum, value_delimiter = ',', requires = "workload")]
    pub workload_family: Vec<FamilyArg>,
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

/// Sets `stop` on SIGINT and SIGTERM, so the command can end cleanly and
/// its links detach (SIGKILL needs nothing: the kernel closes the fds).
pub fn install_stop_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(stop))
            .with_context(|| format!("install handler for signal {sig}"))?;
    }
    Ok(())
}

/// A tracing session: what the kernel offers and the attached probes.
pub struct Session {
    pub funcs: KernelFunctions,
    pub probes: Probes,
    pub kernel: String,
    /// Traces the programs that call the helpers; `None` when attribution
    /// is off or impossible (kprobe mode: tracing BPF programs needs
    /// fentry/fexit).
    pub attrib: Option<Attributor>,
    /// Why attribution is off, when it is.
    pub attrib_off: Option<String>,
    /// Names of every program traced so far, by id (they outlive the
    /// program, for reports about references it took).
    pub names: BTreeMap<u32, String>,
    /// What the probes cost per lookup, with `--calibrate`.
    pub overhead: Option<calibrate::Overhead>,
}

impl Session {
    pub fn start(args: &SessionArgs) -> Result<Session> {
        Session::start_traced(args, false)
    }

    /// With `ledger_trace`, every ledger step goes through the ring buffer
    /// (`leaks --trace`).
    pub fn start_traced(args: &SessionArgs, ledger_trace: bool) -> Result<Session> {
        let privs = Privileges::current();
        if !privs.sufficient() {
            return Err(SkprofError::Privileges(
                "tracing needs root, or CAP_BPF and CAP_PERFMON: run with sudo".into(),
            )
            .into());
        }
        let funcs = KernelFunctions::discover();
        let opts = ProbeOptions {
            ledger: !args.no_ledger,
            ledger_size: args.ledger_size,
            max_series: args.max_series,
            ledger_stacks: args.stacks,
            ledger_trace,
            places: args.places,
            sampling: args.latency_sample,
        };
        // Calibration times the workload before and after the probes
        // attach; a failure costs only the figure.
        let calibration = if args.calibrate {
            match calibrate::Calibration::untraced() {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("skprof: no overhead figure: {}", crate::error::one_line(&e));
                    None
                }
            }
        } else {
            None
        };
        let probes = Probes::load(args.probe_mode, &funcs, &opts)?;
        let overhead = calibration.and_then(|c| match c.traced() {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("skprof: no overhead figure: {}", crate::error::one_line(&e));
                None
            }
        });
        let kprobes = probes.kind() != ProbeKind::Fentry;
        let (attrib, attrib_off) = match args.attribute_by {
            _ if args.no_attribution => (None, Some("--no-attribution".to_string())),
            AttributeBy::Trace if kprobes => {
                return Err(SkprofError::Usage(
                    "--attribute-by trace needs fentry/fexit (tracing BPF programs); \
                     this session uses kprobes: use --attribute-by stack or auto"
                        .into(),
                )
                .into())
            }
            // Tracing a BPF program needs fentry/fexit: stacks in kprobe mode.
            by => {
                let mut a = Attributor::new(
                    args.max_programs as usize,
                    kprobes || by == AttributeBy::Stack,
                );
                a.set_trace(ledger_trace);
                (Some(a), None)
            }
        };
        let mut session = Session {
            funcs,
            probes,
            kernel: kernel::release(),
            attrib,
            attrib_off,
            names: BTreeMap::new(),
            overhead,
        };
        session.refresh_programs()?;
        Ok(session)
    }

    /// How a program slot is shown.
    fn program_ref(&self, slot: u32) -> ProgramRef {
        match self.attrib.as_ref().and_then(|a| a.by_slot(slot)) {
            Some(p) if slot != UNATTRIBUTED => ProgramRef {
                slot,
                id: p.id,
                name: p.name.clone(),
            },
            _ => ProgramRef {
                slot,
                id: 0,
                name: if slot == UNATTRIBUTED {
                    "(not traced)".into()
                } else {
                    format!("slot {slot} (gone)")
                },
            },
        }
    }

    pub fn program(&self, slot: u32) -> ProgramRef {
        self.program_ref(slot)
    }

    /// Traces programs loaded since the last call and lets go of those that
    /// went away; returns the freed program slots, whose aggregates are
    /// deleted in the kernel (callers forget them in their baselines too).
    /// If attribution fails it is switched off with the reason shown, and
    /// tracing goes on unattributed.
    pub fn refresh_programs(&mut self) -> Result<Vec<u32>> {
        let Some(attrib) = self.attrib.as_mut() else {
            return Ok(Vec::new());
        };
        match attrib.rescan(self.probes.shared_maps()) {
            Ok(report) => {
                for p in &report.attached {
                    self.names.insert(p.id, p.name.clone());
                }
                if !report.attached.is_empty() || !report.detached.is_empty() {
                    self.probes.set_runs_in_use(
                        attrib
                            .programs()
                            .any(|p| p.method == crate::attrib::Method::Trace),
                    )?;
                    let over = self.probes.set_jit_ranges(&attrib.jit_ranges())?;
                    if over > 0 {
                        eprintln!(
                            "skprof: {over} JIT images of stack-attributed programs do not fit \
                             the table; their calls count as not traced"
                        );
                    }
                }
                self.probes.forget_slots(&report.freed_slots)?;
                Ok(report.freed_slots)
            }
            Err(e) => {
                self.attrib = None;
                self.attrib_off = Some(crate::error::one_line(&e));
                Ok(Vec::new())
            }
        }
    }

    /// How a program id is shown.
    pub fn program_name(&self, id: u32) -> String {
        match self.names.get(&id) {
            _ if id == 0 => "(not traced)".into(),
            Some(name) => format!("{name}[{id}]"),
            None => format!("prog {id}"),
        }
    }

    pub fn banner(&self) -> String {
        let p = &self.probes;
        let kind = match p.kind() {
            ProbeKind::Fentry => "fentry/fexit",
            ProbeKind::Kprobe => "kprobe/kretprobe",
        };
        let mut s = format!(
            "Tracing {} helper functions and bpf_sk_release with {kind} on {} ({} programs). Ctrl-C to end.",
            p.helpers().len(),
            self.kernel,
            p.attached()
        );
        match (&self.attrib, &self.attrib_off) {
            (Some(a), _) => {
                s += &format!(
                    "\nAttributing calls to {} BPF programs that call the helpers",
                    a.programs().count()
                );
                let by_stack: Vec<_> = a
                    .programs()
                    .filter(|p| p.method == crate::attrib::Method::Stack)
                    .collect();
                if !by_stack.is_empty() {
                    s += &format!(
                        " ({} by kernel stack: no per-run leak check",
                        by_stack.len()
                    );
                    // Why tracing was refused, once (it is the same reason
                    // for every program more often than not).
                    if let Some((p, why)) = by_stack
                        .iter()
                        .find_map(|p| p.fallback.as_ref().map(|w| (p, w)))
                    {
                        s += &format!("; {} not traced: {why}", p.name);
                    }
                    s += ")";
                }
                let untraceable = a.untraceable().len();
                if untraceable > 0 {
                    s += &format!(" ({untraceable} cannot be attributed)");
                }
            }
            (None, Some(why)) => s += &format!("\nNo per-program attribution: {why}"),
            (None, None) => {}
        }
        if let Some(why) = &p.fallback_reason {
            s += &format!("\nfentry unavailable, using kprobes: {why}");
        }
        if let Some(o) = &self.overhead {
            s += &format!(
                "\nskprof's probes add about {:.0} ns per lookup here (--calibrate: {:.0} ns per \
                 untraced tc run)",
                o.ns_per_lookup, o.untraced_ns
            );
        }
        s
    }
}

/// The built-in workload running in a background thread.
pub struct WorkloadRunner {
    handle: JoinHandle<Result<crate::workload::Tally>>,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl WorkloadRunner {
    /// Sets the workload up (errors surface here, before any interval) and
    /// starts it. `None` without `--workload`.
    pub fn start(args: &SessionArgs, session: &mut Session) -> Result<Option<WorkloadRunner>> {
        if !args.workload {
            return Ok(None);
        }
        let families: Vec<Family> = if args.workload_family.is_empty() {
            vec![Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr]
        } else {
            args.workload_family.iter().map(|&f| f.into()).collect()
        };
        let opts = WorkloadOpts {
            count: args.workload_count,
            rounds: args.workload_rounds,
            rate: Some(args.workload_rate),
            duration: args.workload_duration.map(Duration::from_secs_f64),
            families,
        };
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (done2, stop2) = (Arc::clone(&done), Arc::clone(&stop));
        let copies = args.workload_copies;
        let handle = std::thread::Builder::new()
            .name("skprof-workload".into())
            .spawn(move || {
                let set_up: Result<Vec<Workload>> =
                    (0..copies).map(|_| Workload::setup(&opts)).collect();
                let result = match set_up {
                    Ok(mut ws) => {
                        let _ = ready_tx.send(Ok(()));
                        // Wait until the session traces the workload's
                        // programs, so every call is attributed.
                        let _ = go_rx.recv();
                        // Copies one after the other: each its own programs
                        // calling the same helpers.
                        let mut total = crate::workload::Tally::default();
                        let mut result = Ok(());
                        for w in &mut ws {
                            match w.run(&stop2) {
                                Ok(t) => total.merge(&t),
                                Err(e) => {
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                        result.map(|()| total)
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        Err(anyhow!(msg))
                    }
                };
                done2.store(true, Ordering::Relaxed);
                result
            })
            .context("start the workload thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the workload thread ended during setup"))?
            .context("set up the built-in workload")?;
        // Its programs are loaded now: trace them before it starts.
        let traced = session.refresh_programs();
        let _ = go_tx.send(());
        traced?;
        Ok(Some(WorkloadRunner { handle, done, stop }))
    }

    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the workload and returns what it did.
    pub fn join(self) -> Result<crate::workload::Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("the workload thread panicked"))?
            .context("built-in workload")
    }

    /// Stops the workload and reports what it did: in JSON mode one line
    /// `{"type":"workload","expected":...}` with its exact counts per helper
    /// function, for comparison with the probes' figures.
    pub fn finish(self, session: &Session, json: bool, out: &mut impl Write) -> Result<()> {
        let tally = self.join()?;
        let expected = tally.by_helper(session.funcs.has_tc_variants());
        if json {
            let line = serde_json::json!({"type": "workload", "expected": expected});
            writeln!(out, "{line}").context("write to stdout")?;
        } else {
            writeln!(out, "\nworkload: {} lookups done", tally.total_calls())
                .context("write to stdout")?;
        }
        Ok(())
    }
}

impl crate::model::snapshot::Labels for Session {
    fn program(&self, slot: u32) -> ProgramRef {
        self.program_ref(slot)
    }

    /// Interface names are per namespace: only those of skprof's own
    /// namespace can be named from here.
    fn interface(&self, netns: u32, ifindex: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
        if u64::from(netns) != own {
            return None;
        }
        interface_name(ifindex)
    }
}

/// The name of interface `ifindex` in this network namespace (sysfs shows
/// the namespace it was mounted from, which is ours).
fn interface_name(ifindex: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .is_ok_and(|s| s.trim().parse() == Ok(ifindex))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
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
