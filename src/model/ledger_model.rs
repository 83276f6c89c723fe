//! The reference ledger as a pure state machine: the same matching the
//! kernel side does (bpf/skprof.bpf.c `on_exit` / `on_release`,
//! bpf/shared.bpf.h `held_push` / `held_take` / `ledger_hold`,
//! bpf/attrib.bpf.c `prog_exit`), replayed from a recorded stream of ledger
//! events.
//!
//! Why both: the kernel must match in place, because the per-run check
//! happens at the program's exit, inside the kernel. This model is the
//! specification of that matching, and the oracle it is checked against:
//! `skprof leaks --trace FILE` records every ledger step the kernel takes
//! (with the kernel's own verdicts: whether an acquire was recorded, whether
//! a release closed a holder, which runs leaked), and [`LedgerModel::apply`]
//! replays them and reports every verdict it would have reached differently.
//! Unit tests drive it with recorded and hand-built streams: nesting,
//! interleaving, overflow, unmatched releases and leaks.
//!
//! Rules (the kernel's):
//! - Each CPU keeps a *held stack* of the sockets its traced runs looked up
//!   and have not released, at most [`HELD`] entries (holes included: an
//!   entry released from the middle stays a hole until everything above it
//!   is gone). A hit of a traced run (`run` ≠ 0) is pushed there, refcounted
//!   or not. This is the hot path: no hash map, no socket read at release.
//! - A refcounted hit that finds the stack full (`run_refs_full`), or whose
//!   caller is not traced, goes to the *global ledger*: one entry per
//!   socket, at most `capacity` sockets (more: `ledger_full`, not recorded),
//!   with up to [`HOLDERS`] holders, one per (program slot, helper); a fifth
//!   acquirer shares the last holder. A non-refcounted hit of an untraced
//!   caller is not recorded.
//! - A release first takes the newest entry for its socket on its CPU's
//!   held stack (runs nest: last in, first out); a non-refcounted entry
//!   makes it a no-op release. Otherwise the socket is read: not refcounted
//!   (listeners, UDP: RCU-freed) is a no-op; refcounted closes the global
//!   ledger's most recently acquired holder, and a refcounted release that
//!   closes nothing is *unmatched* (SOCKMAP/SOCKHASH sockets,
//!   `bpf_skc_to_*`, or acquired before tracing began): its own class, not
//!   an error.
//! - At a run's end its entries leave the held stack; every refcounted one
//!   is a run leak: it moves to the global ledger (where a later release can
//!   still close it) and is reported once per entry, unless the global
//!   ledger is full.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{Helper, SockClass};

/// Holders one ledger socket tells apart (`SKPROF_REF_HOLDERS`).
pub const HOLDERS: usize = 4;
/// Entries one CPU's held stack keeps (`SKPROF_HELD`).
pub const HELD: usize = 16;

/// One ledger step, as the kernel traced it (`struct skprof_trace`, and
/// `struct skprof_event` for run leaks). JSON lines in recordings and test
/// fixtures: `{"ev":"acquire",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// A lookup hit. `run` 0: the caller is not traced.
    Acquire {
        ts: u64,
        cpu: u32,
        sk: u64,
        run: u64,
        slot: u32,
        #[serde(with = "helper_name")]
        helper: Helper,
        #[serde(with = "class_name")]
        class: SockClass,
        refcounted: bool,
        /// The kernel's verdict: the held stack or the ledger holds it
        /// (it was not full).
        recorded: bool,
        /// The lookup was timed (latency sampling), so the kernel keeps
        /// `ts` as the reference's time; untimed references on the held
        /// stack have none until a run leak gives them the run's end.
        #[serde(default)]
        timed: bool,
    },
    /// `bpf_sk_release`; `sk` 0 for NULL.
    Release {
        ts: u64,
        cpu: u32,
        sk: u64,
        #[serde(with = "class_name")]
        class: SockClass,
        refcounted: bool,
        /// The kernel's verdict: it closed a holder (of `slot`, `run`).
        matched: bool,
        slot: u32,
        run: u64,
    },
    RunStart {
        ts: u64,
        cpu: u32,
        run: u64,
        slot: u32,
    },
    /// Comes after the run's [`LedgerEvent::RunLeak`]s.
    RunEnd {
        ts: u64,
        cpu: u32,
        run: u64,
        slot: u32,
    },
    /// The kernel's verdict at a run's end: it still held this reference.
    RunLeak {
        ts: u64,
        sk: u64,
        run: u64,
        slot: u32,
    },
}

/// A holder of references on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// References outstanding; 0 = free.
    pub count: u32,
    pub slot: u32,
    pub helper: Helper,
    /// Run of the latest acquire (0: not traced).
    pub run: u64,
    /// Time of the latest acquire.
    pub acquired_ns: u64,
}

const FREE: Holder = Holder {
    count: 0,
    slot: 0,
    helper: Helper::SkLookupTcp,
    run: 0,
    acquired_ns: 0,
};

#[derive(Debug, Clone)]
struct Run {
    slot: u32,
    /// The kernel's run leaks seen for this run so far: (sk, slot).
    kernel_leaks: Vec<(u64, u32)>,
}

/// An entry of a CPU's held stack (`struct skprof_held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    sk: u64,
    run: u64,
    slot: u32,
    helper: Helper,
    class: SockClass,
    refcounted: bool,
    /// The kernel's time for the reference: the acquire's when timed.
    acquired_ns: u64,
    /// The acquire record's time.
    seen_ns: u64,
}

/// What the model concluded from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A reference was taken and recorded.
    Acquired {
        sk: u64,
        slot: u32,
        helper: Helper,
    },
    /// A hit that takes no reference (listener, UDP).
    NotRefcounted {
        class: SockClass,
    },
    /// The ledger was full: this reference is not tracked.
    LedgerFull {
        sk: u64,
    },
    /// A release closed a holder after `hold_ns`.
    Closed {
        sk: u64,
        slot: u32,
        helper: Helper,
        hold_ns: u64,
    },
    /// A release of a socket that holds no reference.
    Noop {
        class: SockClass,
    },
    NullRelease,
    /// A refcounted release no recorded acquire explains.
    Unmatched {
        sk: u64,
        class: SockClass,
    },
    /// A run ended still holding this reference.
    RunLeak {
        run: u64,
        slot: u32,
        sk: u64,
    },
    /// The kernel's verdict differs from the model's.
    Disagree(String),
}

/// Counts of every class the model saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelTally {
    pub events: u64,
    pub acquired: u64,
    pub not_refcounted: u64,
    pub ledger_full: u64,
    pub closed: u64,
    pub noop: u64,
    pub null: u64,
    pub unmatched: u64,
    pub runs: u64,
    /// Refcounted hits of traced runs that found the held stack full.
    pub run_refs_full: u64,
    pub run_leaks: u64,
    pub disagreements: u64,
}

/// The ledger, replayed.
#[derive(Debug, Clone)]
pub struct LedgerModel {
    capacity: usize,
    sockets: BTreeMap<u64, [Holder; HOLDERS]>,
    /// Each CPU's held stack; `None` is a hole.
    held: BTreeMap<u32, Vec<Option<Held>>>,
    runs: BTreeMap<u64, Run>,
    pub tally: ModelTally,
}

/// An outstanding reference in the model (one holder of one socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRef {
    pub sk: u64,
    pub holder: Holder,
}

impl LedgerModel {
    /// A ledger holding at most `capacity` sockets (`--ledger-size`).
    pub fn new(capacity: usize) -> LedgerModel {
        LedgerModel {
            capacity,
            sockets: BTreeMap::new(),
            held: BTreeMap::new(),
            runs: BTreeMap::new(),
            tally: ModelTally::default(),
        }
    }

    /// Applies one event; returns what the model concluded, including any
    /// disagreement with the kernel's verdicts carried by the event.
    pub fn apply(&mut self, ev: &LedgerEvent) -> Vec<Finding> {
        self.tally.events += 1;
        let mut out = Vec::new();
        match *ev {
            LedgerEvent::Acquire {
                ts,
                cpu,
                sk,
                run,
                slot,
                helper,
                class,
                refcounted,
                recorded,
                timed,
            } => {
                let entry = Held {
                    sk,
                    run,
                    slot,
                    helper,
                    class,
                    refcounted,
                    acquired_ns: if timed { ts } else { 0 },
                    seen_ns: ts,
                };
                // A traced run's hit goes on its CPU's held stack.
                let mut took = run != 0 && self.held_push(cpu, entry);
                if run != 0 && !took && refcounted {
                    self.tally.run_refs_full += 1;
                }
                if refcounted {
                    if !took {
                        took = self.global_acquire(ts, sk, run, slot, helper);
                    }
                    if took {
                        self.tally.acquired += 1;
                        out.push(Finding::Acquired { sk, slot, helper });
                    } else {
                        self.tally.ledger_full += 1;
                        out.push(Finding::LedgerFull { sk });
                    }
                } else {
                    self.tally.not_refcounted += 1;
                    out.push(Finding::NotRefcounted { class });
                }
                if took != recorded {
                    out.push(Finding::Disagree(format!(
                        "acquire of {sk:#x}: kernel recorded={recorded}, model={took}"
                    )));
                }
            }
            LedgerEvent::Release {
                ts,
                cpu,
                sk,
                class,
                refcounted,
                matched,
                slot,
                run,
            } => {
                if sk == 0 {
                    self.tally.null += 1;
                    out.push(Finding::NullRelease);
                } else if let Some(e) = self.held_take(cpu, sk) {
                    let agrees = matched && refcounted == e.refcounted && slot == e.slot;
                    if e.refcounted {
                        self.tally.closed += 1;
                        out.push(Finding::Closed {
                            sk,
                            slot: e.slot,
                            helper: e.helper,
                            hold_ns: ts.saturating_sub(e.seen_ns),
                        });
                    } else {
                        self.tally.noop += 1;
                        out.push(Finding::Noop { class: e.class });
                    }
                    if !agrees {
                        out.push(Finding::Disagree(format!(
                            "release of {sk:#x}: kernel matched={matched} refcounted={refcounted} \
                             slot {slot} run {run:#x}, model took the held entry of slot {} \
                             run {:#x} (refcounted={})",
                            e.slot, e.run, e.refcounted
                        )));
                    }
                } else if !refcounted {
                    self.tally.noop += 1;
                    out.push(Finding::Noop { class });
                    if matched {
                        out.push(Finding::Disagree(format!(
                            "release of {sk:#x}: kernel matched a held entry of slot {slot}, \
                             model holds none on CPU {cpu}"
                        )));
                    }
                } else {
                    match self.global_release(ts, sk) {
                        Some(f @ Finding::Closed { slot: s, .. }) => {
                            self.tally.closed += 1;
                            let kernel_run_ok = matched && s == slot;
                            out.push(f);
                            if !kernel_run_ok {
                                out.push(Finding::Disagree(format!(
                                    "release of {sk:#x}: kernel matched={matched} slot {slot} \
                                     run {run:#x}, model closed slot {s}"
                                )));
                            }
                        }
                        _ => {
                            self.tally.unmatched += 1;
                            out.push(Finding::Unmatched { sk, class });
                            if matched {
                                out.push(Finding::Disagree(format!(
                                    "release of {sk:#x}: kernel closed slot {slot}, model \
                                     found no holder"
                                )));
                            }
                        }
                    }
                }
            }
            LedgerEvent::RunStart { run, slot, .. } => {
                self.tally.runs += 1;
                self.runs.insert(
                    run,
                    Run {
                        slot,
                        kernel_leaks: Vec::new(),
                    },
                );
            }
            LedgerEvent::RunLeak { sk, run, slot, .. } => match self.runs.get_mut(&run) {
                Some(r) => r.kernel_leaks.push((sk, slot)),
                None => out.push(Finding::Disagree(format!(
                    "kernel run leak of {sk:#x} from run {run:#x}, which the model \
                         does not know"
                ))),
            },
            LedgerEvent::RunEnd { ts, cpu, run, .. } => {
                let Some(r) = self.runs.remove(&run) else {
                    return out;
                };
                // The run's entries leave the stack, newest first; the
                // refcounted ones move to the global ledger as run leaks.
                let mut leaked = Vec::new();
                if let Some(stack) = self.held.get_mut(&cpu) {
                    for e in stack.iter_mut().rev() {
                        if e.is_some_and(|e| e.run == run) {
                            leaked.extend(e.take().filter(|e| e.refcounted));
                        }
                    }
                    trim(stack);
                }
                let mut predicted = Vec::new();
                for e in leaked {
                    let at = if e.acquired_ns != 0 {
                        e.acquired_ns
                    } else {
                        ts
                    };
                    if self.global_acquire(at, e.sk, run, r.slot, e.helper) {
                        predicted.push((e.sk, r.slot));
                    } else {
                        self.tally.ledger_full += 1;
                        out.push(Finding::LedgerFull { sk: e.sk });
                    }
                }
                for &(sk, _) in &predicted {
                    self.tally.run_leaks += 1;
                    out.push(Finding::RunLeak {
                        run,
                        slot: r.slot,
                        sk,
                    });
                }
                let (mut a, mut b) = (predicted, r.kernel_leaks);
                a.sort_unstable();
                b.sort_unstable();
                if a != b {
                    out.push(Finding::Disagree(format!(
                        "run {run:#x} (slot {}): kernel reported leaks {b:x?}, model {a:x?}",
                        r.slot
                    )));
                }
            }
        }
        self.tally.disagreements += out
            .iter()
            .filter(|f| matches!(f, Finding::Disagree(_)))
            .count() as u64;
        out
    }

    /// `held_push`: false when the CPU's stack is full (holes count).
    fn held_push(&mut self, cpu: u32, e: Held) -> bool {
        let stack = self.held.entry(cpu).or_default();
        if stack.len() >= HELD {
            return false;
        }
        stack.push(Some(e));
        true
    }

    /// `held_take`: the newest entry for `sk` on the CPU's stack.
    fn held_take(&mut self, cpu: u32, sk: u64) -> Option<Held> {
        let stack = self.held.get_mut(&cpu)?;
        let e = stack
            .iter_mut()
            .rev()
            .find(|e| e.is_some_and(|e| e.sk == sk))?
            .take();
        trim(stack);
        e
    }

    /// `ledger_hold`: false when the global ledger is full.
    fn global_acquire(&mut self, ts: u64, sk: u64, run: u64, slot: u32, helper: Helper) -> bool {
        if !self.sockets.contains_key(&sk) {
            if self.sockets.len() >= self.capacity {
                return false;
            }
            self.sockets.insert(sk, [FREE; HOLDERS]);
        }
        let hs = self.sockets.get_mut(&sk).expect("inserted above");
        // This acquirer's holder, else the first free one, else the last.
        let i = hs
            .iter()
            .position(|h| h.count > 0 && h.slot == slot && h.helper == helper)
            .or_else(|| hs.iter().position(|h| h.count == 0))
            .unwrap_or(HOLDERS - 1);
        let h = &mut hs[i];
        if h.count == 0 {
            h.slot = slot;
            h.helper = helper;
        }
        h.count += 1;
        h.acquired_ns = ts;
        h.run = run;
        true
    }

    /// `on_release` of a refcounted socket not on the held stack: the
    /// global ledger's holder closed, if any.
    fn global_release(&mut self, ts: u64, sk: u64) -> Option<Finding> {
        let hs = self.sockets.get_mut(&sk)?;
        let held = hs.iter().filter(|h| h.count > 0).count();
        // The most recent acquirer (ties: the first, as the kernel's strict
        // comparison keeps it).
        let mut best: Option<usize> = None;
        for (i, h) in hs.iter().enumerate() {
            if h.count > 0 && best.is_none_or(|b| h.acquired_ns > hs[b].acquired_ns) {
                best = Some(i);
            }
        }
        let h = &mut hs[best?];
        let closed = Finding::Closed {
            sk,
            slot: h.slot,
            helper: h.helper,
            hold_ns: ts.saturating_sub(h.acquired_ns),
        };
        let before = h.count;
        h.count -= 1;
        if before <= 1 && held <= 1 {
            self.sockets.remove(&sk);
        }
        Some(closed)
    }

    /// Every outstanding reference: the global ledger's holders, and the
    /// refcounted entries of the held stacks, by socket.
    pub fn outstanding(&self) -> Vec<ModelRef> {
        let mut out: Vec<ModelRef> = self
            .sockets
            .iter()
            .flat_map(|(&sk, hs)| {
                hs.iter()
                    .filter(|h| h.count > 0)
                    .map(move |&holder| ModelRef { sk, holder })
            })
            .collect();
        out.extend(
            self.held
                .values()
                .flatten()
                .flatten()
                .filter(|e| e.refcounted)
                .map(|e| ModelRef {
                    sk: e.sk,
                    holder: Holder {
                        count: 1,
                        slot: e.slot,
                        helper: e.helper,
                        run: e.run,
                        acquired_ns: e.acquired_ns,
                    },
                }),
        );
        out.sort_by_key(|r| (r.sk, r.holder.slot));
        out
    }

    /// Sockets in the global ledger.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Entries on the CPU's held stack, holes included.
    pub fn held_depth(&self, cpu: u32) -> usize {
        self.held.get(&cpu).map_or(0, Vec::len)
    }

    /// Runs started and not ended.
    pub fn runs_in_flight(&self) -> usize {
        self.runs.len()
    }
}

/// `held_trim`: holes leave the top of the stack.
fn trim(stack: &mut Vec<Option<Held>>) {
    while stack.last().is_some_and(Option::is_none) {
        stack.pop();
    }
}

/// Replays a whole stream; returns the model and every disagreement.
pub fn replay<'a>(
    capacity: usize,
    events: impl IntoIterator<Item = &'a LedgerEvent>,
) -> (LedgerModel, Vec<String>) {
    let mut m = LedgerModel::new(capacity);
    let mut dis = Vec::new();
    for ev in events {
        for f in m.apply(ev) {
            if let Finding::Disagree(s) = f {
                dis.push(s);
            }
        }
    }
    (m, dis)
}

/// Parses a recorded stream: one JSON event per line; blank lines and
/// `#` comments are skipped. Errors name the line.
pub fn parse_stream(text: &str) -> Result<Vec<LedgerEvent>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

mod helper_name {
    use super::Helper;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Helper, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.function())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Helper, D::Error> {
        let name = String::deserialize(d)?;
        Helper::from_function(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown helper {name}")))
    }
}

mod class_name {
    use super::SockClass;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &SockClass, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SockClass, D::Error> {
        let name = String::deserialize(d)?;
        SockClass::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown socket class {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<LedgerEvent> {
        let text = match name {
            "nested" => include_str!("../../tests/fixtures/ledger/nested.jsonl"),
            "interleaved" => include_str!("../../tests/fixtures/ledger/interleaved.jsonl"),
            "overflow" => include_str!("../../tests/fixtures/ledger/overflow.jsonl"),
            "unmatched" => include_str!("../../tests/fixtures/ledger/unmatched.jsonl"),
            "leak" => include_str!("../../tests/fixtures/ledger/leak.jsonl"),
            "recorded-balanced" => {
                include_str!("../../tests/fixtures/ledger/recorded-balanced-6.1.jsonl")
            }
            "recorded-selftest" => {
                include_str!("../../tests/fixtures/ledger/recorded-selftest-ledger3-6.1.jsonl")
            }
            _ => unreachable!("no fixture {name}"),
        };
        parse_stream(text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn findings(m: &mut LedgerModel, evs: &[LedgerEvent]) -> Vec<Finding> {
        evs.iter().flat_map(|e| m.apply(e)).collect()
    }

    #[test]
    fn nested_runs_release_last_in_first_out() {
        let mut m = LedgerModel::new(16);
        let f = findings(&mut m, &fixture("nested"));
        let closed: Vec<(u32, u64)> = f
            .iter()
            .filter_map(|f| match f {
                Finding::Closed { slot, hold_ns, .. } => Some((*slot, *hold_ns)),
                _ => None,
            })
            .collect();
        // The nested run (slot 2) held 100 ns, the outer one 500 ns.
        assert_eq!(closed, vec![(2, 100), (1, 500)]);
        assert_eq!(m.tally.run_leaks, 0);
        assert_eq!(m.tally.disagreements, 0, "{f:?}");
        assert_eq!((m.sockets(), m.runs_in_flight()), (0, 0));
    }

    #[test]
    fn interleaved_cpus_classify_every_kind() {
        let mut m = LedgerModel::new(16);
        let f = findings(&mut m, &fixture("interleaved"));
        let t = &m.tally;
        assert_eq!(
            (
                t.acquired,
                t.closed,
                t.not_refcounted,
                t.noop,
                t.null,
                t.unmatched
            ),
            (2, 2, 1, 1, 1, 0)
        );
        assert!(f.contains(&Finding::Noop {
            class: SockClass::Listener
        }));
        assert!(f.contains(&Finding::Closed {
            sk: 8192,
            slot: 1,
            helper: Helper::TcSkcLookupTcp,
            hold_ns: 99
        }));
        assert_eq!((t.run_leaks, t.disagreements), (0, 0));
        assert!(m.outstanding().is_empty());
    }

    #[test]
    fn overflow_is_counted_and_its_release_is_unmatched() {
        let mut m = LedgerModel::new(2);
        let f = findings(&mut m, &fixture("overflow"));
        assert_eq!(m.tally.ledger_full, 1);
        assert!(f.contains(&Finding::LedgerFull { sk: 12288 }));
        assert!(f.contains(&Finding::Unmatched {
            sk: 12288,
            class: SockClass::Established
        }));
        // The freed room takes the next socket.
        let left: Vec<u64> = m.outstanding().iter().map(|r| r.sk).collect();
        assert_eq!(left, vec![8192, 16384]);
        assert_eq!(m.tally.disagreements, 0, "{f:?}");

        // The same stream against a bigger ledger: the kernel's verdicts
        // (recorded=false, matched=false) no longer hold, and the model says
        // so instead of agreeing.
        let (_, dis) = replay(8, &fixture("overflow"));
        assert_eq!(dis.len(), 2, "{dis:?}");
        assert!(
            dis[0].contains("kernel recorded=false, model=true"),
            "{dis:?}"
        );
    }

    #[test]
    fn unmatched_release_is_its_own_class() {
        let mut m = LedgerModel::new(16);
        let f = findings(&mut m, &fixture("unmatched"));
        assert_eq!(
            f,
            vec![Finding::Unmatched {
                sk: 20480,
                class: SockClass::Established
            }]
        );
        assert_eq!((m.tally.run_leaks, m.tally.disagreements), (0, 0));
    }

    #[test]
    fn run_leaks_are_predicted_exactly_as_the_kernel_reports_them() {
        let mut m = LedgerModel::new(16);
        let f = findings(&mut m, &fixture("leak"));
        let leaks: Vec<(u64, u32, u64)> = f
            .iter()
            .filter_map(|f| match f {
                Finding::RunLeak { run, slot, sk } => Some((*run, *slot, *sk)),
                _ => None,
            })
            .collect();
        assert_eq!(leaks, vec![(9, 4, 8192), (9, 4, 4096)]);
        assert_eq!(m.tally.disagreements, 0, "{f:?}");
        // What stays outstanding: the untraced holder, and the run's leaks.
        let mut left: Vec<(u64, u32, u32)> = m
            .outstanding()
            .iter()
            .map(|r| (r.sk, r.holder.slot, r.holder.count))
            .collect();
        left.sort_unstable();
        assert_eq!(left, vec![(4096, 4, 1), (4096, 5, 1), (8192, 4, 1)]);
    }

    #[test]
    fn a_missed_or_invented_run_leak_is_a_disagreement() {
        let mut evs = fixture("leak");
        // Drop one of the kernel's run leak reports.
        let i = evs
            .iter()
            .position(|e| matches!(e, LedgerEvent::RunLeak { sk: 8192, .. }))
            .unwrap();
        evs.remove(i);
        let (_, dis) = replay(16, &evs);
        assert_eq!(dis.len(), 1, "{dis:?}");
        assert!(dis[0].contains("run 0x9"), "{dis:?}");

        // A leak report for a balanced run.
        let mut evs = fixture("nested");
        evs.insert(
            5,
            LedgerEvent::RunLeak {
                ts: 1450,
                sk: 4096,
                run: 281474976710658,
                slot: 2,
            },
        );
        let (_, dis) = replay(16, &evs);
        assert_eq!(dis.len(), 1, "{dis:?}");
    }

    /// Recorded by `skprof leaks --trace` in the 6.1 VM: one round of the
    /// workload at one lookup per case with two copies of each program
    /// (interleaved runs of two programs per helper).
    #[test]
    fn recorded_balanced_workload_replays_with_no_disagreement() {
        let (m, dis) = replay(65_536, &fixture("recorded-balanced"));
        assert!(dis.is_empty(), "{dis:?}");
        let t = &m.tally;
        assert_eq!(
            (
                t.acquired,
                t.closed,
                t.not_refcounted,
                t.noop,
                t.unmatched,
                t.runs,
                t.run_leaks
            ),
            (40, 40, 48, 48, 0, 224, 0)
        );
        assert!(m.outstanding().is_empty());
        assert_eq!(m.runs_in_flight(), 0);
    }

    /// Recorded by `skprof leaks --trace --self-test --self-test-count 2
    /// --ledger-size 3` in the 6.1 VM: releases untraced, so every
    /// reference leaks: each run holds its reference on the CPU's held
    /// stack, and at its end moves it to a global ledger of 3 sockets,
    /// which overflows twice.
    #[test]
    fn recorded_self_test_leaks_and_overflow_replay_exactly() {
        let evs = fixture("recorded-selftest");
        let (m, dis) = replay(3, &evs);
        assert!(dis.is_empty(), "{dis:?}");
        let t = &m.tally;
        assert_eq!(
            (t.acquired, t.ledger_full, t.closed, t.run_leaks, t.runs),
            (10, 2, 0, 8, 56)
        );
        let kernel_leaks = evs
            .iter()
            .filter(|e| matches!(e, LedgerEvent::RunLeak { .. }))
            .count();
        assert_eq!(kernel_leaks, 8);
        assert_eq!(m.sockets(), 3, "the ledger is full");
        // With room for every socket, the model expects the two leaks the
        // full ledger kept the kernel from reporting, and says so.
        let (_, dis) = replay(64, &evs);
        assert_eq!(
            dis.iter()
                .filter(|d| d.contains("kernel reported leaks []"))
                .count(),
            2,
            "{dis:?}"
        );
    }

    fn acquire(ts: u64, sk: u64, run: u64, recorded: bool) -> LedgerEvent {
        LedgerEvent::Acquire {
            ts,
            cpu: 0,
            sk,
            run,
            slot: 1,
            helper: Helper::TcSkLookupTcp,
            class: SockClass::Established,
            refcounted: true,
            recorded,
            timed: true,
        }
    }

    fn release(ts: u64, sk: u64, run: u64) -> LedgerEvent {
        LedgerEvent::Release {
            ts,
            cpu: 0,
            sk,
            class: SockClass::Established,
            refcounted: true,
            matched: true,
            slot: 1,
            run,
        }
    }

    /// A run that holds more than the held stack keeps: the overflow goes
    /// to the global ledger, a hole in the middle keeps the stack's depth,
    /// and the run's end moves only its refcounted leftovers.
    #[test]
    fn held_stack_overflow_holes_and_run_end() {
        let mut m = LedgerModel::new(32);
        let run = 1 << 48 | 1;
        let mut evs = vec![LedgerEvent::RunStart {
            ts: 1,
            cpu: 0,
            run,
            slot: 1,
        }];
        for i in 0..=HELD as u64 {
            evs.push(acquire(10 + i, 0x1000 * (i + 1), run, true));
        }
        // The middle entry's release leaves a hole; the overflowed one is
        // closed in the global ledger.
        evs.push(release(100, 0x1000 * 8, run));
        evs.push(release(101, 0x1000 * (HELD as u64 + 1), run));
        let f = findings(&mut m, &evs);
        assert_eq!(m.tally.run_refs_full, 1);
        assert_eq!(m.held_depth(0), HELD, "a hole does not shrink the stack");
        assert_eq!(m.sockets(), 0);
        assert!(f.contains(&Finding::Closed {
            sk: 0x1000 * 17,
            slot: 1,
            helper: Helper::TcSkLookupTcp,
            hold_ns: 101 - 26
        }));
        // The stack is still full (hole included): the next hit overflows.
        let f = m.apply(&acquire(102, 0x99000, run, true));
        assert_eq!(
            f,
            vec![Finding::Acquired {
                sk: 0x99000,
                slot: 1,
                helper: Helper::TcSkLookupTcp
            }]
        );
        assert_eq!((m.tally.run_refs_full, m.sockets()), (2, 1));
        // The run ends holding 15 stack entries and one global one: the 15
        // are its leaks, reported by the kernel before the end.
        for i in (0..HELD as u64).filter(|&i| i != 7).rev() {
            m.apply(&LedgerEvent::RunLeak {
                ts: 200,
                sk: 0x1000 * (i + 1),
                run,
                slot: 1,
            });
        }
        let f = m.apply(&LedgerEvent::RunEnd {
            ts: 200,
            cpu: 0,
            run,
            slot: 1,
        });
        assert_eq!(
            f.iter()
                .filter(|f| matches!(f, Finding::RunLeak { .. }))
                .count(),
            HELD - 1,
            "{f:?}"
        );
        assert_eq!(m.tally.disagreements, 0, "{f:?}");
        assert_eq!((m.held_depth(0), m.sockets()), (0, 16));
        assert_eq!(m.outstanding().len(), 16);
    }

    /// A non-refcounted hit of a traced run sits on the held stack; its
    /// release is matched there and is a no-op, without reading the socket.
    #[test]
    fn a_traced_listener_hit_is_held_and_its_release_is_a_noop() {
        let mut m = LedgerModel::new(8);
        let f = findings(&mut m, &fixture("interleaved"));
        assert!(f.contains(&Finding::NotRefcounted {
            class: SockClass::Listener
        }));
        assert_eq!(m.tally.disagreements, 0, "{f:?}");
        // The same release, had the kernel not matched it: a disagreement.
        let mut evs = fixture("interleaved");
        for e in &mut evs {
            if let LedgerEvent::Release {
                sk: 12288, matched, ..
            } = e
            {
                *matched = false;
            }
        }
        let (_, dis) = replay(8, &evs);
        assert_eq!(dis.len(), 1, "{dis:?}");
    }

    #[test]
    fn a_fifth_acquirer_shares_the_last_holder() {
        let mut m = LedgerModel::new(4);
        for slot in 1..=5u32 {
            m.apply(&LedgerEvent::Acquire {
                ts: u64::from(slot) * 10,
                cpu: 0,
                sk: 1,
                run: 0,
                slot,
                helper: Helper::SkLookupTcp,
                class: SockClass::Established,
                refcounted: true,
                recorded: true,
                timed: false,
            });
        }
        let hs: Vec<(u32, u32)> = m
            .outstanding()
            .iter()
            .map(|r| (r.holder.slot, r.holder.count))
            .collect();
        assert_eq!(hs, vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
        assert_eq!(m.tally.disagreements, 0);
    }

    #[test]
    fn streams_round_trip_and_bad_lines_are_named() {
        let evs = fixture("leak");
        let text: String = evs
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        assert_eq!(parse_stream(&text).unwrap(), evs);
        let err = parse_stream("{\"ev\":\"run_start\",\"ts\":1,\"cpu\":0,\"run\":1,\"slot\":1}\n{\"ev\":\"acquire\",\"helper\":\"nope\"}").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }
}
