//! The replay source: a recording made by `skprof record`, played at the
//! pace it was recorded at (times `--speed`), then held at its last reading.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Reading, Signals, Source, SourceInfo};
use crate::model::ledger::{LedgerScan, RunLeak};
use crate::record::{Frame, Interval, Meta, Reader};

pub struct ReplaySource {
    reader: Reader,
    meta: Meta,
    name: String,
    speed: f64,
    /// The next interval, read ahead so that the leak frames written after
    /// an interval travel with it.
    ahead: Option<Interval>,
    /// Run leaks read since the last batch.
    run_leaks: Vec<RunLeak>,
    /// The latest ledger scan seen (recordings scan it rarely: it stays
    /// shown until a newer one comes).
    ledger: Option<LedgerScan>,
    /// (recorded mono ns, when it was shown) of the previous interval.
    last: Option<(u64, Instant)>,
    played: u64,
}

impl ReplaySource {
    pub fn open(path: &Path, speed: f64) -> Result<ReplaySource> {
        let reader = Reader::open(path).context("open the recording")?;
        let meta = reader.meta().clone();
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut r = ReplaySource {
            reader,
            meta,
            name,
            speed,
            ahead: None,
            run_leaks: Vec::new(),
            ledger: None,
            last: None,
            played: 0,
        };
        // A recording without a single reading is refused before the
        // terminal is taken over.
        r.ahead = r.read_to_interval()?;
        if r.ahead.is_none() {
            anyhow::bail!("{}: the recording holds no reading", path.display());
        }
        Ok(r)
    }

    /// Reads frames up to the next interval, collecting leak frames on the
    /// way; `None` at the end of the file.
    fn read_to_interval(&mut self) -> Result<Option<Interval>> {
        loop {
            match self.reader.next_frame().context("read the recording")? {
                None => return Ok(None),
                Some(Frame::Interval(i)) => return Ok(Some(*i)),
                Some(Frame::Leaks(l)) => {
                    self.run_leaks.extend(l.run_leaks);
                    if let Some(scan) = l.ledger {
                        self.ledger = Some(scan);
                    }
                }
                Some(Frame::Meta(_) | Frame::Workload(_) | Frame::End) => {}
            }
        }
    }
}

impl Source for ReplaySource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kernel: self.meta.kernel.clone(),
            probe_mode: self.meta.probe_mode.clone(),
            origin: format!("replay {}", self.name),
            helpers: self.meta.helpers.clone(),
            interval_s: self.meta.interval_ms as f64 / 1000.0,
            // Calibration is not recorded.
            ..SourceInfo::default()
        }
    }

    fn next(&mut self, signals: &Signals) -> Result<Option<Reading>> {
        let Some(cur) = self.ahead.take() else {
            return Ok(None);
        };
        self.ahead = self.read_to_interval()?;
        let mono = cur.snapshot.mono_ns;
        let show_at = match self.last {
            None => Instant::now(),
            Some((m, t)) => {
                let gap = mono.saturating_sub(m) as f64 / 1e9 / self.speed;
                // A gap of hours (a suspended recorder) is not waited out.
                t + Duration::from_secs_f64(gap.min(60.0))
            }
        };
        if !signals.sleep_until(show_at) {
            return Ok(None);
        }
        self.last = Some((mono, show_at));
        self.played += 1;
        let mut r = cur.into_reading();
        r.ledger = self.ledger.clone();
        r.run_leaks = std::mem::take(&mut self.run_leaks);
        r.status = Some(format!(
            "frame {} · {} UTC",
            self.played,
            crate::model::words::clock_utc(r.unix_ms)
        ));
        Ok(Some(r))
    }

    fn end_note(&self) -> String {
        match self.reader.warning() {
            Some(w) => format!("end of the recording ({w}): holding the last reading"),
            None => "end of the recording: holding the last reading".into(),
        }
    }
}
