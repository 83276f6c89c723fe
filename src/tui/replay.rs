//! The replay source: a recording made by `skprof record`, played at the
//! pace it was recorded at (times `--speed`), then held at its last reading.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::collector::{sleep_until, Batch, LedgerSummary, Source, SourceInfo};
use crate::model::ledger::RunLeak;
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
    ledger: Option<LedgerSummary>,
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
                        self.ledger = Some(LedgerSummary {
                            now_ns: scan.now_ns,
                            refs: scan.refs,
                        });
                    }
                }
                Some(Frame::Meta(_) | Frame::Workload(_) | Frame::End) => {}
            }
        }
    }
}

/// `HH:MM:SS` UTC of a wall-clock time in ms.
fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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
            probe_ns_per_lookup: None,
        }
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Option<Batch>> {
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
        if !sleep_until(show_at, stop) {
            return Ok(None);
        }
        self.last = Some((mono, show_at));
        self.played += 1;
        let programs = cur.labels.into_iter().map(|p| (p.slot, p)).collect();
        let mut b = Batch {
            mono_ns: mono,
            snapshot: cur.snapshot,
            programs,
            freed_slots: cur.forgotten,
            ledger: self.ledger.clone(),
            run_leaks: std::mem::take(&mut self.run_leaks),
            status: Some(format!(
                "frame {} · {} UTC",
                self.played,
                clock(cur.unix_ms)
            )),
            ..Default::default()
        };
        b.programs_traced = b.programs.values().filter(|p| p.id != 0).count();
        Ok(Some(b))
    }

    fn end_note(&self) -> String {
        match self.reader.warning() {
            Some(w) => format!("end of the recording ({w}): holding the last reading"),
            None => "end of the recording: holding the last reading".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::snapshot::Grouping;
    use crate::record::{Leaks, LedgerScan, Writer};
    use crate::tui::app::{Action, App};
    use crate::tui::fixtures;

    /// The fixture session written as `skprof record` writes it: an
    /// interval frame per reading, each followed by a leaks frame.
    fn record_fixture(name: &str, n: u64, ledger: bool) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("skprof-replay-{name}-{}.skrec", std::process::id()));
        let info = fixtures::info();
        let meta = Meta {
            skprof_version: "0.1.0".into(),
            kernel: info.kernel,
            probe_mode: info.probe_mode,
            hostname: "node1".into(),
            start_unix_ms: 1_764_000_000_000,
            interval_ms: 1000,
            helpers: info.helpers,
            attribution_off: None,
            command: vec!["skprof".into(), "record".into()],
        };
        let mut w = Writer::create(&path, &meta).unwrap();
        for k in 0..n {
            let b = fixtures::batch(k);
            w.append(&Frame::Interval(Box::new(Interval {
                unix_ms: meta.start_unix_ms + k * 1000,
                snapshot: b.snapshot,
                labels: b.programs.into_values().collect(),
                forgotten: Vec::new(),
            })))
            .unwrap();
            let scan = b.ledger.unwrap();
            w.append(&Frame::Leaks(Leaks {
                unix_ms: meta.start_unix_ms + k * 1000,
                run_leaks: b.run_leaks,
                ledger: ledger.then_some(LedgerScan {
                    now_ns: scan.now_ns,
                    refs: scan.refs,
                }),
            }))
            .unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn a_replay_shows_what_the_live_session_showed() {
        let path = record_fixture("same", 3, true);
        let mut src = ReplaySource::open(&path, 1000.0).unwrap();
        let info = src.info();
        assert_eq!(
            info.origin,
            format!("replay {}", path.file_name().unwrap().to_string_lossy())
        );
        assert_eq!(
            (info.kernel.as_str(), info.interval_s),
            ("6.12.38+deb13-amd64", 1.0)
        );
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let mut app = App::new(info, Grouping::Program);
        let mut n = 0;
        while let Some(b) = src.next(&stop).unwrap() {
            n += 1;
            assert_eq!(
                b.status.as_deref().unwrap().split(' ').nth(1),
                Some(&*n.to_string())
            );
            app.update(Action::Tick(Box::new(b)));
        }
        assert_eq!(n, 3);
        // Two recorded seconds at 1000x: a few ms, not two seconds.
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(
            src.end_note(),
            "end of the recording: holding the last reading"
        );
        let live = fixtures::app_with(3, Grouping::Program);
        let figures = |a: &App| -> Vec<_> {
            a.rows
                .iter()
                .map(|r| {
                    (
                        r.key,
                        r.calls,
                        r.calls_per_s,
                        r.p99,
                        r.outstanding,
                        r.released,
                        r.leaks,
                    )
                })
                .collect()
        };
        assert_eq!(figures(&app), figures(&live));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn paced_at_the_recorded_interval_times_speed() {
        let path = record_fixture("pace", 3, false);
        let mut src = ReplaySource::open(&path, 10.0).unwrap();
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let mut got = Vec::new();
        while let Some(b) = src.next(&stop).unwrap() {
            got.push((b.mono_ns, t0.elapsed()));
            // No scan recorded: no ledger figures.
            assert!(b.ledger.is_none());
        }
        assert_eq!(got.len(), 3);
        // One recorded second apart, at 10x: 100 ms apart.
        assert!(got[0].1 < Duration::from_millis(50));
        for w in got.windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!(
                gap >= Duration::from_millis(95) && gap < Duration::from_millis(400),
                "{gap:?}"
            );
        }
        // Stopping cuts the wait short.
        let mut src = ReplaySource::open(&path, 0.01).unwrap();
        assert!(src.next(&stop).unwrap().is_some());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(src.next(&stop).unwrap().is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_files_are_refused_before_the_screen_is_taken() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!(
            "skprof-replay-missing-{}.skrec",
            std::process::id()
        ));
        let e = ReplaySource::open(&missing, 1.0).err().unwrap();
        assert!(crate::error::one_line(&e).starts_with("open the recording: cannot open"));
        let empty = record_fixture("empty", 0, false);
        let e = ReplaySource::open(&empty, 1.0).err().unwrap();
        assert!(
            e.to_string().ends_with("the recording holds no reading"),
            "{e}"
        );
        let _ = std::fs::remove_file(&empty);
        // Cut off mid-frame: what was complete plays, and the end says so.
        let full = record_fixture("cut", 3, true);
        let bytes = std::fs::read(&full).unwrap();
        std::fs::write(&full, &bytes[..bytes.len() - 40]).unwrap();
        let mut src = ReplaySource::open(&full, 1000.0).unwrap();
        let stop = AtomicBool::new(false);
        let mut n = 0;
        while src.next(&stop).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(
            src.end_note().contains("cut off") || src.end_note().contains("no End frame"),
            "{}",
            src.end_note()
        );
        let _ = std::fs::remove_file(&full);
    }
}
