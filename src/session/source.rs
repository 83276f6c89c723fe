//! Where readings come from (a live session, a recording), and the
//! collector thread that owns a source and sends its readings over a
//! channel, so a dashboard never waits on a map read and never shares state.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use super::{Reading, Signals, SourceInfo};

/// Where readings come from: the live session or a recording.
pub trait Source {
    fn info(&self) -> SourceInfo;
    /// Waits until the next reading is due (returning early with `None` on
    /// a stop) and takes it. `Ok(None)`: the source has nothing more
    /// (a replay at its end).
    fn next(&mut self, signals: &Signals) -> Result<Option<Reading>>;
    /// What the UI says once `next` returned `Ok(None)` (not stopped).
    fn end_note(&self) -> String {
        "end of the readings: holding the last one".into()
    }
    /// Whether the dashboard ends with the source (the built-in workload
    /// given --workload-rounds or --workload-duration), rather than holding
    /// its last reading.
    fn quit_at_end(&self) -> bool {
        false
    }
    /// Ends the source cleanly (joins a workload, say); called once when the
    /// collector stops.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What the collector thread sends.
#[derive(Debug)]
pub enum Msg {
    Reading(Box<Reading>),
    /// The source has no more readings (a replay's end): the UI holds the
    /// last one.
    Ended(String),
    /// The source is done and the dashboard ends with it.
    Done,
    /// The source failed; no more readings come.
    Failed(String),
}

/// The running collector thread.
pub struct Collector {
    signals: Signals,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Collector {
    /// Builds the source inside a new thread (a live session's BPF objects
    /// stay on the thread that made them), waits until it is ready and
    /// returns its description; errors of the setup (privileges, a bad
    /// recording) come back here, before the terminal is touched. Readinges,
    /// then `Ended` or `Failed`, go to `tx` wrapped by `wrap`.
    pub fn start<M, F, W>(make: F, tx: mpsc::Sender<M>, wrap: W) -> Result<(Collector, SourceInfo)>
    where
        M: Send + 'static,
        F: FnOnce() -> Result<Box<dyn Source>> + Send + 'static,
        W: Fn(Msg) -> M + Send + 'static,
    {
        let signals = Signals::new();
        let stop2 = signals.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SourceInfo>>();
        let handle = std::thread::Builder::new()
            .name("skprof-collector".into())
            .spawn(move || -> Result<()> {
                let mut source = match make() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(source.info()));
                let ended = loop {
                    match source.next(&stop2) {
                        Ok(Some(b)) => {
                            if tx.send(wrap(Msg::Reading(Box::new(b)))).is_err() {
                                break None;
                            }
                        }
                        Ok(None) if stop2.is_stopped() => break None,
                        Ok(None) if source.quit_at_end() => break Some(Msg::Done),
                        Ok(None) => break Some(Msg::Ended(source.end_note())),
                        Err(e) => break Some(Msg::Failed(crate::error::one_line(&e))),
                    }
                };
                let closed = source.close();
                // The UI may be gone already (it quit): nothing to tell then.
                if let Some(m) = ended {
                    let _ = tx.send(wrap(m));
                }
                if let Err(e) = &closed {
                    let _ = tx.send(wrap(Msg::Failed(crate::error::one_line(e))));
                }
                closed
            })
            .context("start the collector thread")?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let joined = handle.join();
                return Err(match joined {
                    Ok(Err(e)) => e,
                    _ => anyhow!("the collector thread ended during setup"),
                });
            }
        };
        Ok((
            Collector {
                signals,
                handle: Some(handle),
            },
            info,
        ))
    }

    /// Stops the source and waits for the thread; the source's own errors at
    /// closing (a failed workload) come back here.
    pub fn stop(mut self) -> Result<()> {
        self.signals.request_stop();
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the collector thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // On an early return the thread is told to stop; the live session it
        // owns detaches its probes when the thread ends (or the process does).
        self.signals.request_stop();
    }
}

/// CPU time of skprof itself, for the overhead estimate: every thread of
/// the process but the built-in workload's (it is the measured load, not
/// the measuring). Summed from each thread's schedstat (ns, precise), which
/// needs CONFIG_SCHEDSTATS; `None` without it.
pub fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("skprof-workload") {
            continue;
        }
        let s = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Turns successive CPU-time readings into a percentage of one core.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    pub fn sample(&mut self, now: Instant, cpu_ns: Option<u64>) -> Option<f64> {
        let cpu_ns = cpu_ns?;
        let pct = self.last.and_then(|(t, c)| {
            let wall = now.duration_since(t).as_nanos() as f64;
            (wall > 0.0).then(|| 100.0 * cpu_ns.saturating_sub(c) as f64 / wall)
        });
        self.last = Some((now, cpu_ns));
        pct
    }
}

/// A source of fixed readings, for tests: each is returned at once.
#[cfg(test)]
pub struct FixedSource {
    pub info: SourceInfo,
    pub readings: std::collections::VecDeque<Reading>,
}

#[cfg(test)]
impl Source for FixedSource {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn next(&mut self, _signals: &Signals) -> Result<Option<Reading>> {
        Ok(self.readings.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::Helper;
    use std::time::Duration;

    fn info() -> SourceInfo {
        SourceInfo {
            kernel: "6.12.0".into(),
            probe_mode: "fentry".into(),
            origin: "test".into(),
            helpers: vec![Helper::TcSkLookupTcp],
            interval_s: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn readings_flow_then_the_end_is_announced() {
        let (tx, rx) = mpsc::channel();
        let readings = (1..=3)
            .map(|i| Reading {
                unix_ms: i,
                ..Default::default()
            })
            .collect();
        let (c, got_info) = Collector::start(
            move || {
                Ok(Box::new(FixedSource {
                    info: info(),
                    readings,
                }) as Box<dyn Source>)
            },
            tx,
            |m| m,
        )
        .unwrap();
        assert_eq!(got_info, info());
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::Reading(b) => seen.push(b.unix_ms),
                Msg::Ended(why) => {
                    assert!(why.contains("holding the last one"), "{why}");
                    break;
                }
                Msg::Failed(e) => panic!("failed: {e}"),
                Msg::Done => panic!("a replay holds its last reading, it does not quit"),
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        c.stop().unwrap();
    }

    #[test]
    fn setup_errors_come_back_before_any_reading() {
        let (tx, _rx) = mpsc::channel::<Msg>();
        let err = Collector::start(
            || Err(anyhow!("insufficient privileges: run with sudo")),
            tx,
            |m| m,
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "insufficient privileges: run with sudo");
    }

    struct Failing;
    impl Source for Failing {
        fn info(&self) -> SourceInfo {
            info()
        }
        fn next(&mut self, _: &Signals) -> Result<Option<Reading>> {
            Err(anyhow!("read map hists")).context("read the probes")
        }
    }

    #[test]
    fn a_failing_source_reports_one_line() {
        let (tx, rx) = mpsc::channel();
        let (c, _) =
            Collector::start(|| Ok(Box::new(Failing) as Box<dyn Source>), tx, |m| m).unwrap();
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::Failed(e) => assert_eq!(e, "read the probes: read map hists"),
            m => panic!("unexpected {m:?}"),
        }
        c.stop().unwrap();
    }

    /// A source that ends the dashboard when it runs out (a workload with
    /// a duration).
    struct Finite(u64);
    impl Source for Finite {
        fn info(&self) -> SourceInfo {
            info()
        }
        fn next(&mut self, _: &Signals) -> Result<Option<Reading>> {
            self.0 = self.0.saturating_sub(1);
            Ok((self.0 > 0).then(Reading::default))
        }
        fn quit_at_end(&self) -> bool {
            self.0 == 0
        }
    }

    #[test]
    fn a_source_that_quits_at_its_end_says_done() {
        let (tx, rx) = mpsc::channel();
        let (c, _) =
            Collector::start(|| Ok(Box::new(Finite(3)) as Box<dyn Source>), tx, |m| m).unwrap();
        let got: Vec<bool> = (0..3)
            .map(|_| match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::Reading(_) => true,
                Msg::Done => false,
                m => panic!("unexpected {m:?}"),
            })
            .collect();
        assert_eq!(got, vec![true, true, false]);
        c.stop().unwrap();
    }

    #[test]
    fn cpu_meter_is_a_share_of_one_core() {
        let mut m = CpuMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.sample(t0, Some(1_000)), None);
        let pct = m
            .sample(t0 + Duration::from_secs(2), Some(1_000 + 20_000_000))
            .unwrap();
        assert!((pct - 1.0).abs() < 1e-9, "{pct}");
        assert_eq!(m.sample(t0, None), None);
        // This process has used some CPU by now, where schedstat exists.
        if let Some(ns) = process_cpu_ns() {
            assert!(ns > 0);
        }
    }
}
