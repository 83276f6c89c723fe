//! The helper probes (`bpf/skprof.bpf.c`): what the user asks for, the
//! loaded [`Probes`], and the names the rest of skprof uses from here.
//!
//! The work is split by job: `load` opens, configures and attaches them
//! (and writes the switches they read while running), `read` turns their
//! maps into model types, `events` drains their ring buffer.
#![allow(unsafe_code)] // clock_gettime, for the clock bpf_ktime_get_ns() reads

use std::fmt;
use std::os::fd::AsFd;
use std::time::Instant;

use libbpf_rs::{Link, RingBuffer};
use serde::Serialize;

use super::calls::CallsMap;
use super::events::EventBuf;
use super::skel::{types, SkprofSkel};
use crate::model::ids::Helper;

pub use super::events::Events;
pub use super::load::{jit_table, JitRange, JIT_RANGES};
pub(crate) use super::read::counters_of;

/// What the user asked for (`--probe-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// fentry/fexit, falling back to kprobes when fentry is refused.
    Auto,
    /// fentry/fexit only (BPF trampolines, 5.5+; cheapest).
    Fentry,
    /// kprobe/kretprobe only.
    Kprobe,
}

/// The probe kind actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Fentry,
    Kprobe,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Fentry => "fentry",
            ProbeKind::Kprobe => "kprobe",
        })
    }
}

/// The role of one program of the object, from its name
/// (`<role>_<kernel function>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
}

impl Role {
    pub fn kind(self) -> ProbeKind {
        match self {
            Role::Fentry | Role::Fexit => ProbeKind::Fentry,
            Role::Kprobe | Role::Kretprobe => ProbeKind::Kprobe,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Role::Fentry => "fentry",
            Role::Fexit => "fexit",
            Role::Kprobe => "kprobe",
            Role::Kretprobe => "kretprobe",
        }
    }
}

/// Splits a program name such as `fexit_bpf_tc_sk_lookup_tcp`.
pub fn split_prog_name(name: &str) -> Option<(Role, &str)> {
    // Longest prefixes first: "kretprobe_" before "kprobe_" is not needed
    // (distinct), but "fexit_"/"fentry_" share nothing either; keep explicit.
    for (prefix, role) in [
        ("fentry_", Role::Fentry),
        ("fexit_", Role::Fexit),
        ("kprobe_", Role::Kprobe),
        ("kretprobe_", Role::Kretprobe),
    ] {
        if let Some(func) = name.strip_prefix(prefix) {
            return Some((role, func));
        }
    }
    None
}

/// File descriptors of the maps in `bpf/shared.bpf.h`.
#[derive(Debug, Clone, Copy)]
pub struct SharedMaps<'a> {
    pub runs: std::os::fd::BorrowedFd<'a>,
    pub ledger: std::os::fd::BorrowedFd<'a>,
    pub events: std::os::fd::BorrowedFd<'a>,
}

/// Sizes and switches set before load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Keep the reference ledger (acquire → release matching, leaks).
    pub ledger: bool,
    /// Outstanding references the ledger can hold; more are counted in
    /// `drops.ledger_full`.
    pub ledger_size: u32,
    /// (program, helper, outcome) aggregates the kernel can hold; more are
    /// counted in `drops.hists_full`.
    pub max_series: u32,
    /// Record the kernel stack of each acquire (costly: a stack walk).
    pub ledger_stacks: bool,
    /// Send every ledger step through the ring buffer (`leaks --trace`): a
    /// record per hit and release, for debugging and for checking the
    /// kernel's ledger against the model.
    pub ledger_trace: bool,
    /// Key every call by where it happened (netns, ifindex): probe reads
    /// on every exit, for grouping by netns or interface.
    pub places: bool,
    /// Which calls are timed (every call is counted).
    pub sampling: LatencySample,
    /// Record every call's and release's call site: the addresses of the
    /// traced functions (the lookup helpers in `Helper` order, then
    /// `bpf_sk_release`), from kallsyms; `None`: sites off.
    pub sites: Option<[u64; Helper::COUNT + 1]>,
}

/// Which calls the probes time (`--latency-sample`). Every call is counted
/// whatever this says; timing one costs two clock reads and the histogram
/// update, most of what the probes add beyond the trampolines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencySample {
    /// Every call while a (CPU, helper) sees calls less often than every
    /// `budget_ns`; above that rate, a random sample spaced `budget_ns`
    /// apart on average.
    Auto { budget_ns: u64 },
    /// One call in N on average, at random (N = 1: every call).
    Every(u32),
}

impl LatencySample {
    /// The default budget: at most ~20k timed calls a second per CPU and
    /// helper, plenty for percentiles every second, while a hot helper (a
    /// call every 100 ns natively) has about one call in 500 timed.
    pub const AUTO: LatencySample = LatencySample::Auto { budget_ns: 50_000 };

    /// Parses `auto`, `auto:DURATION` (a budget such as `auto:50us`),
    /// `all`, or N (one call in N).
    pub fn parse(s: &str) -> std::result::Result<LatencySample, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(LatencySample::AUTO);
        }
        if s == "all" {
            return Ok(LatencySample::Every(1));
        }
        if let Some(d) = s.strip_prefix("auto:") {
            let ns = (crate::duration::parse(d)?.as_secs_f64() * 1e9).round();
            if !(1.0..=1e9).contains(&ns) {
                return Err(format!("auto budget {d:?} must be between 1ns and 1s"));
            }
            return Ok(LatencySample::Auto {
                budget_ns: ns as u64,
            });
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(LatencySample::Every(n)),
            _ => Err(format!(
                "{s:?} is not auto, auto:DURATION, all, or a number of calls from 1 to 1000000"
            )),
        }
    }
}

impl fmt::Display for LatencySample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LatencySample::Auto { budget_ns } => {
                write!(
                    f,
                    "auto (timed calls {} us apart per CPU and helper at most on average)",
                    budget_ns as f64 / 1e3
                )
            }
            LatencySample::Every(1) => f.write_str("all"),
            LatencySample::Every(n) => write!(f, "1 in {n}"),
        }
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ledger: true,
            ledger_size: 65_536,
            max_series: 4096,
            ledger_stacks: false,
            ledger_trace: false,
            places: true,
            sampling: LatencySample::AUTO,
            sites: None,
        }
    }
}

/// Loaded and attached probes. Its methods are in `load`, `read` and
/// `events` by job; the accessors are here.
pub struct Probes {
    /// Leak events; declared before `skel` so it is dropped first.
    pub(super) events: RingBuffer<'static>,
    pub(super) event_buf: EventBuf,
    pub(super) skel: SkprofSkel<'static>,
    /// (program name, link); dropping a link detaches it.
    pub(super) links: Vec<(String, Link)>,
    pub(super) kind: ProbeKind,
    pub(super) helpers: Vec<Helper>,
    pub(super) prog_fds: Vec<i32>,
    pub(super) start: Instant,
    /// Which `jit_ranges` entry the probes read (the other one is ours to
    /// rewrite).
    pub(super) jit_active: u32,
    /// What the probes' .bss says (see `runs_in_use` in skprof.bpf.c).
    pub(super) bss: types::bss,
    /// Why fentry was not used in `ProbeMode::Auto`, when it was not.
    pub fallback_reason: Option<String>,
    /// The `calls` array, mapped: every call by (CPU, program slot, helper)
    /// when calls are not grouped by place.
    pub(super) calls: CallsMap,
    pub(super) places: bool,
    /// Call sites are recorded (`ProbeOptions::sites`).
    pub(super) sites: bool,
}

impl Probes {
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The helper functions being traced.
    pub fn helpers(&self) -> &[Helper] {
        &self.helpers
    }

    /// The maps the per-program attribution probes (`bpf/attrib.bpf.c`)
    /// share with these probes: pass each to `OpenMapMut::reuse_fd` on the
    /// attribution object's map of the same name before loading it.
    pub fn shared_maps(&self) -> SharedMaps<'_> {
        SharedMaps {
            runs: self.skel.maps.runs.as_fd(),
            ledger: self.skel.maps.ledger.as_fd(),
            events: self.skel.maps.events.as_fd(),
        }
    }

    /// Number of attached programs.
    pub fn attached(&self) -> usize {
        self.links.len()
    }
}

/// Why neither probe kind works, in one sentence (shared by `stat` and
/// `check`, so both say the same).
pub fn refusal(fentry_err: &str, kprobe_err: &str) -> String {
    let pmu = if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        ""
    } else {
        "; this kernel has no kprobe PMU"
    };
    format!("fentry/fexit refused ({fentry_err}) and kprobes unavailable ({kprobe_err}){pmu}")
}

/// The kernel's CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_split_into_role_and_function() {
        assert_eq!(
            split_prog_name("fexit_bpf_tc_sk_lookup_tcp"),
            Some((Role::Fexit, "bpf_tc_sk_lookup_tcp"))
        );
        assert_eq!(
            split_prog_name("kretprobe_bpf_sk_lookup_udp"),
            Some((Role::Kretprobe, "bpf_sk_lookup_udp"))
        );
        assert_eq!(split_prog_name("something_else"), None);
    }
}
