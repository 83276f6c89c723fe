//! `skprof leaks --watch`, the pure part: successive leak reports turned
//! into the events a long-running watch logs, and the probes' cumulative
//! loss counters turned into increases.
//!
//! A leak group (program, helper, kernel stack) is logged once when first
//! seen, and again only when it changes: more references (it grew), fewer
//! (some were released late), none (resolved: every reference was released
//! after being outstanding past the threshold). An unchanged group is never
//! logged again, however long it stays. At most `max_groups` groups are
//! remembered: groups past that are counted, not tracked, until resolved
//! groups make room. Groups are compared by their reference count: a
//! release and a new leak in the same group between two scans cancel out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::ledger::{LeakGroup, LeakReport};
use super::snapshot::Drops;

/// (program id, helper function, stack id): what a group is.
pub type GroupKey = (u32, &'static str, i32, u64);

pub fn group_key(g: &LeakGroup) -> GroupKey {
    (g.prog_id, g.helper, g.stack_id, g.site_addr)
}

/// What is remembered of a group between scans (no tuples or stacks: a
/// few dozen bytes each).
#[derive(Debug, Clone, PartialEq)]
struct Tracked {
    prog_name: String,
    references: u64,
    peak: u64,
    first_seen_ms: u64,
    oldest_age_ms: f64,
}

/// A group that went away: every reference it held was released, late.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub prog_id: u32,
    pub prog_name: String,
    pub helper: &'static str,
    pub stack_id: i32,
    /// References it held when last seen, all released since.
    pub released: u64,
    /// The most it held.
    pub peak: u64,
    /// Age of its oldest reference when last seen: references were
    /// outstanding at least this long.
    pub oldest_age_ms: f64,
    /// Since the group was first seen.
    pub tracked_ms: u64,
}

/// What one scan changed.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A group seen for the first time (or first since it fit under the
    /// bound, or since it was resolved).
    New(LeakGroup),
    /// More references than when last logged.
    Grew {
        group: LeakGroup,
        before: u64,
    },
    /// Fewer references (but not none): `released` were released late.
    PartlyReleased {
        group: LeakGroup,
        released: u64,
    },
    Resolved(Resolved),
    /// Runs of `program` that ended holding a reference from `helper`,
    /// since the last scan.
    RunLeaks {
        program: String,
        helper: &'static str,
        /// `--sites`: where the leaked references were looked up.
        site: Option<String>,
        count: u64,
    },
    /// More leak groups than `max_groups`: `untracked` groups of this scan
    /// are not remembered nor logged one by one (their references are in
    /// the report's totals). Emitted when the number rises.
    Overflow {
        untracked: u64,
        max_groups: usize,
    },
}

/// Running totals since the watch started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchTotals {
    pub scans: u64,
    /// Groups logged as new.
    pub groups_seen: u64,
    /// References counted as leaked: each new group's count plus every
    /// growth.
    pub references_leaked: u64,
    /// References of tracked groups released after all (late).
    pub references_released_late: u64,
    pub groups_resolved: u64,
    /// Runs that ended holding a reference.
    pub run_leaks: u64,
    /// Groups that did not fit under `max_groups`, counted as the number
    /// left untracked rises.
    pub groups_overflow: u64,
}

/// The leak groups seen so far, bounded.
#[derive(Debug, Clone)]
pub struct LeakWatch {
    max_groups: usize,
    tracked: BTreeMap<GroupKey, Tracked>,
    untracked: u64,
    pub totals: WatchTotals,
}

impl LeakWatch {
    pub fn new(max_groups: usize) -> LeakWatch {
        LeakWatch {
            max_groups,
            tracked: BTreeMap::new(),
            untracked: 0,
            totals: WatchTotals::default(),
        }
    }

    /// Groups remembered now (at most `max_groups`).
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Groups of the last scan left untracked by the bound.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Whether any leak was seen since the start (a group or a run leak).
    pub fn leaked(&self) -> bool {
        self.totals.groups_seen > 0 || self.totals.run_leaks > 0 || self.totals.groups_overflow > 0
    }

    /// Program ids of the groups remembered.
    pub fn programs(&self) -> BTreeSet<u32> {
        self.tracked.keys().map(|k| k.0).collect()
    }

    /// Compares a scan's report with what was seen before. `now_ms` is
    /// any monotonic clock in ms (for how long groups were tracked).
    /// Resolved groups come first (they make room), then the report's
    /// groups in its order (oldest first), then run leaks.
    pub fn update(&mut self, report: &LeakReport, now_ms: u64) -> Vec<WatchEvent> {
        self.totals.scans += 1;
        let mut events = Vec::new();
        let present: BTreeSet<GroupKey> = report.groups.iter().map(group_key).collect();
        let gone: Vec<GroupKey> = self
            .tracked
            .keys()
            .filter(|k| !present.contains(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(t) = self.tracked.remove(&k) {
                self.totals.groups_resolved += 1;
                self.totals.references_released_late += t.references;
                events.push(WatchEvent::Resolved(Resolved {
                    prog_id: k.0,
                    prog_name: t.prog_name,
                    helper: k.1,
                    stack_id: k.2,
                    released: t.references,
                    peak: t.peak,
                    oldest_age_ms: t.oldest_age_ms,
                    tracked_ms: now_ms.saturating_sub(t.first_seen_ms),
                }));
            }
        }
        let mut untracked = 0;
        for g in &report.groups {
            let k = group_key(g);
            if let Some(t) = self.tracked.get_mut(&k) {
                t.oldest_age_ms = g.oldest_age_ms;
                let before = t.references;
                t.references = g.references;
                t.peak = t.peak.max(g.references);
                if g.references > before {
                    self.totals.references_leaked += g.references - before;
                    events.push(WatchEvent::Grew {
                        group: g.clone(),
                        before,
                    });
                } else if g.references < before {
                    self.totals.references_released_late += before - g.references;
                    events.push(WatchEvent::PartlyReleased {
                        group: g.clone(),
                        released: before - g.references,
                    });
                }
            } else if self.tracked.len() < self.max_groups {
                self.tracked.insert(
                    k,
                    Tracked {
                        prog_name: g.prog_name.clone(),
                        references: g.references,
                        peak: g.references,
                        first_seen_ms: now_ms,
                        oldest_age_ms: g.oldest_age_ms,
                    },
                );
                self.totals.groups_seen += 1;
                self.totals.references_leaked += g.references;
                events.push(WatchEvent::New(g.clone()));
            } else {
                untracked += 1;
            }
        }
        if untracked > self.untracked {
            self.totals.groups_overflow += untracked - self.untracked;
            events.push(WatchEvent::Overflow {
                untracked,
                max_groups: self.max_groups,
            });
        }
        self.untracked = untracked;
        // Identical run leaks (the same program, the same helper) once,
        // with a count, in the order first seen.
        type Run = (String, &'static str, Option<String>, u64);
        let mut runs: Vec<Run> = Vec::new();
        for l in &report.run_leaks {
            let helper = l.reference.helper.function();
            let site = l.site.as_ref().map(super::words::site_source);
            match runs
                .iter_mut()
                .find(|(p, h, s, _)| *p == l.prog_name && *h == helper && *s == site)
            {
                Some(r) => r.3 += 1,
                None => runs.push((l.prog_name.clone(), helper, site, 1)),
            }
        }
        for (program, helper, site, count) in runs {
            self.totals.run_leaks += count;
            events.push(WatchEvent::RunLeaks {
                program,
                helper,
                site,
                count,
            });
        }
        events
    }
}

/// The loss counters' names: the reasons `skprof export` uses in
/// `skprof_drops_total{reason}`, in [`drop_counts`]' order.
pub const DROP_REASONS: [&str; 9] = [
    "unmatched_exit",
    "evicted_entry",
    "recursion_miss",
    "latency_overflow",
    "series_full",
    "ledger_full",
    "events_lost",
    "run_table_full",
    "run_refs_full",
];

/// Each loss counter, in [`DROP_REASONS`]' order.
pub fn drop_counts(d: &Drops) -> [u64; 9] {
    [
        d.unmatched_exits,
        d.evicted_entries,
        d.recursion_misses,
        d.hist_overflow,
        d.hists_full,
        d.ledger_full,
        d.events_dropped,
        d.run_table_full,
        d.run_refs_full,
    ]
}

/// The probes' loss counters, read cumulatively each scan: what rose.
#[derive(Debug, Clone, Default)]
pub struct DropWatch {
    last: [u64; 9],
    /// Every increase since the start, per reason.
    totals: [u64; 9],
}

impl DropWatch {
    /// Feeds one cumulative reading (the probes count from zero when they
    /// load) and returns, for each counter that rose, (reason, increase,
    /// total since the start). A counter that went down (the aggregates of
    /// a program that went away are deleted) counts from its new value.
    pub fn update(&mut self, now: &Drops) -> Vec<(&'static str, u64, u64)> {
        let mut rose = Vec::new();
        for (i, v) in drop_counts(now).into_iter().enumerate() {
            if v > self.last[i] {
                let d = v - self.last[i];
                self.totals[i] += d;
                rose.push((DROP_REASONS[i], d, self.totals[i]));
            }
            self.last[i] = v;
        }
        rose
    }

    /// Every loss since the start.
    pub fn total(&self) -> u64 {
        self.totals.iter().sum()
    }

    /// Losses since the start for one reason (of [`DROP_REASONS`]).
    pub fn reason_total(&self, reason: &str) -> u64 {
        DROP_REASONS
            .iter()
            .position(|n| *n == reason)
            .map_or(0, |i| self.totals[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{Helper, SockClass};
    use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};

    const MS: u64 = 1_000_000;

    fn r(sk: u64, acquired_ms: u64, prog_id: u32, helper: Helper, stack_id: i32) -> OutstandingRef {
        OutstandingRef {
            sk,
            acquired_ns: acquired_ms * MS,
            count: 1,
            prog_id,
            helper,
            class: SockClass::Established,
            state: 1,
            tuple: Tuple::decode(&[127, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40, 0, 80], 12),
            netns: 4026531840,
            cpu: 0,
            refcnt: 2,
            stack_id,
            site: 0,
        }
    }

    /// A report of `refs` at `now_ms`, threshold 500 ms.
    fn report(refs: &[OutstandingRef], runs: Vec<RunLeak>, now_ms: u64) -> LeakReport {
        LeakReport::build(refs, runs, now_ms * MS, 500 * MS, &|id| format!("p[{id}]"))
    }

    fn kinds(events: &[WatchEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                WatchEvent::New(g) => format!("new {} {} {}", g.prog_id, g.helper, g.references),
                WatchEvent::Grew { group, before } => {
                    format!("grew {} {before}->{}", group.prog_id, group.references)
                }
                WatchEvent::PartlyReleased { group, released } => {
                    format!(
                        "released {} {released} left {}",
                        group.prog_id, group.references
                    )
                }
                WatchEvent::Resolved(r) => {
                    format!("resolved {} {} peak {}", r.prog_id, r.released, r.peak)
                }
                WatchEvent::RunLeaks {
                    program,
                    helper,
                    count,
                    ..
                } => format!("run {program} {helper} x{count}"),
                WatchEvent::Overflow { untracked, .. } => format!("overflow {untracked}"),
            })
            .collect()
    }

    /// A hand-made life of two groups over six scans: a leak appears, stays
    /// unchanged (logged once), grows, a second group appears, references
    /// are released late one by one, and everything is resolved.
    #[test]
    fn groups_are_logged_when_new_grown_released_and_resolved_only() {
        let tc = Helper::TcSkLookupTcp;
        let xdp = Helper::XdpSkcLookupTcp;
        let mut w = LeakWatch::new(16);
        // Scan 1 at 1 s: one reference 1 s old.
        let s1 = vec![r(1, 0, 11, tc, 3)];
        assert_eq!(
            kinds(&w.update(&report(&s1, vec![], 1000), 1000)),
            ["new 11 bpf_tc_sk_lookup_tcp 1"]
        );
        // Scan 2: the same, older: nothing to log.
        assert!(w.update(&report(&s1, vec![], 2000), 2000).is_empty());
        // Scan 3: a second reference, 100 ms young (a run in flight).
        let s3 = vec![r(1, 0, 11, tc, 3), r(2, 2900, 11, tc, 3)];
        assert!(w.update(&report(&s3, vec![], 3000), 3000).is_empty());
        // Scan 4: the young one is old now: the group grew; another
        // program leaks from XDP.
        let s4 = vec![
            r(1, 0, 11, tc, 3),
            r(2, 2900, 11, tc, 3),
            r(3, 3000, 12, xdp, 5),
        ];
        assert_eq!(
            kinds(&w.update(&report(&s4, vec![], 4000), 4000)),
            ["grew 11 1->2", "new 12 bpf_xdp_skc_lookup_tcp 1"]
        );
        assert_eq!(w.tracked(), 2);
        // Scan 5: one of program 11's references was released (late).
        let s5 = vec![r(2, 2900, 11, tc, 3), r(3, 3000, 12, xdp, 5)];
        assert_eq!(
            kinds(&w.update(&report(&s5, vec![], 5000), 5000)),
            ["released 11 1 left 1"]
        );
        // Scan 6: all released.
        let ev = w.update(&report(&[], vec![], 6000), 6000);
        assert_eq!(kinds(&ev), ["resolved 11 1 peak 2", "resolved 12 1 peak 1"]);
        let WatchEvent::Resolved(res) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (res.prog_name.as_str(), res.tracked_ms, res.stack_id),
            ("p[11]", 5000, 3)
        );
        assert_eq!(res.oldest_age_ms, 2100.0);
        assert_eq!(w.tracked(), 0);
        assert_eq!(
            w.totals,
            WatchTotals {
                scans: 6,
                groups_seen: 2,
                references_leaked: 3,
                references_released_late: 3,
                groups_resolved: 2,
                run_leaks: 0,
                groups_overflow: 0,
            }
        );
        assert!(w.leaked());
        // A group seen again after being resolved is new again.
        assert_eq!(
            kinds(&w.update(&report(&s1, vec![], 7000), 7000)),
            ["new 11 bpf_tc_sk_lookup_tcp 1"]
        );
    }

    #[test]
    fn a_quiet_ledger_logs_nothing() {
        let mut w = LeakWatch::new(4);
        for t in 0..100 {
            let young = vec![r(1, t * 1000, 11, Helper::SkLookupTcp, -14)];
            assert!(w
                .update(&report(&young, vec![], t * 1000 + 1), t * 1000 + 1)
                .is_empty());
        }
        assert!(!w.leaked());
        assert_eq!(w.totals.scans, 100);
    }

    /// More groups than the bound: the first `max_groups` (oldest first)
    /// are tracked, the rest counted once as they appear; room made by a
    /// resolved group is taken by a waiting group, logged as new then.
    #[test]
    fn remembered_groups_are_bounded() {
        let mut w = LeakWatch::new(2);
        // Five programs leaking, program 1 the oldest.
        let refs: Vec<OutstandingRef> = (1..=5)
            .map(|p| r(p as u64, p as u64 * 10, p, Helper::SkLookupUdp, -1))
            .collect();
        let ev = w.update(&report(&refs, vec![], 10_000), 10_000);
        assert_eq!(
            kinds(&ev),
            [
                "new 1 bpf_sk_lookup_udp 1",
                "new 2 bpf_sk_lookup_udp 1",
                "overflow 3"
            ]
        );
        let Some(WatchEvent::Overflow { max_groups, .. }) = ev.last() else {
            panic!("{ev:?}")
        };
        assert_eq!(*max_groups, 2);
        // The same again: no repeat, not even of the overflow.
        assert!(w.update(&report(&refs, vec![], 11_000), 11_000).is_empty());
        assert_eq!(
            (w.tracked(), w.untracked(), w.totals.groups_overflow),
            (2, 3, 3)
        );
        // A sixth program: one more untracked.
        let mut more = refs.clone();
        more.push(r(6, 60, 6, Helper::SkLookupUdp, -1));
        assert_eq!(
            kinds(&w.update(&report(&more, vec![], 12_000), 12_000)),
            ["overflow 4"]
        );
        // Program 1's reference is released: program 3 takes its place.
        let ev = w.update(&report(&more[1..], vec![], 13_000), 13_000);
        assert_eq!(
            kinds(&ev),
            ["resolved 1 1 peak 1", "new 3 bpf_sk_lookup_udp 1"]
        );
        assert_eq!((w.tracked(), w.untracked()), (2, 3));
        assert_eq!(w.totals.groups_overflow, 4);
        // Memory: never more than the bound, whatever comes.
        for t in 0..50u64 {
            let many: Vec<OutstandingRef> = (0..40)
                .map(|p| r(p, 0, (t * 40 + p) as u32 + 100, Helper::SkLookupTcp, -1))
                .collect();
            w.update(&report(&many, vec![], 20_000 + t), 20_000 + t);
            assert!(w.tracked() <= 2);
        }
    }

    /// Run leaks are events: logged each scan they happen, identical ones
    /// once with a count.
    #[test]
    fn run_leaks_are_counted_per_program_and_helper() {
        let mut w = LeakWatch::new(8);
        let leak = |prog_id: u32, helper: Helper| RunLeak {
            ts_ns: 0,
            prog_id,
            prog_name: String::new(),
            reference: r(1, 0, prog_id, helper, -1),
            site: None,
        };
        let runs = vec![
            leak(7, Helper::TcSkLookupTcp),
            leak(7, Helper::TcSkLookupTcp),
            leak(7, Helper::TcSkcLookupTcp),
            leak(7, Helper::TcSkLookupTcp),
        ];
        let ev = w.update(&report(&[], runs, 1000), 1000);
        assert_eq!(
            kinds(&ev),
            [
                "run p[7] bpf_tc_sk_lookup_tcp x3",
                "run p[7] bpf_tc_skc_lookup_tcp x1"
            ]
        );
        assert_eq!(w.totals.run_leaks, 4);
        assert!(w.leaked());
        assert!(w.update(&report(&[], vec![], 2000), 2000).is_empty());
    }

    /// A report as `skprof leaks --json` printed it (groups and run
    /// leaks: what the watch compares).
    fn report_from_json(v: &serde_json::Value) -> LeakReport {
        // Groups name the kernel function, run leaks the variant.
        let helper = |v: &serde_json::Value| {
            let s = v.as_str().unwrap();
            Helper::from_function(s)
                .or_else(|| Helper::ALL.into_iter().find(|h| format!("{h:?}") == s))
                .unwrap_or_else(|| panic!("helper {v}"))
        };
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        LeakReport {
            older_than_ms: v["older_than_ms"].as_f64().unwrap(),
            outstanding_sockets: n(&v["outstanding_sockets"]),
            leaked_sockets: n(&v["leaked_sockets"]),
            leaked_references: n(&v["leaked_references"]),
            groups: v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| LeakGroup {
                    prog_id: n(&g["prog_id"]) as u32,
                    prog_name: g["prog_name"].as_str().unwrap().into(),
                    helper: helper(&g["helper"]).function(),
                    stack_id: g["stack_id"].as_i64().unwrap() as i32,
                    stack: strings(&g["stack"]),
                    sockets: n(&g["sockets"]),
                    references: n(&g["references"]),
                    oldest_age_ms: g["oldest_age_ms"].as_f64().unwrap(),
                    tuples: strings(&g["tuples"]),
                    netns: g["netns"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| n(x) as u32)
                        .collect(),
                    states: strings(&g["states"]),
                    site_addr: 0,
                    site: None,
                })
                .collect(),
            run_leaks: v["run_leaks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    let prog_id = n(&l["prog_id"]) as u32;
                    RunLeak {
                        ts_ns: 0,
                        prog_id,
                        prog_name: l["prog_name"].as_str().unwrap().into(),
                        reference: r(0, 0, prog_id, helper(&l["helper"]), -1),
                        site: None,
                    }
                })
                .collect(),
        }
    }

    /// Recorded in the 6.12 guest (`skprof leaks 0.5 --json --self-test
    /// --stacks --older-than 0 --duration 2`): the self-test's 50
    /// references (10 from bpf_tc_sk_lookup_tcp on one socket, 40 from
    /// bpf_tc_skc_lookup_tcp on four), each run ending with its reference,
    /// seen by two scans. Each group is logged once, with the workload's
    /// exact count; then (by hand) every reference released: resolved.
    #[test]
    fn a_recorded_self_test_is_logged_once() {
        let lines: Vec<serde_json::Value> =
            include_str!("../../tests/fixtures/leak_watch/self_test_6.12.jsonl")
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let expected = &lines[0]["expected"]["helpers"];
        let reports: Vec<LeakReport> = lines
            .iter()
            .filter(|l| l["type"] == "leaks")
            .map(report_from_json)
            .collect();
        assert_eq!(reports.len(), 2);
        let mut w = LeakWatch::new(1024);
        let first = w.update(&reports[0], 1379);
        assert_eq!(
            kinds(&first),
            [
                "new 36 bpf_tc_sk_lookup_tcp 10",
                "new 36 bpf_tc_skc_lookup_tcp 40",
                "run wl_tc_lookup[36] bpf_tc_sk_lookup_tcp x10",
                "run wl_tc_lookup[36] bpf_tc_skc_lookup_tcp x40",
            ]
        );
        for e in &first {
            if let WatchEvent::New(g) = e {
                assert_eq!(g.references, expected[g.helper]["acquired"], "{g:?}");
                assert_eq!(g.netns, [4026532141]);
            }
        }
        assert!(w.update(&reports[1], 3048).is_empty());
        let mut released = reports[1].clone();
        released.groups.clear();
        assert_eq!(
            kinds(&w.update(&released, 4000)),
            ["resolved 36 10 peak 10", "resolved 36 40 peak 40"]
        );
        assert_eq!(
            (
                w.totals.references_leaked,
                w.totals.references_released_late
            ),
            (50, 50)
        );
        assert_eq!(w.totals.run_leaks, 50);
    }

    #[test]
    fn drops_are_reported_as_increases_with_totals() {
        let mut d = DropWatch::default();
        let mut x = Drops {
            unmatched_exits: 0,
            evicted_entries: 0,
            recursion_misses: 0,
            hist_overflow: 0,
            hists_full: 0,
            ledger_full: 0,
            events_dropped: 0,
            run_table_full: 0,
            run_refs_full: 0,
            site_unknown: 0,
        };
        assert!(d.update(&x).is_empty());
        x.ledger_full = 3;
        x.events_dropped = 1;
        assert_eq!(d.update(&x), [("ledger_full", 3, 3), ("events_lost", 1, 1)]);
        assert!(d.update(&x).is_empty());
        x.ledger_full = 5;
        assert_eq!(d.update(&x), [("ledger_full", 2, 5)]);
        // A counter that went down (a program's aggregates deleted) and
        // rose again counts only the rise.
        x.hist_overflow = 4;
        d.update(&x);
        x.hist_overflow = 1;
        assert!(d.update(&x).is_empty());
        x.hist_overflow = 2;
        assert_eq!(d.update(&x), [("latency_overflow", 1, 5)]);
        assert_eq!(d.total(), 11);
        assert_eq!(d.reason_total("ledger_full"), 5);
        assert_eq!(d.reason_total("nonsense"), 0);
    }
}
