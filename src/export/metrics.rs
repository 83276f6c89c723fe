//! Snapshot → metric families → OpenMetrics (or Prometheus 0.0.4) text.
//! Pure: fed with [`Collection`]s, tested without I/O.
//!
//! Counters are the kernel's cumulative aggregates as they are (they only
//! grow while a program slot lives; a slot's aggregates are deleted when
//! its program goes away, and the program's series leave the output with
//! it, so no series ever goes backwards). The few figures that are not
//! monotonic by themselves (histogram overflows summed over cells, run-leak
//! events from the ring buffer) are accumulated here across readings.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::bpf::probes::ProbeKind;
use crate::model::hist::{slot_range, LogHist};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::{state_name, OutstandingRef};
use crate::model::snapshot::{Cell, ProgramRef, Snapshot};

/// Exponents of the finite histogram bucket bounds, in ns: 2^7 (128 ns) to
/// 2^27 (134.2 ms), then `+Inf`. The in-kernel histogram's slots never
/// straddle a power of two, so each slot falls wholly into one bucket and
/// the conversion is exact: bucket `le=2^k ns` counts the calls (or holds)
/// that took less than 2^k ns.
pub const BUCKET_EXPONENTS: std::ops::RangeInclusive<u32> = 7..=27;

/// The finite bucket bounds in ns, ascending.
pub fn bucket_bounds_ns() -> Vec<u64> {
    BUCKET_EXPONENTS.map(|e| 1u64 << e).collect()
}

/// Series one histogram makes: its finite buckets, `+Inf`, `_sum`, `_count`.
pub fn histogram_series() -> usize {
    BUCKET_EXPONENTS.count() + 3
}

/// Series one (program, helper, outcome) label set makes: its call counter
/// and its latency histogram. `--max-export-series` is counted in these.
pub fn label_set_cost() -> usize {
    1 + histogram_series()
}

/// Per-bucket (not cumulative) counts of `h` for the fixed bounds, in
/// seconds, ending with `+Inf`.
pub fn buckets(h: &LogHist) -> Vec<(f64, u64)> {
    let bounds = bucket_bounds_ns();
    let mut counts = vec![0u64; bounds.len() + 1];
    for &(slot, n) in &h.slots {
        let (_, hi) = slot_range(slot as usize);
        // The slot holds values below `hi`: the first bound >= hi takes it.
        let i = bounds.partition_point(|&b| b < hi);
        counts[i] += n;
    }
    bounds
        .iter()
        .map(|&b| b as f64 / 1e9)
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .collect()
}

/// What the probe session is, for `skprof_probe_info` and friends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeInfo {
    /// `fentry` or `kprobe`.
    pub mode: String,
    pub kernel: String,
    /// `trace`, `stack` (how programs are attributed) or `off`.
    pub attribution: String,
    /// Probe programs attached (links).
    pub probes_attached: u64,
    /// Programs attributed by tracing them, and by kernel stack.
    pub programs_traced: u64,
    pub programs_by_stack: u64,
    /// Programs that call the helpers and could not be attributed.
    pub programs_untraceable: u64,
}

impl ProbeInfo {
    pub fn mode_name(kind: ProbeKind) -> String {
        kind.to_string()
    }
}

/// skprof's own cost, as measured (nothing estimated).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SelfStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    /// Run time and runs of skprof's own BPF programs (probes and program
    /// tracers), from the kernel's BPF statistics: they only count while
    /// `kernel.bpf_stats_enabled` is 1.
    pub probe_run_ns: u64,
    pub probe_runs: u64,
    pub bpf_stats_enabled: bool,
    /// How long the last collection took (read maps, ledger, render).
    pub collect_seconds: f64,
}

/// A calibrated cost of the probes per traced call (the hook for `skprof
/// bench`'s calibration): exported as `skprof_probe_overhead_per_call_seconds`
/// when known, never guessed.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub seconds_per_call: f64,
    /// Where the figure comes from (e.g. "bench 6.12 fentry").
    pub source: String,
}

/// One collection: the session's reading, with what the exporter shows of
/// the session and of skprof itself.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    /// The session's reading (`freed` slots are passed apart to
    /// [`Exporter::update`]: the ones let go right after it).
    pub reading: crate::model::reading::Reading,
    pub probe: ProbeInfo,
    pub self_stats: SelfStats,
}

impl Collection {
    /// CLOCK_MONOTONIC ns of the ledger scan (ages are measured to it).
    pub fn now_ns(&self) -> u64 {
        self.reading.ledger.as_ref().map_or(0, |l| l.now_ns)
    }
}

/// Exporter options (flags of `skprof export`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Budget of per-program series (see [`label_set_cost`]).
    pub max_series: usize,
    /// Outstanding references older than this count as leaked.
    pub older_than_ns: u64,
    /// Export each leaked reference with its tuple (IP addresses, ports).
    pub export_tuples: bool,
    /// At most this many leaked references are exported with tuples.
    pub max_tuples: usize,
    /// Collections for which a program that went away keeps its final
    /// figures in the output (so a scrape sees its last calls), then its
    /// series are dropped.
    pub keep_gone: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            max_series: 20_000,
            older_than_ns: 500_000_000,
            export_tuples: false,
            max_tuples: 16,
            keep_gone: 60,
        }
    }
}

/// (program slot, helper, outcome): one label set of the per-call families.
type CellLabel = (u32, Helper, Outcome);

/// The state kept across readings.
#[derive(Debug, Default)]
pub struct Exporter {
    pub opts: ExportOptions,
    /// Label sets given series, first come first kept: a label set once
    /// shown stays until its program goes away (no flapping at the cap).
    admitted: BTreeSet<CellLabel>,
    /// Label sets left out because the budget was spent (distinct, live).
    refused: BTreeSet<CellLabel>,
    /// Histogram overflows summed over readings (cells come and go).
    overflow_total: u64,
    /// References acquired by programs that went away, since start (their
    /// cells leave the readings): the balance's acquired is this plus the
    /// live programs'.
    acquired_of_freed: u64,
    prev: Option<Snapshot>,
    /// Run leaks per (program id, helper), since start.
    run_leaks: BTreeMap<(u32, Helper), u64>,
    /// The hook for a calibrated per-call cost (none yet: not exported).
    pub calibration: Option<Calibration>,
    /// Final figures of programs that went away, kept `keep_gone`
    /// collections.
    gone: Vec<Gone>,
    /// Collections so far.
    readings: u64,
    gone_seq: u32,
}

/// A program that went away: its last figures, under a slot number no live
/// program has (they are all at most 255).
#[derive(Debug, Clone)]
struct Gone {
    slot: u32,
    prog: ProgramRef,
    cells: BTreeMap<(Helper, Outcome), Cell>,
    hold: Option<LogHist>,
    until: u64,
}

/// First slot number of programs that went away.
const GONE_SLOTS: u32 = 1 << 31;

/// The rendered output of one reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    /// OpenMetrics 1.0 text, ending with `# EOF`.
    pub openmetrics: String,
    /// The same in the Prometheus text format 0.0.4.
    pub prometheus: String,
    /// Samples (lines with a value) in the exposition.
    pub series: usize,
}

impl Exporter {
    pub fn new(opts: ExportOptions) -> Exporter {
        Exporter {
            opts,
            ..Default::default()
        }
    }

    /// Label sets left out by the series budget.
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// Takes in a reading made before `freed_slots` were freed: keeps the
    /// final figures of their programs for `keep_gone` collections, forgets
    /// them in the reading, admits new label sets within the budget, and
    /// accumulates overflows and run leaks.
    pub fn update(&mut self, r: &mut Collection, freed_slots: &[u32]) {
        self.readings += 1;
        let readings = self.readings;
        self.gone.retain(|g| g.until > readings);
        self.acquired_of_freed += r
            .reading
            .snapshot
            .cells
            .iter()
            .filter(|(k, _)| freed_slots.contains(&k.prog))
            .flat_map(|(_, c)| c.acquired.iter())
            .sum::<u64>();
        for &slot in freed_slots {
            let mut cells: BTreeMap<(Helper, Outcome), Cell> = BTreeMap::new();
            for (k, c) in &r.reading.snapshot.cells {
                if k.prog == slot && self.admitted.contains(&(k.prog, k.helper, k.outcome)) {
                    cells.entry((k.helper, k.outcome)).or_default().merge(c);
                }
            }
            let Some(prog) = r.reading.programs.get(&slot).cloned() else {
                continue;
            };
            if cells.is_empty() || self.opts.keep_gone == 0 {
                continue;
            }
            self.gone_seq = self.gone_seq.wrapping_add(1);
            self.gone.push(Gone {
                slot: GONE_SLOTS | (self.gone_seq & (GONE_SLOTS - 1)),
                prog,
                cells,
                hold: r.reading.snapshot.holds.get(&slot).cloned(),
                until: readings + self.opts.keep_gone,
            });
        }
        // The last interval's overflows of the programs going away count.
        let mut prev = self.prev.take().unwrap_or_default();
        let d = r.reading.snapshot.delta(&prev);
        self.overflow_total += d.cells.values().map(|c| c.hist.overflow).sum::<u64>();
        r.reading.snapshot.forget_slots(freed_slots);
        for slot in freed_slots {
            r.reading.programs.remove(slot);
        }
        prev = r.reading.snapshot.clone();
        self.prev = Some(prev);

        self.admitted.retain(|k| !freed_slots.contains(&k.0));
        self.refused.retain(|k| !freed_slots.contains(&k.0));
        let cost = label_set_cost();
        for k in r.reading.snapshot.cells.keys() {
            let label = (k.prog, k.helper, k.outcome);
            if self.admitted.contains(&label) {
                continue;
            }
            if (self.admitted.len() + 1) * cost <= self.opts.max_series {
                self.admitted.insert(label);
                self.refused.remove(&label);
            } else {
                self.refused.insert(label);
            }
        }
        // Label sets whose cells are gone (a freed slot the caller did not
        // name, e.g. attribution switched off) are let go too.
        let live: BTreeSet<CellLabel> = r
            .reading
            .snapshot
            .cells
            .keys()
            .map(|k| (k.prog, k.helper, k.outcome))
            .collect();
        self.admitted.retain(|k| live.contains(k));
        self.refused.retain(|k| live.contains(k));

        for l in &r.reading.run_leaks {
            *self
                .run_leaks
                .entry((l.prog_id, l.reference.helper))
                .or_default() += 1;
        }
        // Programs that went away leave the output with their run leaks.
        let live_ids: BTreeSet<u32> = r.reading.programs.values().map(|p| p.id).collect();
        self.run_leaks
            .retain(|(id, _), _| *id == 0 || live_ids.contains(id));
    }

    /// The metric families of a reading (after [`update`](Self::update)).
    pub fn families(&self, r: &Collection) -> Vec<Family> {
        let mut out = Vec::new();
        let prog = |slot: u32| -> ProgramRef {
            if let Some(g) = self.gone.iter().find(|g| g.slot == slot) {
                return g.prog.clone();
            }
            r.reading
                .programs
                .get(&slot)
                .cloned()
                .unwrap_or(ProgramRef {
                    slot,
                    id: 0,
                    name: if slot == 0 {
                        "(not traced)".into()
                    } else {
                        format!("slot {slot}")
                    },
                })
        };
        let plabels =
            |p: &ProgramRef| vec![("program", p.name.clone()), ("prog_id", p.id.to_string())];

        // Cells merged over network namespaces and interfaces, per admitted
        // (program, helper, outcome).
        let mut merged: BTreeMap<CellLabel, Cell> = BTreeMap::new();
        for (k, c) in &r.reading.snapshot.cells {
            let label = (k.prog, k.helper, k.outcome);
            if self.admitted.contains(&label) {
                merged.entry(label).or_default().merge(c);
            }
        }
        for g in &self.gone {
            for (&(h, o), c) in &g.cells {
                merged.insert((g.slot, h, o), c.clone());
            }
        }

        let mut calls = Family::new(
            "skprof_helper_calls",
            "Calls of a socket-lookup helper function, by calling BPF program and outcome",
            None,
            MetricType::Counter,
        );
        // Histograms carry their unit in the name only: a UNIT line on a
        // histogram is refused by strict OpenMetrics parsers.
        let mut latency = Family::new(
            "skprof_helper_latency_seconds",
            "Duration of socket-lookup helper calls (entry to exit), by calling program and outcome",
            None,
            MetricType::Histogram,
        );
        let mut acquired = Family::new(
            "skprof_references_acquired",
            "Socket references taken by lookups (established, TIME_WAIT and request sockets), by program, helper and socket class",
            None,
            MetricType::Counter,
        );
        for (&(slot, helper, outcome), c) in &merged {
            let p = prog(slot);
            let mut l = plabels(&p);
            l.push(("helper", helper.function().to_string()));
            let mut lo = l.clone();
            lo.push(("outcome", outcome.name().to_string()));
            calls.push(lo.clone(), Value::Counter(c.calls));
            latency.push(lo, histogram(&c.hist));
            for class in SockClass::ALL {
                let n = c.acquired[class.index()];
                if n > 0 {
                    let mut lc = l.clone();
                    lc.push(("class", class.name().to_string()));
                    acquired.push(lc, Value::Counter(n));
                }
            }
        }
        // Hits of several outcomes never carry references, but two outcome
        // cells of one (program, helper) would give the same label set:
        // merge duplicates.
        acquired.merge_duplicate_counters();

        let mut holds = Family::new(
            "skprof_reference_hold_seconds",
            "How long programs held the socket references they acquired (acquire to bpf_sk_release), by acquiring program",
            None,
            MetricType::Histogram,
        );
        let admitted_slots: BTreeSet<u32> = merged.keys().map(|k| k.0).collect();
        let gone_holds = self
            .gone
            .iter()
            .filter_map(|g| g.hold.as_ref().map(|h| (&g.slot, h)));
        for (slot, h) in r.reading.snapshot.holds.iter().chain(gone_holds) {
            if admitted_slots.contains(slot) {
                holds.push(plabels(&prog(*slot)), histogram(h));
            }
        }

        let c = &r.reading.snapshot.counters;
        let class_family = |name, help, a: &[u64; SockClass::COUNT]| {
            let mut f = Family::new(name, help, None, MetricType::Counter);
            for class in SockClass::ALL {
                f.push(
                    vec![("class", class.name().to_string())],
                    Value::Counter(a[class.index()]),
                );
            }
            f
        };
        let released = class_family(
            "skprof_references_released",
            "bpf_sk_release calls that dropped a socket reference, by socket class",
            &c.released,
        );
        let unmatched = class_family(
            "skprof_references_unmatched_releases",
            "Reference-dropping releases of sockets no traced lookup acquired (SOCKMAP/SOCKHASH, bpf_skc_to_*): their own class, not errors",
            &c.release_unmatched,
        );
        let noop = class_family(
            "skprof_sk_release_noop",
            "bpf_sk_release calls on sockets that take no reference (listeners, UDP), by socket class",
            &c.release_noop,
        );
        // The balance since start in the words every face uses.
        let balance = crate::model::words::Balance::of(
            self.acquired_of_freed + r.reading.snapshot.acquired_total(),
            c.released.iter().sum(),
            c.release_unmatched.iter().sum(),
        );
        let mut balance_info = Family::new(
            "skprof_release_balance",
            "References acquired since start against the releases that dropped them, in words (verdict: balanced, held, released_earlier)",
            None,
            MetricType::Info,
        );
        balance_info.push(
            vec![
                (
                    "verdict",
                    serde_json::to_value(&balance.verdict)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                ),
                ("text", balance.text.clone()),
            ],
            Value::Info,
        );
        let mut null = Family::new(
            "skprof_sk_release_null",
            "bpf_sk_release calls with a NULL socket",
            None,
            MetricType::Counter,
        );
        null.push(vec![], Value::Counter(c.release_null));

        // Reference gauges, per (program id, helper): every pair that
        // acquired, is in the ledger, or leaked in a run.
        let mut ref_keys: BTreeMap<(u32, Helper), String> = BTreeMap::new();
        for (&(slot, helper, _), cell) in &merged {
            if cell.acquired.iter().any(|&n| n > 0) {
                let p = prog(slot);
                ref_keys.insert((p.id, helper), p.name);
            }
        }
        let name_of = |id: u32| -> String { r.reading.program_name(id) };
        let mut outstanding: BTreeMap<(u32, Helper), (u64, u64)> = BTreeMap::new();
        let mut total = (0u64, 0u64, 0u64);
        let mut leaked_refs: Vec<&OutstandingRef> = Vec::new();
        if let Some(ledger) = &r.reading.ledger {
            for x in &ledger.refs {
                ref_keys
                    .entry((x.prog_id, x.helper))
                    .or_insert_with(|| name_of(x.prog_id));
                let e = outstanding.entry((x.prog_id, x.helper)).or_default();
                e.0 += u64::from(x.count);
                total.0 += u64::from(x.count);
                total.1 += 1;
                if r.now_ns().saturating_sub(x.acquired_ns) >= self.opts.older_than_ns {
                    e.1 += u64::from(x.count);
                    total.2 += u64::from(x.count);
                    leaked_refs.push(x);
                }
            }
        }
        for &(id, helper) in self.run_leaks.keys() {
            ref_keys.entry((id, helper)).or_insert_with(|| name_of(id));
        }
        let mut out_fam = Family::new(
            "skprof_references_outstanding",
            "Socket references in the ledger (acquired, not yet released), by acquiring program and helper",
            None,
            MetricType::Gauge,
        );
        let mut leak_fam = Family::new(
            "skprof_references_leaked",
            "Socket references outstanding for longer than --older-than (leaked), by acquiring program and helper",
            None,
            MetricType::Gauge,
        );
        let mut run_leak_fam = Family::new(
            "skprof_run_leaks",
            "Traced program runs that ended holding a socket reference they acquired, by program and helper",
            None,
            MetricType::Counter,
        );
        for ((id, helper), name) in &ref_keys {
            let l = vec![
                ("program", name.clone()),
                ("prog_id", id.to_string()),
                ("helper", helper.function().to_string()),
            ];
            if r.reading.ledger.is_some() {
                let (o, lk) = outstanding
                    .get(&(*id, *helper))
                    .copied()
                    .unwrap_or_default();
                out_fam.push(l.clone(), Value::Gauge(o as f64));
                leak_fam.push(l.clone(), Value::Gauge(lk as f64));
            }
            let n = self.run_leaks.get(&(*id, *helper)).copied().unwrap_or(0);
            run_leak_fam.push(l, Value::Counter(n));
        }
        let mut ledger_fam = Family::new(
            "skprof_ledger",
            "The reference ledger in total: references and sockets outstanding, references leaked (older than --older-than)",
            None,
            MetricType::Gauge,
        );
        let mut threshold = Family::new(
            "skprof_leak_threshold",
            "Age past which an outstanding reference counts as leaked (--older-than)",
            Some(Unit::Seconds),
            MetricType::Gauge,
        );
        if r.reading.ledger.is_some() {
            for (what, v) in [
                ("references", total.0),
                ("sockets", total.1),
                ("leaked_references", total.2),
            ] {
                ledger_fam.push(vec![("value", what.to_string())], Value::Gauge(v as f64));
            }
            threshold.push(vec![], Value::Gauge(self.opts.older_than_ns as f64 / 1e9));
        }
        let mut tuples = Family::new(
            "skprof_leaked_reference_age",
            "Age of each leaked reference, with its lookup tuple (only with --export-tuples; at most --max-tuples)",
            Some(Unit::Seconds),
            MetricType::Gauge,
        );
        if self.opts.export_tuples {
            leaked_refs.sort_by_key(|x| (x.acquired_ns, x.sk));
            for x in leaked_refs.iter().take(self.opts.max_tuples) {
                tuples.push(
                    vec![
                        ("program", name_of(x.prog_id)),
                        ("prog_id", x.prog_id.to_string()),
                        ("helper", x.helper.function().to_string()),
                        ("class", x.class.name().to_string()),
                        ("state", state_name(x.state).to_string()),
                        ("tuple", x.tuple.to_string()),
                        ("netns", x.netns.to_string()),
                    ],
                    Value::Gauge(r.now_ns().saturating_sub(x.acquired_ns) as f64 / 1e9),
                );
            }
        }

        let mut drops = Family::new(
            "skprof_drops",
            "Calls or events skprof could not measure, by reason (all should stay at zero)",
            None,
            MetricType::Counter,
        );
        for (reason, v) in [
            ("unmatched_exit", c.unmatched_exit.iter().sum::<u64>()),
            ("evicted_entry", c.evicted_entry.iter().sum()),
            ("recursion_miss", r.reading.snapshot.recursion_misses),
            ("latency_overflow", self.overflow_total),
            ("series_full", c.hists_full),
            ("ledger_full", c.ledger_full),
            ("events_lost", c.events_dropped),
            ("run_table_full", c.run_table_full),
            ("run_refs_full", c.run_refs_full),
        ] {
            drops.push(vec![("reason", reason.to_string())], Value::Counter(v));
        }

        let p = &r.probe;
        let mut info = Family::new(
            "skprof_probe",
            "How skprof traces: probe kind, kernel, attribution method, skprof version",
            None,
            MetricType::Info,
        );
        info.push(
            vec![
                ("mode", p.mode.clone()),
                ("kernel", p.kernel.clone()),
                ("attribution", p.attribution.clone()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
            Value::Info,
        );
        let mut attached = Family::new(
            "skprof_probes_attached",
            "Probe programs skprof has attached to the helper functions",
            None,
            MetricType::Gauge,
        );
        attached.push(vec![], Value::Gauge(p.probes_attached as f64));
        let mut programs = Family::new(
            "skprof_programs",
            "BPF programs that call the helpers, by how skprof attributes their calls (trace, stack, none: cannot be attributed)",
            None,
            MetricType::Gauge,
        );
        for (m, v) in [
            ("trace", p.programs_traced),
            ("stack", p.programs_by_stack),
            ("none", p.programs_untraceable),
        ] {
            programs.push(vec![("method", m.to_string())], Value::Gauge(v as f64));
        }

        let s = &r.self_stats;
        let gauge = |name, help, unit, v: f64| {
            let mut f = Family::new(name, help, unit, MetricType::Gauge);
            f.push(vec![], Value::Gauge(v));
            f
        };
        let counter = |name, help, unit, v: Value| {
            let mut f = Family::new(name, help, unit, MetricType::Counter);
            f.push(vec![], v);
            f
        };
        let mut own = vec![
            gauge(
                "skprof_process_resident_memory",
                "Resident memory of the skprof process",
                Some(Unit::Bytes),
                s.rss_bytes as f64,
            ),
            counter(
                "skprof_process_cpu",
                "CPU time of the skprof process (user and system)",
                Some(Unit::Seconds),
                Value::CounterF(s.cpu_seconds),
            ),
            counter(
                "skprof_probe_run",
                "Time spent in skprof's own BPF programs (probes, program tracers); counts only while kernel.bpf_stats_enabled=1",
                Some(Unit::Seconds),
                Value::CounterF(s.probe_run_ns as f64 / 1e9),
            ),
            counter(
                "skprof_probe_runs",
                "Runs of skprof's own BPF programs; counts only while kernel.bpf_stats_enabled=1",
                None,
                Value::Counter(s.probe_runs),
            ),
            gauge(
                "skprof_bpf_stats_enabled",
                "Whether the kernel counts BPF program run time (kernel.bpf_stats_enabled)",
                None,
                if s.bpf_stats_enabled { 1.0 } else { 0.0 },
            ),
            gauge(
                "skprof_export_collect_duration",
                "How long the last collection took (reading the maps and the ledger, rendering)",
                Some(Unit::Seconds),
                s.collect_seconds,
            ),
            gauge(
                "skprof_export_label_sets_refused",
                "(program, helper, outcome) label sets left out of the output by --max-export-series",
                None,
                self.refused.len() as f64,
            ),
        ];
        let mut overhead = Family::new(
            "skprof_probe_overhead_per_call",
            "Calibrated cost of the probes per traced helper call (present only when calibrated)",
            Some(Unit::Seconds),
            MetricType::Gauge,
        );
        if let Some(cal) = &self.calibration {
            overhead.push(
                vec![("source", cal.source.clone())],
                Value::Gauge(cal.seconds_per_call),
            );
        }

        out.extend([
            calls,
            latency,
            acquired,
            holds,
            released,
            unmatched,
            noop,
            null,
            balance_info,
            out_fam,
            leak_fam,
            run_leak_fam,
            ledger_fam,
            threshold,
            tuples,
            drops,
            info,
            attached,
            programs,
        ]);
        out.append(&mut own);
        out.push(overhead);
        // Its own size, last: counted over everything above plus itself.
        let series: usize = out.iter().map(Family::series).sum::<usize>() + 1;
        out.push(gauge(
            "skprof_export_series",
            "Series in this exposition (including this one)",
            None,
            series as f64,
        ));
        out
    }

    /// Renders a reading in both text formats.
    pub fn render(&self, r: &Collection) -> Result<Exposition, std::fmt::Error> {
        let families = self.families(r);
        let series = families.iter().map(Family::series).sum();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(families)));
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry)?;
        let mut prometheus = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut prometheus, &registry)?;
        Ok(Exposition {
            openmetrics,
            prometheus,
            series,
        })
    }
}

fn histogram(h: &LogHist) -> Value {
    Value::Histogram {
        sum: h.sum_ns as f64 / 1e9,
        count: h.count,
        buckets: buckets(h),
    }
}

/// A sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    CounterF(f64),
    Gauge(f64),
    Histogram {
        sum: f64,
        count: u64,
        /// Per-bucket counts (not cumulative), ending with `+Inf`.
        buckets: Vec<(f64, u64)>,
    },
    Info,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name (without type suffixes), help, unit, samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub kind: MetricType,
    pub samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: MetricType) -> Family {
        Family {
            name,
            help,
            unit,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, v: Value) {
        self.samples.push((labels, v));
    }

    fn merge_duplicate_counters(&mut self) {
        let mut by: BTreeMap<Labels, u64> = BTreeMap::new();
        let mut order: Vec<Labels> = Vec::new();
        for (l, v) in self.samples.drain(..) {
            if let Value::Counter(n) = v {
                if !by.contains_key(&l) {
                    order.push(l.clone());
                }
                *by.entry(l).or_default() += n;
            }
        }
        self.samples = order
            .into_iter()
            .map(|l| {
                let n = by[&l];
                (l, Value::Counter(n))
            })
            .collect();
    }

    /// Lines with a value this family renders.
    pub fn series(&self) -> usize {
        self.samples
            .iter()
            .map(|(_, v)| match v {
                Value::Histogram { buckets, .. } => buckets.len() + 2,
                _ => 1,
            })
            .sum()
    }

    /// The names its samples are exposed under.
    pub fn exposed_names(&self) -> Vec<String> {
        let base = match &self.unit {
            Some(u) => format!("{}_{}", self.name, u.as_str()),
            None => self.name.to_string(),
        };
        match self.kind {
            MetricType::Counter => vec![format!("{base}_total")],
            MetricType::Histogram => ["bucket", "sum", "count"]
                .iter()
                .map(|s| format!("{base}_{s}"))
                .collect(),
            MetricType::Info => vec![format!("{base}_info")],
            _ => vec![base],
        }
    }
}

/// The families of one reading, as a prometheus-client collector.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            // A family with no sample is legal OpenMetrics, but some
            // parsers mistake the next family's samples for its own.
            if f.samples.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
            for (labels, v) in &f.samples {
                // An info metric's labels are its value, not a family's.
                if *v == Value::Info {
                    m.encode_info(labels)?;
                    continue;
                }
                let mut e = m.encode_family(labels)?;
                match v {
                    Value::Counter(n) => e.encode_counter::<NoLabelSet, _, u64>(n, None)?,
                    Value::CounterF(x) => e.encode_counter::<NoLabelSet, _, f64>(x, None)?,
                    Value::Gauge(x) => e.encode_gauge(x)?,
                    Value::Histogram {
                        sum,
                        count,
                        buckets,
                    } => e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?,
                    // Encoded above, without a family.
                    Value::Info => {}
                }
            }
        }
        Ok(())
    }
}
