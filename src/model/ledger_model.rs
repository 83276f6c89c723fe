//! The reference ledger as a pure state machine: the same matching the
//! kernel side does (bpf/skprof.bpf.c `ledger_acquire` / `on_release`,
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
//! - A refcounted hit takes a reference. The ledger keeps one entry per
//!   socket, at most `capacity` sockets (more: `ledger_full`, not recorded),
//!   with up to [`HOLDERS`] holders, one per (program slot, helper); a fifth
//!   acquirer shares the last holder.
//! - A refcounted release closes the most recently acquired holder (runs
//!   nest: last in, first out). The socket leaves the ledger when its last
//!   holder's last reference goes. A refcounted release that closes nothing
//!   is *unmatched* (SOCKMAP/SOCKHASH sockets, `bpf_skc_to_*`, or acquired
//!   before tracing began): its own class, not an error.
//! - Non-refcounted hits (listeners, UDP: RCU-freed) and no-op releases take
//!   and drop nothing; they are classified, never leaks.
//! - A traced run remembers the first [`RUN_REFS`] sockets it acquired. At
//!   its end, every holder of those sockets still holding a reference from
//!   that run is a run leak (once per remembered acquire, as the kernel
//!   reports them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{Helper, SockClass};

/// Holders one ledger socket tells apart (`SKPROF_REF_HOLDERS`).
pub const HOLDERS: usize = 4;
/// Acquired sockets a run remembers for its exit check (`SKPROF_RUN_REFS`).
pub const RUN_REFS: usize = 4;

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
        /// The kernel's verdict: the ledger holds it (it was not full).
        recorded: bool,
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
    /// The first RUN_REFS sockets acquired.
    acquired: Vec<u64>,
    /// The kernel's run leaks seen for this run so far: (sk, slot).
    kernel_leaks: Vec<(u64, u32)>,
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
    pub run_leaks: u64,
    pub disagreements: u64,
}

/// The ledger, replayed.
#[derive(Debug, Clone)]
pub struct LedgerModel {
    capacity: usize,
    sockets: BTreeMap<u64, [Holder; HOLDERS]>,
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
                sk,
                run,
                slot,
                helper,
                class,
                refcounted,
                recorded,
                ..
            } => {
                if !refcounted {
                    self.tally.not_refcounted += 1;
                    out.push(Finding::NotRefcounted { class });
                    if recorded {
                        out.push(Finding::Disagree(format!(
                            "kernel recorded a non-refcounted hit on {sk:#x}"
                        )));
                    }
                } else {
                    let took = self.acquire(ts, sk, run, slot, helper);
                    if took {
                        self.tally.acquired += 1;
                        out.push(Finding::Acquired { sk, slot, helper });
                    } else {
                        self.tally.ledger_full += 1;
                        out.push(Finding::LedgerFull { sk });
                    }
                    if took != recorded {
                        out.push(Finding::Disagree(format!(
                            "acquire of {sk:#x}: kernel recorded={recorded}, model={took}"
                        )));
                    }
                }
            }
            LedgerEvent::Release {
                ts,
                sk,
                class,
                refcounted,
                matched,
                slot,
                run,
                ..
            } => {
                if sk == 0 {
                    self.tally.null += 1;
                    out.push(Finding::NullRelease);
                } else if !refcounted {
                    self.tally.noop += 1;
                    out.push(Finding::Noop { class });
                } else {
                    match self.release(ts, sk) {
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
                        acquired: Vec::new(),
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
            LedgerEvent::RunEnd { run, .. } => {
                let Some(r) = self.runs.remove(&run) else {
                    return out;
                };
                let mut predicted = Vec::new();
                for sk in &r.acquired {
                    let Some(hs) = self.sockets.get(sk) else {
                        continue;
                    };
                    for h in hs.iter().filter(|h| h.count > 0 && h.run == run) {
                        predicted.push((*sk, h.slot));
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

    /// `ledger_acquire`: false when the ledger is full.
    fn acquire(&mut self, ts: u64, sk: u64, run: u64, slot: u32, helper: Helper) -> bool {
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
        if run != 0 {
            if let Some(r) = self.runs.get_mut(&run) {
                if r.acquired.len() < RUN_REFS {
                    r.acquired.push(sk);
                }
            }
        }
        true
    }

    /// `on_release` for a refcounted socket: the holder closed, if any.
    fn release(&mut self, ts: u64, sk: u64) -> Option<Finding> {
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

    /// Every outstanding reference holder, by socket.
    pub fn outstanding(&self) -> Vec<ModelRef> {
        self.sockets
            .iter()
            .flat_map(|(&sk, hs)| {
                hs.iter()
                    .filter(|h| h.count > 0)
                    .map(move |&holder| ModelRef { sk, holder })
            })
            .collect()
    }

    /// Sockets in the ledger.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Runs started and not ended.
    pub fn runs_in_flight(&self) -> usize {
        self.runs.len()
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
        assert_eq!(leaks, vec![(9, 4, 4096), (9, 4, 4096), (9, 4, 8192)]);
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

    /// Recorded by `skprof leaks --trace --self-test --ledger-size 3` in the
    /// 6.1 VM: releases untraced, so every reference leaks; the ledger of 3
    /// sockets overflows twice.
    #[test]
    fn recorded_self_test_leaks_and_overflow_replay_exactly() {
        let evs = fixture("recorded-selftest");
        let (m, dis) = replay(3, &evs);
        assert!(dis.is_empty(), "{dis:?}");
        let t = &m.tally;
        assert_eq!(
            (t.acquired, t.ledger_full, t.closed, t.run_leaks, t.runs),
            (8, 2, 0, 8, 56)
        );
        let kernel_leaks = evs
            .iter()
            .filter(|e| matches!(e, LedgerEvent::RunLeak { .. }))
            .count();
        assert_eq!(kernel_leaks, 8);
        assert_eq!(m.sockets(), 3, "the ledger is full");
        // With room for every socket, the kernel's "full" verdicts are wrong
        // for this model, and it says so.
        let (_, dis) = replay(64, &evs);
        assert!(
            dis.iter()
                .filter(|d| d.contains("kernel recorded=false"))
                .count()
                == 2,
            "{dis:?}"
        );
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
