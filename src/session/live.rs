//! The live source: a tracing session (and the built-in workload with
//! `--workload`), read once per interval into a [`Reading`]. The one
//! collection loop every live face uses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::source::{process_cpu_ns, CpuMeter};
use super::workload::WorkloadRunner;
use super::{Reading, Rescan, Session, SessionOptions, Signals, Source, SourceInfo};
use crate::bpf::probes::monotonic_ns;
use crate::ksyms::Ksyms;
use crate::model::ids::Family;
use crate::model::ledger::LedgerScan;
use crate::model::snapshot::{Labels, Snapshot};
use crate::workload::{HelperTally, Workload, WorkloadOpts};

/// Least time between two scans for BPF programs loaded or gone: a scan
/// walks every BPF program on the system (a few syscalls each), and a
/// program loaded or gone a second late changes nothing.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// After the workload stops, how long its traffic may take to arrive:
/// cgroup_skb and XDP lookups run as its packets are delivered, after the
/// sending call returned.
const DRAIN_MAX: Duration = Duration::from_secs(3);
const DRAIN_STEP: Duration = Duration::from_millis(200);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The live source.
pub struct LiveSource {
    session: Session,
    workload: Option<WorkloadRunner>,
    /// The workload's exact counts once it stopped.
    tally: Option<HelperTally>,
    ledger: bool,
    interval: Duration,
    next_at: Instant,
    /// The reading taken before the workload started: the first one.
    first: Option<Reading>,
    cpu: CpuMeter,
    /// Interface names seen so far (a sysfs scan each, so looked up once).
    interfaces: BTreeMap<(u32, u32), Option<String>>,
    /// What the last rescan changed, for the next reading.
    rescan: Rescan,
    /// When the loaded programs were last scanned.
    scanned: Instant,
    /// The next reading ends the workload first.
    last_requested: bool,
    /// The reading after the workload ended was given.
    workload_reported: bool,
    /// SIGHUP asked for a rescan.
    hup: bool,
    /// `workload_tally` gave the counts out.
    tally_given: bool,
}

impl LiveSource {
    /// Loads and attaches the probes, takes the baseline reading, then
    /// starts the workload (its first lookups fall inside the first
    /// interval).
    pub fn start(opts: &SessionOptions, interval: Duration) -> Result<LiveSource> {
        let session = Session::start(opts)?;
        let mut live = LiveSource {
            session,
            workload: None,
            tally: None,
            ledger: opts.ledger,
            interval,
            next_at: Instant::now(),
            first: None,
            cpu: CpuMeter::default(),
            interfaces: BTreeMap::new(),
            rescan: Rescan::default(),
            scanned: Instant::now(),
            last_requested: false,
            workload_reported: false,
            hup: false,
            tally_given: false,
        };
        live.cpu.sample(Instant::now(), process_cpu_ns());
        let first = live.read_now()?;
        if let Some(w) = &opts.workload {
            live.workload = Some(WorkloadRunner::start(w, &mut live.session)?);
        }
        live.first = Some(first);
        live.next_at = Instant::now() + interval;
        Ok(live)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn info(&self) -> SourceInfo {
        self.session.info(self.interval.as_secs_f64())
    }

    /// The next reading: the baseline first, then one per interval. Waits
    /// until it is due; `None` on a stop. When the workload ends by itself
    /// (or [`LiveSource::last_reading_next`] was called), its traffic is
    /// drained first and the reading says `workload_done`.
    pub fn next(&mut self, signals: &Signals) -> Result<Option<Reading>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        loop {
            if signals.is_stopped() {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= self.next_at || self.workload_ended() {
                break;
            }
            if !signals.wait_until(self.next_at.min(now + Duration::from_millis(100)))
                && signals.take_hup()
            {
                // A rescan asked for: a reading now, the rescan right after
                // it, and the next reading at once to show it.
                self.hup = true;
                break;
            }
        }
        // A late reading (a slow map read) does not make the next ones
        // come in a burst.
        self.next_at = (self.next_at + self.interval).max(Instant::now());
        if self.last_requested || self.workload_ended() {
            self.stop_workload()?;
        }
        self.read_now().map(Some)
    }

    /// The next reading comes no later than `t` (a command's end, a
    /// daemon's summary line).
    pub fn end_at(&mut self, t: Instant) {
        self.next_at = self.next_at.min(t);
    }

    /// Ends the workload before the next reading, so that reading holds
    /// every call it made.
    pub fn last_reading_next(&mut self) {
        self.last_requested = true;
    }

    fn workload_ended(&self) -> bool {
        self.workload.as_ref().is_some_and(|w| w.finished())
    }

    /// Program slots the session let go right after the last reading (the
    /// next reading carries them as `freed_slots`).
    pub fn freed_after_last_reading(&self) -> &[u32] {
        &self.rescan.freed_slots
    }

    /// Stops the workload, keeps its exact counts and waits for its
    /// traffic to drain (the probes' counts stop moving).
    fn stop_workload(&mut self) -> Result<()> {
        let Some(w) = self.workload.take() else {
            return Ok(());
        };
        let tally = w.join()?;
        self.tally = Some(tally.by_helper(self.session.funcs.has_tc_variants()));
        let started = Instant::now();
        let mut last = moved(&self.session.probes.read()?);
        while started.elapsed() < DRAIN_MAX {
            std::thread::sleep(DRAIN_STEP);
            let now = moved(&self.session.probes.read()?);
            if now == last {
                break;
            }
            last = now;
        }
        Ok(())
    }

    /// Stops the workload (if it runs) and returns its exact counts, once:
    /// a daemon reports them when the workload ends and again at its own
    /// end only if they were not reported yet.
    pub fn workload_tally(&mut self) -> Result<Option<HelperTally>> {
        self.stop_workload()?;
        if std::mem::replace(&mut self.tally_given, true) {
            return Ok(None);
        }
        Ok(self.tally.clone())
    }

    /// Takes a reading now.
    pub fn read_now(&mut self) -> Result<Reading> {
        let snapshot = self.session.probes.read()?;
        let mut errors = Vec::new();
        let now_ns = monotonic_ns();
        let ledger = if self.ledger {
            match self.session.probes.read_ledger() {
                Ok(refs) => Some(LedgerScan { now_ns, refs }),
                Err(e) => {
                    errors.push(crate::error::one_line(&e));
                    None
                }
            }
        } else {
            None
        };
        let events = self
            .session
            .probes
            .take_events()
            .context("read the leak events")?;
        let mut run_leaks = events.run_leaks;
        for l in &mut run_leaks {
            l.prog_name = self.session.program_name(l.prog_id);
        }
        let programs = self.labels(&snapshot);
        let sites = self.learn_sites(&snapshot, ledger.as_ref(), &run_leaks);
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
        // Names of programs neither attributed nor in the ledger are not
        // needed any more: bounded over program churn.
        let keep: BTreeSet<u32> = programs
            .values()
            .map(|p| p.id)
            .chain(ledger.iter().flat_map(|l| l.refs.iter().map(|r| r.prog_id)))
            .chain(run_leaks.iter().map(|l| l.prog_id))
            .collect();
        self.session.names.retain(|id, _| keep.contains(id));
        let rescan = std::mem::take(&mut self.rescan);
        if let Some(why) = &rescan.failed {
            errors.push(why.clone());
        }
        let workload_done = self.tally.is_some() && !self.workload_reported;
        self.workload_reported |= workload_done;
        let status = match (&self.workload, &self.tally) {
            (Some(_), _) => Some("workload running".to_string()),
            (None, Some(_)) => Some("workload done".to_string()),
            (None, None) => None,
        };
        let reading = Reading {
            unix_ms: unix_ms(),
            snapshot,
            programs,
            names: self.session.names.clone(),
            interfaces,
            sites,
            freed_slots: rescan.freed_slots,
            ledger,
            run_leaks,
            trace: events.trace,
            attribution: self.session.attribution(),
            attached: rescan.attached,
            detached: rescan.detached,
            rescan_asked: rescan.asked,
            errors,
            self_cpu_pct: self.cpu.sample(Instant::now(), process_cpu_ns()),
            status,
            workload_done,
        };
        // After the reading: a program that went away was still counted in
        // it; from the next one on its slot starts from zero.
        if self.hup || self.scanned.elapsed() >= RESCAN_EVERY {
            self.scanned = Instant::now();
            // A failed rescan leaves the attributed programs as they were;
            // the next reading says why.
            self.rescan = self.session.rescan().unwrap_or_else(|e| Rescan {
                failed: Some(format!(
                    "rescan of the BPF programs: {}",
                    crate::error::one_line(&e)
                )),
                ..Rescan::default()
            });
            if std::mem::take(&mut self.hup) {
                self.rescan.asked = true;
                self.next_at = Instant::now();
            }
        }
        Ok(reading)
    }

    /// `--sites`: resolves the call sites this reading mentions that are
    /// new, and gives every site resolved so far.
    fn learn_sites(
        &mut self,
        s: &Snapshot,
        ledger: Option<&LedgerScan>,
        leaks: &[crate::model::ledger::RunLeak],
    ) -> BTreeMap<u64, crate::model::sites::Site> {
        use crate::model::sites::Callee;
        let Some(table) = self.session.sites.as_mut() else {
            return BTreeMap::new();
        };
        // (A pair's lookup site took a reference: it is a cell's site too.)
        let lookups = s
            .cells
            .keys()
            .map(|k| (k.site, Callee::Lookup(k.helper)))
            .chain(
                ledger
                    .into_iter()
                    .flat_map(|l| l.refs.iter().map(|r| (r.site, Callee::Lookup(r.helper)))),
            )
            .chain(
                leaks
                    .iter()
                    .map(|l| (l.reference.site, Callee::Lookup(l.reference.helper))),
            );
        let releases = s.release_sites.keys().map(|&a| (a, Callee::Release));
        table.learn(lookups.chain(releases));
        table.resolved()
    }

    /// Every slot the snapshot mentions, and every attributed program's.
    fn labels(&self, s: &Snapshot) -> BTreeMap<u32, crate::model::snapshot::ProgramRef> {
        s.programs()
            .into_iter()
            .chain(s.holds.keys().copied())
            .chain(
                self.session
                    .attrib
                    .iter()
                    .flat_map(|a| a.programs().map(|p| p.slot)),
            )
            .map(|slot| (slot, self.session.program(slot)))
            .collect()
    }

    /// The kernel stacks `ids` named, innermost frame first, skprof's own
    /// frames left out (kallsyms read once).
    pub fn stacks(&self, ids: &[i32]) -> BTreeMap<i32, Vec<String>> {
        let Ok(ksyms) = Ksyms::load() else {
            return BTreeMap::new();
        };
        ids.iter()
            .filter(|&&id| id >= 0)
            .map(|&id| {
                let frames = self.session.probes.read_stack(id).unwrap_or_default();
                let named = frames.iter().map(|&ip| ksyms.resolve(ip)).collect();
                (id, trim_probe_frames(named))
            })
            .collect()
    }

    /// The code of the program `spec` names (its id, or its name), which
    /// must call a traced function; needs `--sites`.
    pub fn program_code(&mut self, spec: &str) -> Result<crate::model::sites::ProgCode> {
        use crate::error::SkprofError;
        let Some(table) = self.session.sites.as_mut() else {
            return Err(SkprofError::Usage("program code needs --sites".into()).into());
        };
        let ids = match spec.parse::<u32>() {
            Ok(id) => vec![id],
            Err(_) => table.find_by_name(spec),
        };
        match ids.as_slice() {
            [id] => table.code(*id).cloned().ok_or_else(|| {
                SkprofError::Usage(format!(
                    "no loaded BPF program {id} that calls a socket-lookup helper or bpf_sk_release"
                ))
                .into()
            }),
            [] => Err(SkprofError::Usage(format!(
                "no loaded BPF program named {spec} calls a socket-lookup helper or bpf_sk_release"
            ))
            .into()),
            many => Err(SkprofError::Usage(format!(
                "{} programs are named {spec} (ids {}): give an id",
                many.len(),
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    /// `leaks --self-test`: one round of the workload's tc cases with the
    /// releases untraced. Returns the workload, whose sockets must outlive
    /// the report, its exact counts and the tuples of the lookups that took
    /// a reference.
    pub fn self_test(&mut self, count: u64) -> Result<(Workload, HelperTally, Vec<String>)> {
        let mut w = Workload::setup(&WorkloadOpts::tc_round(count))
            .context("self-test: set up the workload")?;
        let rescan = self.session.rescan()?;
        self.rescan.freed_slots.extend(rescan.freed_slots);
        self.rescan.attached.extend(rescan.attached);
        self.session.probes.trace_releases(false)?;
        let tally = w.run_round();
        // Resume before anything can fail, so nothing stays half-traced.
        self.session.probes.trace_releases(true)?;
        let tally = tally.context("self-test: run the workload")?;
        let expected = tally.by_helper(self.session.funcs.has_tc_variants());
        let tuples = w.acquiring_tuples(Family::Tc)?;
        Ok((w, expected, tuples))
    }
}

/// Calls and releases counted so far: what still moves while traffic
/// arrives.
fn moved(s: &Snapshot) -> (u64, u64) {
    let c = &s.counters;
    (
        s.cells.values().map(|c| c.calls).sum(),
        c.released.iter().sum::<u64>() + c.release_noop.iter().sum::<u64>() + c.release_null,
    )
}

/// Drops the innermost frames that are skprof's own: the stack is taken in
/// the helper's exit probe, so it starts in that probe (in fentry mode in
/// its out-of-line slow path, a subprogram of its own, `exit_slow`, see
/// bpf/skprof.bpf.c) and its trampoline, then the helper.
pub fn trim_probe_frames(mut frames: Vec<String>) -> Vec<String> {
    let ours = |f: &str| {
        f.starts_with("bpf_trampoline_")
            || (f.starts_with("bpf_prog_")
                && [
                    "_fexit_bpf_",
                    "_kretprobe_bpf_",
                    "_fentry_bpf_",
                    "_kprobe_bpf_",
                    "_exit_slow+",
                ]
                .iter()
                .any(|p| f.contains(p)))
    };
    let n = frames.iter().take_while(|f| ours(f)).count();
    frames.drain(..n);
    frames
}

/// The dashboard's view of a live source: it ends with the workload when
/// the workload was given rounds or a duration (it only ends by itself
/// then), as `skprof stat` does.
impl Source for LiveSource {
    fn info(&self) -> SourceInfo {
        LiveSource::info(self)
    }

    fn next(&mut self, signals: &Signals) -> Result<Option<Reading>> {
        if self.workload_reported {
            return Ok(None);
        }
        LiveSource::next(self, signals)
    }

    fn quit_at_end(&self) -> bool {
        self.workload_reported
    }

    fn close(&mut self) -> Result<()> {
        self.stop_workload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_frames_are_trimmed_up_to_the_helper() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let stack = f(&[
            "bpf_prog_c3859c796672a197_exit_slow+0xaeb [bpf]",
            "bpf_prog_4fc29c01a4aee229_fexit_bpf_tc_sk_lookup_tcp+0x44 [bpf]",
            "bpf_trampoline_6442544087+0xc4 [bpf]",
            "bpf_tc_sk_lookup_tcp+0x9",
            "bpf_prog_10ac376ec6e46040_wl_tc_lookup+0x1b4 [bpf]",
            "bpf_trampoline_154618822674+0x71 [bpf]",
        ]);
        assert_eq!(trim_probe_frames(stack.clone()), stack[3..].to_vec());
        let kprobe = f(&["bpf_tc_sk_lookup_tcp+0x0", "bpf_prog_1_x+0x10 [bpf]"]);
        assert_eq!(trim_probe_frames(kprobe.clone()), kprobe);
    }
}
