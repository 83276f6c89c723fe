//! One reading of every probe map, merged over CPUs, and the per-interval
//! statistics derived from two readings.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hist::{LogHist, Percentiles};
use super::ids::{Helper, Outcome, SockClass};
use super::sites::Site;

const H: usize = Helper::COUNT;
const C: usize = SockClass::COUNT;

/// `struct skprof_counters`, merged over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters {
    pub released: [u64; C],
    pub release_noop: [u64; C],
    pub release_null: u64,
    pub unmatched_exit: [u64; H],
    pub evicted_entry: [u64; H],
    pub release_unmatched: [u64; C],
    pub ledger_full: u64,
    pub events_dropped: u64,
    pub run_table_full: u64,
    pub hists_full: u64,
    pub run_refs_full: u64,
    /// `--sites`: calls and releases whose call site could not be read.
    pub site_unknown: u64,
    /// `--sites`, fentry mode: searches of a trampoline's frame for the
    /// call site (once per kind of function, again if its layout changes).
    pub site_searches: u64,
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
        add_arr(&mut self.released, &o.released);
        add_arr(&mut self.release_noop, &o.release_noop);
        self.release_null += o.release_null;
        add_arr(&mut self.unmatched_exit, &o.unmatched_exit);
        add_arr(&mut self.evicted_entry, &o.evicted_entry);
        add_arr(&mut self.release_unmatched, &o.release_unmatched);
        self.ledger_full += o.ledger_full;
        self.events_dropped += o.events_dropped;
        self.run_table_full += o.run_table_full;
        self.hists_full += o.hists_full;
        self.run_refs_full += o.run_refs_full;
        self.site_unknown += o.site_unknown;
        self.site_searches += o.site_searches;
    }

    pub fn delta(&self, e: &Counters) -> Counters {
        Counters {
            released: sub_arr(&self.released, &e.released),
            release_noop: sub_arr(&self.release_noop, &e.release_noop),
            release_null: self.release_null.saturating_sub(e.release_null),
            unmatched_exit: sub_arr(&self.unmatched_exit, &e.unmatched_exit),
            evicted_entry: sub_arr(&self.evicted_entry, &e.evicted_entry),
            release_unmatched: sub_arr(&self.release_unmatched, &e.release_unmatched),
            ledger_full: self.ledger_full.saturating_sub(e.ledger_full),
            events_dropped: self.events_dropped.saturating_sub(e.events_dropped),
            run_table_full: self.run_table_full.saturating_sub(e.run_table_full),
            hists_full: self.hists_full.saturating_sub(e.hists_full),
            run_refs_full: self.run_refs_full.saturating_sub(e.run_refs_full),
            site_unknown: self.site_unknown.saturating_sub(e.site_unknown),
            site_searches: self.site_searches.saturating_sub(e.site_searches),
        }
    }
}

/// Program slot of calls whose caller is not traced.
pub const UNATTRIBUTED: u32 = 0;

/// Key of one aggregate: the calling program's slot, the helper, the
/// outcome, and where the lookup happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub prog: u32,
    pub helper: Helper,
    pub outcome: Outcome,
    /// Inode number of the network namespace searched (for a miss: the
    /// caller's); 0 if unknown.
    pub netns: u32,
    /// The packet's device (tc, XDP, skb helpers); 0 for sock_addr.
    pub ifindex: u32,
    /// `--sites`: the call site (the return address into the caller's
    /// JIT image); 0 when sites are off or it could not be read.
    pub site: u64,
}

/// One (program, helper, outcome) aggregate: every call, the latency of
/// the calls that were timed (all of them, or a random sample when calls
/// come faster than the probes' sampling budget), and for hits the class of
/// the sockets found and the references taken.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell {
    /// Every call.
    pub calls: u64,
    /// The timed calls' latency: `hist.count` <= `calls`.
    pub hist: LogHist,
    pub hits: [u64; C],
    pub acquired: [u64; C],
}

impl Cell {
    pub fn merge(&mut self, o: &Cell) {
        self.calls += o.calls;
        self.hist.merge(&o.hist);
        add_arr(&mut self.hits, &o.hits);
        add_arr(&mut self.acquired, &o.acquired);
    }

    pub fn delta(&self, e: &Cell) -> Cell {
        if e.calls > self.calls || e.hist.count > self.hist.count {
            // Reset in between (slot reused by another program).
            return self.clone();
        }
        Cell {
            calls: self.calls - e.calls,
            hist: self.hist.delta(&e.hist),
            hits: sub_arr(&self.hits, &e.hits),
            acquired: sub_arr(&self.acquired, &e.acquired),
        }
    }
}

/// Everything the probes aggregated, at one instant (cumulative since load).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Monotonic time of the reading, in ns since the probes were loaded.
    pub mono_ns: u64,
    /// Only the (program, helper, outcome) triples that occurred.
    pub cells: BTreeMap<CellKey, Cell>,
    /// Reference hold times (acquire to release), by acquiring program slot.
    pub holds: BTreeMap<u32, LogHist>,
    pub counters: Counters,
    /// Probe runs the kernel skipped because the probe was already running on
    /// that CPU (sum of `recursion_misses` over skprof's programs).
    pub recursion_misses: u64,
    /// `--sites`: what each `bpf_sk_release` call site released.
    pub release_sites: BTreeMap<u64, ReleaseSite>,
    /// `--sites`: releases by (lookup site that took the socket, release
    /// site).
    pub site_pairs: BTreeMap<(u64, u64), u64>,
}

/// What one `bpf_sk_release` call site released (`struct
/// skprof_release_site`, merged over CPUs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseSite {
    pub released: [u64; C],
    pub noop: [u64; C],
    pub null: u64,
    /// Refcounted releases of references no traced lookup took.
    pub unmatched: u64,
}

impl ReleaseSite {
    pub fn merge(&mut self, o: &ReleaseSite) {
        add_arr(&mut self.released, &o.released);
        add_arr(&mut self.noop, &o.noop);
        self.null += o.null;
        self.unmatched += o.unmatched;
    }

    pub fn delta(&self, e: &ReleaseSite) -> ReleaseSite {
        ReleaseSite {
            released: sub_arr(&self.released, &e.released),
            noop: sub_arr(&self.noop, &e.noop),
            null: self.null.saturating_sub(e.null),
            unmatched: self.unmatched.saturating_sub(e.unmatched),
        }
    }

    /// Every call at this site.
    pub fn calls(&self) -> u64 {
        self.released.iter().sum::<u64>() + self.noop.iter().sum::<u64>() + self.null
    }
}

fn delta_map<K: Ord + Copy, V: Clone>(
    now: &BTreeMap<K, V>,
    before: &BTreeMap<K, V>,
    f: impl Fn(&V, &V) -> V,
) -> BTreeMap<K, V> {
    now.iter()
        .map(|(k, v)| (*k, before.get(k).map_or_else(|| v.clone(), |b| f(v, b))))
        .collect()
}

impl Snapshot {
    /// What happened between `earlier` and `self`. Aggregates that went
    /// away (a program unloaded) are not in the result.
    pub fn delta(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            mono_ns: self.mono_ns,
            cells: delta_map(&self.cells, &earlier.cells, Cell::delta),
            holds: delta_map(&self.holds, &earlier.holds, LogHist::delta),
            counters: self.counters.delta(&earlier.counters),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
            release_sites: delta_map(
                &self.release_sites,
                &earlier.release_sites,
                ReleaseSite::delta,
            ),
            site_pairs: delta_map(&self.site_pairs, &earlier.site_pairs, |a, b| {
                a.saturating_sub(*b)
            }),
        }
    }

    /// The cells of `helper` (all outcomes) whose program `keep` accepts,
    /// merged by outcome.
    pub fn merged(&self, helper: Helper, keep: impl Fn(u32) -> bool) -> [Cell; Outcome::COUNT] {
        self.merged_where(helper, |k| keep(k.prog))
    }

    /// The cells of `helper` (all outcomes) whose key `keep` accepts,
    /// merged by outcome.
    pub fn merged_where(
        &self,
        helper: Helper,
        keep: impl Fn(&CellKey) -> bool,
    ) -> [Cell; Outcome::COUNT] {
        let mut out: [Cell; Outcome::COUNT] = Default::default();
        for (k, c) in &self.cells {
            if k.helper == helper && keep(k) {
                out[k.outcome.index()].merge(c);
            }
        }
        out
    }

    /// Drops the aggregates of freed program slots (their program went
    /// away; the kernel-side entries are deleted at the same time), so the
    /// slot's next program is measured from zero.
    /// References traced lookups acquired, over every cell.
    pub fn acquired_total(&self) -> u64 {
        self.cells.values().flat_map(|c| c.acquired.iter()).sum()
    }

    pub fn forget_slots(&mut self, slots: &[u32]) {
        self.cells.retain(|k, _| !slots.contains(&k.prog));
        self.holds.retain(|k, _| !slots.contains(k));
    }

    /// Program slots with at least one cell, ascending.
    pub fn programs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cells.keys().map(|k| k.prog).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Network namespaces with at least one cell, ascending.
    pub fn netns(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cells.keys().map(|k| k.netns).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// (netns, ifindex) places with at least one cell, ascending.
    pub fn interfaces(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self.cells.keys().map(|k| (k.netns, k.ifindex)).collect();
        v.sort_unstable();
        v.dedup();
        v
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

impl ByOutcome {
    /// Calls per outcome of cells indexed by outcome.
    pub fn of(cells: &[Cell; Outcome::COUNT]) -> ByOutcome {
        let n = |o: Outcome| cells[o.index()].calls;
        ByOutcome {
            hit: n(Outcome::Hit),
            no_socket: n(Outcome::NoSocket),
            bad_len: n(Outcome::BadLen),
            bad_netns: n(Outcome::BadNetns),
            bad_flags: n(Outcome::BadFlags),
        }
    }
}

/// The program a row belongs to (`--by program`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramRef {
    /// skprof's slot for it (0: calls from programs skprof does not trace).
    pub slot: u32,
    /// The kernel's program id (0 when not traced).
    pub id: u32,
    pub name: String,
}

/// How `skprof stat` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// One row per helper function, over every calling program.
    Helper,
    /// One row per (calling program, helper function).
    Program,
    /// One row per (network namespace searched, helper function).
    Netns,
    /// One row per (packet's interface, helper function); sock_addr lookups
    /// have no interface (ifindex 0).
    Interface,
    /// One row per (call site, helper function): the calling program's
    /// instruction and source line (needs --sites; implied).
    Site,
}

/// Where a row's lookups happened (`--by netns|interface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaceRef {
    /// Network namespace inode number (as in `/proc/PID/ns/net`, `lsns`).
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// The interface's name, when skprof can see it (its own namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// One row of `skprof stat`: a helper function (of one program, with
/// `--by program`) over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HelperStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<PlaceRef>,
    /// `--by site`: where in the program the helper was called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    pub helper: &'static str,
    pub calls: u64,
    pub calls_per_s: f64,
    /// Calls whose latency was measured: all of them, or a random sample
    /// when calls came faster than the sampling budget
    /// (`--latency-sample`). The latency figures are over these.
    pub timed: u64,
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
    /// How long this program held the references it acquired (`--by
    /// program` only; the same for each helper row of a program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_ns: Option<Percentiles>,
    pub unmatched_exits: u64,
    pub evicted_entries: u64,
}

impl HelperStats {
    fn from_cells(
        helper: Helper,
        cells: &[Cell; Outcome::COUNT],
        secs: f64,
        program: Option<ProgramRef>,
        hold_ns: Option<Percentiles>,
        c: &Counters,
    ) -> HelperStats {
        let mut all = Cell::default();
        for cell in cells {
            all.merge(cell);
        }
        let n = |o: Outcome| cells[o.index()].calls;
        let hits = n(Outcome::Hit);
        let acquired_by_class = ByClass::from_array(&all.acquired);
        // Entry/exit pairing losses are per helper, not per program.
        let whole_helper = program.is_none();
        HelperStats {
            program,
            place: None,
            site: None,
            helper: helper.function(),
            calls: all.calls,
            calls_per_s: rate(all.calls, secs),
            timed: all.hist.count,
            hits,
            hit_pct: pct(hits, all.calls),
            outcomes: ByOutcome::of(cells),
            latency_ns: all.hist.percentiles(),
            hit_latency_ns: cells[Outcome::Hit.index()].hist.percentiles(),
            acquired: acquired_by_class.total(),
            hits_by_class: ByClass::from_array(&all.hits),
            acquired_by_class,
            hold_ns,
            unmatched_exits: if whole_helper {
                c.unmatched_exit[helper.index()]
            } else {
                0
            },
            evicted_entries: if whole_helper {
                c.evicted_entry[helper.index()]
            } else {
                0
            },
        }
    }
}

/// `bpf_sk_release` over one interval. Releases are not attributed to a
/// helper: the kernel function does not know which lookup found the socket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseStats {
    pub calls: u64,
    pub dropped: u64,
    pub noop: u64,
    pub null: u64,
    pub dropped_by_class: ByClass,
    pub noop_by_class: ByClass,
    /// Releases that dropped a reference no traced lookup took (the socket
    /// came from SOCKMAP/SOCKHASH, bpf_skc_to_*, or before skprof started):
    /// their own class, not an error.
    pub unmatched: u64,
    pub unmatched_by_class: ByClass,
    /// Hold time of released references, acquire to release, in ns.
    pub hold_ns: Percentiles,
}

/// Probe-side losses over one interval. All of them should be zero; any
/// non-zero value means some calls were not measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drops {
    pub unmatched_exits: u64,
    pub evicted_entries: u64,
    pub recursion_misses: u64,
    pub hist_overflow: u64,
    /// (program, helper, outcome) aggregates that did not fit the map.
    pub hists_full: u64,
    /// Acquires the ledger could not record (it was full).
    pub ledger_full: u64,
    /// Leak events lost to a full ring buffer.
    pub events_dropped: u64,
    /// Traced program runs not recorded (too many nested on a CPU).
    pub run_table_full: u64,
    /// References a traced run took while its CPU's held stack was full:
    /// kept in the global ledger, not checked at the run's end.
    pub run_refs_full: u64,
    /// `--sites`: calls and releases whose call site could not be read.
    pub site_unknown: u64,
}

impl Drops {
    /// Every loss, in one sentence (without a trailing period).
    pub fn describe(&self) -> String {
        format!(
            "{} unmatched exits, {} evicted entries, {} recursion misses, {} over 34 s, {} series \
             over --max-series, {} ledger full, {} events lost, {} runs not recorded, {} \
             references past a CPU's held stack, {} calls without a site",
            self.unmatched_exits,
            self.evicted_entries,
            self.recursion_misses,
            self.hist_overflow,
            self.hists_full,
            self.ledger_full,
            self.events_dropped,
            self.run_table_full,
            self.run_refs_full,
            self.site_unknown
        )
    }

    pub fn total(&self) -> u64 {
        self.unmatched_exits
            + self.evicted_entries
            + self.recursion_misses
            + self.hist_overflow
            + self.hists_full
            + self.ledger_full
            + self.events_dropped
            + self.run_table_full
            + self.run_refs_full
            + self.site_unknown
    }
}

/// All rows for one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalStats {
    pub interval_s: f64,
    pub by: Grouping,
    pub helpers: Vec<HelperStats>,
    pub release: ReleaseStats,
    /// `--by site`: one row per `bpf_sk_release` call site.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub release_sites: Vec<ReleaseSiteStats>,
    pub acquired: u64,
    /// Acquired against released, in the words every face uses.
    pub balance: super::words::Balance,
    pub drops: Drops,
}

impl IntervalStats {
    /// Statistics of `delta` (a difference of two snapshots, or a cumulative
    /// snapshot) over `interval_s` seconds. With `Grouping::Helper` there is
    /// one row per listed helper; with `Grouping::Program` one row per
    /// (program, helper) that was called, named by `label`.
    pub fn compute(
        delta: &Snapshot,
        interval_s: f64,
        helpers: &[Helper],
        by: Grouping,
        labels: &dyn Labels,
    ) -> IntervalStats {
        let c = &delta.counters;
        let rows: Vec<HelperStats> = match by {
            Grouping::Helper => helpers
                .iter()
                .map(|&h| {
                    HelperStats::from_cells(
                        h,
                        &delta.merged(h, |_| true),
                        interval_s,
                        None,
                        None,
                        c,
                    )
                })
                .collect(),
            Grouping::Program => delta
                .programs()
                .into_iter()
                .flat_map(|p| {
                    let hold = delta.holds.get(&p).map(LogHist::percentiles);
                    helpers
                        .iter()
                        .map(move |&h| (p, h, hold))
                        .collect::<Vec<_>>()
                })
                .filter_map(|(p, h, hold)| {
                    let cells = delta.merged(h, |q| q == p);
                    (cells.iter().any(|c| c.calls > 0)).then(|| {
                        let prog = Some(labels.program(p));
                        HelperStats::from_cells(h, &cells, interval_s, prog, hold, c)
                    })
                })
                .collect(),
            Grouping::Netns => {
                let places = delta.netns().into_iter().map(|n| (n, None)).collect();
                place_rows(delta, interval_s, helpers, places, labels)
            }
            Grouping::Interface => {
                let places = delta
                    .interfaces()
                    .into_iter()
                    .map(|(n, i)| (n, Some(i)))
                    .collect();
                place_rows(delta, interval_s, helpers, places, labels)
            }
            Grouping::Site => site_rows(delta, interval_s, helpers, labels),
        };
        let release_sites = if by == Grouping::Site {
            release_site_rows(delta, labels)
        } else {
            Vec::new()
        };
        let dropped_by_class = ByClass::from_array(&c.released);
        let noop_by_class = ByClass::from_array(&c.release_noop);
        let unmatched_by_class = ByClass::from_array(&c.release_unmatched);
        let mut holds = LogHist::default();
        for h in delta.holds.values() {
            holds.merge(h);
        }
        let release = ReleaseStats {
            calls: dropped_by_class.total() + noop_by_class.total() + c.release_null,
            dropped: dropped_by_class.total(),
            noop: noop_by_class.total(),
            null: c.release_null,
            dropped_by_class,
            noop_by_class,
            unmatched: unmatched_by_class.total(),
            unmatched_by_class,
            hold_ns: holds.percentiles(),
        };
        let drops = Drops {
            unmatched_exits: c.unmatched_exit.iter().sum(),
            evicted_entries: c.evicted_entry.iter().sum(),
            recursion_misses: delta.recursion_misses,
            hist_overflow: delta.cells.values().map(|c| c.hist.overflow).sum(),
            hists_full: c.hists_full,
            ledger_full: c.ledger_full,
            events_dropped: c.events_dropped,
            run_table_full: c.run_table_full,
            run_refs_full: c.run_refs_full,
            site_unknown: c.site_unknown,
        };
        let acquired = rows.iter().map(|r| r.acquired).sum();
        IntervalStats {
            interval_s,
            by,
            acquired,
            balance: super::words::Balance::of(acquired, release.dropped, release.unmatched),
            helpers: rows,
            release,
            release_sites,
            drops,
        }
    }
}

/// Names for the keys of a snapshot: programs by slot, interfaces by
/// (netns, ifindex).
pub trait Labels {
    fn program(&self, slot: u32) -> ProgramRef;
    /// The interface's name, if known.
    fn interface(&self, _netns: u32, _ifindex: u32) -> Option<String> {
        None
    }
    /// The call site at `addr`, if resolved.
    fn site(&self, _addr: u64) -> Option<Site> {
        None
    }
}

/// The site at `addr` as rows show it: resolved, or only its address.
fn site_of(labels: &dyn Labels, addr: u64) -> Site {
    labels.site(addr).unwrap_or_else(|| Site {
        addr,
        prog_id: 0,
        prog_name: String::new(),
        func: String::new(),
        offset: 0,
        insn: None,
        line: None,
    })
}

/// Call sites with at least one cell, ascending: (site, program slot),
/// the slot 0 for every known site (its calls merge over slots: the site
/// names its program, traced or not), the cell's slot for calls whose site
/// is unknown (0).
fn sites_of(delta: &Snapshot) -> Vec<(u64, Option<u32>)> {
    let mut v: Vec<(u64, Option<u32>)> = delta
        .cells
        .keys()
        .map(|k| (k.site, (k.site == 0).then_some(k.prog)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One row per (site, helper) called: its program is the site's, known
/// without tracing the program; else the slot's.
fn site_rows(
    delta: &Snapshot,
    secs: f64,
    helpers: &[Helper],
    labels: &dyn Labels,
) -> Vec<HelperStats> {
    let mut rows = Vec::new();
    for (addr, slot) in sites_of(delta) {
        for &h in helpers {
            let cells =
                delta.merged_where(h, |k| k.site == addr && slot.is_none_or(|s| s == k.prog));
            if cells.iter().all(|c| c.calls == 0) {
                continue;
            }
            let site = site_of(labels, addr);
            let prog = match slot {
                _ if site.prog_id != 0 => ProgramRef {
                    slot: slot.unwrap_or(UNATTRIBUTED),
                    id: site.prog_id,
                    name: site.prog_name.clone(),
                },
                Some(s) => labels.program(s),
                // A site no known program holds: the slot its calls were
                // charged to.
                None => labels.program(
                    delta
                        .cells
                        .keys()
                        .find(|k| k.site == addr && k.helper == h)
                        .map_or(UNATTRIBUTED, |k| k.prog),
                ),
            };
            let mut row =
                HelperStats::from_cells(h, &cells, secs, Some(prog), None, &delta.counters);
            row.site = Some(site);
            rows.push(row);
        }
    }
    rows
}

/// One `bpf_sk_release` call site over an interval (`--by site`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseSiteStats {
    pub site: Site,
    pub calls: u64,
    pub dropped: u64,
    pub noop: u64,
    pub null: u64,
    /// Refcounted releases of references no traced lookup took.
    pub unmatched: u64,
    /// The lookup sites whose sockets it released, most first.
    pub from: Vec<SitePair>,
}

/// Releases at one site of sockets one lookup site found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePair {
    pub site: Site,
    pub releases: u64,
}

fn release_site_rows(delta: &Snapshot, labels: &dyn Labels) -> Vec<ReleaseSiteStats> {
    delta
        .release_sites
        .iter()
        .filter(|(_, r)| r.calls() > 0)
        .map(|(&addr, r)| {
            let mut from: Vec<SitePair> = delta
                .site_pairs
                .iter()
                .filter(|(&(_, rel), &n)| rel == addr && n > 0)
                .map(|(&(acq, _), &n)| SitePair {
                    site: site_of(labels, acq),
                    releases: n,
                })
                .collect();
            from.sort_by(|a, b| {
                b.releases
                    .cmp(&a.releases)
                    .then(a.site.addr.cmp(&b.site.addr))
            });
            ReleaseSiteStats {
                site: site_of(labels, addr),
                calls: r.calls(),
                dropped: r.released.iter().sum(),
                noop: r.noop.iter().sum(),
                null: r.null,
                unmatched: r.unmatched,
                from,
            }
        })
        .collect()
}

impl<F: Fn(u32) -> ProgramRef> Labels for F {
    fn program(&self, slot: u32) -> ProgramRef {
        self(slot)
    }
}

/// One row per (place, helper) that was called: a place is a netns, or a
/// (netns, ifindex) pair.
fn place_rows(
    delta: &Snapshot,
    secs: f64,
    helpers: &[Helper],
    places: Vec<(u32, Option<u32>)>,
    labels: &dyn Labels,
) -> Vec<HelperStats> {
    let mut rows = Vec::new();
    for (netns, ifindex) in places {
        for &h in helpers {
            let cells = delta.merged_where(h, |k| {
                k.netns == netns && ifindex.is_none_or(|i| i == k.ifindex)
            });
            if cells.iter().all(|c| c.calls == 0) {
                continue;
            }
            let mut row = HelperStats::from_cells(h, &cells, secs, None, None, &delta.counters);
            // Pairing losses are per helper, not per place.
            row.unmatched_exits = 0;
            row.evicted_entries = 0;
            row.place = Some(PlaceRef {
                netns,
                ifindex,
                interface: ifindex
                    .filter(|&i| i != 0)
                    .and_then(|i| labels.interface(netns, i)),
            });
            rows.push(row);
        }
    }
    rows
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

pub(super) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> LogHist {
        LogHist::from_values(values)
    }

    fn key(prog: u32, helper: Helper, outcome: Outcome) -> CellKey {
        CellKey {
            prog,
            helper,
            outcome,
            netns: 1,
            ifindex: 1,
            site: 0,
        }
    }

    #[test]
    fn site_rows_sum_to_the_program_rows() {
        let mut d = Snapshot::default();
        let at = |prog, outcome, site| CellKey {
            site,
            ..key(prog, Helper::SkLookupTcp, outcome)
        };
        let est = [(SockClass::Established, 2)];
        d.cells
            .insert(at(1, Outcome::Hit, 0x10), cell(&[5, 6], &est, &est));
        d.cells
            .insert(at(1, Outcome::NoSocket, 0x10), cell(&[7], &[], &[]));
        d.cells
            .insert(at(1, Outcome::Hit, 0x20), cell(&[8, 9, 10], &est, &[]));
        d.cells
            .insert(at(2, Outcome::Hit, 0x30), cell(&[1], &est, &est));
        let label = |slot: u32| ProgramRef {
            slot,
            id: slot + 100,
            name: format!("p{slot}"),
        };
        let helpers = [Helper::SkLookupTcp];
        let by_site = IntervalStats::compute(&d, 1.0, &helpers, Grouping::Site, &label);
        let by_prog = IntervalStats::compute(&d, 1.0, &helpers, Grouping::Program, &label);
        assert_eq!(by_site.helpers.len(), 3);
        let sum =
            |rows: &[HelperStats], f: fn(&HelperStats) -> u64| -> u64 { rows.iter().map(f).sum() };
        for f in [
            (|r: &HelperStats| r.calls) as fn(&HelperStats) -> u64,
            |r| r.hits,
            |r| r.acquired,
            |r| r.timed,
        ] {
            assert_eq!(sum(&by_site.helpers, f), sum(&by_prog.helpers, f));
        }
        // Unresolved sites keep their slot's program.
        assert_eq!(by_site.helpers[2].program.as_ref().unwrap().id, 102);
    }

    fn cell(values: &[u64], hits: &[(SockClass, u64)], acquired: &[(SockClass, u64)]) -> Cell {
        let mut c = Cell {
            calls: hist(values).count,
            hist: hist(values),
            ..Default::default()
        };
        for &(cls, n) in hits {
            c.hits[cls.index()] = n;
        }
        for &(cls, n) in acquired {
            c.acquired[cls.index()] = n;
        }
        c
    }

    fn label(slot: u32) -> ProgramRef {
        ProgramRef {
            slot,
            id: slot * 10,
            name: format!("prog{slot}"),
        }
    }

    /// A recorded two-interval stream from two programs (slots 1 and 2)
    /// calling the same tc helper, plus an untraced caller: listener hits,
    /// an established hit released, misses, and an unmatched release.
    fn recorded() -> (Snapshot, Snapshot) {
        use SockClass::*;
        let tc = Helper::TcSkLookupTcp;
        let mut s1 = Snapshot {
            mono_ns: 1_000_000_000,
            ..Default::default()
        };
        s1.cells.insert(
            key(1, tc, Outcome::Hit),
            cell(
                &[2000, 2100],
                &[(Listener, 1), (Established, 1)],
                &[(Established, 1)],
            ),
        );
        s1.cells.insert(
            key(2, tc, Outcome::Hit),
            cell(&[2200], &[(Listener, 1)], &[]),
        );
        s1.cells
            .insert(key(2, tc, Outcome::NoSocket), cell(&[1500], &[], &[]));
        s1.holds.insert(1, hist(&[5000]));
        s1.counters.released[Established.index()] = 1;
        s1.counters.release_noop[Listener.index()] = 2;
        let mut s2 = s1.clone();
        s2.mono_ns = 3_000_000_000;
        s2.cells.insert(
            key(1, tc, Outcome::Hit),
            cell(
                &[2000, 2100, 2300, 90_000],
                &[(Listener, 3), (Established, 1)],
                &[(Established, 1)],
            ),
        );
        s2.cells
            .insert(key(0, tc, Outcome::BadLen), cell(&[300], &[], &[]));
        s2.counters.release_noop[Listener.index()] = 4;
        s2.counters.released[TimeWait.index()] = 1;
        s2.counters.release_unmatched[TimeWait.index()] = 1;
        s2.counters.unmatched_exit[Helper::XdpSkLookupUdp.index()] = 1;
        s2.recursion_misses = 2;
        (s1, s2)
    }

    #[test]
    fn per_helper_rows_merge_every_program() {
        let (s1, _) = recorded();
        let st =
            IntervalStats::compute(&s1, 1.0, &[Helper::TcSkLookupTcp], Grouping::Helper, &label);
        let r = &st.helpers[0];
        assert!(r.program.is_none());
        assert_eq!((r.calls, r.hits, r.acquired), (4, 3, 1));
        assert_eq!(r.outcomes.no_socket, 1);
        assert_eq!(r.hit_pct, 75.0);
        assert_eq!(r.hits_by_class.listener, 2);
        assert_eq!(st.release.calls, 3);
        assert_eq!((st.release.dropped, st.release.noop), (1, 2));
        assert_eq!(st.acquired, st.release.dropped);
        assert_eq!(st.release.hold_ns.max, 5000);
    }

    #[test]
    fn per_program_rows_split_the_same_helper() {
        let (s1, s2) = recorded();
        let helpers = [Helper::TcSkLookupTcp, Helper::XdpSkLookupUdp];
        let d = s2.delta(&s1);
        let st = IntervalStats::compute(&d, 2.0, &helpers, Grouping::Program, &label);
        // Slot 0 (untraced, bad_len), slot 1 (two more hits); slot 2 had no
        // calls in the interval, so no row.
        let rows: Vec<(u32, u64)> = st
            .helpers
            .iter()
            .map(|r| (r.program.as_ref().unwrap().slot, r.calls))
            .collect();
        assert_eq!(rows, vec![(0, 1), (1, 2)]);
        let p1 = &st.helpers[1];
        assert_eq!(p1.program.as_ref().unwrap().name, "prog1");
        assert_eq!(p1.calls_per_s, 1.0);
        assert_eq!(p1.hits_by_class.listener, 2);
        assert_eq!(p1.latency_ns.max, 90_000);
        assert_eq!(p1.acquired, 0);
        // Unchanged hold histogram: an empty interval for slot 1.
        assert_eq!(p1.hold_ns.unwrap().count, 0);
        assert_eq!(st.release.unmatched, 1);
        assert_eq!(st.release.dropped, 1);
        assert_eq!(st.drops.total(), 3);

        let whole = IntervalStats::compute(&d, 2.0, &helpers, Grouping::Helper, &label);
        assert_eq!(whole.helpers[0].calls, 3);
        assert_eq!(whole.helpers[1].unmatched_exits, 1);
        let p = whole.helpers[0].latency_ns;
        assert!(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max);
    }

    #[test]
    fn a_reused_slot_reads_as_a_reset() {
        let (mut s1, _) = recorded();
        let mut s2 = s1.clone();
        // Slot 2's program went away and the slot now holds a new one that
        // made one call (as many as the old one's hits): forgetting the slot
        // in the baseline makes the new reading the interval's.
        s2.cells.insert(
            key(2, Helper::TcSkLookupTcp, Outcome::Hit),
            cell(&[100], &[], &[]),
        );
        s2.cells
            .remove(&key(2, Helper::TcSkLookupTcp, Outcome::NoSocket));
        s1.forget_slots(&[2]);
        let d = s2.delta(&s1);
        assert_eq!(
            d.cells[&key(1, Helper::TcSkLookupTcp, Outcome::Hit)]
                .hist
                .count,
            0
        );
        assert_eq!(
            d.cells[&key(2, Helper::TcSkLookupTcp, Outcome::Hit)]
                .hist
                .count,
            1
        );
        assert!(!d
            .cells
            .contains_key(&key(2, Helper::TcSkLookupTcp, Outcome::NoSocket)));
    }

    #[test]
    fn json_shape() {
        let (s1, _) = recorded();
        let st = IntervalStats::compute(
            &s1,
            1.0,
            &[Helper::TcSkLookupTcp],
            Grouping::Program,
            &label,
        );
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["by"], "program");
        let row = &v["helpers"][0];
        assert_eq!(row["helper"], "bpf_tc_sk_lookup_tcp");
        assert_eq!(row["program"]["id"], 10);
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
            assert!(row["hold_ns"][k].is_number(), "hold_ns.{k}");
        }
        for k in ["hit", "no_socket", "bad_len", "bad_netns", "bad_flags"] {
            assert!(row["outcomes"][k].is_number(), "outcomes.{k}");
        }
        for k in "listener established time_wait request udp other".split(' ') {
            assert!(row["hits_by_class"][k].is_number(), "hits_by_class.{k}");
        }
        for k in ["calls", "dropped", "noop", "null", "unmatched"] {
            assert!(v["release"][k].is_number(), "release.{k}");
        }
        for k in [
            "unmatched_exits",
            "evicted_entries",
            "recursion_misses",
            "hist_overflow",
            "hists_full",
            "ledger_full",
            "events_dropped",
            "run_table_full",
            "run_refs_full",
        ] {
            assert!(v["drops"][k].is_number(), "drops.{k}");
        }
        let by_helper =
            IntervalStats::compute(&s1, 1.0, &[Helper::TcSkLookupTcp], Grouping::Helper, &label);
        let v = serde_json::to_value(&by_helper).unwrap();
        assert!(v["helpers"][0].get("program").is_none());
        assert!(v["helpers"][0].get("hold_ns").is_none());
    }

    #[test]
    fn counters_merge_then_delta() {
        let (s1, s2) = recorded();
        let mut m = s1.counters.clone();
        m.merge(&s2.counters);
        assert_eq!(m.delta(&s2.counters), s1.counters);
    }
}
