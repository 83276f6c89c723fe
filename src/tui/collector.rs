//! The collector thread: it owns the data source (the live BPF session, or
//! a recording being replayed) and sends owned batches to the UI thread over
//! a channel, so the UI never waits on a map read and never shares state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::bpf::probes::monotonic_ns;
use crate::cli::{Session, SessionArgs, WorkloadRunner};
use crate::model::ids::Helper;
use crate::model::ledger::{OutstandingRef, RunLeak};
use crate::model::snapshot::{Labels, ProgramRef, Snapshot};

/// What does not change while the source runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// "fentry" or "kprobe".
    pub probe_mode: String,
    /// Where the data comes from, for the header ("live", "replay FILE").
    pub origin: String,
    /// The helper functions traced (the rows of the per-helper grouping).
    pub helpers: Vec<Helper>,
    /// Seconds between readings.
    pub interval_s: f64,
    /// What the probes add per lookup (ns), when `--calibrate` measured it:
    /// the base of the probes' overhead estimate.
    pub probe_ns_per_lookup: Option<f64>,
}

/// References outstanding in the ledger at one instant, as the table needs
/// them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LedgerSummary {
    /// CLOCK_MONOTONIC ns of the scan (the clock of `acquired_ns`).
    pub now_ns: u64,
    /// Every outstanding reference. The ledger holds at most
    /// `--ledger-size` sockets, so this stays bounded.
    pub refs: Vec<OutstandingRef>,
}

/// One reading, owned, sent from the collector to the UI.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Cumulative since the probes were loaded.
    pub snapshot: Snapshot,
    /// Monotonic time of the reading, ns (the snapshot's clock).
    pub mono_ns: u64,
    /// Who the program slots of `snapshot` belong to.
    pub programs: BTreeMap<u32, ProgramRef>,
    /// Interface names by (netns, ifindex), where known.
    pub interfaces: BTreeMap<(u32, u32), String>,
    /// BPF programs whose calls are attributed.
    pub programs_traced: usize,
    /// Program slots freed since the previous reading: their aggregates
    /// were deleted and the slot may hold another program now, so they
    /// leave every earlier reading before this one is subtracted from it.
    pub freed_slots: Vec<u32>,
    /// The ledger, when it is kept (and, for a replay, recorded).
    pub ledger: Option<LedgerSummary>,
    /// Traced program runs that ended holding a reference, since the
    /// previous batch.
    pub run_leaks: Vec<RunLeak>,
    /// Non-fatal problems of this reading (one line each).
    pub errors: Vec<String>,
    /// CPU used by skprof itself since the previous batch, as a share of
    /// one core (percent); `None` when unknown (a replay).
    pub self_cpu_pct: Option<f64>,
    /// A word about the source's progress ("frame 3/40", "workload done").
    pub status: Option<String>,
}

impl Labels for Batch {
    fn program(&self, slot: u32) -> ProgramRef {
        self.programs
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| ProgramRef {
                slot,
                id: 0,
                name: if slot == crate::model::snapshot::UNATTRIBUTED {
                    "(not traced)".into()
                } else {
                    format!("slot {slot}")
                },
            })
    }

    fn interface(&self, netns: u32, ifindex: u32) -> Option<String> {
        self.interfaces.get(&(netns, ifindex)).cloned()
    }
}

/// Where batches come from: the live session or a recording.
pub trait Source {
    fn info(&self) -> SourceInfo;
    /// Waits until the next reading is due (returning early with `None` if
    /// `stop` is set) and takes it. `Ok(None)`: the source has nothing more
    /// (a replay at its end).
    fn next(&mut self, stop: &AtomicBool) -> Result<Option<Batch>>;
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
    Batch(Box<Batch>),
    /// The source has no more readings (a replay's end): the UI holds the
    /// last one.
    Ended(String),
    /// The source is done and the dashboard ends with it.
    Done,
    /// The source failed; no more batches come.
    Failed(String),
}

/// Sleeps until `deadline` in steps, so that `stop` is noticed within
/// 100 ms (quitting waits for this thread). Shorter steps cost wake-ups
/// every refresh for nothing: at 20 ms they were a tenth of top's CPU time.
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100).min(deadline - now));
    }
}

/// The running collector thread.
pub struct Collector {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Collector {
    /// Builds the source inside a new thread (a live session's BPF objects
    /// stay on the thread that made them), waits until it is ready and
    /// returns its description; errors of the setup (privileges, a bad
    /// recording) come back here, before the terminal is touched. Batches,
    /// then `Ended` or `Failed`, go to `tx` wrapped by `wrap`.
    pub fn start<M, F, W>(make: F, tx: mpsc::Sender<M>, wrap: W) -> Result<(Collector, SourceInfo)>
    where
        M: Send + 'static,
        F: FnOnce() -> Result<Box<dyn Source>> + Send + 'static,
        W: Fn(Msg) -> M + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
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
                            if tx.send(wrap(Msg::Batch(Box::new(b)))).is_err() {
                                break None;
                            }
                        }
                        Ok(None) if stop2.load(Ordering::Relaxed) => break None,
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
                stop,
                handle: Some(handle),
            },
            info,
        ))
    }

    /// Stops the source and waits for the thread; the source's own errors at
    /// closing (a failed workload) come back here.
    pub fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
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
        self.stop.store(true, Ordering::Relaxed);
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

/// Least time between two scans for BPF programs loaded or gone.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// The live source: a tracing session (and the built-in workload with
/// `--workload`), read every interval.
pub struct LiveSource {
    session: Session,
    workload: Option<WorkloadRunner>,
    ledger: bool,
    interval: Duration,
    next_at: Instant,
    /// The reading taken before the workload started: the first batch.
    first: Option<Snapshot>,
    cpu: CpuMeter,
    /// Interface names seen so far (a sysfs scan each, so looked up once).
    interfaces: BTreeMap<(u32, u32), Option<String>>,
    /// Slots freed after the previous reading, for the next batch.
    freed: Vec<u32>,
    /// The workload finished and its last reading was sent.
    workload_done: bool,
    /// When the loaded programs were last scanned.
    scanned: Instant,
}

impl LiveSource {
    pub fn start(args: &SessionArgs, interval_s: f64) -> Result<LiveSource> {
        let mut session = Session::start(args)?;
        // The baseline comes first: the workload starts running as soon as
        // it is set up, and its first lookups must be inside the window.
        let first = session.probes.read()?;
        let workload = WorkloadRunner::start(args, &mut session)?;
        let interval = Duration::from_secs_f64(interval_s);
        let mut cpu = CpuMeter::default();
        cpu.sample(Instant::now(), process_cpu_ns());
        Ok(LiveSource {
            session,
            workload,
            ledger: !args.no_ledger,
            interval,
            next_at: Instant::now() + interval,
            first: Some(first),
            cpu,
            interfaces: BTreeMap::new(),
            freed: Vec::new(),
            workload_done: false,
            scanned: Instant::now(),
        })
    }

    fn batch(&mut self, snapshot: Snapshot) -> Batch {
        let mut errors = Vec::new();
        let programs = snapshot
            .programs()
            .into_iter()
            .map(|s| (s, self.session.program(s)))
            .collect();
        let mut interfaces = BTreeMap::new();
        for (netns, ifindex) in snapshot.interfaces() {
            if ifindex == 0 {
                continue;
            }
            let session = &self.session;
            let name = self
                .interfaces
                .entry((netns, ifindex))
                .or_insert_with(|| Labels::interface(session, netns, ifindex));
            if let Some(n) = name {
                interfaces.insert((netns, ifindex), n.clone());
            }
        }
        let ledger = if self.ledger {
            match self.session.probes.read_ledger() {
                Ok(refs) => Some(LedgerSummary {
                    now_ns: monotonic_ns(),
                    refs,
                }),
                Err(e) => {
                    errors.push(crate::error::one_line(&e));
                    None
                }
            }
        } else {
            None
        };
        let run_leaks = self.session.probes.take_run_leaks().unwrap_or_else(|e| {
            errors.push(crate::error::one_line(&e));
            Vec::new()
        });
        // After the labels: a program that went away was still counted in
        // this reading; from the next one on its slot starts from zero.
        let freed_slots = std::mem::take(&mut self.freed);
        // A scan walks every BPF program on the system (a few syscalls
        // each): at a 10 Hz refresh it would be most of skprof's cost, and
        // a program loaded or gone a second late changes nothing.
        if self.scanned.elapsed() >= RESCAN_EVERY {
            self.scanned = Instant::now();
            self.freed = self.session.refresh_programs().unwrap_or_else(|e| {
                errors.push(crate::error::one_line(&e));
                Vec::new()
            });
        }
        let status = match &self.workload {
            Some(w) if w.finished() => {
                self.workload_done = true;
                Some("workload done".to_string())
            }
            Some(_) => Some("workload running".to_string()),
            None => None,
        };
        Batch {
            mono_ns: snapshot.mono_ns,
            snapshot,
            programs,
            interfaces,
            programs_traced: self
                .session
                .attrib
                .as_ref()
                .map_or(0, |a| a.programs().count()),
            freed_slots,
            ledger,
            run_leaks,
            errors,
            self_cpu_pct: self.cpu.sample(Instant::now(), process_cpu_ns()),
            status,
        }
    }
}

impl Source for LiveSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kernel: self.session.kernel.clone(),
            probe_mode: self.session.probes.kind().to_string(),
            origin: "live".into(),
            helpers: self.session.probes.helpers().to_vec(),
            interval_s: self.interval.as_secs_f64(),
            probe_ns_per_lookup: self.session.overhead.map(|o| o.ns_per_lookup),
        }
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Option<Batch>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(self.batch(first)));
        }
        if self.workload_done {
            return Ok(None);
        }
        if !sleep_until(self.next_at, stop) {
            return Ok(None);
        }
        // A late reading (a slow map read) does not make the next ones
        // come in a burst.
        self.next_at = (self.next_at + self.interval).max(Instant::now());
        let snapshot = self.session.probes.read()?;
        Ok(Some(self.batch(snapshot)))
    }

    /// The workload ends the command when it was given rounds or a duration
    /// (it only finishes by itself then), as it ends `skprof stat`.
    fn quit_at_end(&self) -> bool {
        self.workload_done
    }

    fn close(&mut self) -> Result<()> {
        match self.workload.take() {
            Some(w) => w.finish(&self.session, false, &mut std::io::sink()),
            None => Ok(()),
        }
    }
}

/// A source of fixed batches, for tests: each is returned at once.
#[cfg(test)]
pub struct FixedSource {
    pub info: SourceInfo,
    pub batches: std::collections::VecDeque<Batch>,
}

#[cfg(test)]
impl Source for FixedSource {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn next(&mut self, _stop: &AtomicBool) -> Result<Option<Batch>> {
        Ok(self.batches.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SourceInfo {
        SourceInfo {
            kernel: "6.12.0".into(),
            probe_mode: "fentry".into(),
            origin: "test".into(),
            helpers: vec![Helper::TcSkLookupTcp],
            interval_s: 1.0,
            probe_ns_per_lookup: None,
        }
    }

    #[test]
    fn batches_flow_then_the_end_is_announced() {
        let (tx, rx) = mpsc::channel();
        let batches = (1..=3)
            .map(|i| Batch {
                mono_ns: i,
                ..Default::default()
            })
            .collect();
        let (c, got_info) = Collector::start(
            move || {
                Ok(Box::new(FixedSource {
                    info: info(),
                    batches,
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
                Msg::Batch(b) => seen.push(b.mono_ns),
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
    fn setup_errors_come_back_before_any_batch() {
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
        fn next(&mut self, _: &AtomicBool) -> Result<Option<Batch>> {
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
        fn next(&mut self, _: &AtomicBool) -> Result<Option<Batch>> {
            self.0 = self.0.saturating_sub(1);
            Ok((self.0 > 0).then(Batch::default))
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
                Msg::Batch(_) => true,
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
