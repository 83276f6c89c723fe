//! What `skprof report` computes from a recording (pure, no I/O).
//!
//! The first `Interval` frame is the baseline: the reading taken when
//! recording started, before any workload ran. Every later frame closes one
//! interval, from the previous reading to its own. The totals cover the
//! whole recording, first reading to last: they are the sum of the
//! intervals' differences, which is the last reading minus the first when
//! no traced program went away, and still counts the calls of programs
//! that went away during the recording (their aggregates are deleted from
//! later readings). For the same data, the totals and their percentiles are
//! those `skprof stat --json --cumulative` prints: both come from
//! `IntervalStats::compute` on the same histograms.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::ids::Helper;
use crate::model::ledger::{LeakReport, RunLeak};
use crate::model::snapshot::{
    CellKey, Grouping, IntervalStats, ProgramRef, Snapshot, UNATTRIBUTED,
};
use crate::model::tally::HelperTally;

use super::{Interval, Leaks, LedgerScan, Meta};

/// References outstanding for longer than this at the end of a recording
/// are reported as leaked: the default of `skprof leaks --older-than`.
pub const LEAK_AGE_NS: u64 = 500_000_000;

/// Run leak events listed in a report (all are counted).
pub const RUN_LEAKS_LISTED: usize = 100;

/// One helper function over one interval, for plotting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesHelper {
    pub helper: &'static str,
    pub calls: u64,
    pub calls_per_s: f64,
    pub hits: u64,
    pub hit_pct: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// One interval of the recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Wall-clock time of the interval's end, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Seconds from the baseline reading to the interval's end.
    pub elapsed_s: f64,
    pub interval_s: f64,
    /// Every traced helper function, in the recording's order.
    pub helpers: Vec<SeriesHelper>,
    pub acquired: u64,
    /// `bpf_sk_release` calls that dropped a reference.
    pub released: u64,
    pub hold_p50_ns: u64,
    pub hold_p99_ns: u64,
    pub drops: u64,
}

/// Leak events and the ledger at the end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakSummary {
    /// Traced program runs that ended holding a reference.
    pub run_leaks: u64,
    /// The first `RUN_LEAKS_LISTED` of them.
    pub run_leak_events: Vec<RunLeak>,
    /// References outstanding past `LEAK_AGE_NS` at the last ledger scan
    /// (none when the recording has no scan: cut off, or `--no-ledger`).
    pub ledger: Option<LeakReport>,
}

impl LeakSummary {
    pub fn leaked_references(&self) -> u64 {
        self.ledger.as_ref().map_or(0, |l| l.leaked_references)
    }
}

/// The workload's own counts, shaped as in `skprof stat --workload --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub expected: HelperTally,
}

/// A recording, summarized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub format_version: u16,
    pub meta: Meta,
    /// The recording was cut off (no End frame): it covers less than was
    /// recorded.
    pub truncated: bool,
    /// Wall-clock times of the baseline and last readings.
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    /// Seconds between the baseline and last readings.
    pub elapsed_s: f64,
    /// Intervals (readings after the baseline).
    pub intervals: u64,
    /// Per helper function, over the whole recording.
    pub totals: IntervalStats,
    /// Per (program, helper function), over the whole recording.
    pub programs: IntervalStats,
    pub series: Vec<SeriesPoint>,
    pub leaks: LeakSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSummary>,
    /// The summed aggregates, program slots renumbered so that each
    /// program of the recording has its own (see `labels`).
    #[serde(skip)]
    pub total: Snapshot,
    /// The programs of `total`, by renumbered slot (`ProgramRef::slot`
    /// keeps the recording's slot).
    #[serde(skip)]
    pub labels: BTreeMap<u32, ProgramRef>,
}

impl Summary {
    /// `IntervalStats::compute` over the whole recording, grouped by `by`
    /// (helper or program; places are not renumbered, so netns and
    /// interface groupings work as well).
    pub fn stats(&self, by: Grouping) -> IntervalStats {
        stats_of(
            &self.total,
            self.elapsed_s,
            &self.meta.helpers,
            &self.labels,
            by,
        )
    }
}

/// `IntervalStats::compute` with programs named from `labels`.
pub fn stats_of(
    total: &Snapshot,
    secs: f64,
    helpers: &[Helper],
    labels: &BTreeMap<u32, ProgramRef>,
    by: Grouping,
) -> IntervalStats {
    let label = |slot: u32| {
        labels
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| unknown_label(slot))
    };
    IntervalStats::compute(total, secs, helpers, by, &label)
}

fn unknown_label(slot: u32) -> ProgramRef {
    ProgramRef {
        slot,
        id: 0,
        name: if slot == UNATTRIBUTED {
            "(not traced)".into()
        } else {
            format!("slot {slot}")
        },
    }
}

/// Builds a `Summary` frame by frame, so a long recording is never held in
/// memory whole.
pub struct SummaryBuilder {
    format_version: u16,
    meta: Meta,
    /// The previous reading.
    prev: Option<Snapshot>,
    first: (u64, u64),
    last: (u64, u64),
    intervals: u64,
    total: Snapshot,
    /// Renumbered slot of each (slot, program id, name) seen.
    programs: BTreeMap<(u32, u32, String), u32>,
    labels: BTreeMap<u32, ProgramRef>,
    series: Vec<SeriesPoint>,
    run_leaks: Vec<RunLeak>,
    run_leak_count: u64,
    ledger: Option<LedgerScan>,
    names: BTreeMap<u32, String>,
    workload: Option<HelperTally>,
}

impl SummaryBuilder {
    pub fn new(format_version: u16, meta: Meta) -> Self {
        SummaryBuilder {
            format_version,
            meta,
            prev: None,
            first: (0, 0),
            last: (0, 0),
            intervals: 0,
            total: Snapshot::default(),
            programs: BTreeMap::new(),
            labels: BTreeMap::from([(UNATTRIBUTED, unknown_label(UNATTRIBUTED))]),
            series: Vec::new(),
            run_leaks: Vec::new(),
            run_leak_count: 0,
            ledger: None,
            names: BTreeMap::new(),
            workload: None,
        }
    }

    /// The renumbered slot of `slot` as labelled in this reading.
    fn program_slot(&mut self, slot: u32, labels: &[ProgramRef]) -> u32 {
        if slot == UNATTRIBUTED {
            return UNATTRIBUTED;
        }
        let label = labels
            .iter()
            .find(|p| p.slot == slot)
            .cloned()
            .unwrap_or_else(|| unknown_label(slot));
        if label.id != 0 {
            self.names.insert(label.id, label.name.clone());
        }
        let next = self.programs.len() as u32 + 1;
        let key = (slot, label.id, label.name.clone());
        let v = *self.programs.entry(key).or_insert(next);
        self.labels.entry(v).or_insert(label);
        v
    }

    pub fn push_interval(&mut self, i: Interval) {
        let now = (i.unix_ms, i.snapshot.mono_ns);
        let Some(mut before) = self.prev.take() else {
            self.first = now;
            self.last = now;
            self.prev = Some(i.snapshot);
            return;
        };
        before.forget_slots(&i.forgotten);
        let d = i.snapshot.delta(&before);
        let secs = i.snapshot.mono_ns.saturating_sub(before.mono_ns) as f64 / 1e9;
        self.series
            .push(self.point(&d, i.unix_ms, i.snapshot.mono_ns, secs));
        for (k, c) in &d.cells {
            let key = CellKey {
                prog: self.program_slot(k.prog, &i.labels),
                ..*k
            };
            self.total.cells.entry(key).or_default().merge(c);
        }
        for (&slot, h) in &d.holds {
            let v = self.program_slot(slot, &i.labels);
            self.total.holds.entry(v).or_default().merge(h);
        }
        self.total.counters.merge(&d.counters);
        self.total.recursion_misses += d.recursion_misses;
        self.total.mono_ns = i.snapshot.mono_ns;
        self.intervals += 1;
        self.last = now;
        self.prev = Some(i.snapshot);
    }

    fn point(&self, d: &Snapshot, unix_ms: u64, mono_ns: u64, secs: f64) -> SeriesPoint {
        let st = IntervalStats::compute(
            d,
            secs,
            &self.meta.helpers,
            Grouping::Helper,
            &unknown_label,
        );
        SeriesPoint {
            unix_ms,
            elapsed_s: mono_ns.saturating_sub(self.first.1) as f64 / 1e9,
            interval_s: secs,
            helpers: st
                .helpers
                .iter()
                .map(|r| SeriesHelper {
                    helper: r.helper,
                    calls: r.calls,
                    calls_per_s: r.calls_per_s,
                    hits: r.hits,
                    hit_pct: r.hit_pct,
                    p50_ns: r.latency_ns.p50,
                    p90_ns: r.latency_ns.p90,
                    p99_ns: r.latency_ns.p99,
                    p999_ns: r.latency_ns.p999,
                    max_ns: r.latency_ns.max,
                })
                .collect(),
            acquired: st.acquired,
            released: st.release.dropped,
            hold_p50_ns: st.release.hold_ns.p50,
            hold_p99_ns: st.release.hold_ns.p99,
            drops: st.drops.total(),
        }
    }

    pub fn push_leaks(&mut self, l: Leaks) {
        self.run_leak_count += l.run_leaks.len() as u64;
        for r in l.run_leaks {
            if r.prog_id != 0 && !r.prog_name.is_empty() {
                self.names.entry(r.prog_id).or_insert(r.prog_name.clone());
            }
            if self.run_leaks.len() < RUN_LEAKS_LISTED {
                self.run_leaks.push(r);
            }
        }
        if l.ledger.is_some() {
            self.ledger = l.ledger;
        }
    }

    pub fn set_workload(&mut self, t: HelperTally) {
        self.workload = Some(t);
    }

    /// The summary, or `None` when the recording holds fewer than two
    /// readings (no complete interval).
    pub fn finish(self, truncated: bool) -> Option<Summary> {
        if self.intervals == 0 {
            return None;
        }
        let names = &self.names;
        let ledger =
            self.ledger.map(|scan| {
                LeakReport::build(&scan.refs, Vec::new(), scan.now_ns, LEAK_AGE_NS, &|id| {
                    match names.get(&id) {
                        _ if id == 0 => "(not traced)".into(),
                        Some(n) => format!("{n}[{id}]"),
                        None => format!("prog {id}"),
                    }
                })
            });
        let elapsed_s = self.last.1.saturating_sub(self.first.1) as f64 / 1e9;
        let totals = stats_of(
            &self.total,
            elapsed_s,
            &self.meta.helpers,
            &self.labels,
            Grouping::Helper,
        );
        let programs = stats_of(
            &self.total,
            elapsed_s,
            &self.meta.helpers,
            &self.labels,
            Grouping::Program,
        );
        Some(Summary {
            kind: "report",
            format_version: self.format_version,
            meta: self.meta,
            truncated,
            start_unix_ms: self.first.0,
            end_unix_ms: self.last.0,
            elapsed_s,
            intervals: self.intervals,
            totals,
            programs,
            series: self.series,
            leaks: LeakSummary {
                run_leaks: self.run_leak_count,
                run_leak_events: self.run_leaks,
                ledger,
            },
            workload: self.workload.map(|expected| WorkloadSummary { expected }),
            total: self.total,
            labels: self.labels,
        })
    }
}

/// Summarizes a recording held in memory.
pub fn summarize(rec: &super::Recording) -> Option<Summary> {
    let mut b = SummaryBuilder::new(rec.format_version, rec.meta.clone());
    for i in &rec.intervals {
        b.push_interval(i.clone());
    }
    for l in &rec.leaks {
        b.push_leaks(l.clone());
    }
    if let Some(t) = &rec.workload {
        b.set_workload(t.clone());
    }
    b.finish(rec.truncated)
}

/// Renumbers the programs of a summary by name, merging programs of the
/// same name (as two runs of the same workload have: their ids differ).
/// Returns the snapshot and the labels of the new slots.
pub fn by_program_name(s: &Summary) -> (Snapshot, BTreeMap<u32, ProgramRef>) {
    let mut slot_of: BTreeMap<String, u32> = BTreeMap::new();
    let mut labels = BTreeMap::new();
    let mut remap = BTreeMap::new();
    for (&v, p) in &s.labels {
        let name = if v == UNATTRIBUTED {
            "(not traced)".to_string()
        } else {
            p.name.clone()
        };
        let next = slot_of.len() as u32 + 1;
        let slot = if v == UNATTRIBUTED {
            UNATTRIBUTED
        } else {
            *slot_of.entry(name.clone()).or_insert(next)
        };
        labels
            .entry(slot)
            .or_insert(ProgramRef { slot, id: 0, name });
        remap.insert(v, slot);
    }
    let mut out = Snapshot {
        mono_ns: s.total.mono_ns,
        counters: s.total.counters.clone(),
        recursion_misses: s.total.recursion_misses,
        ..Default::default()
    };
    for (k, c) in &s.total.cells {
        let prog = remap.get(&k.prog).copied().unwrap_or(k.prog);
        out.cells
            .entry(CellKey { prog, ..*k })
            .or_default()
            .merge(c);
    }
    for (v, h) in &s.total.holds {
        let slot = remap.get(v).copied().unwrap_or(*v);
        out.holds.entry(slot).or_default().merge(h);
    }
    (out, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hist::LogHist;
    use crate::model::ids::Outcome;
    use crate::model::snapshot::Cell;
    use crate::record::tests::{key, label, leaks, meta, readings};
    use crate::record::Recording;

    fn recording(intervals: Vec<Interval>) -> Recording {
        Recording {
            path: "x.skrec".into(),
            format_version: 1,
            meta: meta(),
            intervals,
            leaks: Vec::new(),
            workload: None,
            truncated: false,
            warning: None,
        }
    }

    fn json(v: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn totals_are_what_stat_cumulative_prints_for_the_same_readings() {
        let rs = readings(6);
        let s = summarize(&recording(rs.clone())).unwrap();
        let (first, last) = (&rs[0], &rs[5]);
        let delta = last.snapshot.delta(&first.snapshot);
        let labels = |slot: u32| {
            last.labels
                .iter()
                .find(|p| p.slot == slot)
                .cloned()
                .unwrap()
        };
        let secs = 5.0;
        for (by, got) in [
            (Grouping::Helper, &s.totals),
            (Grouping::Program, &s.programs),
        ] {
            let stat = IntervalStats::compute(&delta, secs, &meta().helpers, by, &labels);
            assert_eq!(json(got), json(&stat), "{by:?}");
        }
        let tc = &s.totals.helpers[1];
        assert_eq!(
            (tc.helper, tc.calls, tc.hits),
            ("bpf_tc_sk_lookup_tcp", 750, 750)
        );
        assert_eq!(tc.calls_per_s, 150.0);
        assert!(tc.latency_ns.p50 >= 2000 && tc.latency_ns.p99 <= tc.latency_ns.max);
        assert_eq!(s.intervals, 5);
        assert_eq!(s.elapsed_s, 5.0);
        assert_eq!(s.totals.release.dropped, 500);
        assert_eq!(s.totals.drops.unmatched_exits, 2);
        // Slots 0, 1 and 2 each have rows.
        let progs: Vec<(u32, u32, u64)> = s
            .programs
            .helpers
            .iter()
            .map(|r| {
                let p = r.program.as_ref().unwrap();
                (p.slot, p.id, r.calls)
            })
            .collect();
        assert_eq!(
            progs,
            [(0, 0, 35), (1, 41, 500), (2, 42, 250), (2, 42, 150)]
        );
    }

    fn one_cell(prog: u32, n: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.cells.insert(
            key(prog, Helper::TcSkLookupTcp, Outcome::NoSocket),
            Cell {
                calls: LogHist::from_values(&vec![1000; n as usize]).count,
                hist: LogHist::from_values(&vec![1000; n as usize]),
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn a_program_that_leaves_still_counts_and_its_slot_s_next_program_is_new() {
        let at = |i: u64, mut s: Snapshot, labels, forgotten| Interval {
            unix_ms: i * 1000,
            snapshot: {
                s.mono_ns = i * 1_000_000_000;
                s
            },
            labels,
            forgotten,
        };
        let a = vec![label(1, 41, "prog_a")];
        let b = vec![label(1, 77, "prog_b")];
        let rs = vec![
            at(0, Snapshot::default(), a.clone(), vec![]),
            at(1, one_cell(1, 10), a, vec![]),
            // prog_a went away, its slot was freed and taken by prog_b,
            // which made 12 calls (more than prog_a: a plain difference
            // would read 2).
            at(2, one_cell(1, 12), b.clone(), vec![1]),
            at(3, one_cell(1, 15), b, vec![]),
        ];
        let s = summarize(&recording(rs)).unwrap();
        assert_eq!(s.totals.helpers[1].calls, 25);
        let progs: Vec<(String, u64)> = s
            .programs
            .helpers
            .iter()
            .map(|r| (r.program.as_ref().unwrap().name.clone(), r.calls))
            .collect();
        assert_eq!(progs, [("prog_a".into(), 10), ("prog_b".into(), 15)]);
        let calls: Vec<u64> = s.series.iter().map(|p| p.helpers[1].calls).collect();
        assert_eq!(calls, [10, 12, 3]);
    }

    #[test]
    fn the_series_has_one_point_per_interval() {
        let s = summarize(&recording(readings(4))).unwrap();
        assert_eq!(s.series.len(), 3);
        for (i, p) in s.series.iter().enumerate() {
            assert_eq!(p.elapsed_s, (i + 1) as f64);
            assert_eq!(p.interval_s, 1.0);
            let names: Vec<&str> = p.helpers.iter().map(|h| h.helper).collect();
            assert_eq!(
                names,
                [
                    "bpf_sk_lookup_tcp",
                    "bpf_tc_sk_lookup_tcp",
                    "bpf_tc_sk_lookup_udp"
                ]
            );
            let tc = &p.helpers[1];
            assert_eq!((tc.calls, tc.hits, tc.calls_per_s), (150, 150, 150.0));
            assert_eq!(tc.hit_pct, 100.0);
            assert!(tc.p50_ns > 0 && tc.p50_ns <= tc.p99_ns && tc.p99_ns <= tc.max_ns);
            assert_eq!((p.acquired, p.released), (100, 100));
            assert!(p.hold_p50_ns > 0);
        }
    }

    #[test]
    fn a_lone_baseline_is_not_a_summary() {
        assert!(summarize(&recording(readings(1))).is_none());
        assert!(summarize(&recording(Vec::new())).is_none());
    }

    #[test]
    fn leaks_are_counted_and_the_last_ledger_scan_grouped() {
        let mut rec = recording(readings(3));
        rec.leaks = vec![leaks(), leaks()];
        let s = summarize(&rec).unwrap();
        assert_eq!(s.leaks.run_leaks, 2);
        assert_eq!(s.leaks.run_leak_events.len(), 2);
        let l = s.leaks.ledger.as_ref().unwrap();
        // Both references are ~3 s old at the scan: over 500 ms.
        assert_eq!((l.outstanding_sockets, l.leaked_references), (2, 2));
        let names: Vec<&str> = l.groups.iter().map(|g| g.prog_name.as_str()).collect();
        assert!(names.contains(&"tc_ingress[41]"), "{names:?}");
        assert!(names.contains(&"(not traced)"), "{names:?}");
        assert_eq!(s.leaks.leaked_references(), 2);
    }
}
