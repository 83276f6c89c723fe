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
    #[command(flatten)]
    pub session: super::SessionArgs,
}

/// `500ms`, `2s`, `1.5s`, `250` (ms).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1e-3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 2s)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("'{s}' is out of range (0 to 1 day)"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    elapsed_s: f64,
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
    for l in &r.run_leaks {
        let x = &l.reference;
        t += &format!(
            "RUN LEAK: program {} ended holding a reference from {} ({} {}, {})\n",
            l.prog_id,
            x.helper.function(),
            x.class.name(),
            state_name(x.state),
            x.tuple
        );
    }
    t
}

pub fn run(args: &LeaksArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    super::install_stop_signals(&stop)?;
    let session = Session::start(&args.session)?;
    let workload = WorkloadRunner::start(&args.session, &session)?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{}", session.banner()).context("write to stdout")?;
    }
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
        let refs = session.probes.read_ledger()?;
        let run_leaks = session.probes.take_run_leaks()?;
        let report = LeakReport::build(&refs, run_leaks, monotonic_ns(), older_than_ns, &|id| {
            session.program_name(id)
        });
        let elapsed_s = started.elapsed().as_secs_f64();
        if args.json {
            serde_json::to_writer(
                &mut out,
                &JsonReport {
                    kind: "leaks",
                    elapsed_s,
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
        if (leaked && args.exit_on_leak) || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    if let Some(w) = workload {
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
        assert!(t.contains("RUN LEAK: program 42 ended holding a reference from bpf_tc_sk_lookup_tcp (established ESTABLISHED"), "{t}");
    }
}
