//! One reading of every probe map, merged over CPUs, and the per-interval
//! statistics derived from two readings.

use serde::Serialize;

use super::hist::{LogHist, Percentiles};
use super::ids::{Helper, Outcome, SockClass};

const H: usize = Helper::COUNT;
const C: usize = SockClass::COUNT;

/// `struct skprof_counters`, merged over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters {
    pub hits: [[u64; C]; H],
    pub acquired: [[u64; C]; H],
    pub released: [u64; C],
    pub release_noop: [u64; C],
    pub release_null: u64,
    pub unmatched_exit: [u64; H],
    pub evicted_entry: [u64; H],
}

fn sub_arr<const N: usize>(a: &[u64; N], b: &[u64; N]) -> [u64; N] {
    std::array::from_fn(|i| a[i].saturating_sub(b[i]))
}

fn add_arr<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl Counters {
    pub fn merge(&mut self, o: &Counters) {
        for h in 0..H {
            add_arr(&mut self.hits[h], &o.hits[h]);
            add_arr(&mut self.acquired[h], &o.acquired[h]);
        }
        add_arr(&mut self.released, &o.released);
        add_arr(&mut self.release_noop, &o.release_noop);
        self.release_null += o.release_null;
        add_arr(&mut self.unmatched_exit, &o.unmatched_exit);
        add_arr(&mut self.evicted_entry, &o.evicted_entry);
    }

    pub fn delta(&self, e: &Counters) -> Counters {
        Counters {
            hits: std::array::from_fn(|h| sub_arr(&self.hits[h], &e.hits[h])),
            acquired: std::array::from_fn(|h| sub_arr(&self.acquired[h], &e.acquired[h])),
            released: sub_arr(&self.released, &e.released),
            release_noop: sub_arr(&self.release_noop, &e.release_noop),
            release_null: self.release_null.saturating_sub(e.release_null),
            unmatched_exit: sub_arr(&self.unmatched_exit, &e.unmatched_exit),
            evicted_entry: sub_arr(&self.evicted_entry, &e.evicted_entry),
        }
    }
}

/// Everything the probes aggregated, at one instant (cumulative since load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Monotonic time of the reading, in ns (CLOCK_MONOTONIC).
    pub mono_ns: u64,
    /// Indexed by `helper * Outcome::COUNT + outcome`.
    pub hists: Vec<LogHist>,
    pub counters: Counters,
    /// Probe runs the kernel skipped because the probe was already running on
    /// that CPU (sum of `recursion_misses` over skprof's programs).
    pub recursion_misses: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            mono_ns: 0,
            hists: vec![LogHist::default(); H * Outcome::COUNT],
            counters: Counters::default(),
            recursion_misses: 0,
        }
    }
}

impl Snapshot {
    pub fn hist(&self, h: Helper, o: Outcome) -> &LogHist {
        &self.hists[h.index() * Outcome::COUNT + o.index()]
    }

    /// What happened between `earlier` and `self`.
    pub fn delta(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            mono_ns: self.mono_ns,
            hists: self
                .hists
                .iter()
                .zip(&earlier.hists)
                .map(|(a, b)| a.delta(b))
                .collect(),
            counters: self.counters.delta(&earlier.counters),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
        }
    }
}

/// Per-class counts, keyed by class name for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ByClass {
    pub listener: u64,
    pub established: u64,
    pub time_wait: u64,
    pub request: u64,
    pub udp: u64,
    pub other: u64,
}

impl ByClass {
    pub fn from_array(a: &[u64; C]) -> Self {
        let g = |c: SockClass| a[c.index()];
        ByClass {
            listener: g(SockClass::Listener),
            established: g(SockClass::Established),
            time_wait: g(SockClass::TimeWait),
            request: g(SockClass::Request),
            udp: g(SockClass::Udp),
            other: g(SockClass::Other),
        }
    }

    pub fn total(&self) -> u64 {
        self.listener + self.established + self.time_wait + self.request + self.udp + self.other
    }
}

/// Calls per outcome, keyed by outcome name for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ByOutcome {
    pub hit: u64,
    pub no_socket: u64,
    pub bad_len: u64,
    pub bad_netns: u64,
    pub bad_flags: u64,
}

/// One row of `skprof stat`: a helper function over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HelperStats {
    pub helper: &'static str,
    pub calls: u64,
    pub calls_per_s: f64,
    pub hits: u64,
    pub hit_pct: f64,
    pub outcomes: ByOutcome,
    /// Latency over every outcome, in ns.
    pub latency_ns: Percentiles,
    /// Latency of hits only, in ns.
    pub hit_latency_ns: Percentiles,
    pub acquired: u64,
    pub hits_by_class: ByClass,
    pub acquired_by_class: ByClass,
    pub unmatched_exits: u64,
    pub evicted_entries: u64,
}

/// `bpf_sk_release` over one interval. Releases are not attributed to a
/// helper: the kernel function does not know which lookup found the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseStats {
    pub calls: u64,
    pub dropped: u64,
    pub noop: u64,
    pub null: u64,
    pub dropped_by_class: ByClass,
    pub noop_by_class: ByClass,
}

/// Probe-side losses over one interval. All of them should be zero; any
/// non-zero value means some calls were not measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drops {
    pub unmatched_exits: u64,
    pub evicted_entries: u64,
    pub recursion_misses: u64,
    pub hist_overflow: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.unmatched_exits + self.evicted_entries + self.recursion_misses + self.hist_overflow
    }
}

/// All rows for one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalStats {
    pub interval_s: f64,
    pub helpers: Vec<HelperStats>,
    pub release: ReleaseStats,
    pub acquired: u64,
    pub drops: Drops,
}

impl IntervalStats {
    /// Statistics of `delta` (a difference of two snapshots, or a cumulative
    /// snapshot) over `interval_s` seconds, for the listed helpers.
    pub fn compute(delta: &Snapshot, interval_s: f64, helpers: &[Helper]) -> IntervalStats {
        let c = &delta.counters;
        let rows: Vec<HelperStats> = helpers
            .iter()
            .map(|&h| {
                let mut all = LogHist::default();
                for o in Outcome::ALL {
                    all.merge(delta.hist(h, o));
                }
                let n = |o| delta.hist(h, o).count;
                let hits = n(Outcome::Hit);
                let acquired_by_class = ByClass::from_array(&c.acquired[h.index()]);
                HelperStats {
                    helper: h.function(),
                    calls: all.count,
                    calls_per_s: rate(all.count, interval_s),
                    hits,
                    hit_pct: pct(hits, all.count),
                    outcomes: ByOutcome {
                        hit: hits,
                        no_socket: n(Outcome::NoSocket),
                        bad_len: n(Outcome::BadLen),
                        bad_netns: n(Outcome::BadNetns),
                        bad_flags: n(Outcome::BadFlags),
                    },
                    latency_ns: all.percentiles(),
                    hit_latency_ns: delta.hist(h, Outcome::Hit).percentiles(),
                    acquired: acquired_by_class.total(),
                    hits_by_class: ByClass::from_array(&c.hits[h.index()]),
                    acquired_by_class,
                    unmatched_exits: c.unmatched_exit[h.index()],
                    evicted_entries: c.evicted_entry[h.index()],
                }
            })
            .collect();
        let dropped_by_class = ByClass::from_array(&c.released);
        let noop_by_class = ByClass::from_array(&c.release_noop);
        let release = ReleaseStats {
            calls: dropped_by_class.total() + noop_by_class.total() + c.release_null,
            dropped: dropped_by_class.total(),
            noop: noop_by_class.total(),
            null: c.release_null,
            dropped_by_class,
            noop_by_class,
        };
        let drops = Drops {
            unmatched_exits: c.unmatched_exit.iter().sum(),
            evicted_entries: c.evicted_entry.iter().sum(),
            recursion_misses: delta.recursion_misses,
            hist_overflow: delta.hists.iter().map(|h| h.overflow).sum(),
        };
        IntervalStats {
            interval_s,
            acquired: rows.iter().map(|r| r.acquired).sum(),
            helpers: rows,
            release,
            drops,
        }
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::super::hist::{slot_of, SLOTS};
    use super::*;

    fn hist(values: &[u64]) -> LogHist {
        let mut dense = vec![0; SLOTS];
        for &v in values {
            dense[slot_of(v)] += 1;
        }
        LogHist::from_dense(
            values.len() as u64,
            values.iter().sum(),
            values.iter().copied().max().unwrap_or(0),
            0,
            &dense,
        )
    }

    /// A recorded two-interval stream: tc listener hits and misses, one
    /// established hit released, and a UDP hit.
    fn recorded() -> (Snapshot, Snapshot) {
        let mut s1 = Snapshot {
            mono_ns: 1_000_000_000,
            ..Default::default()
        };
        let tc = Helper::TcSkLookupTcp.index() * Outcome::COUNT;
        s1.hists[tc + Outcome::Hit.index()] = hist(&[2000, 2100, 2200]);
        s1.hists[tc + Outcome::NoSocket.index()] = hist(&[1500]);
        s1.counters.hits[Helper::TcSkLookupTcp.index()][SockClass::Listener.index()] = 2;
        s1.counters.hits[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 1;
        s1.counters.acquired[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 1;
        s1.counters.released[SockClass::Established.index()] = 1;
        s1.counters.release_noop[SockClass::Listener.index()] = 2;
        let mut s2 = s1.clone();
        s2.mono_ns = 3_000_000_000;
        s2.hists[tc + Outcome::Hit.index()] = hist(&[2000, 2100, 2200, 2300, 90_000]);
        s2.hists[tc + Outcome::BadLen.index()] = hist(&[300]);
        s2.counters.hits[Helper::TcSkLookupTcp.index()][SockClass::Listener.index()] = 4;
        s2.counters.release_noop[SockClass::Listener.index()] = 4;
        s2.counters.unmatched_exit[Helper::XdpSkLookupUdp.index()] = 1;
        s2.recursion_misses = 2;
        (s1, s2)
    }

    #[test]
    fn interval_stats_from_a_recorded_stream() {
        let (s1, s2) = recorded();
        let first = IntervalStats::compute(&s1, 1.0, &[Helper::TcSkLookupTcp]);
        let r = &first.helpers[0];
        assert_eq!((r.calls, r.hits, r.acquired), (4, 3, 1));
        assert_eq!(r.outcomes.no_socket, 1);
        assert_eq!(r.hit_pct, 75.0);
        assert_eq!(first.release.calls, 3);
        assert_eq!((first.release.dropped, first.release.noop), (1, 2));
        assert_eq!(first.acquired, first.release.dropped);

        let d = s2.delta(&s1);
        let second =
            IntervalStats::compute(&d, 2.0, &[Helper::TcSkLookupTcp, Helper::XdpSkLookupUdp]);
        let r = &second.helpers[0];
        assert_eq!((r.calls, r.hits, r.outcomes.bad_len), (3, 2, 1));
        assert_eq!(r.calls_per_s, 1.5);
        assert_eq!(r.acquired, 0);
        assert_eq!(r.hits_by_class.listener, 2);
        assert_eq!(r.latency_ns.max, 90_000);
        assert_eq!(second.helpers[1].calls, 0);
        assert_eq!(second.helpers[1].unmatched_exits, 1);
        assert_eq!(second.release.noop, 2);
        assert_eq!(second.drops.total(), 3);
        let p = r.latency_ns;
        assert!(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max);
    }

    #[test]
    fn json_shape() {
        let (s1, _) = recorded();
        let st = IntervalStats::compute(&s1, 1.0, &[Helper::TcSkLookupTcp]);
        let v = serde_json::to_value(&st).unwrap();
        let row = &v["helpers"][0];
        assert_eq!(row["helper"], "bpf_tc_sk_lookup_tcp");
        for k in [
            "calls",
            "calls_per_s",
            "hits",
            "hit_pct",
            "acquired",
            "unmatched_exits",
        ] {
            assert!(row[k].is_number(), "{k}");
        }
        for k in ["count", "p50", "p90", "p99", "p999", "max", "mean", "min"] {
            assert!(row["latency_ns"][k].is_number(), "latency_ns.{k}");
        }
        for k in ["hit", "no_socket", "bad_len", "bad_netns", "bad_flags"] {
            assert!(row["outcomes"][k].is_number(), "outcomes.{k}");
        }
        for k in [
            "listener",
            "established",
            "time_wait",
            "request",
            "udp",
            "other",
        ] {
            assert!(row["hits_by_class"][k].is_number(), "hits_by_class.{k}");
        }
        for k in ["calls", "dropped", "noop", "null"] {
            assert!(v["release"][k].is_number(), "release.{k}");
        }
        for k in [
            "unmatched_exits",
            "evicted_entries",
            "recursion_misses",
            "hist_overflow",
        ] {
            assert!(v["drops"][k].is_number(), "drops.{k}");
        }
    }

    #[test]
    fn counters_merge_then_delta() {
        let (s1, s2) = recorded();
        let mut m = s1.counters.clone();
        m.merge(&s2.counters);
        assert_eq!(m.delta(&s2.counters), s1.counters);
    }
}
