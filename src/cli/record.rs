//! `skprof record`: the same readings as `skprof stat`, written to a
//! recording (`crate::record`) for `skprof report` instead of printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::model::reading::Reading;
use crate::record::{Frame, Interval, Leaks, LedgerScan, Meta, Writer};
use crate::session::{self, LiveSource, Signals};

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The recording to write (replaced if it exists). `skprof report`
    /// reads it.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this long (e.g. 30s, 5m, 1h; a plain number is seconds).
    /// Default: until Ctrl-C, or until the workload given with
    /// --workload-rounds/--workload-duration is done.
    #[arg(long, value_parser = crate::duration::positive)]
    pub duration: Option<Duration>,
    /// Time between readings (e.g. 1s, 500ms; 10ms to 1 day).
    #[arg(long, default_value = "1s", value_parser = crate::duration::interval)]
    pub interval: Duration,
    #[command(flatten)]
    pub session: super::SessionArgs,
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

/// The run leaks of a reading, and a ledger scan, as a frame; `None` when
/// there is neither.
fn leaks_frame(r: &Reading, ledger: Option<LedgerScan>) -> Option<Frame> {
    if r.run_leaks.is_empty() && ledger.is_none() {
        return None;
    }
    Some(Frame::Leaks(Leaks {
        unix_ms: r.unix_ms,
        run_leaks: r.run_leaks.clone(),
        ledger,
    }))
}

/// A reading's interval frame, then its run leaks' frame if it has any.
fn write_reading(writer: &mut Writer, r: Reading) -> Result<()> {
    let leaks = leaks_frame(&r, None);
    writer.append(&Frame::Interval(Box::new(Interval::of(r))))?;
    if let Some(f) = leaks {
        writer.append(&f)?;
    }
    Ok(())
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let signals = Signals::install()?;
    // An unwritable output fails here, before any probe is loaded.
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    // Until the Meta frame is written nothing was recorded: a failure
    // leaves no empty file behind.
    let remove_on_error = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&args.output);
        e
    };
    let mut opts = args.session.options();
    // A recording keeps every grouping open to its reports.
    opts.places = true;
    let mut live = LiveSource::start(&opts, args.interval).map_err(remove_on_error)?;
    let info = live.info();
    // The baseline, taken before the workload started, as in `stat`: its
    // first lookups fall inside the first interval.
    let base = live
        .next(&signals)
        .map_err(remove_on_error)?
        .context("stopped before the first reading")
        .map_err(remove_on_error)?;
    // Written after the workload started, so that `attribution_off` says
    // whether tracing its programs failed.
    let meta = Meta {
        skprof_version: env!("CARGO_PKG_VERSION").into(),
        kernel: info.kernel.clone(),
        probe_mode: info.probe_mode.clone(),
        hostname: hostname(),
        start_unix_ms: base.unix_ms,
        interval_ms: args.interval.as_millis() as u64,
        helpers: info.helpers.clone(),
        attribution_off: live.session().attrib_off.clone(),
        command: std::env::args().collect(),
    };
    let mut writer = Writer::with_file(file, &args.output, &meta)?;
    let mut last_done = base.workload_done;
    write_reading(&mut writer, base)?;
    eprintln!("{}", session::banner(&info, &live.session().attribution()));
    eprintln!(
        "Recording to {} every {:?}.",
        args.output.display(),
        args.interval
    );

    let end = args.duration.map(|d| Instant::now() + d);
    let mut readings = 0u64;
    loop {
        if let Some(e) = end {
            live.end_at(e);
            if Instant::now() + args.interval >= e {
                // The reading at the end comes after the workload stopped
                // and its traffic drained: the recording holds every call
                // it made.
                live.last_reading_next();
            }
        }
        let Some(r) = live.next(&signals)? else {
            break;
        };
        last_done = r.workload_done;
        let done = r.workload_done || end.is_some_and(|e| Instant::now() >= e);
        write_reading(&mut writer, r)?;
        readings += 1;
        if done {
            break;
        }
    }
    // Stopped by a signal, or the workload still ran: one more reading
    // after it stopped, so the recording holds every call made (and the
    // workload's counts match it).
    let tally = live.workload_tally()?;
    if signals.is_stopped() || (tally.is_some() && !last_done) {
        write_reading(&mut writer, live.read_now()?)?;
        readings += 1;
    }
    if let Some(t) = tally {
        writer.append(&Frame::Workload(Box::new(t)))?;
    }
    // The ledger at the end, with the run leaks the last reading did not
    // carry.
    let fin = live.read_now()?;
    if let Some(f) = leaks_frame(&fin, fin.ledger.clone()) {
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
    fn sizes_read_naturally() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(20 * 1024), "20 KiB");
        assert_eq!(size(30 * 1024 * 1024), "30 MiB");
    }
}
