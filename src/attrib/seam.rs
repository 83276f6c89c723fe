//! The libbpf side of attribution: loading `bpf/attrib.bpf.c` once per
//! traced program, the `bpf_prog` iterator, and reading the shared run
//! table. Everything here is safe Rust over libbpf-rs.
//!
//! Each per-target object is opened on this function's stack and dropped
//! once its links exist: a link keeps its (kernel) program alive, the
//! program keeps its maps, and libbpf's link objects do not point back into
//! the `bpf_object`, so nothing is leaked and nothing is self-referential.

use std::collections::HashMap;
use std::io::Read;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, MapHandle, OpenObject, Program};
use serde::Serialize;

use crate::bpf::probes::SharedMaps;
use crate::bpf::{libbpf_reason, take_libbpf_log};

// The generated skeleton of `bpf/attrib.bpf.c`.
crate::bpf::skeleton!(mod skel = "attrib.skel.rs");

use skel::{types, AttribSkelBuilder, OpenAttribSkel};

/// The two links tracing one program. Field order is drop order: fentry
/// goes first, so a run that starts while we detach still finds its fexit
/// (an entry without an exit would hold a run slot forever).
#[derive(Debug)]
pub struct TargetLinks {
    _entry: Link,
    _exit: Link,
}

impl TargetLinks {
    /// References these links hold on the target program: one each
    /// (`link->tgt_prog`, kernel/bpf/syscall.c bpf_tracing_prog_attach()).
    pub const TARGET_REFS: u64 = 2;
}

/// The program to trace.
pub struct Target<'a> {
    pub id: u32,
    pub name: &'a str,
    /// Its main function's name in its BTF (the attach point).
    pub func: &'a str,
    pub slot: u32,
    /// Trace run starts and ends into the ring buffer (`leaks --trace`).
    pub trace: bool,
}

fn open_object(storage: &mut MaybeUninit<OpenObject>) -> Result<OpenAttribSkel<'_>> {
    AttribSkelBuilder::default()
        .open(storage)
        .context("open BPF object attrib.bpf.o")
}

fn reuse_maps(open: &mut OpenAttribSkel<'_>, maps: SharedMaps<'_>) -> Result<()> {
    let m = &mut open.maps;
    for (name, map, fd) in [
        ("runs", &mut m.runs, maps.runs),
        ("ledger", &mut m.ledger, maps.ledger),
        ("events", &mut m.events, maps.events),
    ] {
        map.reuse_fd(fd)
            .with_context(|| format!("share the probes' map {name}"))?;
    }
    Ok(())
}

/// Adds libbpf's own account of a failure (the verifier's refusal, say).
fn with_libbpf_reason(e: libbpf_rs::Error, what: String) -> anyhow::Error {
    match libbpf_reason(&take_libbpf_log()) {
        Some(r) => anyhow!(e).context(format!("{what}: {r}")),
        None => anyhow!(e).context(what),
    }
}

/// Loads fentry/fexit on `t` and attaches them (fexit first, see
/// `TargetLinks`). Errors name the step and the program.
pub fn attach(t: &Target<'_>, maps: SharedMaps<'_>) -> Result<TargetLinks> {
    let what = format!("prog {} ({})", t.id, t.name);
    // The target must stay open until the load: libbpf passes it as
    // attach_prog_fd and the kernel takes its own reference then.
    let target = Program::fd_from_id(t.id).with_context(|| format!("open {what} by id"))?;
    let mut storage = MaybeUninit::uninit();
    let mut open = open_object(&mut storage).with_context(|| format!("trace {what}"))?;
    {
        let ro = open
            .maps
            .rodata_data
            .as_mut()
            .ok_or_else(|| anyhow!("attrib.bpf.o has no .rodata"))?;
        ro.prog_slot = t.slot;
        ro.prog_id = t.id;
        ro.ledger_trace = t.trace;
    }
    reuse_maps(&mut open, maps).with_context(|| format!("trace {what}"))?;
    open.progs.prog_refs.set_autoload(false);
    for (kind, prog) in [
        ("fentry", &mut open.progs.prog_entry),
        ("fexit", &mut open.progs.prog_exit),
    ] {
        prog.set_attach_target(target.as_raw_fd(), Some(t.func.to_string()))
            .with_context(|| format!("set the {kind} target of {what} to {}", t.func))?;
    }
    take_libbpf_log();
    let skel = open
        .load()
        .map_err(|e| with_libbpf_reason(e, format!("load fentry/fexit for {what}")))?;
    let exit = skel
        .progs
        .prog_exit
        .attach()
        .map_err(|e| with_libbpf_reason(e, format!("attach fexit to {what}")))?;
    let entry = skel
        .progs
        .prog_entry
        .attach()
        .map_err(|e| with_libbpf_reason(e, format!("attach fentry to {what}")))?;
    Ok(TargetLinks {
        _entry: entry,
        _exit: exit,
    })
}

/// What one attribution object loaded once per `Attributor` gives: the
/// `bpf_prog` iterator (when the kernel has it) and handles on the shared
/// maps for reading the run table.
#[derive(Debug)]
pub struct Shared {
    iter: Option<Link>,
    pub iter_error: Option<String>,
    runs: MapHandle,
}

impl Shared {
    pub fn load(maps: SharedMaps<'_>) -> Result<Shared> {
        match Shared::load_with(maps, true) {
            Ok(s) => Ok(s),
            // Without the iterator (no iter/bpf_prog: before 5.9) the maps
            // can still be read; detaching then waits for the program to
            // vanish, which our own links prevent (see Attributor docs).
            Err(iter_err) => {
                let mut s = Shared::load_with(maps, false)?;
                s.iter_error = Some(format!("{iter_err:#}"));
                Ok(s)
            }
        }
    }

    fn load_with(maps: SharedMaps<'_>, with_iter: bool) -> Result<Shared> {
        let mut storage = MaybeUninit::uninit();
        let mut open = open_object(&mut storage)?;
        reuse_maps(&mut open, maps)?;
        // The fentry/fexit programs have no target here.
        open.progs.prog_entry.set_autoload(false);
        open.progs.prog_exit.set_autoload(false);
        open.progs.prog_refs.set_autoload(with_iter);
        take_libbpf_log();
        let skel = open.load().map_err(|e| {
            with_libbpf_reason(
                e,
                if with_iter {
                    "load the bpf_prog iterator".into()
                } else {
                    "load attrib.bpf.o's maps".into()
                },
            )
        })?;
        let iter = if with_iter {
            Some(
                skel.progs
                    .prog_refs
                    .attach()
                    .map_err(|e| with_libbpf_reason(e, "attach the bpf_prog iterator".into()))?,
            )
        } else {
            None
        };
        Ok(Shared {
            iter,
            iter_error: None,
            runs: MapHandle::try_from(&skel.maps.runs).context("duplicate map runs")?,
        })
    }

    /// Every loaded program's reference count, by id; `None` without the
    /// iterator. Each count includes the one the iterator itself holds.
    pub fn prog_refs(&self) -> Option<Result<HashMap<u32, u64>>> {
        let link = self.iter.as_ref()?;
        Some((|| {
            let mut it = Iter::new(link).context("start the bpf_prog iterator")?;
            let mut buf = Vec::new();
            it.read_to_end(&mut buf)
                .context("read the bpf_prog iterator")?;
            Ok(parse_prog_refs(&buf))
        })())
    }

    /// The run table and its counters, summed over CPUs.
    pub fn run_table(&self) -> Result<RunTable> {
        let zero = 0u32.to_ne_bytes();
        let runs = self
            .runs
            .lookup_percpu(&zero, MapFlags::ANY)
            .context("read map runs")?
            .unwrap_or_default();
        let mut t = RunTable {
            cpus: runs.len(),
            ..RunTable::default()
        };
        for (cpu, bytes) in runs.iter().enumerate() {
            parse_runs(cpu, bytes, &mut t)?;
        }
        for bytes in &runs {
            t.run_table_full += crate::bpf::probes::counters_of(bytes)?.run_table_full;
        }
        Ok(t)
    }
}

/// The run table (`runs` map) as seen now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunTable {
    pub cpus: usize,
    /// Traced program runs recorded since the probes were loaded (the sum
    /// of the per-CPU counts: the low 48 bits of each CPU's last run id).
    pub runs_started: u64,
    /// Runs whose exit has not been seen: running now, or stale (an exit
    /// the trampoline skipped).
    pub in_flight: Vec<InFlightRun>,
    /// `counters.run_table_full`, summed over CPUs: runs not recorded
    /// because every slot of the CPU's table was taken.
    pub run_table_full: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlightRun {
    pub cpu: usize,
    pub ctx: u64,
    pub run_id: u64,
    pub prog_slot: u32,
    pub prog_id: u32,
    /// Sockets its lookups returned that it has not released yet.
    pub nr_held: u32,
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b
        .get(off..off + 8)
        .ok_or_else(|| anyhow!("map value of {} bytes has no u64 at {off}", b.len()))?;
    Ok(u64::from_ne_bytes(s.try_into().expect("8 bytes")))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b
        .get(off..off + 4)
        .ok_or_else(|| anyhow!("map value of {} bytes has no u32 at {off}", b.len()))?;
    Ok(u32::from_ne_bytes(s.try_into().expect("4 bytes")))
}

/// One CPU's `struct skprof_runs`, laid out as the skeleton's generated
/// type says.
fn parse_runs(cpu: usize, b: &[u8], t: &mut RunTable) -> Result<()> {
    let base = offset_of!(types::skprof_runs, r);
    let stride = size_of::<types::skprof_run>();
    let n = types::skprof_runs::default().r.len();
    // The held stack's live entries (sk, run id): a run's count is not
    // kept in the kernel, so it is counted here.
    let held_base = offset_of!(types::skprof_runs, held);
    let held_stride = size_of::<types::skprof_held>();
    let nr_held = (u32_at(b, offset_of!(types::skprof_runs, nr_held))? as usize)
        .min(types::skprof_runs::default().held.len());
    let mut held = Vec::with_capacity(nr_held);
    for j in 0..nr_held {
        let e = held_base + j * held_stride;
        let sk = u64_at(b, e + offset_of!(types::skprof_held, sk))?;
        if sk != 0 {
            held.push(u64_at(b, e + offset_of!(types::skprof_held, run_id))?);
        }
    }
    for i in 0..n {
        let r = base + i * stride;
        let ctx = u64_at(b, r + offset_of!(types::skprof_run, ctx))?;
        if ctx == 0 {
            continue;
        }
        let run_id = u64_at(b, r + offset_of!(types::skprof_run, run_id))?;
        t.in_flight.push(InFlightRun {
            cpu,
            ctx,
            run_id,
            prog_slot: u32_at(b, r + offset_of!(types::skprof_run, prog_slot))?,
            prog_id: u32_at(b, r + offset_of!(types::skprof_run, prog_id))?,
            nr_held: held.iter().filter(|&&id| id == run_id).count() as u32,
        });
    }
    // The CPU's number is in the top 16 bits (the last run id), the count
    // below.
    t.runs_started += u64_at(b, offset_of!(types::skprof_runs, seq))? & ((1 << 48) - 1);
    Ok(())
}

/// The iterator's output: `struct attrib_prog_ref` records.
fn parse_prog_refs(b: &[u8]) -> HashMap<u32, u64> {
    let size = size_of::<types::attrib_prog_ref>();
    b.chunks_exact(size)
        .filter_map(|rec| {
            Some((
                u32_at(rec, offset_of!(types::attrib_prog_ref, id)).ok()?,
                u64_at(rec, offset_of!(types::attrib_prog_ref, refcnt)).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iterator_records() {
        let mut b = Vec::new();
        for (id, refcnt) in [(7u32, 3u64), (42, 1)] {
            let mut rec = vec![0u8; size_of::<types::attrib_prog_ref>()];
            let o = offset_of!(types::attrib_prog_ref, id);
            rec[o..o + 4].copy_from_slice(&id.to_ne_bytes());
            let o = offset_of!(types::attrib_prog_ref, refcnt);
            rec[o..o + 8].copy_from_slice(&refcnt.to_ne_bytes());
            b.extend(rec);
        }
        b.extend([1, 2, 3]); // a torn record is ignored
        let m = parse_prog_refs(&b);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&7], 3);
        assert_eq!(m[&42], 1);
        assert_eq!(size_of::<types::attrib_prog_ref>(), 16);
    }

    #[test]
    fn parses_a_run_table() {
        let size = size_of::<types::skprof_runs>();
        let mut b = vec![0u8; size];
        let put64 =
            |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        let r3 = offset_of!(types::skprof_runs, r) + 3 * size_of::<types::skprof_run>();
        put64(
            &mut b,
            r3 + offset_of!(types::skprof_run, ctx),
            0xffff_8880_1234_0000,
        );
        put64(
            &mut b,
            r3 + offset_of!(types::skprof_run, run_id),
            (1 << 48) | 5,
        );
        put32(&mut b, r3 + offset_of!(types::skprof_run, prog_slot), 2);
        put32(&mut b, r3 + offset_of!(types::skprof_run, prog_id), 77);
        put64(&mut b, offset_of!(types::skprof_runs, seq), (1 << 48) | 5);
        // Held, bottom up: run 4's (the run 5 interrupted), a hole left by
        // run 5, run 5's.
        let held =
            |j: usize| offset_of!(types::skprof_runs, held) + j * size_of::<types::skprof_held>();
        put32(&mut b, offset_of!(types::skprof_runs, nr_held), 3);
        for (j, sk, run) in [
            (0, 0xffff_8880_5555_0000u64, 4u64),
            (2, 0xffff_8880_6666_0000, 5),
        ] {
            put64(&mut b, held(j) + offset_of!(types::skprof_held, sk), sk);
            put64(
                &mut b,
                held(j) + offset_of!(types::skprof_held, run_id),
                (1 << 48) | run,
            );
        }
        put64(
            &mut b,
            held(1) + offset_of!(types::skprof_held, run_id),
            (1 << 48) | 5,
        );
        let mut t = RunTable::default();
        parse_runs(1, &b, &mut t).unwrap();
        parse_runs(0, &vec![0u8; size], &mut t).unwrap();
        assert_eq!(t.runs_started, 5);
        assert_eq!(
            t.in_flight,
            vec![InFlightRun {
                cpu: 1,
                ctx: 0xffff_8880_1234_0000,
                run_id: (1 << 48) | 5,
                prog_slot: 2,
                prog_id: 77,
                nr_held: 1,
            }]
        );
        assert!(parse_runs(0, &b[..8], &mut t).is_err());
    }
}
