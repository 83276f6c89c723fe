//! The workload's BPF object (bpf/workload.bpf.c) and typed access to its
//! .bss, through the skeleton's generated types.
#![allow(unsafe_code)] // volatile reads and writes of the mapped .bss

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::model::ids::{Family, Proto, SockClass};

crate::bpf::skeleton!(mod skel = "workload.skel.rs");

pub use skel::types::{wl_config, wl_counters, wl_family, wl_proto, wl_tuple};
pub use skel::WorkloadSkel;

/// Opens and loads the object. The skeleton borrows its object storage for
/// its whole life; the storage is leaked (a few dozen bytes per workload)
/// rather than made self-referential with unsafe code.
pub fn load() -> Result<WorkloadSkel<'static>> {
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let open = skel::WorkloadSkelBuilder::default()
        .open(storage)
        .context("open workload BPF object")?;
    open.load().context("load workload BPF object (verifier)")
}

pub fn family_id(f: Family) -> wl_family {
    match f {
        Family::Generic => wl_family::WL_F_GENERIC,
        Family::Tc => wl_family::WL_F_TC,
        Family::Xdp => wl_family::WL_F_XDP,
        Family::SockAddr => wl_family::WL_F_SOCK_ADDR,
    }
}

pub fn proto_id(p: Proto) -> wl_proto {
    match p {
        Proto::Tcp => wl_proto::WL_P_TCP,
        Proto::Udp => wl_proto::WL_P_UDP,
        Proto::SkcTcp => wl_proto::WL_P_SKC_TCP,
    }
}

/// A copy of one program's `wl_counters`, or the difference of two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub runs: u64,
    pub ours: u64,
    pub bad_config: u64,
    pub lookups: [u64; 3],
    pub misses: [u64; 3],
    pub hits: [[u64; SockClass::COUNT]; 3],
    pub releases: [u64; SockClass::COUNT],
}

impl From<wl_counters> for Counters {
    fn from(c: wl_counters) -> Counters {
        Counters {
            runs: c.runs,
            ours: c.ours,
            bad_config: c.bad_config,
            lookups: c.lookups,
            misses: c.misses,
            hits: c.hits,
            releases: c.releases,
        }
    }
}

impl Counters {
    /// `self - earlier`, per counter (they only grow).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |a: u64, b: u64| a.wrapping_sub(b);
        let mut out = Counters {
            runs: d(self.runs, earlier.runs),
            ours: d(self.ours, earlier.ours),
            bad_config: d(self.bad_config, earlier.bad_config),
            ..Counters::default()
        };
        for p in 0..3 {
            out.lookups[p] = d(self.lookups[p], earlier.lookups[p]);
            out.misses[p] = d(self.misses[p], earlier.misses[p]);
            for c in 0..SockClass::COUNT {
                out.hits[p][c] = d(self.hits[p][c], earlier.hits[p][c]);
            }
        }
        for c in 0..SockClass::COUNT {
            out.releases[c] = d(self.releases[c], earlier.releases[c]);
        }
        out
    }

    pub fn hit_total(&self) -> u64 {
        self.hits.iter().flatten().sum()
    }
}

/// One program's counters, read from the mmap'ed .bss.
pub fn counters(skel: &WorkloadSkel<'static>, f: Family) -> Result<Counters> {
    let bss = skel
        .maps
        .bss_data
        .as_deref()
        .context("workload BPF object has no mmap'able .bss")?;
    let p: *const wl_counters = &bss.wl_results[family_id(f).0 as usize];
    // SAFETY: `p` comes from a live reference into the mapped .bss and is
    // aligned; the read is volatile because BPF programs on other CPUs
    // update the counters behind the compiler's back.
    Ok(unsafe { std::ptr::read_volatile(p) }.into())
}

/// Sets the case the programs perform, in the mmap'ed .bss.
pub fn set_config(skel: &mut WorkloadSkel<'static>, cfg: wl_config) -> Result<()> {
    let bss = skel
        .maps
        .bss_data
        .as_deref_mut()
        .context("workload BPF object has no mmap'able .bss")?;
    let p: *mut wl_config = &mut bss.wl_cfg;
    // SAFETY: `p` comes from a live, exclusive reference into the mapped
    // .bss and is aligned; volatile so the store is really done before the
    // system call that makes a program read it.
    unsafe { std::ptr::write_volatile(p, cfg) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_enums_match_the_rust_enums() {
        // wl_results is indexed by family and lookups[] by proto, in the
        // order of model::Family and model::Proto.
        for (i, f) in [Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr]
            .into_iter()
            .enumerate()
        {
            assert_eq!(family_id(f).0 as usize, i);
        }
        assert_eq!(wl_family::WL_NR_FAMILIES.0, 4);
        for (i, p) in [Proto::Tcp, Proto::Udp, Proto::SkcTcp]
            .into_iter()
            .enumerate()
        {
            assert_eq!(proto_id(p).0 as usize, i);
        }
        assert_eq!(wl_proto::WL_NR_PROTOS.0, 3);
        let c = wl_counters::default();
        assert_eq!(c.hits[0].len(), SockClass::COUNT);
        assert_eq!(c.releases.len(), SockClass::COUNT);
    }

    #[test]
    fn counter_deltas() {
        let mut a = Counters {
            runs: 5,
            ..Default::default()
        };
        a.hits[2][3] = 7;
        let mut b = a;
        b.runs = 9;
        b.hits[2][3] = 10;
        b.releases[3] = 3;
        let d = b.since(&a);
        assert_eq!(d.runs, 4);
        assert_eq!(d.hits[2][3], 3);
        assert_eq!(d.hit_total(), 3);
        assert_eq!(d.releases[3], 3);
    }
}
