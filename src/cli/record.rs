//! `skprof record`: the same readings as `skprof stat`, written to a
//! recording (`crate::record`) for `skprof report` instead of printed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::{Session, WorkloadRunner};
use crate::bpf::probes::monotonic_ns;
use crate::model::snapshot::{ProgramRef, Snapshot};
use crate::record::{Frame, Interval, Leaks, LedgerScan, Meta, Writer};

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The recording to write (replaced if it exists). `skprof report`
    /// reads it.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this long (e.g. 30s, 5m, 1h; a plain number is seconds).
    /// Default: until Ctrl-C, or until the workload given with
    /// --workload-rounds/--workload-duration is done.
    #[arg(long, value_parser = parse_duration_arg)]
    pub duration: Option<Duration>,
    /// Time between readings (e.g. 1s, 500ms; 10ms to 1 day).
    #[arg(long, default_value = "1s", value_parser = parse_interval_arg)]
    pub interval: Duration,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let d = crate::workload::cli::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' is not a positive duration"));
    }
    Ok(d)
}

fn parse_interval_arg(s: &str) -> Result<Duration, String> {
    let d = crate::workload::cli::parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(86_400) {
        return Err(format!("'{s}' is out of range (10ms to 1 day)"));
    }
    Ok(d)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// This machine's name, as `hostname` prints it (empty if unknown: it
/// only labels reports).
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The labels of every program slot a reading mentions, as the session
/// names them now.
fn labels(session: &Session, s: &Snapshot) -> Vec<ProgramRef> {
    let mut slots = s.programs();
    slots.extend(s.holds.keys());
    slots.sort_unstable();
    slots.dedup();
    slots
        .into_iter()
        .map(|slot| session.program(slot))
        .collect()
}

fn interval(session: &Session, snapshot: Snapshot, forgotten: Vec<u32>) -> Interval {
    Interval {
        unix_ms: unix_ms(),
        labels: labels(session, &snapshot),
        snapshot,
        forgotten,
    }
}

/// Run leak events since the last call, named; `None` when there are none.
fn run_leaks(session: &Session, ledger: Option<LedgerScan>) -> Result<Option<Frame>> {
    let mut leaks = session.probes.take_run_leaks()?;
    for l in &mut leaks {
        l.prog_name = session.program_name(l.prog_id);
    }
    if leaks.is_empty() && ledger.is_none() {
        return Ok(None);
    }
    Ok(Some(Frame::Leaks(Leaks {
        unix_ms: unix_ms(),
        run_leaks: leaks,
        ledger,
    })))
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    super::install_stop_signals(&stop)?;
    // An unwritable output fails here, before any probe is loaded.
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    // Until the Meta frame is written nothing was recorded: a failure
    // leaves no empty file behind.
    let remove_on_error = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&args.output);
        e
    };
    // A recording keeps every grouping open to its reports.
    let mut session_args = args.session.clone();
    session_args.places = true;
    let mut session = Session::start(&session_args).map_err(remove_on_error)?;
    // The baseline comes before the workload starts, as in `stat`: its
    // first lookups fall inside the first interval.
    let base = session.probes.read().map_err(remove_on_error)?;
    let base = interval(&session, base, Vec::new());
    let mut workload =
        WorkloadRunner::start(&args.session, &mut session).map_err(remove_on_error)?;
    // Written after the workload started, so that `attribution_off` says
    // whether tracing its programs failed.
    let meta = Meta {
        skprof_version: env!("CARGO_PKG_VERSION").into(),
        kernel: session.kernel.clone(),
        probe_mode: session.probes.kind().to_string(),
        hostname: hostname(),
        start_unix_ms: base.unix_ms,
        interval_ms: args.interval.as_millis() as u64,
        helpers: session.probes.helpers().to_vec(),
        attribution_off: session.attrib_off.clone(),
        command: std::env::args().collect(),
    };
    let mut writer = Writer::with_file(file, &args.output, &meta)?;
    writer.append(&Frame::Interval(Box::new(base)))?;
    eprintln!("{}", session.banner());
    eprintln!(
        "Recording to {} every {:?}.",
        args.output.display(),
        args.interval
    );

    let started = Instant::now();
    let end = args.duration.map(|d| started + d);
    let mut last = started;
    // Slots freed since the last reading (written with the next one).
    let mut forgotten = Vec::new();
    let mut readings = 0u64;
    let workload_done = loop {
        let deadline = last + args.interval;
        let deadline = end.map_or(deadline, |e| e.min(deadline));
        let mut workload_done = false;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            if workload.as_ref().is_some_and(|w| w.finished()) {
                workload_done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
        }
        if stop.load(Ordering::Relaxed) {
            break false;
        }
        // The workload's lookups are synchronous: once its thread is done,
        // the maps hold every one of them.
        let cur = session.probes.read()?;
        last = Instant::now();
        writer.append(&Frame::Interval(Box::new(interval(
            &session,
            cur,
            std::mem::take(&mut forgotten),
        ))))?;
        readings += 1;
        if let Some(f) = run_leaks(&session, None)? {
            writer.append(&f)?;
        }
        // After the reading: a program that went away in this interval was
        // still counted in it.
        forgotten = session.refresh_programs()?;
        if workload_done || end.is_some_and(|e| last >= e) {
            break workload_done;
        }
    };
    let tally = match workload.take() {
        Some(w) => Some(w.join()?),
        None => None,
    };
    // Stopped by a signal, or the workload still ran after the last
    // reading: one more, so the recording holds every call made (and the
    // workload's counts match it).
    if stop.load(Ordering::Relaxed) || (tally.is_some() && !workload_done) {
        let cur = session.probes.read()?;
        writer.append(&Frame::Interval(Box::new(interval(
            &session, cur, forgotten,
        ))))?;
        readings += 1;
    }
    if let Some(t) = tally {
        let expected = t.by_helper(session.funcs.has_tc_variants());
        writer.append(&Frame::Workload(Box::new(expected)))?;
    }
    let ledger = (!args.session.no_ledger)
        .then(|| -> Result<LedgerScan> {
            Ok(LedgerScan {
                now_ns: monotonic_ns(),
                refs: session.probes.read_ledger()?,
            })
        })
        .transpose()?;
    if let Some(f) = run_leaks(&session, ledger)? {
        writer.append(&f)?;
    }
    let bytes = writer.finish()?;
    eprintln!(
        "Recorded {readings} intervals ({}) to {}.",
        size(bytes),
        args.output.display()
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} bytes")
    } else if bytes < 10 * 1024 * 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{} MiB", bytes / (1024 * 1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_intervals_are_validated() {
        assert_eq!(parse_duration_arg("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration_arg("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration_arg("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration_arg("0s").is_err());
        assert!(parse_duration_arg("soon").is_err());
        assert_eq!(parse_interval_arg("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_interval_arg("1ms").is_err());
        assert!(parse_interval_arg("2d").is_err());
        assert!(parse_interval_arg("25h").is_err());
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(20 * 1024), "20 KiB");
        assert_eq!(size(30 * 1024 * 1024), "30 MiB");
    }
}
