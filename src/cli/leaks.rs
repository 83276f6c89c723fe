//! `skprof leaks`: like BCC's memleak, for socket references. Lists the
//! references traced lookups acquired that are still not released after
//! `--older-than`, grouped by program, helper and kernel stack, and every
//! traced program run that ended holding one.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Session, WorkloadRunner};
use crate::bpf::probes::monotonic_ns;
use crate::error::SkprofError;
use crate::ksyms::Ksyms;
use crate::model::ids::Helper;
use crate::model::ledger::{state_name, LeakReport};
use crate::model::ledger_model::{Finding, LedgerEvent, LedgerModel, ModelTally};

#[derive(Debug, clap::Args)]
pub struct LeaksArgs {
    /// Seconds between reports.
    #[arg(default_value_t = 1.0, value_parser = super::parse_interval)]
    pub interval: f64,
    /// Report references outstanding for longer than this (e.g. 500ms, 2s;
    /// a plain number is milliseconds). Program runs take microseconds.
    #[arg(long, default_value = "500ms", value_parser = parse_age)]
    pub older_than: Duration,
    /// Stop after this many seconds.
    #[arg(long, value_parser = super::parse_interval)]
    pub duration: Option<f64>,
    /// Stop at the first report with a leak (exit code 5).
    #[arg(long)]
    pub exit_on_leak: bool,
    /// One JSON object per report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check that the ledger catches leaks on this kernel: run one round of
    /// the built-in workload's tc cases (--self-test-count lookups each)
    /// with bpf_sk_release untraced, so every reference they take looks
    /// leaked, then report. Expect exit code 5 and exactly the workload's
    /// acquired references (printed first).
    #[arg(long, conflicts_with = "workload")]
    pub self_test: bool,
    /// Lookups per case for --self-test.
    #[arg(long, default_value_t = 10, requires = "self_test")]
    pub self_test_count: u64,
    /// Record every ledger step (each hit, release, traced run start and
    /// end, run leak) to FILE as JSON lines, replay them through skprof's
    /// model of the ledger as they come, and at the end say whether the
    /// kernel's verdicts and its outstanding references agree with the
    /// model's (exit code 1 if not). A ring-buffer record per hit and
    /// release: for debugging and testing, not for a busy host.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

/// `500ms`, `2s`, `1.5s`, `250` (a plain number is milliseconds here:
/// thresholds are short). Units as the workload's `--duration`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        crate::workload::cli::parse_duration(&format!("{t}ms"))
    } else {
        crate::workload::cli::parse_duration(t)
    }
    .map_err(|e| format!("'{s}' is not a duration (e.g. 500ms, 2s): {e}"))?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("'{s}' is out of range (0 to 1 day)"));
    }
    Ok(d)
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    elapsed_s: f64,
    /// Refcounted releases of sockets no traced lookup acquired, since start
    /// (SOCKMAP/SOCKHASH sockets, bpf_skc_to_*; their own class).
    unmatched_releases: u64,
    #[serde(flatten)]
    report: &'a LeakReport,
}

/// The text form of one report (pure).
pub fn format_report(r: &LeakReport, elapsed_s: f64) -> String {
    let mut t = format!(
        "\n[{elapsed_s:.1}s] ledger: {} sockets with references outstanding, {} older than {} ms ({} references)\n",
        r.outstanding_sockets, r.leaked_sockets, r.older_than_ms, r.leaked_references
    );
    if !r.groups.is_empty() {
        t += &format!(
            "{:<24} {:<30} {:>6} {:>8} {:>5} {:>9}  STATES / TUPLES\n",
            "PROGRAM", "HELPER", "STACK", "SOCKETS", "REFS", "OLDEST"
        );
    }
    for g in &r.groups {
        t += &format!(
            "{:<24} {:<30} {:>6} {:>8} {:>5} {:>8.1}s  {}\n",
            g.prog_name,
            g.helper,
            g.stack_id,
            g.sockets,
            g.references,
            g.oldest_age_ms / 1000.0,
            g.states.join(", ")
        );
        for tuple in &g.tuples {
            t += &format!("{:>24} {tuple}\n", "");
        }
        for frame in &g.stack {
            t += &format!("{:>24}   {frame}\n", "");
        }
    }
    // Identical run leaks (the same program leaking the same socket run
    // after run) are shown once, with a count.
    let mut seen: Vec<(String, u64)> = Vec::new();
    for l in &r.run_leaks {
        let x = &l.reference;
        let line = format!(
            "RUN LEAK: {} ended holding a reference from {} ({} {}, {})",
            l.prog_name,
            x.helper.function(),
            x.class.name(),
            state_name(x.state),
            x.tuple
        );
        match seen.iter_mut().find(|(s, _)| *s == line) {
            Some((_, n)) => *n += 1,
            None => seen.push((line, 1)),
        }
    }
    for (line, n) in seen {
        t += &line;
        t += &if n > 1 {
            format!(" x{n}\n")
        } else {
            "\n".to_string()
        };
    }
    t
}

pub fn run(args: &LeaksArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    super::install_stop_signals(&stop)?;
    let mut session = Session::start_traced(&args.session, args.trace.is_some())?;
    let mut tracer = match &args.trace {
        Some(path) => Some(Tracer::create(path, &session, args.session.ledger_size)?),
        None => None,
    };
    let mut workload = WorkloadRunner::start(&args.session, &mut session)?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{}", session.banner()).context("write to stdout")?;
    }
    // Kept alive until the end: its sockets are the ones the report names.
    let _self_test = if args.self_test {
        Some(self_test(&mut session, args, &mut out)?)
    } else {
        None
    };
    let started = Instant::now();
    let end = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let older_than_ns = args.older_than.as_nanos() as u64;
    let mut leaked = false;
    loop {
        let deadline = Instant::now() + Duration::from_secs_f64(args.interval);
        let deadline = end.map_or(deadline, |e| e.min(deadline));
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Once the workload is done every reference it took is released
        // (or leaked): report once more and stop.
        let workload_done = workload.as_ref().is_some_and(|w| w.finished());
        session.refresh_programs()?;
        let refs = session.probes.read_ledger()?;
        let events = session.probes.take_events()?;
        if let Some(t) = tracer.as_mut() {
            t.feed(&events.trace)?;
        }
        let run_leaks = events.run_leaks;
        let mut report =
            LeakReport::build(&refs, run_leaks, monotonic_ns(), older_than_ns, &|id| {
                session.program_name(id)
            });
        // Read per report, only when there are stacks to name: BPF programs
        // come and go, and their JIT images are named in kallsyms too.
        if report.groups.iter().any(|g| g.stack_id >= 0) {
            let ksyms = Ksyms::load()?;
            report.symbolize(&|id| {
                let frames = session.probes.read_stack(id).unwrap_or_default();
                trim_probe_frames(frames.iter().map(|&ip| ksyms.resolve(ip)).collect())
            });
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        let unmatched_releases = session
            .probes
            .read()?
            .counters
            .release_unmatched
            .iter()
            .sum();
        if args.json {
            serde_json::to_writer(
                &mut out,
                &JsonReport {
                    kind: "leaks",
                    elapsed_s,
                    unmatched_releases,
                    report: &report,
                },
            )
            .context("write JSON")?;
            writeln!(out).context("write to stdout")?;
        } else {
            write!(out, "{}", format_report(&report, elapsed_s)).context("write to stdout")?;
        }
        out.flush().context("flush stdout")?;
        leaked |= report.has_leaks();
        if (leaked && args.exit_on_leak)
            || workload_done
            || end.is_some_and(|e| Instant::now() >= e)
        {
            break;
        }
    }
    if let Some(w) = workload.take() {
        w.finish(&session, args.json, &mut out)?;
    }
    if let Some(t) = tracer.take() {
        t.finish(&session, args.json, &mut out)?;
    }
    if leaked {
        return Err(SkprofError::Leaks(
            "socket references outstanding past --older-than, or a run ended holding one".into(),
        )
        .into());
    }
    Ok(())
}

/// Drops the innermost frames that are skprof's own: the stack is taken in
/// the helper's exit probe, so it starts in that probe and its trampoline,
/// then the helper.
fn trim_probe_frames(mut frames: Vec<String>) -> Vec<String> {
    let ours = |f: &str| {
        f.starts_with("bpf_trampoline_")
            || (f.starts_with("bpf_prog_")
                && [
                    "_fexit_bpf_",
                    "_kretprobe_bpf_",
                    "_fentry_bpf_",
                    "_kprobe_bpf_",
                ]
                .iter()
                .any(|p| f.contains(p)))
    };
    let n = frames.iter().take_while(|f| ours(f)).count();
    frames.drain(..n);
    frames
}

/// `--trace`: writes the ledger's steps as JSON lines and replays them
/// through the model.
struct Tracer {
    path: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    model: LedgerModel,
    disagreements: Vec<String>,
    dropped_at_start: u64,
}

#[derive(Serialize)]
struct TraceCheck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    file: String,
    /// Records the ring buffer could not take: the stream is incomplete.
    lost: u64,
    /// Whether the final comparison of outstanding references was made
    /// (ledger steps still arriving make it meaningless).
    quiescent: bool,
    agrees: bool,
    tally: &'a ModelTally,
    disagreements: &'a [String],
}

/// Disagreements shown (all are counted).
const DISAGREEMENTS_SHOWN: usize = 20;

impl Tracer {
    fn create(path: &std::path::Path, session: &Session, ledger_size: u32) -> Result<Tracer> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create trace file {}", path.display()))?;
        let mut file = std::io::BufWriter::new(file);
        writeln!(
            file,
            "# skprof ledger trace v1: kernel {}, {:?} probes, ledger_size {ledger_size}",
            session.kernel,
            session.probes.kind()
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(Tracer {
            path: path.to_path_buf(),
            file,
            model: LedgerModel::new(ledger_size as usize),
            disagreements: Vec::new(),
            dropped_at_start: session.probes.read()?.counters.events_dropped,
        })
    }

    fn feed(&mut self, events: &[LedgerEvent]) -> Result<()> {
        for ev in events {
            serde_json::to_writer(&mut self.file, ev).context("encode a trace record")?;
            writeln!(self.file).with_context(|| format!("write {}", self.path.display()))?;
            for f in self.model.apply(ev) {
                if let Finding::Disagree(d) = f {
                    self.disagreements.push(d);
                }
            }
        }
        Ok(())
    }

    /// Drains the ring buffer, compares the model's outstanding references
    /// with the kernel's ledger, and reports.
    fn finish(mut self, session: &Session, json: bool, out: &mut impl Write) -> Result<()> {
        self.feed(&session.probes.take_events()?.trace)?;
        let kernel = session.probes.read_ledger()?;
        let late = session.probes.take_events()?.trace;
        let quiescent = late.is_empty();
        self.feed(&late)?;
        self.file
            .flush()
            .with_context(|| format!("write {}", self.path.display()))?;
        let lost = session
            .probes
            .read()?
            .counters
            .events_dropped
            .saturating_sub(self.dropped_at_start);
        if quiescent && lost == 0 {
            let mut k: Vec<(u64, Helper, u32, u64)> = kernel
                .iter()
                .map(|r| (r.sk, r.helper, r.count, r.acquired_ns))
                .collect();
            let mut m: Vec<(u64, Helper, u32, u64)> = self
                .model
                .outstanding()
                .iter()
                .map(|r| (r.sk, r.holder.helper, r.holder.count, r.holder.acquired_ns))
                .collect();
            k.sort_unstable();
            m.sort_unstable();
            if k != m {
                self.disagreements.push(format!(
                    "outstanding references: kernel ledger has {} holders, model {} \
                     (first differing: kernel {:x?}, model {:x?})",
                    k.len(),
                    m.len(),
                    k.iter().find(|x| !m.contains(x)),
                    m.iter().find(|x| !k.contains(x)),
                ));
            }
        }
        let agrees = self.disagreements.is_empty() && lost == 0;
        let shown = &self.disagreements[..self.disagreements.len().min(DISAGREEMENTS_SHOWN)];
        if json {
            let check = TraceCheck {
                kind: "trace_check",
                file: self.path.display().to_string(),
                lost,
                quiescent,
                agrees,
                tally: &self.model.tally,
                disagreements: shown,
            };
            serde_json::to_writer(&mut *out, &check).context("write JSON")?;
            writeln!(out).context("write to stdout")?;
        } else {
            let t = &self.model.tally;
            writeln!(
                out,
                "ledger trace: {} records in {}; model: {} acquired, {} closed, {} not \
                 refcounted, {} no-op, {} NULL, {} unmatched, {} ledger full, {} runs, {} run \
                 leaks",
                t.events,
                self.path.display(),
                t.acquired,
                t.closed,
                t.not_refcounted,
                t.noop,
                t.null,
                t.unmatched,
                t.ledger_full,
                t.runs,
                t.run_leaks
            )
            .context("write to stdout")?;
            for d in shown {
                writeln!(out, "DISAGREES: {d}").context("write to stdout")?;
            }
            if lost > 0 {
                writeln!(
                    out,
                    "trace incomplete: {lost} records lost to a full ring buffer"
                )
                .context("write to stdout")?;
            } else if !quiescent {
                writeln!(
                    out,
                    "ledger still changing at exit: outstanding references not compared"
                )
                .context("write to stdout")?;
            } else if agrees {
                writeln!(out, "the kernel's ledger agrees with the model")
                    .context("write to stdout")?;
            }
        }
        if !agrees {
            anyhow::bail!(
                "ledger trace {}: {} disagreements with the model, {lost} records lost",
                self.path.display(),
                self.disagreements.len()
            );
        }
        Ok(())
    }
}

/// `--self-test`: one round of the workload's tc cases with releases
/// untraced. Prints the workload's exact counts (`{"type":"self_test"}` in
/// JSON) and returns the workload, whose sockets must outlive the report.
fn self_test(
    session: &mut Session,
    args: &LeaksArgs,
    out: &mut impl Write,
) -> Result<crate::workload::Workload> {
    let opts = crate::workload::WorkloadOpts {
        count: args.self_test_count,
        rounds: Some(1),
        rate: None,
        duration: None,
        families: vec![crate::model::ids::Family::Tc],
    };
    let mut w =
        crate::workload::Workload::setup(&opts).context("self-test: set up the workload")?;
    session.refresh_programs()?;
    session.probes.trace_releases(false)?;
    let tally = w.run_round();
    // Resume before anything can fail, so nothing stays half-traced.
    session.probes.trace_releases(true)?;
    let tally = tally.context("self-test: run the workload")?;
    let expected = tally.by_helper(session.funcs.has_tc_variants());
    let tuples = w.acquiring_tuples(crate::model::ids::Family::Tc)?;
    if args.json {
        let line = serde_json::json!({"type": "self_test", "expected": expected, "tuples": tuples});
        writeln!(out, "{line}").context("write to stdout")?;
    } else {
        let acquired: u64 = expected.acquired.iter().flatten().sum();
        writeln!(
            out,
            "self-test: the workload took {acquired} references with bpf_sk_release untraced; \
             all must be reported"
        )
        .context("write to stdout")?;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_frames_are_trimmed_up_to_the_helper() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let stack = f(&[
            "bpf_prog_4fc29c01a4aee229_fexit_bpf_tc_sk_lookup_tcp+0xcdc [bpf]",
            "bpf_trampoline_6442544087+0xc4 [bpf]",
            "bpf_tc_sk_lookup_tcp+0x9",
            "bpf_prog_10ac376ec6e46040_wl_tc_lookup+0x1b4 [bpf]",
            "bpf_trampoline_154618822674+0x71 [bpf]",
        ]);
        assert_eq!(trim_probe_frames(stack.clone()), stack[2..].to_vec());
        let kprobe = f(&["bpf_tc_sk_lookup_tcp+0x0", "bpf_prog_1_x+0x10 [bpf]"]);
        assert_eq!(trim_probe_frames(kprobe.clone()), kprobe);
    }
    use crate::model::ids::{Helper, SockClass};
    use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_age("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_age("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_age("250"), Ok(Duration::from_millis(250)));
        assert!(parse_age("soon").is_err());
        assert!(parse_age("-1s").is_err());
        assert!(parse_age("1e9s").is_err());
    }

    #[test]
    fn text_report_lists_groups_tuples_and_run_leaks() {
        let reference = OutstandingRef {
            sk: 1,
            acquired_ns: 0,
            count: 1,
            prog_id: 42,
            helper: Helper::TcSkLookupTcp,
            class: SockClass::Established,
            state: 1,
            tuple: Tuple::decode(&[127, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40, 0, 80], 12),
            netns: 1,
            cpu: 0,
            refcnt: 2,
            stack_id: 3,
        };
        let leak = RunLeak {
            ts_ns: 1,
            prog_id: 42,
            prog_name: String::new(),
            reference: reference.clone(),
        };
        let r = LeakReport::build(
            &[reference],
            vec![leak],
            2_000_000_000,
            500_000_000,
            &|id| format!("tc_prog[{id}]"),
        );
        let t = format_report(&r, 3.0);
        assert!(
            t.contains("1 sockets with references outstanding, 1 older than 500 ms (1 references)"),
            "{t}"
        );
        assert!(
            t.contains("tc_prog[42]") && t.contains("bpf_tc_sk_lookup_tcp"),
            "{t}"
        );
        assert!(t.contains("127.0.0.1:40000 -> 127.0.0.1:80"), "{t}");
        assert!(t.contains("RUN LEAK: tc_prog[42] ended holding a reference from bpf_tc_sk_lookup_tcp (established ESTABLISHED"), "{t}");
    }
}
