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
use crate::model::ledger::{state_name, LeakReport};

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
    let mut session = Session::start(&args.session)?;
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
        let run_leaks = session.probes.take_run_leaks()?;
        let report = LeakReport::build(&refs, run_leaks, monotonic_ns(), older_than_ns, &|id| {
            session.program_name(id)
        });
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
    if leaked {
        return Err(SkprofError::Leaks(
            "socket references outstanding past --older-than, or a run ended holding one".into(),
        )
        .into());
    }
    Ok(())
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
