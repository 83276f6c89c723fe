//! `skprof leaks`: like BCC's memleak, for socket references. Lists the
//! references traced lookups acquired that are still not released after
//! `--older-than`, grouped by program, helper and kernel stack, and every
//! traced program run that ended holding one.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::SkprofError;
use crate::export::log::LogFormat;
use crate::model::ledger::{state_name, LeakReport};
use crate::model::words::{self, Balance};
use crate::session::{self, LiveSource, Signals};

mod trace;
mod watch;

use trace::Tracer;
use watch::watch;

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
        if let Some(site) = &g.site {
            t += &format!("{:>24} looked up at {}\n", "", words::site_source(site));
        }
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
        let mut line = format!(
            "RUN LEAK: {} ended holding a reference from {} ({} {}, {})",
            l.prog_name,
            x.helper.function(),
            x.class.name(),
            state_name(x.state),
            x.tuple
        );
        if let Some(site) = &l.site {
            line += &format!(" looked up at {}", words::site_source(site));
        }
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
    // The self-test shows where each leaked reference was looked up.
    opts.sites |= args.self_test;
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
    crate::cli::print_workload(&mut live, args.json)?;
    if let Some(t) = tracer.take() {
        // Two readings: the steps still in the ring buffer with the
        // ledger, then whether any came after (the ledger still moving).
        let last = live.read_now()?;
        let late = live.read_now()?;
        t.finish(&last, &late, args.json, &mut out)?;
    }
    if leaked {
        return Err(leaks_found());
    }
    Ok(())
}

/// The error that ends a command with exit code 5.
fn leaks_found() -> anyhow::Error {
    SkprofError::Leaks(
        "socket references outstanding past --older-than, or a run ended holding one".into(),
    )
    .into()
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
            site: 0,
        };
        let leak = RunLeak {
            ts_ns: 1,
            prog_id: 42,
            prog_name: String::new(),
            reference: reference.clone(),
            site: None,
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
