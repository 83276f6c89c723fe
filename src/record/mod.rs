//! Recordings: what `skprof record` writes and `skprof report` reads.
//!
//! A recording is a magic, a format version, then checksummed frames: one
//! `Meta`, then `Interval` frames each holding a cumulative reading of
//! every probe map, `Leaks` frames, an optional `Workload` frame and an
//! `End` frame. Each frame is written and flushed whole, so a recording cut
//! off by SIGKILL or a crash reads back up to its last complete frame. The
//! byte layout and the version policy are in `docs/recording-format.md`.

mod codec;
pub mod compare;
mod file;
#[cfg(any(test, feature = "dev"))]
pub mod fuzzing;
pub mod html;
pub mod plot;
pub mod render;
pub mod summary;
#[cfg(any(test, feature = "dev"))]
pub mod synth;
#[cfg(test)]
pub(crate) mod tests;

pub use file::{Reader, RecordError, Writer, FORMAT_VERSION, MAGIC};

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::ids::Helper;
pub use crate::model::ledger::LedgerScan;
use crate::model::ledger::RunLeak;
use crate::model::reading::Reading;
use crate::model::snapshot::{Labels, ProgramRef, Snapshot};
use crate::model::tally::HelperTally;

/// What was recorded where, by what: the first frame of every recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// The recording skprof's version (`CARGO_PKG_VERSION`).
    pub skprof_version: String,
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// The probe kind in use: "fentry" or "kprobe".
    pub probe_mode: String,
    pub hostname: String,
    /// Wall-clock time of the baseline reading, ms since the Unix epoch.
    pub start_unix_ms: u64,
    /// Requested time between readings.
    pub interval_ms: u64,
    /// The helper functions traced (the rows of a per-helper report).
    #[serde(serialize_with = "helper_names")]
    pub helpers: Vec<Helper>,
    /// Why calls are not attributed to programs, when they are not.
    pub attribution_off: Option<String>,
    /// The recording command line.
    pub command: Vec<String>,
}

fn helper_names<S: serde::Serializer>(h: &[Helper], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|h| h.function()))
}

/// One reading of every probe map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// Wall-clock time of the reading, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Cumulative since the probes were loaded (`mono_ns` is the reading's
    /// monotonic time since then), minus the aggregates of program slots
    /// that were freed.
    pub snapshot: Snapshot,
    /// Who the program slots in `snapshot` belonged to at the reading.
    pub labels: Vec<ProgramRef>,
    /// Program slots freed between the previous reading and this one: their
    /// aggregates were deleted, and the slot may hold another program now.
    /// A reader drops them from the previous reading before subtracting it.
    pub forgotten: Vec<u32>,
}

impl Interval {
    /// The frame of a reading: its cumulative aggregates, the labels of
    /// the slots they mention, and the slots freed before it.
    pub fn of(r: Reading) -> Interval {
        let mut slots = r.snapshot.programs();
        slots.extend(r.snapshot.holds.keys());
        slots.sort_unstable();
        slots.dedup();
        Interval {
            unix_ms: r.unix_ms,
            labels: slots.into_iter().map(|s| r.program(s)).collect(),
            snapshot: r.snapshot,
            forgotten: r.freed_slots,
        }
    }

    /// The reading a frame encodes (what is not recorded left empty).
    pub fn into_reading(self) -> Reading {
        let traced = self
            .labels
            .iter()
            .filter(|p| p.id != 0)
            .map(|p| (p.id, p.name.clone()))
            .collect();
        Reading {
            unix_ms: self.unix_ms,
            programs: self.labels.into_iter().map(|p| (p.slot, p)).collect(),
            snapshot: self.snapshot,
            freed_slots: self.forgotten,
            attribution: crate::model::reading::AttributionInfo {
                programs: traced,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Leak events since the previous `Leaks` frame, and optionally the
/// ledger's content (`skprof record` scans it once, at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaks {
    pub unix_ms: u64,
    /// Traced program runs that ended holding a reference. `reference.sk`
    /// is numbered as in `LedgerScan::refs`.
    pub run_leaks: Vec<RunLeak>,
    pub ledger: Option<LedgerScan>,
}

/// One frame of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Meta(Meta),
    Interval(Box<Interval>),
    Leaks(Leaks),
    /// The built-in workload's own exact counts (`--workload`), for
    /// comparison with what the probes measured.
    Workload(Box<HelperTally>),
    /// The recording was finished cleanly.
    End,
}

impl Frame {
    /// The frame kind byte of the format.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Meta(_) => 1,
            Frame::Interval(_) => 2,
            Frame::Leaks(_) => 3,
            Frame::Workload(_) => 4,
            Frame::End => 5,
        }
    }

    pub fn kind_name(kind: u8) -> &'static str {
        match kind {
            1 => "Meta",
            2 => "Interval",
            3 => "Leaks",
            4 => "Workload",
            5 => "End",
            _ => "unknown",
        }
    }
}

/// A whole recording in memory (fine for tests and short recordings;
/// `skprof report` streams frames through `Reader` instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub path: PathBuf,
    pub format_version: u16,
    pub meta: Meta,
    pub intervals: Vec<Interval>,
    pub leaks: Vec<Leaks>,
    pub workload: Option<HelperTally>,
    /// The file ended without an `End` frame (cut off).
    pub truncated: bool,
    /// What to tell the user about a cut-off file.
    pub warning: Option<String>,
}

impl Recording {
    pub fn load(path: &Path) -> Result<Recording, RecordError> {
        let mut r = Reader::open(path)?;
        let mut rec = Recording {
            path: path.to_path_buf(),
            format_version: r.format_version(),
            meta: r.meta().clone(),
            intervals: Vec::new(),
            leaks: Vec::new(),
            workload: None,
            truncated: false,
            warning: None,
        };
        for frame in r.frames() {
            match frame? {
                Frame::Interval(i) => rec.intervals.push(*i),
                Frame::Leaks(l) => rec.leaks.push(l),
                Frame::Workload(t) => rec.workload = Some(*t),
                // The reader refuses a second Meta; End is the last frame.
                Frame::Meta(_) | Frame::End => {}
            }
        }
        rec.truncated = r.truncated();
        rec.warning = r.warning();
        Ok(rec)
    }
}
