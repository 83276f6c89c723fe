//! The replay source against the dashboard: what a recording plays is
//! what the live session showed.

mod tests {
    use std::path::PathBuf;

    use super::super::app::{Action, App};
    use super::super::fixtures;
    use crate::model::snapshot::Grouping;
    use crate::record::{Frame, Interval, Meta};
    use crate::record::{Leaks, LedgerScan, Writer};
    use crate::session::{ReplaySource, Signals, Source};
    use std::time::{Duration, Instant};

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
        let stop = Signals::new();
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
        let stop = Signals::new();
        let t0 = Instant::now();
        let mut got = Vec::new();
        while let Some(b) = src.next(&stop).unwrap() {
            got.push((b.mono_ns(), t0.elapsed()));
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
        stop.request_stop();
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
        let stop = Signals::new();
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
