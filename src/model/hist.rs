//! The in-kernel log-linear latency histogram (`struct skprof_hist`) and its
//! conversion into `hdrhistogram`.
//!
//! Layout (see `bpf/skprof.h`): values below 2^SUB_BITS are exact; above,
//! every power of two is split into 2^SUB_BITS equal slots. A slot is at most
//! 1/32 of its lower bound wide, so its midpoint is within 1.6% of any value
//! that landed in it.

use hdrhistogram::Histogram;
use serde::Serialize;

pub const SUB_BITS: u32 = 5;
pub const SUB: u64 = 1 << SUB_BITS;
pub const MAX_EXP: u32 = 35;
pub const SLOTS: usize = ((MAX_EXP - SUB_BITS + 1) as usize) * SUB as usize;

/// Slot of a value, exactly as `hist_slot()` in `bpf/skprof.bpf.c`.
pub fn slot_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    if v >= 1u64 << MAX_EXP {
        return SLOTS - 1;
    }
    let e = 63 - v.leading_zeros();
    ((e - SUB_BITS) as u64 * SUB + (v >> (e - SUB_BITS))) as usize
}

/// The half-open value range `[low, high)` of a slot.
pub fn slot_range(slot: usize) -> (u64, u64) {
    let slot = slot as u64;
    if slot < 2 * SUB {
        return (slot, slot + 1);
    }
    // slot = (e - SUB_BITS) * SUB + m with m in [SUB, 2 * SUB).
    let shift = slot / SUB - 1; // e - SUB_BITS
    let m = slot % SUB + SUB;
    (m << shift, (m + 1) << shift)
}

/// The value a slot stands for: its midpoint (exact below 64).
pub fn slot_value(slot: usize) -> u64 {
    let (lo, hi) = slot_range(slot);
    lo + (hi - lo) / 2
}

/// A merged (all CPUs) histogram of one (helper, outcome).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogHist {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub overflow: u64,
    /// Sparse: (slot, count) for non-empty slots, ascending.
    pub slots: Vec<(u16, u64)>,
}

impl LogHist {
    /// Builds from a dense slot array (one CPU's or the sum of all CPUs').
    pub fn from_dense(count: u64, sum_ns: u64, max_ns: u64, overflow: u64, dense: &[u64]) -> Self {
        let slots = dense
            .iter()
            .enumerate()
            .filter(|(_, &c)| c != 0)
            .map(|(i, &c)| (i as u16, c))
            .collect();
        LogHist {
            count,
            sum_ns,
            max_ns,
            overflow,
            slots,
        }
    }

    /// The histogram the kernel would build from these values (for tests
    /// and recorded streams).
    pub fn from_values(values: &[u64]) -> Self {
        let mut dense = vec![0u64; SLOTS];
        for &v in values {
            dense[slot_of(v)] += 1;
        }
        LogHist::from_dense(
            values.len() as u64,
            values.iter().sum(),
            values.iter().copied().max().unwrap_or(0),
            values.iter().filter(|&&v| v >= 1 << MAX_EXP).count() as u64,
            &dense,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds another histogram (another CPU, or another outcome).
    pub fn merge(&mut self, other: &LogHist) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.overflow += other.overflow;
        // Grouping merges many cells into empty rows: no walk is needed then.
        if other.slots.is_empty() {
            return;
        }
        if self.slots.is_empty() {
            self.slots.clone_from(&other.slots);
            return;
        }
        let mut out = Vec::with_capacity(self.slots.len() + other.slots.len());
        let (mut a, mut b) = (self.slots.iter().peekable(), other.slots.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(sa, ca)), Some(&&(sb, cb))) => {
                    if sa == sb {
                        out.push((sa, ca + cb));
                        a.next();
                        b.next();
                    } else if sa < sb {
                        out.push((sa, ca));
                        a.next();
                    } else {
                        out.push((sb, cb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    out.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    out.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.slots = out;
    }

    /// `self - earlier`, for an interval between two cumulative readings.
    /// Counters only grow, so a negative difference means the maps were
    /// reset (or re-created) in between: the later reading is the delta then.
    /// `max_ns` cannot be subtracted: the interval's max is taken from the
    /// highest non-empty slot unless the cumulative max grew in the interval.
    pub fn delta(&self, earlier: &LogHist) -> LogHist {
        if earlier.count > self.count {
            return self.clone();
        }
        let mut slots = Vec::with_capacity(self.slots.len());
        let mut prev = earlier.slots.iter().peekable();
        for &(s, c) in &self.slots {
            while prev.peek().is_some_and(|&&(ps, _)| ps < s) {
                prev.next();
            }
            let before = match prev.peek() {
                Some(&&(ps, pc)) if ps == s => pc,
                _ => 0,
            };
            if c > before {
                slots.push((s, c - before));
            }
        }
        let max_ns = if self.max_ns > earlier.max_ns {
            self.max_ns
        } else {
            slots
                .last()
                .map(|&(s, _)| slot_range(s as usize).1 - 1)
                .unwrap_or(0)
                .min(self.max_ns)
        };
        LogHist {
            count: self.count - earlier.count,
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            max_ns,
            overflow: self.overflow.saturating_sub(earlier.overflow),
            slots,
        }
    }

    /// The same data as an HdrHistogram (3 significant digits), each slot
    /// recorded at its midpoint.
    pub fn to_hdr(&self) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1u64 << (MAX_EXP + 1), 3)
            .expect("static histogram bounds are valid");
        for &(s, c) in &self.slots {
            // Within the bounds above by construction: saturating is only a guard.
            h.saturating_record_n(slot_value(s as usize), c);
        }
        h
    }

    /// p50..p999 in one walk over the sparse slots, each quantile the
    /// midpoint of the slot holding its rank (hdrhistogram's rank rule: the
    /// smallest value with at least `ceil(q * n)` values at or below it),
    /// capped at the exact max. `skprof top` computes this for every row at
    /// every refresh: building an HdrHistogram per row cost most of its CPU.
    pub fn percentiles(&self) -> Percentiles {
        let total: u64 = self.slots.iter().map(|s| s.1).sum();
        if self.count == 0 || total == 0 {
            return Percentiles::default();
        }
        // The exact max is known; a slot's midpoint may exceed it by up to
        // half a slot, which would read as p99 > max.
        let cap = self.max_ns.max(1);
        const QS: [f64; 4] = [0.50, 0.90, 0.99, 0.999];
        let ranks = QS.map(|q| ((q * total as f64).ceil() as u64).clamp(1, total));
        let mut out = [cap; 4];
        let mut next = 0;
        let mut seen = 0;
        for &(s, c) in &self.slots {
            seen += c;
            while next < ranks.len() && seen >= ranks[next] {
                out[next] = slot_value(s as usize).min(cap);
                next += 1;
            }
            if next == ranks.len() {
                break;
            }
        }
        Percentiles {
            count: self.count,
            mean: self.sum_ns as f64 / self.count as f64,
            min: slot_value(self.slots[0].0 as usize).min(self.max_ns),
            p50: out[0],
            p90: out[1],
            p99: out[2],
            p999: out[3],
            max: self.max_ns,
        }
    }

    /// The `q` quantile alone, by the same rule as [`LogHist::percentiles`].
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.slots.iter().map(|s| s.1).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(s, c) in &self.slots {
            seen += c;
            if seen >= rank {
                return slot_value(s as usize).min(self.max_ns.max(1));
            }
        }
        self.max_ns
    }
}

/// Latency summary in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values: &[u64]) -> LogHist {
        LogHist::from_values(values)
    }

    /// Deterministic pseudo-random values (xorshift), spread log-uniformly.
    fn values(n: usize, lo_exp: u32, hi_exp: u32, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let e = lo_exp + (x % (hi_exp - lo_exp) as u64) as u32;
                let m = (x >> 8) % (1u64 << e).max(1);
                (1u64 << e) + m
            })
            .collect()
    }

    #[test]
    fn slots_are_contiguous_and_cover_the_range() {
        assert_eq!(SLOTS, 992);
        let mut expect_lo = 0;
        for s in 0..SLOTS {
            let (lo, hi) = slot_range(s);
            assert_eq!(lo, expect_lo, "slot {s}");
            assert!(hi > lo);
            assert_eq!(slot_of(lo), s);
            assert_eq!(slot_of(hi - 1), s);
            // Relative width at most 1/32 above the exact range.
            if lo >= 64 {
                assert!((hi - lo) * 32 <= lo, "slot {s} [{lo},{hi}) too wide");
            }
            expect_lo = hi;
        }
        assert_eq!(expect_lo, 1u64 << MAX_EXP);
        assert_eq!(slot_of(u64::MAX), SLOTS - 1);
        assert_eq!(slot_of(1u64 << MAX_EXP), SLOTS - 1);
    }

    #[test]
    fn slot_of_matches_the_bpf_formula() {
        // (e - 5) * 32 + (v >> (e - 5)), the formula in skprof.h.
        for v in [32u64, 33, 63, 64, 65, 100, 1000, 123_456, 9_999_999_999] {
            let e = 63 - v.leading_zeros();
            let bpf = ((e - SUB_BITS) as u64 * SUB + (v >> (e - SUB_BITS))) as usize;
            assert_eq!(slot_of(v), bpf, "v={v}");
        }
        for v in 0..32 {
            assert_eq!(slot_of(v), v as usize);
        }
    }

    #[test]
    fn percentiles_within_3_percent_of_exact_from_1ns_to_10s() {
        // 1 ns .. 10 s is 2^0 .. 2^33.2.
        for (seed, lo, hi) in [(3u64, 0u32, 34u32), (11, 6, 12), (99, 20, 33)] {
            let mut vals = values(50_000, lo, hi, seed);
            vals.retain(|&v| v <= 10_000_000_000);
            let h = hist_of(&vals);
            let p = h.percentiles();
            vals.sort_unstable();
            for (q, got) in [(0.5, p.p50), (0.9, p.p90), (0.99, p.p99), (0.999, p.p999)] {
                // hdrhistogram's rank: the smallest value with count >= q*n.
                let rank = ((q * vals.len() as f64).ceil() as usize).max(1);
                let exact = vals[rank - 1] as f64;
                let err = (got as f64 - exact).abs() / exact;
                assert!(err <= 0.03, "q={q} exact={exact} got={got} err={err}");
            }
            assert_eq!(p.max, *vals.last().unwrap());
            assert!(p.p50 <= p.p99 && p.p99 <= p.max);
        }
    }

    #[test]
    fn single_pass_percentiles_agree_with_hdrhistogram() {
        // The one-walk percentiles pick the same slot as HdrHistogram fed
        // the midpoints: equal within its 3-digit precision (0.1%).
        for (seed, lo, hi) in [(3u64, 0u32, 34u32), (7, 6, 12), (42, 20, 33), (5, 0, 6)] {
            let h = hist_of(&values(20_000, lo, hi, seed));
            let p = h.percentiles();
            let hdr = h.to_hdr();
            for (q, got) in [(0.5, p.p50), (0.9, p.p90), (0.99, p.p99), (0.999, p.p999)] {
                let want = hdr.value_at_quantile(q).min(h.max_ns) as f64;
                let err = (got as f64 - want).abs() / want.max(1.0);
                assert!(err <= 0.001, "q={q} hdr={want} got={got}");
                assert_eq!(h.quantile(q), got);
            }
        }
    }

    #[test]
    fn small_exact_values_are_exact() {
        let h = hist_of(&[1, 1, 2, 3, 31]);
        let p = h.percentiles();
        assert_eq!((p.min, p.p50, p.max), (1, 2, 31));
    }

    #[test]
    fn merge_and_delta_invert() {
        let a = hist_of(&values(1000, 3, 20, 5));
        let b = hist_of(&values(700, 8, 30, 11));
        let mut sum = a.clone();
        sum.merge(&b);
        assert_eq!(sum.count, 1700);
        let d = sum.delta(&a);
        assert_eq!(d.count, b.count);
        assert_eq!(d.slots, b.slots);
        assert_eq!(d.sum_ns, b.sum_ns);
        // The interval's max is within b's top slot.
        let top = b.slots.last().unwrap().0 as usize;
        assert_eq!(slot_of(d.max_ns), top);
    }

    #[test]
    fn delta_after_reset_is_the_new_reading() {
        let a = hist_of(&[100, 200, 300]);
        let b = hist_of(&[50]);
        assert_eq!(b.delta(&a), b);
    }

    #[test]
    fn empty_percentiles_are_zero() {
        assert_eq!(LogHist::default().percentiles(), Percentiles::default());
    }
}
