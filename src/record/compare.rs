//! `skprof report --compare BASE NEW`: per helper function and per
//! (program, helper) rate and percentile changes, and the p99 regression
//! gate (pure).
//!
//! Programs are matched by name: the same workload run twice has new
//! program ids, and programs of one name are merged.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::ids::Helper;
use crate::model::snapshot::{Grouping, HelperStats};

use super::summary::{by_program_name, stats_of, Summary};

/// What a side of the comparison is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub path: String,
    pub kernel: String,
    pub probe_mode: String,
    pub skprof_version: String,
    pub start_unix_ms: u64,
    pub elapsed_s: f64,
    pub truncated: bool,
}

/// One row's figures on one side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    pub calls: u64,
    pub calls_per_s: f64,
    pub hit_pct: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Figures {
    fn of(r: &HelperStats) -> Figures {
        Figures {
            calls: r.calls,
            calls_per_s: r.calls_per_s,
            hit_pct: r.hit_pct,
            p50_ns: r.latency_ns.p50,
            p90_ns: r.latency_ns.p90,
            p99_ns: r.latency_ns.p99,
            p999_ns: r.latency_ns.p999,
            max_ns: r.latency_ns.max,
        }
    }
}

/// A helper function (of one program, for program rows) on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    pub helper: &'static str,
    /// `None`: not called on that side.
    pub base: Option<Figures>,
    pub new: Option<Figures>,
    /// Relative changes, new against base, in percent (`None` when either
    /// side has no calls).
    pub calls_per_s_change_pct: Option<f64>,
    pub p50_change_pct: Option<f64>,
    pub p99_change_pct: Option<f64>,
    /// Hit ratio change in percentage points.
    pub hit_pct_change: Option<f64>,
    /// Whether the p99 gate looked at this row (both sides have at least
    /// `min_calls` calls).
    pub gated: bool,
    pub regressed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub base: Side,
    pub new: Side,
    /// The p99 gate: a row regresses when its p99 grew by more than this.
    pub max_regression_pct: Option<f64>,
    pub min_calls: u64,
    pub helpers: Vec<CompareRow>,
    pub programs: Vec<CompareRow>,
    /// One line per regressed row.
    pub regressions: Vec<String>,
}

fn change_pct(base: f64, new: f64) -> Option<f64> {
    (base > 0.0).then(|| (new - base) / base * 100.0)
}

fn side(path: &str, s: &Summary) -> Side {
    Side {
        path: path.to_string(),
        kernel: s.meta.kernel.clone(),
        probe_mode: s.meta.probe_mode.clone(),
        skprof_version: s.meta.skprof_version.clone(),
        start_unix_ms: s.start_unix_ms,
        elapsed_s: s.elapsed_s,
        truncated: s.truncated,
    }
}

type RowKey = (Option<String>, &'static str);

fn rows_by_key(rows: &[HelperStats]) -> BTreeMap<RowKey, Figures> {
    rows.iter()
        .filter(|r| r.calls > 0)
        .map(|r| {
            (
                (r.program.as_ref().map(|p| p.name.clone()), r.helper),
                Figures::of(r),
            )
        })
        .collect()
}

/// The helpers of both recordings, in helper order.
fn union_helpers(a: &Summary, b: &Summary) -> Vec<Helper> {
    let set: BTreeSet<Helper> = a
        .meta
        .helpers
        .iter()
        .chain(&b.meta.helpers)
        .copied()
        .collect();
    set.into_iter().collect()
}

/// Compares `new` against `base`. With `max_regression_pct`, rows whose
/// p99 grew by more than that (and with at least `min_calls` calls on
/// both sides) are regressions.
pub fn compare(
    base_path: &str,
    base: &Summary,
    new_path: &str,
    new: &Summary,
    max_regression_pct: Option<f64>,
    min_calls: u64,
) -> Comparison {
    let helpers = union_helpers(base, new);
    let by_name = |s: &Summary, by: Grouping| {
        let (snap, labels) = by_program_name(s);
        stats_of(&snap, s.elapsed_s, &helpers, &labels, by)
    };
    let mut regressions = Vec::new();
    let mut rows_of = |by: Grouping| {
        let a = rows_by_key(&by_name(base, by).helpers);
        let b = rows_by_key(&by_name(new, by).helpers);
        let keys: BTreeSet<&RowKey> = a.keys().chain(b.keys()).collect();
        let order = |k: &RowKey| {
            (
                Helper::from_function(k.1).map_or(usize::MAX, Helper::index),
                k.0.clone(),
            )
        };
        let mut keys: Vec<&RowKey> = keys.into_iter().collect();
        keys.sort_by_key(|k| order(k));
        keys.into_iter()
            .map(|k| {
                let (x, y) = (a.get(k).copied(), b.get(k).copied());
                let both = x.zip(y);
                let p99 = both.and_then(|(x, y)| change_pct(x.p99_ns as f64, y.p99_ns as f64));
                let gated = max_regression_pct.is_some()
                    && both.is_some_and(|(x, y)| x.calls >= min_calls && y.calls >= min_calls);
                let regressed =
                    gated && p99.is_some_and(|p| max_regression_pct.is_some_and(|max| p > max));
                if let (true, Some((x, y)), Some(p)) = (regressed, both, p99) {
                    let who = match &k.0 {
                        Some(prog) => format!("{prog}/{}", k.1),
                        None => k.1.to_string(),
                    };
                    regressions.push(format!(
                        "{who} p99 {p:+.1}% ({} -> {} ns)",
                        x.p99_ns, y.p99_ns
                    ));
                }
                CompareRow {
                    program: k.0.clone(),
                    helper: k.1,
                    base: x,
                    new: y,
                    calls_per_s_change_pct: both
                        .and_then(|(x, y)| change_pct(x.calls_per_s, y.calls_per_s)),
                    p50_change_pct: both
                        .and_then(|(x, y)| change_pct(x.p50_ns as f64, y.p50_ns as f64)),
                    p99_change_pct: p99,
                    hit_pct_change: both.map(|(x, y)| y.hit_pct - x.hit_pct),
                    gated,
                    regressed,
                }
            })
            .collect::<Vec<_>>()
    };
    let helper_rows = rows_of(Grouping::Helper);
    let program_rows = rows_of(Grouping::Program);
    Comparison {
        kind: "compare",
        base: side(base_path, base),
        new: side(new_path, new),
        max_regression_pct,
        min_calls,
        helpers: helper_rows,
        programs: program_rows,
        regressions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hist::{LogHist, SUB};
    use crate::record::summary::summarize;
    use crate::record::tests::{meta, readings};
    use crate::record::{Interval, Recording};

    /// Every latency doubled: each slot (all above 64 ns here) moves up by
    /// one power of two.
    fn doubled(h: &LogHist) -> LogHist {
        LogHist {
            count: h.count,
            sum_ns: h.sum_ns * 2,
            max_ns: h.max_ns * 2,
            overflow: h.overflow,
            slots: h.slots.iter().map(|&(s, c)| (s + SUB as u16, c)).collect(),
        }
    }

    fn summary(intervals: Vec<Interval>) -> Summary {
        summarize(&Recording {
            path: "x".into(),
            format_version: 1,
            meta: meta(),
            intervals,
            leaks: Vec::new(),
            workload: None,
            truncated: false,
            warning: None,
        })
        .unwrap()
    }

    /// The same run, slower, with new program ids (a second run).
    fn slower() -> Summary {
        let mut rs = readings(4);
        for i in &mut rs {
            for c in i.snapshot.cells.values_mut() {
                c.hist = doubled(&c.hist);
            }
            for p in &mut i.labels {
                p.id += 100;
            }
        }
        summary(rs)
    }

    #[test]
    fn a_run_against_itself_changes_nothing() {
        let s = summary(readings(4));
        let c = compare("a", &s, "b", &s, Some(0.0), 1);
        assert!(c.regressions.is_empty());
        assert_eq!(c.helpers.len(), 3);
        for r in c.helpers.iter().chain(&c.programs) {
            assert_eq!(r.p99_change_pct, Some(0.0), "{r:?}");
            assert_eq!(r.calls_per_s_change_pct, Some(0.0));
            assert!(r.gated && !r.regressed);
        }
    }

    #[test]
    fn a_slower_p99_beyond_the_limit_is_a_regression() {
        let (base, new) = (summary(readings(4)), slower());
        let c = compare("base.skrec", &base, "new.skrec", &new, Some(10.0), 100);
        let tc = &c.helpers[1];
        assert_eq!(tc.helper, "bpf_tc_sk_lookup_tcp");
        let p99 = tc.p99_change_pct.unwrap();
        assert!((90.0..=110.0).contains(&p99), "{p99}");
        assert!(tc.regressed);
        // Programs match by name although their ids changed.
        let prog: Vec<(&str, bool, bool)> = c
            .programs
            .iter()
            .map(|r| {
                (
                    r.program.as_deref().unwrap(),
                    r.base.is_some() && r.new.is_some(),
                    r.regressed,
                )
            })
            .collect();
        assert_eq!(
            prog,
            [
                ("(not traced)", true, false),
                ("tc_egress", true, true),
                ("tc_ingress", true, true),
                // 3 * 30 UDP calls: under --min-calls.
                ("tc_egress", true, false)
            ]
        );
        // 3 * 7 calls of bpf_sk_lookup_tcp: under --min-calls, not gated.
        assert!(!c.helpers[0].gated && !c.helpers[0].regressed);
        assert!(c
            .regressions
            .iter()
            .any(|r| r.starts_with("bpf_tc_sk_lookup_tcp p99 +")));
        assert!(c.regressions.iter().any(|r| r.starts_with("tc_ingress/")));
        // A looser gate passes; no gate gates nothing.
        assert!(compare("a", &base, "b", &new, Some(150.0), 100)
            .regressions
            .is_empty());
        let c = compare("a", &base, "b", &new, None, 100);
        assert!(c.regressions.is_empty() && c.helpers.iter().all(|r| !r.gated));
        // Faster is not a regression.
        assert!(compare("a", &new, "b", &base, Some(0.0), 1)
            .regressions
            .is_empty());
    }

    #[test]
    fn rows_of_one_side_only_are_new_or_gone() {
        let base = summary(readings(4));
        let mut rs = readings(4);
        for i in &mut rs {
            i.snapshot
                .cells
                .retain(|k, _| k.helper != Helper::TcSkLookupUdp);
        }
        let new = summary(rs);
        let c = compare("a", &base, "b", &new, Some(10.0), 1);
        let udp = c
            .helpers
            .iter()
            .find(|r| r.helper == "bpf_tc_sk_lookup_udp")
            .unwrap();
        assert!(udp.base.is_some() && udp.new.is_none());
        assert_eq!(udp.p99_change_pct, None);
        assert!(!udp.gated && !udp.regressed);
    }
}
