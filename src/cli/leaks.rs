//! `skprof leaks`: like BCC's memleak, for socket references. Lists the
//! references traced lookups acquired that are still not released after
//! `--older-than`, grouped by program, helper and kernel stack, and every
//! traced program run that ended holding one.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::SkprofError;
use crate::export::log::{Level, LogFormat, Logger};
use crate::model::ids::Helper;
use crate::model::leak_watch::{DropWatch, LeakWatch, WatchEvent};
use crate::model::ledger::{state_name, LeakGroup, LeakReport};
use crate::model::ledger_model::{Finding, LedgerEvent, LedgerModel, ModelTally};
use crate::model::reading::{Reading, SourceInfo};
use crate::model::snapshot::{Grouping, IntervalStats};
use crate::model::words::Balance;
use crate::session::{self, LiveSource, Signals};

#[derive(Debug, clap::Args)]
pub struct LeaksArgs {
    /// Seconds between reports.
    #[arg(default_value_t = 1.0, value_parser = super::parse_interval)]
    pub interval: f64,
    /// Report references outstanding for longer than this (e.g. 500ms, 2s;
    /// a plain number is seconds). Program runs take microseconds.
    #[arg(long, default_value = "500ms", value_parser = crate::duration::up_to_a_day)]
    pub older_than: Duration,
    /// Stop after this long (e.g. 30s, 10m; a plain number is seconds).
    #[arg(long, value_parser = crate::duration::positive)]
    pub duration: Option<Duration>,
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
    #[arg(long, value_name = "FILE", conflicts_with = "watch")]
    pub trace: Option<std::path::PathBuf>,
    /// Run as a daemon (see packaging/skprof-leaks.service): instead of
    /// reports, log structured lines on stderr: a start line, a line per
    /// leak group when first seen, when it grows, when it is partly or
    /// wholly released late ("resolved"), per run leak, whenever drops or
    /// ledger overflow rise, a summary every --summary-interval, and a stop
    /// line. SIGTERM/SIGINT: detach everything and exit 0 (5 with
    /// --exit-on-leak, at the first leak); SIGHUP: rescan the BPF programs.
    #[arg(long, conflicts_with_all = ["json", "no_ledger"])]
    pub watch: bool,
    /// --watch: log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, requires = "watch")]
    pub log_format: LogFormat,
    /// --watch: time between summary lines (outstanding references,
    /// leak totals, drops, ledger overflow, memory; e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = crate::duration::interval, requires = "watch")]
    pub summary_interval: Duration,
    /// --watch: leak groups (program, helper, stack) remembered at most;
    /// more are counted (groups_overflow) and not logged one by one until
    /// remembered groups are resolved.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000), requires = "watch")]
    pub max_groups: u64,
    /// --watch: put the lookup tuples (IP addresses and ports) of leaked
    /// references in the log lines (off by default: addresses are
    /// personal data in many places).
    #[arg(long, requires = "watch")]
    pub log_tuples: bool,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    elapsed_s: f64,
    /// Refcounted releases of sockets no traced lookup acquired, since start
    /// (SOCKMAP/SOCKHASH sockets, bpf_skc_to_*; their own class).
    unmatched_releases: u64,
    /// Acquired against released since start, as every face words it.
    balance: &'a Balance,
    #[serde(flatten)]
    report: &'a LeakReport,
}

/// The text form of one report (pure).
pub fn format_report(r: &LeakReport, elapsed_s: f64, balance: &Balance) -> String {
    let mut t = format!(
        "\n[{elapsed_s:.1}s] ledger: {} sockets with references outstanding, {} older than {} ms ({} references); since start: acquired {} \u{2192} {}\n",
        r.outstanding_sockets, r.leaked_sockets, r.older_than_ms, r.leaked_references,
        balance.acquired, balance.text
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
    if args.watch {
        return watch(args);
    }
    let signals = Signals::install()?;
    let mut opts = args.session.options();
    opts.ledger_trace = args.trace.is_some();
    let mut live = LiveSource::start(&opts, Duration::from_secs_f64(args.interval))?;
    let info = live.info();
    // The baseline: its counters are where the trace's losses count from.
    let base = live.next(&signals)?.context("stopped at start")?;
    let mut tracer = match &args.trace {
        Some(path) => Some(Tracer::create(
            path,
            &info,
            args.session.ledger_size,
            &base,
        )?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", session::start_line(&info, &base.attribution))
            .context("write to stdout")?;
    } else {
        writeln!(out, "{}", session::banner(&info, &base.attribution))
            .context("write to stdout")?;
    }
    out.flush().context("flush stdout")?;
    // Kept alive until the end: its sockets are the ones the report names.
    let _self_test = if args.self_test {
        let (w, expected, tuples) = live.self_test(args.self_test_count)?;
        if args.json {
            let line =
                serde_json::json!({"type": "self_test", "expected": expected, "tuples": tuples});
            writeln!(out, "{line}").context("write to stdout")?;
        } else {
            let acquired: u64 = expected.acquired.iter().flatten().sum();
            writeln!(
                out,
                "self-test: the workload took {acquired} references with bpf_sk_release \
                 untraced; all must be reported"
            )
            .context("write to stdout")?;
        }
        Some(w)
    } else {
        None
    };
    let started = Instant::now();
    let end = args.duration.map(|d| started + d);
    if let Some(e) = end {
        live.end_at(e);
    }
    let older_than_ns = args.older_than.as_nanos() as u64;
    let mut leaked = false;
    while let Some(r) = live.next(&signals)? {
        if let Some(t) = tracer.as_mut() {
            t.feed(&r.trace)?;
        }
        let mut report = LeakReport::of(&r, older_than_ns);
        // Read per report, only when there are stacks to name: BPF programs
        // come and go, and their JIT images are named in kallsyms too.
        let ids: Vec<i32> = report.groups.iter().map(|g| g.stack_id).collect();
        if ids.iter().any(|&id| id >= 0) {
            let stacks = live.stacks(&ids);
            report.symbolize(&|id| stacks.get(&id).cloned().unwrap_or_default());
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        let balance = Balance::of(
            r.snapshot.acquired_total(),
            r.snapshot.counters.released.iter().sum(),
            r.snapshot.counters.release_unmatched.iter().sum(),
        );
        if args.json {
            serde_json::to_writer(
                &mut out,
                &JsonReport {
                    kind: "leaks",
                    elapsed_s,
                    unmatched_releases: balance.unmatched_releases,
                    balance: &balance,
                    report: &report,
                },
            )
            .context("write JSON")?;
            writeln!(out).context("write to stdout")?;
        } else {
            write!(out, "{}", format_report(&report, elapsed_s, &balance))
                .context("write to stdout")?;
        }
        out.flush().context("flush stdout")?;
        leaked |= report.has_leaks();
        // Once the workload is done every reference it took is released
        // (or leaked): that report is the last.
        if (leaked && args.exit_on_leak)
            || r.workload_done
            || end.is_some_and(|e| Instant::now() >= e)
        {
            break;
        }
    }
    if let Some(expected) = live.workload_tally()? {
        writeln!(out, "{}", session::workload_line(&expected, args.json))
            .context("write to stdout")?;
    }
    if let Some(t) = tracer.take() {
        // Two readings: the steps still in the ring buffer with the
        // ledger, then whether any came after (the ledger still moving).
        let last = live.read_now()?;
        let late = live.read_now()?;
        t.finish(&last, &late, args.json, &mut out)?;
    }
    if leaked {
        return Err(SkprofError::Leaks(
            "socket references outstanding past --older-than, or a run ended holding one".into(),
        )
        .into());
    }
    Ok(())
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
    fn create(
        path: &std::path::Path,
        info: &SourceInfo,
        ledger_size: u32,
        base: &Reading,
    ) -> Result<Tracer> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create trace file {}", path.display()))?;
        let mut file = std::io::BufWriter::new(file);
        writeln!(
            file,
            "# skprof ledger trace v2: kernel {}, {} probes, ledger_size {ledger_size}",
            info.kernel, info.probe_mode
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(Tracer {
            path: path.to_path_buf(),
            file,
            model: LedgerModel::new(ledger_size as usize),
            disagreements: Vec::new(),
            dropped_at_start: base.snapshot.counters.events_dropped,
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
    fn finish(
        mut self,
        last: &Reading,
        late: &Reading,
        json: bool,
        out: &mut impl Write,
    ) -> Result<()> {
        self.feed(&last.trace)?;
        let kernel = last
            .ledger
            .as_ref()
            .map(|l| l.refs.clone())
            .unwrap_or_default();
        let quiescent = late.trace.is_empty();
        self.feed(&late.trace)?;
        self.file
            .flush()
            .with_context(|| format!("write {}", self.path.display()))?;
        let lost = late
            .snapshot
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

/// Frames of a leak group's stack shown in a `--watch` log line.
const STACK_FRAMES_LOGGED: usize = 4;

/// `--watch`: a long-running leak watch logging structured lines (see
/// `LeaksArgs::watch` and docs/leaks.md).
fn watch(args: &LeaksArgs) -> Result<()> {
    let log = Logger {
        format: args.log_format,
    };
    let signals = Signals::install()?;
    let mut live = LiveSource::start(
        &args.session.options(),
        Duration::from_secs_f64(args.interval),
    )?;
    let info = live.info();
    let base = live.next(&signals)?.context("stopped at start")?;
    let older_than_ns = args.older_than.as_nanos() as u64;
    log.log_values(
        Level::Info,
        "watching for leaked socket references",
        &[
            ("kernel", info.kernel.clone().into()),
            ("probe_mode", info.probe_mode.clone().into()),
            ("helpers", info.helpers.len().into()),
            ("programs", base.attribution.programs.len().into()),
            ("attribution", (base.attribution.mode != "off").into()),
            ("ledger_size", args.session.ledger_size.into()),
            ("older_than_ms", (older_than_ns as f64 / 1e6).into()),
            ("interval_s", args.interval.into()),
            (
                "summary_interval_s",
                args.summary_interval.as_secs_f64().into(),
            ),
            ("max_groups", args.max_groups.into()),
            ("stacks", args.session.stacks.into()),
        ],
    );
    if let Some(why) = &base.attribution.off_reason {
        log.warn("no per-program attribution", &[("why", why.clone())]);
    }
    if let Some(why) = &info.fallback_reason {
        log.warn("fentry unavailable, using kprobes", &[("why", why.clone())]);
    }
    // Kept alive until the end: its sockets are the ones the leaks name.
    let _self_test = if args.self_test {
        let (w, expected, _) = live.self_test(args.self_test_count)?;
        let by_helper: serde_json::Map<String, serde_json::Value> = Helper::ALL
            .iter()
            .map(|&h| (h, expected.acquired[h.index()].iter().sum::<u64>()))
            .filter(|&(_, n)| n > 0)
            .map(|(h, n)| (h.function().to_string(), n.into()))
            .collect();
        log.log_values(
            Level::Info,
            "self-test: references taken with bpf_sk_release untraced",
            &[
                (
                    "acquired",
                    expected.acquired.iter().flatten().sum::<u64>().into(),
                ),
                ("acquired_by_helper", by_helper.into()),
            ],
        );
        Some(w)
    } else {
        None
    };

    // Uptime and --duration count from here: loading takes a while.
    let started = Instant::now();
    let mut leaks = LeakWatch::new(args.max_groups as usize);
    let mut drops = DropWatch::default();
    let mut state = WatchState::default();
    let end = args.duration.map(|d| started + d);
    let summary_every = args.summary_interval;
    let mut next_summary = Instant::now() + summary_every;
    let mut programs = base.attribution.programs.len();
    live.end_at(next_summary);
    let reason: String = loop {
        let r = match live.next(&signals) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => break signals.stopped().unwrap_or("stop").into(),
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => {
                super::daemon::log_rescan(&r, &log);
                programs = r.attribution.programs.len();
                let uptime_ms = started.elapsed().as_millis() as u64;
                let s = scan(&r, older_than_ns);
                let events = leaks.update(&s.report, uptime_ms);
                log_events(events, &live, args, &leaks, &log);
                for (reason, count, total) in drops.update(&s.drops) {
                    log.log_values(
                        Level::Warn,
                        "measurements dropped",
                        &[
                            ("reason", reason.into()),
                            ("count", count.into()),
                            ("total", total.into()),
                        ],
                    );
                }
                for e in &r.errors {
                    log.error("reading", &[("error", e.clone())]);
                }
                state.last = Some(s.summary);
                state.last_error = None;
                if r.workload_done {
                    // Its exact counts on stdout; the watch goes on.
                    if let Some(expected) = live.workload_tally()? {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", session::workload_line(&expected, true))
                            .context("write to stdout")?;
                        out.flush().context("flush stdout")?;
                    }
                    log.info("workload done", &[]);
                }
            }
            Err(e) => {
                state.scan_errors += 1;
                let msg = crate::error::one_line(&e);
                // The same failure every interval is logged once.
                if state.last_error.as_deref() != Some(msg.as_str()) {
                    log.error("leak scan failed", &[("error", msg.clone())]);
                    state.last_error = Some(msg);
                }
            }
        }
        if args.exit_on_leak && leaks.leaked() {
            break "leak (--exit-on-leak)".into();
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break "--duration".into();
        }
        if Instant::now() >= next_summary {
            next_summary = Instant::now() + summary_every;
            log.log_values(
                Level::Info,
                "summary",
                &summary_fields(started, programs, &leaks, &drops, &state),
            );
        }
        live.end_at(end.map_or(next_summary, |e| e.min(next_summary)));
    };
    if let Some(expected) = live.workload_tally()? {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", session::workload_line(&expected, true)).context("write to stdout")?;
        out.flush().context("flush stdout")?;
    }
    let mut fields = summary_fields(started, programs, &leaks, &drops, &state);
    // Dropping the session detaches every probe and program tracer.
    drop(live);
    let leaked = args.exit_on_leak && leaks.leaked();
    fields.insert(0, ("reason", reason.into()));
    fields.insert(1, ("exit_code", if leaked { 5 } else { 0 }.into()));
    log.log_values(Level::Info, "stopped", &fields);
    if leaked {
        return Err(SkprofError::Leaks(
            "socket references outstanding past --older-than, or a run ended holding one".into(),
        )
        .into());
    }
    Ok(())
}

/// What a summary line shows of the last good scan.
#[derive(Default)]
struct WatchState {
    last: Option<ScanSummary>,
    scan_errors: u64,
    last_error: Option<String>,
}

#[derive(Default, Clone)]
struct ScanSummary {
    outstanding_sockets: u64,
    leaked_sockets: u64,
    leaked_references: u64,
    unmatched_releases: u64,
}

/// One scan's findings.
struct Scan {
    report: LeakReport,
    drops: crate::model::snapshot::Drops,
    summary: ScanSummary,
}

/// The leak report, the losses and the summary figures of a reading.
fn scan(r: &Reading, older_than_ns: u64) -> Scan {
    let report = LeakReport::of(r, older_than_ns);
    // The loss counters since start, as `stat` computes them.
    let drops = IntervalStats::compute(&r.snapshot, 1.0, &[], Grouping::Helper, r).drops;
    let summary = ScanSummary {
        outstanding_sockets: report.outstanding_sockets,
        leaked_sockets: report.leaked_sockets,
        leaked_references: report.leaked_references,
        unmatched_releases: r.snapshot.counters.release_unmatched.iter().sum(),
    };
    Scan {
        report,
        drops,
        summary,
    }
}

/// The fields of the summary and stop lines.
fn summary_fields(
    started: Instant,
    programs: usize,
    leaks: &LeakWatch,
    drops: &DropWatch,
    state: &WatchState,
) -> Vec<(&'static str, serde_json::Value)> {
    let last = state.last.clone().unwrap_or_default();
    let t = &leaks.totals;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| crate::export::procstat::parse_rss(&s))
        .unwrap_or(0);
    vec![
        ("uptime_s", started.elapsed().as_secs().into()),
        ("programs", programs.into()),
        ("outstanding_sockets", last.outstanding_sockets.into()),
        ("leaked_sockets", last.leaked_sockets.into()),
        ("leaked_references", last.leaked_references.into()),
        ("groups_tracked", leaks.tracked().into()),
        ("groups_untracked", leaks.untracked().into()),
        ("groups_seen_total", t.groups_seen.into()),
        ("references_leaked_total", t.references_leaked.into()),
        (
            "references_released_late_total",
            t.references_released_late.into(),
        ),
        ("groups_resolved_total", t.groups_resolved.into()),
        ("run_leaks_total", t.run_leaks.into()),
        ("groups_overflow_total", t.groups_overflow.into()),
        ("drops_total", drops.total().into()),
        (
            "ledger_full_total",
            drops.reason_total("ledger_full").into(),
        ),
        (
            "events_lost_total",
            drops.reason_total("events_lost").into(),
        ),
        ("unmatched_releases", last.unmatched_releases.into()),
        ("scans", t.scans.into()),
        ("scan_errors", state.scan_errors.into()),
        ("rss_bytes", rss.into()),
    ]
}

/// Logs what a scan changed. Stacks are symbolized only for groups logged
/// (kallsyms read at most once per scan).
fn log_events(
    events: Vec<WatchEvent>,
    live: &LiveSource,
    args: &LeaksArgs,
    leaks: &LeakWatch,
    log: &Logger,
) {
    let mut stack_of = |id: i32| -> String {
        let frames = live.stacks(&[id]).remove(&id).unwrap_or_default();
        frames
            .iter()
            .take(STACK_FRAMES_LOGGED)
            .cloned()
            .collect::<Vec<_>>()
            .join(" <- ")
    };
    for ev in events {
        match ev {
            WatchEvent::New(g) => {
                let fields = group_fields(&g, args, &mut stack_of);
                log.log_values(Level::Warn, "leak", &fields);
            }
            WatchEvent::Grew { group, before } => {
                let mut fields = group_fields(&group, args, &mut stack_of);
                fields.push(("before", before.into()));
                log.log_values(Level::Warn, "leak grew", &fields);
            }
            WatchEvent::PartlyReleased { group, released } => log.log_values(
                Level::Info,
                "leak partly released",
                &[
                    ("program", group.prog_name.clone().into()),
                    ("prog_id", group.prog_id.into()),
                    ("helper", group.helper.into()),
                    ("stack_id", group.stack_id.into()),
                    ("released", released.into()),
                    ("count", group.references.into()),
                    ("age_ms", group.oldest_age_ms.round().into()),
                ],
            ),
            WatchEvent::Resolved(r) => log.log_values(
                Level::Info,
                "leak resolved",
                &[
                    ("program", r.prog_name.into()),
                    ("prog_id", r.prog_id.into()),
                    ("helper", r.helper.into()),
                    ("stack_id", r.stack_id.into()),
                    ("released", r.released.into()),
                    ("peak", r.peak.into()),
                    ("age_ms", r.oldest_age_ms.round().into()),
                    ("tracked_s", (r.tracked_ms / 1000).into()),
                ],
            ),
            WatchEvent::RunLeaks {
                program,
                helper,
                count,
            } => log.log_values(
                Level::Warn,
                "run leak",
                &[
                    ("program", program.into()),
                    ("helper", helper.into()),
                    ("count", count.into()),
                ],
            ),
            WatchEvent::Overflow {
                untracked,
                max_groups,
            } => log.log_values(
                Level::Warn,
                "leak groups over --max-groups",
                &[
                    ("untracked", untracked.into()),
                    ("max_groups", max_groups.into()),
                    ("groups_overflow_total", leaks.totals.groups_overflow.into()),
                ],
            ),
        }
    }
}

/// A new or grown group's fields.
fn group_fields(
    g: &LeakGroup,
    args: &LeaksArgs,
    stack_of: &mut dyn FnMut(i32) -> String,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut f: Vec<(&'static str, serde_json::Value)> = vec![
        ("program", g.prog_name.clone().into()),
        ("prog_id", g.prog_id.into()),
        ("helper", g.helper.into()),
        ("count", g.references.into()),
        ("sockets", g.sockets.into()),
        ("age_ms", g.oldest_age_ms.round().into()),
        ("netns", g.netns.clone().into()),
        ("states", g.states.clone().into()),
    ];
    if args.session.stacks {
        f.push(("stack_id", g.stack_id.into()));
        if g.stack_id >= 0 {
            f.push(("stack", stack_of(g.stack_id).into()));
        }
    }
    if args.log_tuples {
        f.push(("tuples", g.tuples.clone().into()));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::ids::{Helper, SockClass};
    use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};

    #[test]
    fn watch_flags_parse_and_conflict() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["skprof", "leaks"], args].concat()).map(|c| match c.command {
                Command::Leaks(a) => a,
                _ => panic!("not leaks"),
            })
        };
        let a = parse(&["--watch"]).unwrap();
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(
            (a.summary_interval, a.max_groups),
            (Duration::from_secs(60), 1024)
        );
        assert!(!a.log_tuples && !a.exit_on_leak);
        let a = parse(&["2", "--watch", "--log-format", "json", "--max-groups", "5"]).unwrap();
        assert_eq!(
            (a.interval, a.log_format, a.max_groups),
            (2.0, LogFormat::Json, 5)
        );
        // Daemon flags need --watch; reports and traces are not for it.
        for bad in [
            &["--log-format", "json"][..],
            &["--summary-interval", "5"],
            &["--max-groups", "5"],
            &["--log-tuples"],
            &["--watch", "--json"],
            &["--watch", "--trace", "/tmp/x"],
            &["--watch", "--no-ledger"],
            &["--watch", "--max-groups", "0"],
            &["--watch", "--summary-interval", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
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
        let t = format_report(&r, 3.0, &Balance::of(1, 0, 0));
        assert!(
            t.contains(
                "1 sockets with references outstanding, 1 older than 500 ms (1 references); \
                 since start: acquired 1 \u{2192} 1 still held (in flight at the window's edges)"
            ),
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
