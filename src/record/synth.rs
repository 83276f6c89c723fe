//! Synthetic recordings: what `skprof record` would write for a busy
//! Cilium-style host, made up deterministically from a seed, for the
//! report benchmark (`skprof-dev bench-report`, `scripts/bench-report`)
//! and the fuzzer's seeds. Dev-only: built for unit tests and with the
//! `dev` feature, never into the skprof binary.
//!
//! Every lookup helper is traced; a few tc, XDP and sock_addr programs call
//! their family's TCP, UDP and skc lookups, and an untraced program the
//! generic ones. Each interval's calls follow a slow wave with jitter;
//! latencies are log-normal around a per-helper base, with a slow tail, and
//! drift up over the recording. Hits are split by socket class, references
//! acquired by refcounted hits are released (their hold times recorded per
//! program), listener and UDP hits are no-op releases. The calls of all
//! intervals add up to exactly `Spec::samples`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::hist::{slot_of, LogHist, MAX_EXP, SLOTS};
use crate::model::ids::{Family, Helper, Outcome, Proto, SockClass};
use crate::model::snapshot::{Cell, CellKey, Counters, ProgramRef, Snapshot, UNATTRIBUTED};

use super::{Frame, Interval, Leaks, LedgerScan, Meta, RecordError, Writer};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Helper calls (latency samples) over the whole recording.
    pub samples: u64,
    /// Intervals after the baseline reading.
    pub intervals: u64,
    pub interval_ms: u64,
    /// Traced programs (the untraced caller comes on top).
    pub programs: u32,
    pub seed: u64,
}

impl Default for Spec {
    /// Ten million calls over ten minutes of one-second readings by six
    /// programs.
    fn default() -> Self {
        Spec {
            samples: 10_000_000,
            intervals: 600,
            interval_ms: 1000,
            programs: 6,
            seed: 1,
        }
    }
}

/// The programs of a synthetic host, in slot order: name, family, device.
const PROGRAMS: [(&str, Family, u32); 6] = [
    ("cil_from_netdev", Family::Tc, 2),
    ("cil_xdp_entry", Family::Xdp, 2),
    ("cil_sock4_connect", Family::SockAddr, 0),
    ("cil_to_container", Family::Tc, 5),
    ("cil_sock6_sendmsg", Family::SockAddr, 0),
    ("xdp_lb_ingress", Family::Xdp, 3),
];

const NETNS: u32 = 4_026_531_840;
const START_UNIX_MS: u64 = 1_767_225_600_000;

/// xorshift64*: fast, deterministic, good enough for made-up latencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (Irwin-Hall of four uniforms).
    fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3f64.sqrt()
    }
}

/// Splits `total` in proportion to `weights` (non-negative, not all zero),
/// exactly: floors, then the remainder one by one to the largest fractions.
fn split(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum <= 0.0 {
        let mut v = vec![0; weights.len()];
        v[0] = total;
        return v;
    }
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let given: u64 = out.iter().sum();
    // Float rounding can overshoot by a few: take from the largest.
    let mut over = given.saturating_sub(total);
    while over > 0 {
        let i = (0..out.len()).max_by_key(|&i| out[i]).unwrap_or(0);
        let take = over.min(out[i]);
        out[i] -= take;
        over -= take;
    }
    let mut left = total.saturating_sub(out.iter().sum());
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// One (program, helper, outcome) series and its cumulative histogram.
struct CellGen {
    key: CellKey,
    /// Share of the calls.
    weight: f64,
    /// Median latency, ns.
    base_ns: f64,
    /// Hit classes and their shares (hits only).
    classes: &'static [(SockClass, f64)],
    dense: Vec<u64>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
    overflow: u64,
    hits: [u64; SockClass::COUNT],
    acquired: [u64; SockClass::COUNT],
}

fn classes_of(proto: Proto) -> &'static [(SockClass, f64)] {
    match proto {
        Proto::Tcp => &[
            (SockClass::Established, 0.62),
            (SockClass::Listener, 0.36),
            (SockClass::Request, 0.02),
        ],
        Proto::Udp => &[(SockClass::Udp, 1.0)],
        Proto::SkcTcp => &[
            (SockClass::Established, 0.55),
            (SockClass::Listener, 0.30),
            (SockClass::TimeWait, 0.13),
            (SockClass::Request, 0.02),
        ],
    }
}

/// Generates the frames of a recording after its `Meta`: the baseline,
/// `Spec::intervals` readings, and a last `Leaks` frame with an empty
/// ledger scan.
pub struct Synth {
    spec: Spec,
    rng: Rng,
    cells: Vec<CellGen>,
    /// Calls in each interval (sums to `samples`).
    per_interval: Vec<u64>,
    labels: Vec<ProgramRef>,
    /// Per program slot: the cumulative hold-time histogram.
    holds: BTreeMap<u32, (Vec<u64>, u64, u64, u64)>,
    counters: Counters,
    /// Readings produced so far (the baseline is reading 0).
    next: u64,
    done: bool,
}

impl Synth {
    pub fn new(spec: Spec) -> Synth {
        let mut rng = Rng::new(spec.seed);
        let mut cells = Vec::new();
        let mut labels = Vec::new();
        let mut add = |prog: u32, family: Family, ifindex: u32, scale: f64, rng: &mut Rng| {
            for proto in [Proto::Tcp, Proto::Udp, Proto::SkcTcp] {
                let helper = Helper::for_call(family, proto, true);
                let (w, base) = match proto {
                    Proto::Tcp => (0.55, 420.0),
                    Proto::Udp => (0.30, 310.0),
                    Proto::SkcTcp => (0.15, 560.0),
                };
                let w = w * scale * (0.7 + 0.6 * rng.unit());
                let mut outcomes = vec![
                    (Outcome::Hit, 0.78, base),
                    (Outcome::NoSocket, 0.2, 0.8 * base),
                ];
                // Malformed calls from a few programs only.
                if prog % 3 == 1 {
                    outcomes.push((Outcome::BadLen, 0.015, 45.0));
                }
                if prog % 4 == 2 {
                    outcomes.push((Outcome::BadNetns, 0.004, 60.0));
                }
                for (outcome, share, base_ns) in outcomes {
                    cells.push(CellGen {
                        key: CellKey {
                            prog,
                            helper,
                            outcome,
                            netns: NETNS,
                            ifindex,
                            site: 0,
                        },
                        weight: w * share,
                        base_ns,
                        classes: if outcome == Outcome::Hit {
                            classes_of(proto)
                        } else {
                            &[]
                        },
                        dense: vec![0; SLOTS],
                        count: 0,
                        sum_ns: 0,
                        max_ns: 0,
                        overflow: 0,
                        hits: [0; SockClass::COUNT],
                        acquired: [0; SockClass::COUNT],
                    });
                }
            }
        };
        for p in 0..spec.programs {
            let (name, family, ifindex) = PROGRAMS[p as usize % PROGRAMS.len()];
            let slot = p + 1;
            let name = if (p as usize) < PROGRAMS.len() {
                name.to_string()
            } else {
                format!("{name}_{}", p as usize / PROGRAMS.len())
            };
            labels.push(ProgramRef {
                slot,
                id: 100 + slot,
                name,
            });
            add(slot, family, ifindex, 1.0 + p as f64 * 0.4, &mut rng);
        }
        add(UNATTRIBUTED, Family::Generic, 0, 0.5, &mut rng);
        let weights: Vec<f64> = (0..spec.intervals)
            .map(|i| {
                let t = i as f64 / spec.intervals.max(1) as f64;
                1.0 + 0.4 * (t * std::f64::consts::TAU * 3.0).sin() + 0.2 * rng.unit()
            })
            .collect();
        let per_interval = split(spec.samples, &weights);
        Synth {
            spec,
            rng,
            cells,
            per_interval,
            labels,
            holds: BTreeMap::new(),
            counters: Counters::default(),
            next: 0,
            done: false,
        }
    }

    /// The `Meta` frame of this recording.
    pub fn meta(&self) -> Meta {
        Meta {
            skprof_version: env!("CARGO_PKG_VERSION").into(),
            kernel: "6.12.0-synthetic".into(),
            probe_mode: "fentry".into(),
            hostname: "synthetic".into(),
            start_unix_ms: START_UNIX_MS,
            interval_ms: self.spec.interval_ms,
            helpers: Helper::ALL.to_vec(),
            attribution_off: None,
            command: vec![
                "skprof".into(),
                "bench-report".into(),
                format!("--samples={}", self.spec.samples),
                format!("--seed={}", self.spec.seed),
            ],
        }
    }

    /// Advances every cell by the calls of interval `i` (1-based).
    fn advance(&mut self, i: u64) {
        let calls = self.per_interval[(i - 1) as usize];
        let t = i as f64 / self.spec.intervals.max(1) as f64;
        // Latency drifts up by a fifth over the recording.
        let drift = 1.0 + 0.2 * t;
        let weights: Vec<f64> = self
            .cells
            .iter()
            .map(|c| c.weight * (0.85 + 0.3 * self.rng.unit()))
            .collect();
        let split_calls = split(calls, &weights);
        let rng = &mut self.rng;
        for (c, n) in self.cells.iter_mut().zip(split_calls) {
            let base = c.base_ns * drift;
            for _ in 0..n {
                let mut v = base * (0.35 * rng.normal()).exp();
                // A slow path now and then (hash bucket walk, softirq).
                if rng.next() % 1000 == 0 {
                    v *= 8.0 + 40.0 * rng.unit();
                }
                let v = (v as u64).max(1);
                c.dense[slot_of(v)] += 1;
                c.sum_ns += v;
                c.max_ns = c.max_ns.max(v);
                c.overflow += u64::from(v >= 1 << MAX_EXP);
            }
            c.count += n;
            if c.classes.is_empty() || n == 0 {
                continue;
            }
            let shares: Vec<f64> = c.classes.iter().map(|&(_, s)| s).collect();
            for (&(class, _), k) in c.classes.iter().zip(split(n, &shares)) {
                c.hits[class.index()] += k;
                if class.refcounted() {
                    c.acquired[class.index()] += k;
                    self.counters.released[class.index()] += k;
                    let hold = self
                        .holds
                        .entry(c.key.prog)
                        .or_insert_with(|| (vec![0; SLOTS], 0, 0, 0));
                    // Held for the rest of the program run: a few µs.
                    for _ in 0..k {
                        let v = ((1800.0 * (0.5 * rng.normal()).exp()) as u64).max(1);
                        hold.0[slot_of(v)] += 1;
                        hold.1 += 1;
                        hold.2 += v;
                        hold.3 = hold.3.max(v);
                    }
                } else {
                    self.counters.release_noop[class.index()] += k;
                }
            }
        }
        // A handful of exits whose entry the probes missed.
        if i % 97 == 0 {
            self.counters.unmatched_exit[Helper::TcSkLookupTcp.index()] += 1;
        }
    }

    fn reading(&self, i: u64) -> Interval {
        let elapsed_ms = i * self.spec.interval_ms;
        let mut s = Snapshot {
            mono_ns: 5_000_000 + elapsed_ms * 1_000_000 + (i * 7919 % 3000) * 1000,
            counters: self.counters.clone(),
            ..Default::default()
        };
        for c in self.cells.iter().filter(|c| c.count > 0) {
            s.cells.insert(
                c.key,
                Cell {
                    calls: c.count,
                    hist: LogHist::from_dense(c.count, c.sum_ns, c.max_ns, c.overflow, &c.dense),
                    hits: c.hits,
                    acquired: c.acquired,
                },
            );
        }
        for (&slot, (dense, count, sum, max)) in &self.holds {
            s.holds
                .insert(slot, LogHist::from_dense(*count, *sum, *max, 0, dense));
        }
        Interval {
            unix_ms: START_UNIX_MS + elapsed_ms,
            snapshot: s,
            labels: self.labels.clone(),
            forgotten: Vec::new(),
        }
    }
}

impl Iterator for Synth {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        let i = self.next;
        if i > self.spec.intervals {
            self.done = true;
            return Some(Frame::Leaks(Leaks {
                unix_ms: START_UNIX_MS + i * self.spec.interval_ms,
                run_leaks: Vec::new(),
                ledger: Some(LedgerScan {
                    now_ns: 5_000_000 + i * self.spec.interval_ms * 1_000_000,
                    refs: Vec::new(),
                }),
            }));
        }
        if i > 0 {
            self.advance(i);
        }
        self.next += 1;
        Some(Frame::Interval(Box::new(self.reading(i))))
    }
}

/// Writes the recording `spec` describes to `path`; returns its size.
pub fn write(path: &Path, spec: &Spec) -> Result<u64, RecordError> {
    let synth = Synth::new(spec.clone());
    let mut w = Writer::create(path, &synth.meta())?;
    for frame in synth {
        w.append(&frame)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::summary::summarize;
    use crate::record::tests::Tmp;
    use crate::record::Recording;

    #[test]
    fn split_is_exact_and_proportional() {
        assert_eq!(split(10, &[1.0, 1.0]), [5, 5]);
        assert_eq!(split(10, &[1.0, 2.0, 2.0]), [2, 4, 4]);
        assert_eq!(split(7, &[1.0, 1.0, 1.0]).iter().sum::<u64>(), 7);
        assert_eq!(split(3, &[0.0, 0.0]), [3, 0]);
        assert_eq!(split(0, &[1.0]), [0]);
        let w: Vec<f64> = (1..=600).map(|i| 1.0 + (i as f64).sin()).collect();
        assert_eq!(split(10_000_000, &w).iter().sum::<u64>(), 10_000_000);
    }

    #[test]
    fn the_calls_of_a_synthetic_recording_add_up_to_the_samples_asked_for() {
        let spec = Spec {
            samples: 123_457,
            intervals: 37,
            interval_ms: 500,
            programs: 8,
            seed: 9,
        };
        let t = Tmp::new("synth");
        write(&t.0, &spec).unwrap();
        let rec = Recording::load(&t.0).unwrap();
        assert_eq!(rec.intervals.len(), 38);
        assert!(!rec.truncated);
        let s = summarize(&rec).unwrap();
        let calls: u64 = s.totals.helpers.iter().map(|h| h.calls).sum();
        assert_eq!(calls, 123_457);
        let by_prog: u64 = s.programs.helpers.iter().map(|h| h.calls).sum();
        assert_eq!(by_prog, 123_457);
        assert_eq!(s.intervals, 37);
        assert!((s.elapsed_s - 18.5).abs() < 0.01, "{}", s.elapsed_s);
        // Every helper is called, hits and misses, with plausible latencies.
        for h in &s.totals.helpers {
            assert!(h.calls > 0 && h.hits > 0 && h.hits < h.calls, "{h:?}");
            assert!(h.latency_ns.p50 > 100 && h.latency_ns.p50 < 2000, "{h:?}");
            assert!(h.latency_ns.p99 > h.latency_ns.p50, "{h:?}");
        }
        // References acquired are released.
        assert!(s.totals.acquired > 0);
        assert_eq!(s.totals.release.dropped, s.totals.acquired);
        // Same spec, same bytes.
        let again = Tmp::new("synth-again");
        write(&again.0, &spec).unwrap();
        assert_eq!(
            std::fs::read(&t.0).unwrap(),
            std::fs::read(&again.0).unwrap()
        );
    }
}
