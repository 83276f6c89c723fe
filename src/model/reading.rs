//! One reading: everything every face shows of one instant, owned.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ids::Helper;
use super::ledger::{LedgerScan, RunLeak};
use super::ledger_model::LedgerEvent;
use super::sites::Site;
use super::snapshot::{Labels, ProgramRef, Snapshot};
use super::words;

/// What does not change while a source runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceInfo {
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// "fentry" or "kprobe".
    pub probe_mode: String,
    /// Where the data comes from, for the header ("live", "replay FILE").
    pub origin: String,
    /// The helper functions traced (the rows of the per-helper grouping).
    pub helpers: Vec<Helper>,
    /// Seconds between readings.
    pub interval_s: f64,
    /// What the probes add per lookup (ns), when `--calibrate` measured it.
    pub probe_ns_per_lookup: Option<f64>,
    /// ns per untraced run of the calibration's program, for scale.
    pub untraced_ns: Option<f64>,
    /// skprof's own probe programs attached (links).
    pub probes_attached: u64,
    /// Why fentry was not used, when kprobes stand in.
    pub fallback_reason: Option<String>,
}

/// How calls are charged to programs, at one reading.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AttributionInfo {
    /// `trace`, `stack` or `off`.
    pub mode: String,
    /// Why attribution is off, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_reason: Option<String>,
    /// (id, name) of every attributed program.
    #[serde(skip)]
    pub programs: Vec<(u32, String)>,
    /// Of those, attributed by kernel stack (no per-run leak check).
    pub by_stack: u64,
    /// Programs that call the helpers and cannot be attributed.
    pub untraceable: u64,
    /// A program that could not be traced and why (the same reason for
    /// every program more often than not).
    #[serde(skip)]
    pub stack_fallback: Option<(String, String)>,
}

impl AttributionInfo {
    /// Programs attributed by tracing them.
    pub fn traced(&self) -> u64 {
        self.programs.len() as u64 - self.by_stack
    }
}

/// One reading, owned: what a live session or a replayed recording gives
/// each interval, and all a face needs to show it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    /// Wall-clock time of the reading, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Cumulative since the probes were loaded, minus the aggregates of the
    /// program slots freed before this reading.
    pub snapshot: Snapshot,
    /// Who the program slots of `snapshot` belong to (every slot it
    /// mentions, and every attributed program's).
    pub programs: BTreeMap<u32, ProgramRef>,
    /// Program names by kernel id (for ledger entries and run leaks).
    pub names: BTreeMap<u32, String>,
    /// Interface names by (netns, ifindex), where known.
    pub interfaces: BTreeMap<(u32, u32), String>,
    /// `--sites`: the call sites resolved so far, by address.
    pub sites: BTreeMap<u64, Site>,
    /// Program slots freed since the previous reading: their aggregates
    /// were deleted and the slot may hold another program now, so they
    /// leave every earlier reading before this one is subtracted from it.
    pub freed_slots: Vec<u32>,
    /// The ledger, when it is kept (and, for a replay, recorded).
    pub ledger: Option<LedgerScan>,
    /// Traced program runs that ended holding a reference since the
    /// previous reading, their programs named.
    pub run_leaks: Vec<RunLeak>,
    /// Every ledger step since the previous reading (`leaks --trace`).
    pub trace: Vec<LedgerEvent>,
    /// How calls are charged to programs now.
    pub attribution: AttributionInfo,
    /// (id, name) of the programs attributed, and let go, by the rescan
    /// that came before this reading.
    pub attached: Vec<(u32, String)>,
    pub detached: Vec<(u32, String)>,
    /// That rescan was asked for (SIGHUP).
    pub rescan_asked: bool,
    /// Non-fatal problems of this reading (one line each).
    pub errors: Vec<String>,
    /// CPU used by skprof itself since the previous reading, as a share of
    /// one core (percent); `None` when unknown (a replay).
    pub self_cpu_pct: Option<f64>,
    /// A word about the source's progress ("frame 3/40", "workload done").
    pub status: Option<String>,
    /// The built-in workload is done and its traffic drained: this is the
    /// last reading of its calls.
    pub workload_done: bool,
}

impl Reading {
    /// Monotonic time of the reading, ns (the snapshot's clock).
    pub fn mono_ns(&self) -> u64 {
        self.snapshot.mono_ns
    }

    /// BPF programs whose calls are attributed.
    pub fn programs_traced(&self) -> usize {
        self.attribution.programs.len()
    }

    /// How a program id is shown.
    pub fn program_name(&self, id: u32) -> String {
        words::program_by_id(id, self.names.get(&id).map(String::as_str))
    }
}

impl Labels for Reading {
    fn program(&self, slot: u32) -> ProgramRef {
        self.programs
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| words::program_ref_unknown(slot))
    }

    fn interface(&self, netns: u32, ifindex: u32) -> Option<String> {
        self.interfaces.get(&(netns, ifindex)).cloned()
    }

    fn site(&self, addr: u64) -> Option<Site> {
        self.sites.get(&addr).cloned()
    }
}
