//! Reading the helper probes' maps into model types: the snapshot of
//! every aggregate, the reference ledger, the kernel stacks, and the
//! counters in the run table.
#![allow(unsafe_code)] // bpf_prog_get_info_by_fd, which libbpf-rs does not wrap for a raw fd

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use super::pod::read_pod;
use super::probes::Probes;
use super::skel::types;
use crate::model::hist::{self, LogHist};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::{OutstandingRef, Tuple};
use crate::model::snapshot::{Cell, CellKey, Counters, ReleaseSite, Snapshot};

/// The counters in one CPU's `struct skprof_runs`.
pub(crate) fn counters_of(runs: &[u8]) -> Result<types::skprof_counters> {
    read_pod(
        runs.get(offset_of!(types::skprof_runs, counters)..)
            .ok_or_else(|| anyhow!("map runs: value of {} bytes has no counters", runs.len()))?,
    )
}

impl Probes {
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
                site: k.site,
            };
            // Keys differ only in fields this build does not know: merge.
            cells.entry(key).or_insert_with(Cell::default).merge(&cell);
        }
        // Without places the hash cells hold only the timed calls'
        // latency; every call is counted in the array.
        if !self.places && !self.sites {
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
                        site: 0,
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
                site_unknown: c.site_unknown,
                site_searches: c.site_searches,
            });
        }
        let (release_sites, site_pairs) = if self.sites {
            (self.read_release_sites()?, self.read_site_pairs()?)
        } else {
            Default::default()
        };
        Ok(Snapshot {
            mono_ns,
            cells,
            holds,
            counters,
            recursion_misses: self.recursion_misses(),
            release_sites,
            site_pairs,
        })
    }

    /// `--sites`: every release site's counts, merged over CPUs.
    fn read_release_sites(&self) -> Result<BTreeMap<u64, ReleaseSite>> {
        let map = &self.skel.maps.release_sites;
        let mut out = BTreeMap::new();
        for key in map.keys() {
            let site = read_pod::<u64>(&key)?;
            let Some(per_cpu) = map
                .lookup_percpu(&key, MapFlags::ANY)
                .context("read map release_sites")?
            else {
                continue;
            };
            let r: &mut ReleaseSite = out.entry(site).or_default();
            for bytes in &per_cpu {
                let v: types::skprof_release_site = read_pod(bytes)?;
                r.merge(&ReleaseSite {
                    released: v.released,
                    noop: v.noop,
                    null: v.null,
                    unmatched: v.unmatched,
                });
            }
        }
        Ok(out)
    }

    /// `--sites`: releases by (lookup site, release site), merged over CPUs.
    fn read_site_pairs(&self) -> Result<BTreeMap<(u64, u64), u64>> {
        let map = &self.skel.maps.site_pairs;
        let mut out = BTreeMap::new();
        for key in map.keys() {
            let k: types::skprof_site_pair = read_pod(&key)?;
            let Some(per_cpu) = map
                .lookup_percpu(&key, MapFlags::ANY)
                .context("read map site_pairs")?
            else {
                continue;
            };
            let mut n = 0;
            for bytes in &per_cpu {
                n += read_pod::<u64>(bytes)?;
            }
            *out.entry((k.acquire, k.release)).or_insert(0) += n;
        }
        Ok(out)
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

/// Holder `i` of a ledger entry.
pub(super) fn outstanding(sk: u64, r: &types::skprof_ref, i: usize) -> OutstandingRef {
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
        site: h.site,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_at_their_offset_in_the_runs_value() {
        let off = offset_of!(types::skprof_runs, counters)
            + offset_of!(types::skprof_counters, release_null);
        let mut b = vec![0u8; size_of::<types::skprof_runs>()];
        b[off..off + 8].copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(counters_of(&b).unwrap().release_null, 7);
        assert!(counters_of(&b[..off]).is_err());
    }
}
