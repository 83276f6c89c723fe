//! Loading the helper probes: open the skeleton → check its layout → size
//! the maps and set the read-only switches → switch autoload off for every
//! program of the other kind and for functions this kernel lacks → load →
//! attach each program (a `Link` each; dropping `Probes` detaches
//! everything, and so does the kernel when the process dies). Also the
//! switches written while they run: the .bss flags and the JIT table.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use super::calls::{CallsMap, CALL_SLOTS};
use super::events::event_ring;
use super::probes::{
    refusal, split_prog_name, LatencySample, ProbeKind, ProbeMode, ProbeOptions, Probes,
};
use super::skel::{types, OpenSkprofSkel, SkprofSkelBuilder};
use super::{libbpf_reason, take_libbpf_log};
use crate::error::SkprofError;
use crate::kernel::{KernelFunctions, RELEASE_FN};
use crate::model::hist;
use crate::model::ids::{Helper, Outcome, SockClass};

/// Ring-buffer size with `ledger_trace`: room for about 300k records
/// between two reads (48 bytes each, plus an 8-byte header).
const TRACE_RINGBUF_BYTES: u32 = 16 << 20;

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
        // With sites every call goes to the slow paths: the fast ones
        // neither read nor key by the site.
        if let Some(fns) = opts.sites {
            rodata.sites_on = true;
            rodata.site_fn = fns;
        }
        rodata.exit_fast_ok =
            !rodata.places_on && !rodata.ledger_stacks && !rodata.ledger_trace && !rodata.sites_on;
        rodata.release_fast_ok = rodata.ledger_on && !rodata.ledger_trace && !rodata.sites_on;
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
        let (events, event_buf) = event_ring(&skel.maps.events)?;
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
            sites: opts.sites.is_some(),
        })
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
            .update(&idle.to_ne_bytes(), bytemuck::bytes_of(&t), MapFlags::ANY)
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
            .update(&0u32.to_ne_bytes(), bytemuck::bytes_of(&v), MapFlags::ANY)
            .context("write the probes' .bss")?;
        self.bss = v;
        Ok(())
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
}
