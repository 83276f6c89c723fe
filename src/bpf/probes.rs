//! Loading, attaching and reading the helper probes (`bpf/skprof.bpf.c`).
//!
//! Flow: open the skeleton → pick the probe kind → switch autoload off for
//! every program of the other kind and for functions this kernel lacks →
//! load → attach each program (a `Link` each; dropping `Probes` detaches
//! everything, and so does the kernel when the process dies).

use std::fmt;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};
use serde::Serialize;

use super::skel::{types, OpenSkprofSkel, SkprofSkel, SkprofSkelBuilder};
use super::{libbpf_reason, take_libbpf_log};
use crate::error::SkprofError;
use crate::kernel::{KernelFunctions, RELEASE_FN};
use crate::model::hist::{self, LogHist};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::snapshot::{Counters, Snapshot};

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

/// Loaded and attached probes.
pub struct Probes {
    skel: SkprofSkel<'static>,
    links: Vec<Link>,
    kind: ProbeKind,
    helpers: Vec<Helper>,
    prog_fds: Vec<i32>,
    start: Instant,
    /// Why fentry was not used in `ProbeMode::Auto`, when it was not.
    pub fallback_reason: Option<String>,
}

impl Probes {
    /// Loads and attaches the probes in the requested mode.
    pub fn load(mode: ProbeMode, funcs: &KernelFunctions) -> Result<Probes> {
        match mode {
            ProbeMode::Fentry => Probes::load_kind(ProbeKind::Fentry, funcs),
            ProbeMode::Kprobe => Probes::load_kind(ProbeKind::Kprobe, funcs),
            ProbeMode::Auto => match Probes::load_kind(ProbeKind::Fentry, funcs) {
                Ok(p) => Ok(p),
                Err(fentry_err) => match Probes::load_kind(ProbeKind::Kprobe, funcs) {
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
    pub fn load_kind(kind: ProbeKind, funcs: &KernelFunctions) -> Result<Probes> {
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
            links.push(link);
            prog_fds.push(prog.as_fd().as_raw_fd());
        }
        Ok(Probes {
            skel,
            links,
            kind,
            helpers,
            prog_fds,
            start: Instant::now(),
            fallback_reason: None,
        })
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The helper functions being traced.
    pub fn helpers(&self) -> &[Helper] {
        &self.helpers
    }

    /// Number of attached programs.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Reads every map, merging the per-CPU values.
    pub fn read(&self) -> Result<Snapshot> {
        let mono_ns = self.start.elapsed().as_nanos() as u64;
        let mut hists = Vec::with_capacity(Helper::COUNT * Outcome::COUNT);
        let mut dense = vec![0u64; hist::SLOTS];
        for key in 0..(Helper::COUNT * Outcome::COUNT) as u32 {
            let per_cpu = self
                .skel
                .maps
                .hists
                .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("read map hists[{key}]"))?
                .unwrap_or_default();
            dense.iter_mut().for_each(|d| *d = 0);
            let (mut count, mut sum, mut max, mut overflow) = (0u64, 0u64, 0u64, 0u64);
            for bytes in &per_cpu {
                let h: types::skprof_hist = read_pod(bytes)?;
                count += h.count;
                sum += h.sum_ns;
                max = max.max(h.max_ns);
                overflow += h.overflow;
                for (d, s) in dense.iter_mut().zip(h.slots.iter()) {
                    *d += s;
                }
            }
            hists.push(LogHist::from_dense(count, sum, max, overflow, &dense));
        }
        let per_cpu = self
            .skel
            .maps
            .counters
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("read map counters")?
            .unwrap_or_default();
        let mut counters = Counters::default();
        for bytes in &per_cpu {
            let c: types::skprof_counters = read_pod(bytes)?;
            counters.merge(&Counters {
                hits: c.hits,
                acquired: c.acquired,
                released: c.released,
                release_noop: c.release_noop,
                release_null: c.release_null,
                unmatched_exit: c.unmatched_exit,
                evicted_entry: c.evicted_entry,
            });
        }
        Ok(Snapshot {
            mono_ns,
            hists,
            counters,
            recursion_misses: self.recursion_misses(),
        })
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
        assert_eq!(c.hits.len(), Helper::COUNT);
        assert_eq!(c.hits[0].len(), SockClass::COUNT);
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
