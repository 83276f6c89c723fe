//! Loading, attaching and reading the helper probes (`bpf/skprof.bpf.c`).
//!
//! Flow: open the skeleton → pick the probe kind → switch autoload off for
//! every program of the other kind and for functions this kernel lacks →
//! load → attach each program (a `Link` each; dropping `Probes` detaches
//! everything, and so does the kernel when the process dies).

use std::collections::BTreeMap;
use std::fmt;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};
use serde::Serialize;

use super::skel::{types, OpenSkprofSkel, SkprofSkel, SkprofSkelBuilder};
use super::{libbpf_reason, take_libbpf_log};
use crate::error::SkprofError;
use crate::kernel::{KernelFunctions, RELEASE_FN};
use crate::model::hist::{self, LogHist};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};
use crate::model::ledger_model::LedgerEvent;
use crate::model::snapshot::{Cell, CellKey, Counters, Snapshot};

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

    fn label(self) -> &'static str {
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

/// Map values this module reads as the skeleton's generated types.
///
/// # Safety
/// Implementors are `#[repr(C)]` and made only of integers, so every bit
/// pattern is a valid value.
unsafe trait Pod: Copy {}
// SAFETY: generated from `struct skprof_hist` (u64 fields and a u64 array).
unsafe impl Pod for types::skprof_hist {}
// SAFETY: generated from `struct skprof_counters` (u64 arrays and fields).
unsafe impl Pod for types::skprof_counters {}
// SAFETY: generated from `struct skprof_hist_key` (u32 and u16 fields, no padding).
unsafe impl Pod for types::skprof_hist_key {}
// SAFETY: generated from `struct skprof_ref` (integers and a byte array).
unsafe impl Pod for types::skprof_ref {}
// SAFETY: generated from `struct skprof_event` (integers and skprof_ref).
unsafe impl Pod for types::skprof_event {}

// SAFETY: generated from `struct skprof_trace` (integers only).
unsafe impl Pod for types::skprof_trace {}
// SAFETY: generated from `struct skprof_calls` (u64 arrays only).
unsafe impl Pod for types::skprof_calls {}
// SAFETY: generated from `struct skprof_jit_table` (u32s and an array of
// u64/u64/u32/u32 ranges).
unsafe impl Pod for types::skprof_jit_table {}

/// Map values this module writes: their bytes can be viewed.
///
/// # Safety
/// Implementors are [`Pod`] and have no padding bytes.
unsafe trait Bytes: Pod {}
// SAFETY: u32 n, u32 pad, then 24-byte ranges (u64, u64, u32, u32): no
// padding anywhere (size 8 + 512 * 24, checked in the tests).
unsafe impl Bytes for types::skprof_jit_table {}
// SAFETY: generated from skprof.bpf.c's .bss: two u32s.
unsafe impl Pod for types::bss {}
// SAFETY: two u32s, no padding (size checked in the tests).
unsafe impl Bytes for types::bss {}

/// The bytes of a map value to write.
fn pod_bytes<T: Bytes>(v: &T) -> &[u8] {
    // SAFETY: T has no padding, so all its size_of::<T>() bytes are
    // initialized integers; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The counters in one CPU's `struct skprof_runs`.
pub(crate) fn counters_of(runs: &[u8]) -> Result<types::skprof_counters> {
    read_pod(
        runs.get(offset_of!(types::skprof_runs, counters)..)
            .ok_or_else(|| anyhow!("map runs: value of {} bytes has no counters", runs.len()))?,
    )
}

fn read_pod<T: Pod>(bytes: &[u8]) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        bail!(
            "map value is {} bytes, expected {}: probe object and skprof disagree",
            bytes.len(),
            size_of::<T>()
        );
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, T is Pod (any bit
    // pattern valid), and read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
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
            let ns = (crate::workload::cli::parse_duration(d)?.as_secs_f64() * 1e9).round();
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
        }
    }
}

/// Ring-buffer size with `ledger_trace`: room for about 300k records
/// between two reads (48 bytes each, plus an 8-byte header).
const TRACE_RINGBUF_BYTES: u32 = 16 << 20;

/// What the ring buffer delivered since the last read.
#[derive(Debug, Default)]
pub struct Events {
    pub run_leaks: Vec<RunLeak>,
    /// With `ledger_trace`: every ledger step, run leaks included, in ring
    /// order.
    pub trace: Vec<LedgerEvent>,
}

/// Loaded and attached probes.
pub struct Probes {
    /// Leak events; declared before `skel` so it is dropped first.
    events: RingBuffer<'static>,
    event_buf: Arc<Mutex<Vec<Vec<u8>>>>,
    skel: SkprofSkel<'static>,
    /// (program name, link); dropping a link detaches it.
    links: Vec<(String, Link)>,
    kind: ProbeKind,
    helpers: Vec<Helper>,
    prog_fds: Vec<i32>,
    start: Instant,
    /// Which `jit_ranges` entry the probes read (the other one is ours to
    /// rewrite).
    jit_active: u32,
    /// What the probes' .bss says (see `runs_in_use` in skprof.bpf.c).
    bss: types::bss,
    /// Why fentry was not used in `ProbeMode::Auto`, when it was not.
    pub fallback_reason: Option<String>,
    /// The `calls` array, mapped: every call by (CPU, program slot, helper)
    /// when calls are not grouped by place.
    calls: CallsMap,
    places: bool,
}

/// Program slots the `calls` array has room for (`SKPROF_MAX_PROGS`).
const CALL_SLOTS: usize = 256;

/// The `calls` map (`BPF_F_MMAPABLE`) mapped into our memory, so a reading
/// takes no system call per element. Unmapped on drop.
struct CallsMap {
    ptr: *mut u64,
    /// Bytes mapped.
    len: usize,
    cpus: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is
// only read (and zeroed for freed slots) through `&self`/`&mut self`, with
// atomic accesses, so moving it to another thread is sound.
unsafe impl Send for CallsMap {}

impl CallsMap {
    /// u64s in one `struct skprof_calls`.
    const WORDS: usize = size_of::<types::skprof_calls>() / 8;

    fn map(fd: std::os::fd::BorrowedFd<'_>, cpus: usize) -> Result<CallsMap> {
        let bytes = cpus * CALL_SLOTS * Helper::COUNT * size_of::<types::skprof_calls>();
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of an mmapable BPF array's fd, of
        // the size the kernel allocated for it (max_entries x value size,
        // rounded up to pages); we own the returned region until munmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap map calls: {}", std::io::Error::last_os_error());
        }
        Ok(CallsMap {
            ptr: ptr.cast(),
            len,
            cpus,
        })
    }

    /// The counter at `word` of element (cpu, slot, helper).
    fn word(&self, cpu: usize, slot: usize, helper: usize, word: usize) -> &AtomicU64 {
        let i = ((cpu * CALL_SLOTS + slot) * Helper::COUNT + helper) * Self::WORDS + word;
        assert!(i * 8 < self.len, "calls index out of the mapping");
        // SAFETY: `i` is inside the mapping (checked), u64-aligned (the
        // mapping is page-aligned and values are 136 = 17 x 8 bytes), and
        // the kernel writes these words concurrently, which atomic loads
        // and stores of the same width tolerate.
        unsafe { AtomicU64::from_ptr(self.ptr.add(i)) }
    }

    /// Every (slot, helper) with calls, summed over CPUs: outcomes, hits
    /// and acquired, as `struct skprof_calls` lays them out.
    fn read(&self) -> Vec<(u32, Helper, [u64; Self::WORDS])> {
        let mut out = Vec::new();
        for slot in 0..CALL_SLOTS {
            for (h, helper) in Helper::ALL.iter().enumerate() {
                let mut sum = [0u64; Self::WORDS];
                for cpu in 0..self.cpus {
                    for (w, x) in sum.iter_mut().enumerate() {
                        *x += self.word(cpu, slot, h, w).load(Ordering::Relaxed);
                    }
                }
                if sum.iter().any(|&x| x != 0) {
                    out.push((slot as u32, *helper, sum));
                }
            }
        }
        out
    }

    /// Zeroes a freed slot's counters, so its next program starts from 0.
    fn forget(&mut self, slot: usize) {
        if slot >= CALL_SLOTS {
            return;
        }
        for cpu in 0..self.cpus {
            for h in 0..Helper::COUNT {
                for w in 0..Self::WORDS {
                    self.word(cpu, slot, h, w).store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for CallsMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the region mmap returned, mapped
        // once and unmapped only here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The JIT image of one function (main or subprogram) of a program that is
/// attributed by kernel stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitRange {
    pub start: u64,
    pub len: u32,
    pub slot: u32,
    pub prog_id: u32,
}

/// Room in the kernel's JIT table (`SKPROF_JIT_RANGES`).
pub const JIT_RANGES: usize = 512;

/// The table the probes search: sorted by address, overlaps (which the
/// kernel never produces) and zero-length images dropped, at most
/// [`JIT_RANGES`]; also how many did not fit.
pub fn jit_table(ranges: &[JitRange]) -> (Vec<JitRange>, usize) {
    let mut v: Vec<JitRange> = ranges.iter().copied().filter(|r| r.len > 0).collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<JitRange> = Vec::with_capacity(v.len());
    for r in v {
        if out
            .last()
            .is_some_and(|l| r.start < l.start + u64::from(l.len))
        {
            continue;
        }
        out.push(r);
    }
    let over = out.len().saturating_sub(JIT_RANGES);
    out.truncate(JIT_RANGES);
    (out, over)
}

impl Probes {
    /// Loads and attaches the probes in the requested mode.
    pub fn load(mode: ProbeMode, funcs: &KernelFunctions, opts: &ProbeOptions) -> Result<Probes> {
        match mode {
            ProbeMode::Fentry => Probes::load_kind(ProbeKind::Fentry, funcs, opts),
            ProbeMode::Kprobe => Probes::load_kind(ProbeKind::Kprobe, funcs, opts),
            ProbeMode::Auto => match Probes::load_kind(ProbeKind::Fentry, funcs, opts) {
                Ok(p) => Ok(p),
                Err(fentry_err) => match Probes::load_kind(ProbeKind::Kprobe, funcs, opts) {
                    Ok(mut p) => {
                        p.fallback_reason = Some(format!("{fentry_err:#}"));
                        Ok(p)
                    }
                    Err(kprobe_err) => Err(SkprofError::CannotTrace(refusal(
                        &crate::error::one_line(&fentry_err),
                        &crate::error::one_line(&kprobe_err),
                    ))
                    .into()),
                },
            },
        }
    }

    /// Loads and attaches one probe kind.
    pub fn load_kind(
        kind: ProbeKind,
        funcs: &KernelFunctions,
        opts: &ProbeOptions,
    ) -> Result<Probes> {
        let (available, source) = match kind {
            ProbeKind::Fentry => (&funcs.btf, "kernel BTF"),
            ProbeKind::Kprobe => (&funcs.kallsyms, "/proc/kallsyms"),
        };
        let helpers: Vec<Helper> = Helper::ALL
            .into_iter()
            .filter(|h| available.contains(h.function()))
            .collect();
        if helpers.is_empty() || !available.contains(RELEASE_FN) {
            let why = funcs
                .btf_error
                .as_deref()
                .filter(|_| kind == ProbeKind::Fentry)
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(SkprofError::CannotTrace(format!(
                "{kind}: no socket-lookup helper functions in {source}{why}"
            ))
            .into());
        }

        let mut open = open_skel()?;
        check_layout(&open)?;
        open.maps
            .ledger
            .set_max_entries(opts.ledger_size.max(1))
            .context("set the ledger size")?;
        open.maps
            .hists
            .set_max_entries(opts.max_series.max(1))
            .context("set the number of series")?;
        let cpus = libbpf_rs::num_possible_cpus().context("count the possible CPUs")?;
        open.maps
            .calls
            .set_max_entries((cpus * CALL_SLOTS * Helper::COUNT) as u32)
            .context("size map calls")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow!("skprof.bpf.o has no .rodata"))?;
        rodata.ledger_on = opts.ledger;
        rodata.ledger_stacks = opts.ledger_stacks;
        rodata.places_on = opts.places;
        (rodata.sample_every, rodata.sample_budget_ns) = match opts.sampling {
            LatencySample::Auto { budget_ns } => (0, budget_ns),
            LatencySample::Every(n) => (n, 0),
        };
        rodata.ledger_trace = opts.ledger_trace && opts.ledger;
        // The fast paths test these instead of the flags they come from
        // (one load each per call: see the BPF side).
        rodata.exit_fast_ok = !rodata.places_on && !rodata.ledger_stacks && !rodata.ledger_trace;
        rodata.release_fast_ok = rodata.ledger_on && !rodata.ledger_trace;
        if rodata.ledger_trace {
            open.maps
                .events
                .set_max_entries(TRACE_RINGBUF_BYTES)
                .context("size the events ring buffer for --trace")?;
        }
        for mut prog in open.open_object_mut().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let wanted = split_prog_name(&name)
                .is_some_and(|(role, func)| role.kind() == kind && available.contains(func));
            prog.set_autoload(wanted);
        }
        take_libbpf_log();
        let skel = open.load().map_err(|e| {
            let reason = libbpf_reason(&take_libbpf_log());
            anyhow!(e).context(match reason {
                Some(r) => format!("load {kind} probes: {r}"),
                None => format!("load {kind} probes"),
            })
        })?;

        let mut links = Vec::new();
        let mut prog_fds = Vec::new();
        for prog in skel.object().progs_mut() {
            if !prog.autoload() {
                continue;
            }
            let name = prog.name().to_string_lossy().into_owned();
            let (role, func) = split_prog_name(&name)
                .ok_or_else(|| anyhow!("unexpected program {name} in skprof.bpf.o"))?;
            take_libbpf_log();
            let link = prog.attach().map_err(|e| {
                let reason = libbpf_reason(&take_libbpf_log())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                anyhow!(e).context(format!("attach {} {func}{reason}", role.label()))
            })?;
            links.push((name, link));
            prog_fds.push(prog.as_fd().as_raw_fd());
        }
        let event_buf: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = Arc::clone(&event_buf);
        let mut rb = RingBufferBuilder::new();
        rb.add(&skel.maps.events, move |data: &[u8]| {
            if let Ok(mut v) = sink.lock() {
                v.push(data.to_vec());
            }
            0
        })
        .context("open the events ring buffer")?;
        let events = rb.build().context("open the events ring buffer")?;
        let calls = CallsMap::map(skel.maps.calls.as_fd(), cpus)?;
        Ok(Probes {
            events,
            event_buf,
            skel,
            links,
            kind,
            helpers,
            prog_fds,
            start: Instant::now(),
            jit_active: 0,
            bss: types::bss {
                runs_in_use: 0,
                jit_in_use: 0,
            },
            fallback_reason: None,
            calls,
            places: opts.places,
        })
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// Tells the helper probes which JIT images belong to which program, for
    /// the calls that program tracing does not attribute. Writes the table
    /// not in use, then switches to it, so a probe never searches a table
    /// half written. Returns how many ranges did not fit.
    pub fn set_jit_ranges(&mut self, ranges: &[JitRange]) -> Result<usize> {
        let (sorted, over) = jit_table(ranges);
        let mut t = types::skprof_jit_table {
            n: sorted.len() as u32,
            ..Default::default()
        };
        for (dst, r) in t.r.iter_mut().zip(&sorted) {
            *dst = types::skprof_jit_range {
                start: r.start,
                end: r.start + u64::from(r.len),
                prog_slot: r.slot,
                prog_id: r.prog_id,
            };
        }
        let idle = 1 - self.jit_active;
        self.skel
            .maps
            .jit_ranges
            .update(&idle.to_ne_bytes(), pod_bytes(&t), MapFlags::ANY)
            .context("write map jit_ranges")?;
        self.skel
            .maps
            .jit_active
            .update(&0u32.to_ne_bytes(), &idle.to_ne_bytes(), MapFlags::ANY)
            .context("write map jit_active")?;
        self.jit_active = idle;
        self.write_bss(types::bss {
            jit_in_use: u32::from(!sorted.is_empty()),
            ..self.bss
        })?;
        Ok(over)
    }

    /// Tells the helper probes whether any program is traced, so that
    /// without attribution they do not search the run table.
    pub fn set_runs_in_use(&mut self, on: bool) -> Result<()> {
        self.write_bss(types::bss {
            runs_in_use: u32::from(on),
            ..self.bss
        })
    }

    /// Writes the probes' .bss (through the map, which the kernel reads
    /// atomically per field: the two fields are independent u32s).
    fn write_bss(&mut self, v: types::bss) -> Result<()> {
        if (v.runs_in_use, v.jit_in_use) == (self.bss.runs_in_use, self.bss.jit_in_use) {
            return Ok(());
        }
        self.skel
            .maps
            .bss
            .update(&0u32.to_ne_bytes(), pod_bytes(&v), MapFlags::ANY)
            .context("write the probes' .bss")?;
        self.bss = v;
        Ok(())
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

    /// Stops (false) or resumes (true) tracing `bpf_sk_release`. With it
    /// stopped the ledger misses releases: this is how the tests inject an
    /// imbalance the leak report must catch.
    pub fn trace_releases(&mut self, on: bool) -> Result<()> {
        let is_release = |n: &str| split_prog_name(n).is_some_and(|(_, f)| f == RELEASE_FN);
        if !on {
            self.links.retain(|(n, _)| !is_release(n));
            return Ok(());
        }
        if self.links.iter().any(|(n, _)| is_release(n)) {
            return Ok(());
        }
        for prog in self.skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if prog.autoload() && is_release(&name) {
                let link = prog
                    .attach()
                    .with_context(|| format!("attach {name} again"))?;
                self.links.push((name, link));
            }
        }
        Ok(())
    }

    /// The references the ledger holds now.
    pub fn read_ledger(&self) -> Result<Vec<OutstandingRef>> {
        let ledger = &self.skel.maps.ledger;
        let mut out = Vec::new();
        for key in ledger.keys() {
            let sk = u64::from_ne_bytes(key[..8].try_into().context("ledger key size")?);
            // Released since keys() listed it: skip.
            if let Some(v) = ledger
                .lookup(&key, MapFlags::ANY)
                .context("read map ledger")?
            {
                let r: types::skprof_ref = read_pod(&v)?;
                out.extend(
                    (0..r.h.len())
                        .filter(|&i| r.h[i].count > 0)
                        .map(|i| outstanding(sk, &r, i)),
                );
            }
        }
        Ok(out)
    }

    /// The frames of kernel stack `id` (from `--stacks`), innermost first;
    /// empty if the id is unknown (a stack map entry can be replaced).
    pub fn read_stack(&self, id: i32) -> Result<Vec<u64>> {
        let Ok(id) = u32::try_from(id) else {
            return Ok(Vec::new());
        };
        let Some(bytes) = self
            .skel
            .maps
            .stacks
            .lookup(&id.to_ne_bytes(), MapFlags::ANY)
            .context("read map stacks")?
        else {
            return Ok(Vec::new());
        };
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .take_while(|&ip| ip != 0)
            .collect())
    }

    /// Leak events delivered since the last call.
    pub fn take_run_leaks(&self) -> Result<Vec<RunLeak>> {
        Ok(self.take_events()?.run_leaks)
    }

    /// Everything the ring buffer delivered since the last call.
    pub fn take_events(&self) -> Result<Events> {
        self.events
            .consume()
            .context("read the events ring buffer")?;
        let raw = self
            .event_buf
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let mut out = Events::default();
        for bytes in raw {
            let Some(ty) = bytes.get(..4) else {
                continue;
            };
            let ty = u32::from_ne_bytes(ty.try_into().expect("4 bytes"));
            if ty == types::skprof_event_type::SKPROF_EV_RUN_LEAK.0 {
                let ev: types::skprof_event = read_pod(&bytes)?;
                let holder = (ev.holder as usize).min(ev.r#ref.h.len() - 1);
                let h = &ev.r#ref.h[holder];
                out.trace.push(LedgerEvent::RunLeak {
                    ts: ev.ts,
                    sk: ev.sk,
                    run: h.run_id,
                    slot: h.prog_slot,
                });
                let reference = outstanding(ev.sk, &ev.r#ref, holder);
                out.run_leaks.push(RunLeak {
                    ts_ns: ev.ts,
                    prog_id: reference.prog_id,
                    prog_name: String::new(),
                    reference,
                });
            } else if let Some(ev) = trace_event(&read_pod(&bytes)?) {
                out.trace.push(ev);
            }
        }
        Ok(out)
    }

    /// Reads every map, merging the per-CPU values.
    pub fn read(&self) -> Result<Snapshot> {
        let mono_ns = self.start.elapsed().as_nanos() as u64;
        let mut dense = vec![0u64; hist::SLOTS];
        let mut cells = BTreeMap::new();
        let hists = &self.skel.maps.hists;
        for key_bytes in hists.keys() {
            let k: types::skprof_hist_key = read_pod(&key_bytes)?;
            let (Some(helper), Some(outcome)) = (
                Helper::from_index(k.helper as usize),
                Outcome::from_index(k.outcome as usize),
            ) else {
                continue;
            };
            // Deleted since keys() listed it (a slot being freed): skip.
            let Some(per_cpu) = hists
                .lookup_percpu(&key_bytes, MapFlags::ANY)
                .context("read map hists")?
            else {
                continue;
            };
            let mut cell = Cell::default();
            let hist = merge_cpus(&per_cpu, &mut dense, |h| {
                cell.calls += h.calls;
                for c in 0..SockClass::COUNT {
                    cell.hits[c] += h.hits[c];
                    cell.acquired[c] += h.acquired[c];
                }
            })?;
            cell.hist = hist;
            let key = CellKey {
                prog: k.prog_slot,
                helper,
                outcome,
                netns: k.netns,
                ifindex: k.ifindex,
            };
            // Keys differ only in fields this build does not know: merge.
            cells.entry(key).or_insert_with(Cell::default).merge(&cell);
        }
        // Without places the hash cells hold only the timed calls'
        // latency; every call is counted in the array.
        if !self.places {
            let o = |f: usize| f / 8;
            let (outcomes, hits, acquired) = (
                o(offset_of!(types::skprof_calls, outcomes)),
                o(offset_of!(types::skprof_calls, hits)),
                o(offset_of!(types::skprof_calls, acquired)),
            );
            for (slot, helper, w) in self.calls.read() {
                for outcome in Outcome::ALL {
                    let calls = w[outcomes + outcome.index()];
                    if calls == 0 {
                        continue;
                    }
                    let key = CellKey {
                        prog: slot,
                        helper,
                        outcome,
                        netns: 0,
                        ifindex: 0,
                    };
                    let cell = cells.entry(key).or_insert_with(Cell::default);
                    cell.calls += calls;
                    if outcome == Outcome::Hit {
                        for c in 0..SockClass::COUNT {
                            cell.hits[c] += w[hits + c];
                            cell.acquired[c] += w[acquired + c];
                        }
                    }
                }
            }
        }
        let mut holds = BTreeMap::new();
        let holds_map = &self.skel.maps.holds;
        for key_bytes in holds_map.keys() {
            let slot = u32::from_ne_bytes(key_bytes[..4].try_into().context("holds key size")?);
            if let Some(per_cpu) = holds_map
                .lookup_percpu(&key_bytes, MapFlags::ANY)
                .context("read map holds")?
            {
                holds.insert(slot, merge_cpus(&per_cpu, &mut dense, |_| {})?);
            }
        }
        // The counters are part of the per-CPU `runs` value (one lookup
        // per probe, see struct skprof_runs).
        let per_cpu = self
            .skel
            .maps
            .runs
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("read map runs")?
            .unwrap_or_default();
        let mut counters = Counters::default();
        for bytes in &per_cpu {
            let c = counters_of(bytes)?;
            counters.merge(&Counters {
                released: c.released,
                release_noop: c.release_noop,
                release_null: c.release_null,
                unmatched_exit: c.unmatched_exit,
                evicted_entry: c.evicted_entry,
                release_unmatched: c.release_unmatched,
                ledger_full: c.ledger_full,
                events_dropped: c.events_dropped,
                run_table_full: c.run_table_full,
                hists_full: c.hists_full,
                run_refs_full: c.run_refs_full,
            });
        }
        Ok(Snapshot {
            mono_ns,
            cells,
            holds,
            counters,
            recursion_misses: self.recursion_misses(),
        })
    }

    /// Deletes the aggregates of program slots that were freed (their
    /// program went away), so a slot's next program starts from zero.
    pub fn forget_slots(&mut self, slots: &[u32]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let hists = &self.skel.maps.hists;
        for key_bytes in hists.keys() {
            let k: types::skprof_hist_key = read_pod(&key_bytes)?;
            if slots.contains(&k.prog_slot) {
                // Already gone is fine: another reader raced us.
                let _ = hists.delete(&key_bytes);
            }
        }
        for slot in slots {
            let _ = self.skel.maps.holds.delete(&slot.to_ne_bytes());
            self.calls.forget(*slot as usize);
        }
        Ok(())
    }

    /// Sum of the kernel's `recursion_misses` over our programs: probe runs
    /// the trampoline skipped because the same probe was already running on
    /// that CPU (5.12+; reads 0 before, and for kprobes).
    fn recursion_misses(&self) -> u64 {
        self.prog_fds
            .iter()
            .filter_map(|&fd| prog_info(fd).ok())
            .map(|i| i.recursion_misses)
            .sum()
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

/// Holder `i` of a ledger entry.
fn outstanding(sk: u64, r: &types::skprof_ref, i: usize) -> OutstandingRef {
    let h = &r.h[i];
    OutstandingRef {
        sk,
        acquired_ns: h.acquired_ns,
        count: h.count,
        prog_id: h.prog_id,
        helper: Helper::from_index(h.helper as usize).unwrap_or(Helper::SkLookupTcp),
        class: SockClass::ALL
            .get(r.sock_class as usize)
            .copied()
            .unwrap_or(SockClass::Other),
        state: r.state,
        tuple: Tuple::decode(&r.tuple, r.tuple_len),
        netns: r.netns,
        cpu: h.cpu,
        refcnt: h.refcnt,
        stack_id: h.stack_id,
    }
}

/// A ledger trace record as the model's event; None for unknown types.
fn trace_event(t: &types::skprof_trace) -> Option<LedgerEvent> {
    use types::skprof_event_type as T;
    let class = SockClass::ALL
        .get(t.sock_class as usize)
        .copied()
        .unwrap_or(SockClass::Other);
    use types::skprof_trace_flag as F;
    let flag = |f: F| u32::from(t.flags) & f.0 != 0;
    let (ts, cpu, sk, run, slot) = (t.ts, t.cpu, t.sk, t.run_id, t.prog_slot);
    Some(match t.r#type {
        x if x == T::SKPROF_EV_ACQUIRE.0 => LedgerEvent::Acquire {
            ts,
            cpu,
            sk,
            run,
            slot,
            helper: Helper::from_index(t.helper as usize)?,
            class,
            refcounted: flag(F::SKPROF_TF_REFCOUNTED),
            recorded: flag(F::SKPROF_TF_RECORDED),
            timed: flag(F::SKPROF_TF_TIMED),
        },
        x if x == T::SKPROF_EV_RELEASE.0 => LedgerEvent::Release {
            ts,
            cpu,
            sk,
            class,
            refcounted: flag(F::SKPROF_TF_REFCOUNTED),
            matched: flag(F::SKPROF_TF_MATCHED),
            slot,
            run,
        },
        x if x == T::SKPROF_EV_RUN_START.0 => LedgerEvent::RunStart { ts, cpu, run, slot },
        x if x == T::SKPROF_EV_RUN_END.0 => LedgerEvent::RunEnd { ts, cpu, run, slot },
        _ => return None,
    })
}

/// Sums one histogram's per-CPU values; `extra` sees each CPU's value for
/// the fields beside the histogram.
fn merge_cpus(
    per_cpu: &[Vec<u8>],
    dense: &mut [u64],
    mut extra: impl FnMut(&types::skprof_hist),
) -> Result<LogHist> {
    dense.iter_mut().for_each(|d| *d = 0);
    let (mut count, mut sum, mut max, mut overflow) = (0u64, 0u64, 0u64, 0u64);
    for bytes in per_cpu {
        let h: types::skprof_hist = read_pod(bytes)?;
        count += h.count;
        sum += h.sum_ns;
        max = max.max(h.max_ns);
        overflow += h.overflow;
        for (d, s) in dense.iter_mut().zip(h.slots.iter()) {
            *d += s;
        }
        extra(&h);
    }
    Ok(LogHist::from_dense(count, sum, max, overflow, dense))
}

fn prog_info(fd: i32) -> Result<libbpf_rs::libbpf_sys::bpf_prog_info> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_rs::libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes with every
    // pointer field null (nothing else is requested), and `fd` is a program
    // fd owned by our loaded skeleton for as long as `self` lives.
    let ret = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if ret != 0 {
        bail!(
            "bpf_prog_get_info_by_fd: {}",
            std::io::Error::from_raw_os_error(-ret)
        );
    }
    Ok(info)
}

fn open_skel() -> Result<OpenSkprofSkel<'static>> {
    // The skeleton borrows its object storage for its whole life; leaking
    // this one small allocation per load lets `Probes` own the skeleton
    // (the libbpf object itself is still closed when `Probes` drops).
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    SkprofSkelBuilder::default()
        .open(storage)
        .context("open BPF object skprof.bpf.o")
}

/// The object's layout constants must match the model's tables.
fn check_layout(open: &OpenSkprofSkel<'_>) -> Result<()> {
    let l = &open
        .maps
        .rodata_data
        .as_ref()
        .ok_or_else(|| anyhow!("skprof.bpf.o has no .rodata"))?
        .skprof_layout;
    let got = (
        l.nr_helpers.0 as usize,
        l.nr_outcomes.0 as usize,
        l.nr_classes.0 as usize,
        l.hist_slots as usize,
    );
    let want = (Helper::COUNT, Outcome::COUNT, SockClass::COUNT, hist::SLOTS);
    if got != want || l.hist_sub_bits != hist::SUB_BITS || l.hist_max_exp != hist::MAX_EXP {
        bail!("skprof.bpf.o layout {got:?} differs from skprof's {want:?}: rebuild");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::skel::types;

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

    #[test]
    fn generated_enums_match_the_model() {
        for h in Helper::ALL {
            let c = match h {
                Helper::SkLookupTcp => types::skprof_helper::SKPROF_H_SK_LOOKUP_TCP,
                Helper::SkLookupUdp => types::skprof_helper::SKPROF_H_SK_LOOKUP_UDP,
                Helper::SkcLookupTcp => types::skprof_helper::SKPROF_H_SKC_LOOKUP_TCP,
                Helper::TcSkLookupTcp => types::skprof_helper::SKPROF_H_TC_SK_LOOKUP_TCP,
                Helper::TcSkLookupUdp => types::skprof_helper::SKPROF_H_TC_SK_LOOKUP_UDP,
                Helper::TcSkcLookupTcp => types::skprof_helper::SKPROF_H_TC_SKC_LOOKUP_TCP,
                Helper::XdpSkLookupTcp => types::skprof_helper::SKPROF_H_XDP_SK_LOOKUP_TCP,
                Helper::XdpSkLookupUdp => types::skprof_helper::SKPROF_H_XDP_SK_LOOKUP_UDP,
                Helper::XdpSkcLookupTcp => types::skprof_helper::SKPROF_H_XDP_SKC_LOOKUP_TCP,
                Helper::SockAddrSkLookupTcp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SK_LOOKUP_TCP
                }
                Helper::SockAddrSkLookupUdp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SK_LOOKUP_UDP
                }
                Helper::SockAddrSkcLookupTcp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SKC_LOOKUP_TCP
                }
            };
            assert_eq!(c.0 as usize, h.index(), "{h:?}");
        }
        let o = |x: types::skprof_outcome| x.0 as usize;
        assert_eq!(o(types::skprof_outcome::SKPROF_O_HIT), Outcome::Hit.index());
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_NO_SOCKET),
            Outcome::NoSocket.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_LEN),
            Outcome::BadLen.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_NETNS),
            Outcome::BadNetns.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_FLAGS),
            Outcome::BadFlags.index()
        );
        let c = |x: types::skprof_sock_class| x.0 as usize;
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_LISTENER),
            SockClass::Listener.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_ESTABLISHED),
            SockClass::Established.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_TIME_WAIT),
            SockClass::TimeWait.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_REQUEST),
            SockClass::Request.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_UDP),
            SockClass::Udp.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_OTHER),
            SockClass::Other.index()
        );
    }

    #[test]
    fn generated_types_have_the_model_sizes() {
        let h = types::skprof_hist::default();
        assert_eq!(h.slots.len(), hist::SLOTS);
        let c = types::skprof_counters::default();
        assert_eq!(c.unmatched_exit.len(), Helper::COUNT);
        assert_eq!(c.released.len(), SockClass::COUNT);
        assert_eq!(h.hits.len(), SockClass::COUNT);
    }

    #[test]
    fn bss_is_two_u32s() {
        assert_eq!(size_of::<types::bss>(), 8);
    }

    #[test]
    fn jit_table_has_no_padding() {
        assert_eq!(size_of::<types::skprof_jit_range>(), 24);
        assert_eq!(size_of::<types::skprof_jit_table>(), 8 + JIT_RANGES * 24);
    }

    #[test]
    fn jit_table_sorts_drops_overlaps_and_caps() {
        let r = |start, len, slot| JitRange {
            start,
            len,
            slot,
            prog_id: slot + 100,
        };
        let (t, over) = jit_table(&[r(300, 50, 2), r(100, 100, 1), r(150, 10, 3), r(500, 0, 4)]);
        assert_eq!(t, vec![r(100, 100, 1), r(300, 50, 2)]);
        assert_eq!(over, 0);
        let many: Vec<JitRange> = (0..JIT_RANGES as u64 + 3)
            .map(|i| r(i * 10, 5, 1))
            .collect();
        let (t, over) = jit_table(&many);
        assert_eq!((t.len(), over), (JIT_RANGES, 3));
    }

    #[test]
    fn counters_are_read_at_their_offset_in_the_runs_value() {
        let off = offset_of!(types::skprof_runs, counters)
            + offset_of!(types::skprof_counters, release_null);
        let mut b = vec![0u8; size_of::<types::skprof_runs>()];
        b[off..off + 8].copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(counters_of(&b).unwrap().release_null, 7);
        assert!(counters_of(&b[..off]).is_err());
    }

    #[test]
    fn read_pod_refuses_short_values() {
        assert!(read_pod::<types::skprof_counters>(&[0u8; 8]).is_err());
        let bytes = vec![0u8; size_of::<types::skprof_counters>()];
        assert_eq!(
            read_pod::<types::skprof_counters>(&bytes)
                .unwrap()
                .release_null,
            0
        );
    }
}
