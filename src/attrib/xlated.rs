//! Which lookup helpers a loaded program calls, from its xlated
//! instructions (`BPF_OBJ_GET_INFO_BY_FD`).
//!
//! After verification the kernel rewrites every helper call's `imm` from
//! the helper id to `helper function - __bpf_call_base`
//! (`do_misc_fixups()` in kernel/bpf/verifier.c), and the function is the
//! one the program type's `get_func_proto` chose: that is how a tc
//! program's `bpf_sk_lookup_tcp()` call can be told from an XDP one and
//! lands on `bpf_tc_sk_lookup_tcp` on 6.5+ kernels. `bpf_insn_prepare_dump()`
//! (kernel/bpf/syscall.c) keeps that `imm` for callers allowed to see
//! kernel addresses (root) and zeroes it otherwise. So the call target is
//! `__bpf_call_base + imm`, resolved against /proc/kallsyms, exactly as
//! bpftool's xlated dumper (`print_call_helper`) does.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use crate::kernel::{kallsyms_addrs, CALL_BASE_SYM, RELEASE_FN};
use crate::model::ids::Helper;

/// `BPF_JMP | BPF_CALL`.
pub const CALL: u8 = 0x85;
/// `BPF_LD | BPF_IMM | BPF_DW`: the only two-slot instruction.
pub const LD_IMM64: u8 = 0x18;
/// Size of `struct bpf_insn`.
pub const INSN_SIZE: usize = 8;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst_reg: u8,
    pub src_reg: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// Decodes one instruction in the host's byte order, as the kernel
    /// hands them out (`dst_reg:4, src_reg:4` is a C bitfield: low nibble
    /// first on little-endian machines, high nibble first on big-endian).
    pub fn from_bytes(b: [u8; INSN_SIZE]) -> Insn {
        let (dst_reg, src_reg) = if cfg!(target_endian = "little") {
            (b[1] & 0x0f, b[1] >> 4)
        } else {
            (b[1] >> 4, b[1] & 0x0f)
        };
        Insn {
            code: b[0],
            dst_reg,
            src_reg,
            off: i16::from_ne_bytes([b[2], b[3]]),
            imm: i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// A call to a helper: `src_reg` 0 (1 is a BPF-to-BPF call, 2 a kfunc).
    pub fn is_helper_call(&self) -> bool {
        self.code == CALL && self.src_reg == 0
    }
}

/// Decodes a program's xlated instructions (trailing partial bytes, which
/// the kernel never produces, are ignored).
pub fn decode(xlated: &[u8]) -> Vec<Insn> {
    xlated
        .chunks_exact(INSN_SIZE)
        .map(|c| {
            let mut b = [0u8; INSN_SIZE];
            b.copy_from_slice(c);
            Insn::from_bytes(b)
        })
        .collect()
}

/// The distinct `imm`s of helper calls, skipping the second half of every
/// 64-bit immediate load (its bytes are data, not an instruction).
pub fn helper_call_imms(insns: &[Insn]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < insns.len() {
        let insn = insns[i];
        if insn.is_helper_call() && !out.contains(&insn.imm) {
            out.push(insn.imm);
        }
        i += if insn.code == LD_IMM64 { 2 } else { 1 };
    }
    out
}

/// A kernel function a program may call that we care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallTarget {
    Lookup(Helper),
    Release,
}

/// Addresses of `__bpf_call_base`, the lookup helpers and `bpf_sk_release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperAddrs {
    pub call_base: u64,
    pub targets: HashMap<u64, CallTarget>,
}

impl HelperAddrs {
    /// From the text of /proc/kallsyms. Fails when `__bpf_call_base` is
    /// missing or the addresses are hidden (all zero: not root, or
    /// `kernel.kptr_restrict` = 2), since nothing could be resolved then.
    pub fn from_kallsyms(text: &str) -> Result<HelperAddrs> {
        let wanted: Vec<&str> = Helper::ALL
            .iter()
            .map(|h| h.function())
            .chain([RELEASE_FN])
            .collect();
        HelperAddrs::from_symbols(&kallsyms_addrs(text, &wanted))
    }

    /// From the symbol addresses [`KernelFunctions`](crate::kernel::KernelFunctions)
    /// read at start-up; fails as [`HelperAddrs::from_kallsyms`].
    pub fn from_symbols(addrs: &BTreeMap<String, u64>) -> Result<HelperAddrs> {
        let mut targets = HashMap::new();
        for (name, &addr) in addrs {
            if name == RELEASE_FN {
                targets.insert(addr, CallTarget::Release);
            } else if let Some(h) = Helper::from_function(name) {
                targets.insert(addr, CallTarget::Lookup(h));
            }
        }
        let Some(&call_base) = addrs.get(CALL_BASE_SYM) else {
            bail!("/proc/kallsyms has no {CALL_BASE_SYM}: helper calls cannot be resolved");
        };
        if call_base == 0 || targets.keys().any(|&a| a == 0) {
            bail!(
                "/proc/kallsyms hides kernel addresses (needs root and kernel.kptr_restrict < 2): \
                 helper calls cannot be resolved"
            );
        }
        Ok(HelperAddrs { call_base, targets })
    }

    /// The traced functions' addresses, the lookup helpers in `Helper`
    /// order and then `bpf_sk_release` (0: not in this kernel), as the
    /// probes' call-site check takes them.
    pub fn site_fns(&self) -> [u64; Helper::COUNT + 1] {
        let mut out = [0; Helper::COUNT + 1];
        for (&addr, t) in &self.targets {
            match t {
                CallTarget::Lookup(h) => out[h.index()] = addr,
                CallTarget::Release => out[Helper::COUNT] = addr,
            }
        }
        out
    }

    /// The function a helper call with this `imm` lands in, if it is one
    /// of ours. `imm` is a signed 32-bit offset from `__bpf_call_base`.
    pub fn resolve(&self, imm: i32) -> Option<CallTarget> {
        let addr = self.call_base.wrapping_add(imm as i64 as u64);
        self.targets.get(&addr).copied()
    }
}

/// The lookup helpers a program calls and whether it calls `bpf_sk_release`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelperCalls {
    /// Sorted, distinct.
    pub helpers: Vec<Helper>,
    pub sk_release: bool,
}

impl HelperCalls {
    /// Whether the program calls none of the functions we trace.
    pub fn is_empty(&self) -> bool {
        self.helpers.is_empty() && !self.sk_release
    }
}

/// Scans a program's xlated instructions for calls to the traced functions.
pub fn scan(xlated: &[u8], addrs: &HelperAddrs) -> HelperCalls {
    let mut calls = HelperCalls::default();
    for imm in helper_call_imms(&decode(xlated)) {
        match addrs.resolve(imm) {
            Some(CallTarget::Lookup(h)) => calls.helpers.push(h),
            Some(CallTarget::Release) => calls.sk_release = true,
            None => {}
        }
    }
    calls.helpers.sort();
    calls.helpers.dedup();
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes an instruction the way the kernel lays it out on this host.
    fn enc(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (src << 4) | (dst & 0x0f)
        } else {
            (dst << 4) | (src & 0x0f)
        };
        let mut b = [code, regs, 0, 0, 0, 0, 0, 0];
        b[2..4].copy_from_slice(&off.to_ne_bytes());
        b[4..8].copy_from_slice(&imm.to_ne_bytes());
        b
    }

    fn prog(insns: &[[u8; 8]]) -> Vec<u8> {
        insns.iter().flatten().copied().collect()
    }

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff814ca650 T __bpf_call_base
ffffffff81c01000 T bpf_sk_lookup_tcp
ffffffff81c02000 T bpf_tc_sk_lookup_udp
ffffffff81c03000 t bpf_xdp_skc_lookup_tcp
ffffffff81c04000 T bpf_sk_release
ffffffff81c05000 T bpf_sock_addr_sk_lookup_tcp
ffffffffc0001000 t bpf_sk_lookup_udp\t[some_module]
ffffffff81c06000 D bpf_sk_lookup_udp_proto
ffffffff81400000 T bpf_map_lookup_elem
";

    #[test]
    fn decodes_fields_in_host_order() {
        let b = enc(CALL, 3, 0, -2, 0x1234_5678);
        let i = Insn::from_bytes(b);
        assert_eq!(
            i,
            Insn {
                code: CALL,
                dst_reg: 3,
                src_reg: 0,
                off: -2,
                imm: 0x1234_5678
            }
        );
        assert!(i.is_helper_call());
        // BPF-to-BPF call (src_reg 1) and kfunc call (src_reg 2) are not
        // helper calls.
        assert!(!Insn::from_bytes(enc(CALL, 0, 1, 0, 5)).is_helper_call());
        assert!(!Insn::from_bytes(enc(CALL, 0, 2, 0, 5)).is_helper_call());
        // A trailing partial instruction is ignored.
        let mut bytes = prog(&[enc(0xb7, 0, 0, 0, 1)]);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(&bytes).len(), 1);
    }

    #[test]
    fn little_endian_bitfield_layout() {
        if cfg!(target_endian = "little") {
            // r1 = r10 (BPF_ALU64 | BPF_MOV | BPF_X): dst 1, src 10.
            let i = Insn::from_bytes([0xbf, 0xa1, 0, 0, 0, 0, 0, 0]);
            assert_eq!((i.dst_reg, i.src_reg), (1, 10));
            // call -0x1000 as the kernel stores it.
            let i = Insn::from_bytes([0x85, 0x00, 0, 0, 0x00, 0xf0, 0xff, 0xff]);
            assert_eq!(i.imm, -0x1000);
        }
    }

    #[test]
    fn parses_kallsyms_and_resolves_calls() {
        let a = HelperAddrs::from_kallsyms(KALLSYMS).unwrap();
        assert_eq!(a.call_base, 0xffffffff814ca650);
        // Text symbols of vmlinux only: the module copy and the data
        // symbol are left out.
        assert_eq!(a.targets.len(), 5);
        let off = |addr: u64| (addr.wrapping_sub(a.call_base)) as i64 as i32;
        assert_eq!(
            a.resolve(off(0xffffffff81c01000)),
            Some(CallTarget::Lookup(Helper::SkLookupTcp))
        );
        assert_eq!(
            a.resolve(off(0xffffffff81c03000)),
            Some(CallTarget::Lookup(Helper::XdpSkcLookupTcp))
        );
        assert_eq!(
            a.resolve(off(0xffffffff81c04000)),
            Some(CallTarget::Release)
        );
        assert_eq!(a.resolve(off(0xffffffff81400000)), None);
        // A negative offset: a helper below __bpf_call_base.
        let below = "ffffffff814ca650 T __bpf_call_base\nffffffff81000010 T bpf_sk_release\n";
        let b = HelperAddrs::from_kallsyms(below).unwrap();
        assert_eq!(
            b.resolve((0xffffffff81000010u64.wrapping_sub(b.call_base)) as i64 as i32),
            Some(CallTarget::Release)
        );
    }

    #[test]
    fn kallsyms_without_base_or_addresses_is_refused() {
        let e = HelperAddrs::from_kallsyms("ffffffff81c01000 T bpf_sk_lookup_tcp\n").unwrap_err();
        assert!(e.to_string().contains("__bpf_call_base"), "{e}");
        let hidden = "0000000000000000 T __bpf_call_base\n0000000000000000 T bpf_sk_release\n";
        let e = HelperAddrs::from_kallsyms(hidden).unwrap_err();
        assert!(e.to_string().contains("hides kernel addresses"), "{e}");
    }

    #[test]
    fn scans_a_program() {
        let a = HelperAddrs::from_kallsyms(KALLSYMS).unwrap();
        let off = |addr: u64| (addr.wrapping_sub(a.call_base)) as i64 as i32;
        let lookup_udp = off(0xffffffff81c02000);
        let release = off(0xffffffff81c04000);
        let map_lookup = off(0xffffffff81400000);
        // An ld_imm64 whose second half happens to look like a helper call
        // must not count: its bytes are the upper 32 bits of the constant.
        let fake = enc(CALL, 0, 0, 0, off(0xffffffff81c05000));
        let ld = enc(LD_IMM64, 1, 0, 0, 7);
        let p = prog(&[
            enc(0xb7, 2, 0, 0, 12),
            ld,
            fake,
            enc(CALL, 0, 0, 0, map_lookup),
            enc(CALL, 0, 0, 0, lookup_udp),
            enc(CALL, 0, 1, 0, release), // a BPF-to-BPF call, not a helper
            enc(CALL, 0, 0, 0, lookup_udp),
            enc(0x95, 0, 0, 0, 0),
        ]);
        let calls = scan(&p, &a);
        assert_eq!(calls.helpers, vec![Helper::TcSkLookupUdp]);
        assert!(!calls.sk_release);
        assert!(!calls.is_empty());

        let p2 = prog(&[enc(CALL, 0, 0, 0, release), enc(0x95, 0, 0, 0, 0)]);
        let calls = scan(&p2, &a);
        assert!(calls.helpers.is_empty() && calls.sk_release);

        let p3 = prog(&[enc(CALL, 0, 0, 0, map_lookup), enc(0x95, 0, 0, 0, 0)]);
        assert!(scan(&p3, &a).is_empty());
    }

    #[test]
    fn distinct_imms_in_order() {
        let insns = decode(&prog(&[
            enc(CALL, 0, 0, 0, 5),
            enc(CALL, 0, 0, 0, 9),
            enc(CALL, 0, 0, 0, 5),
        ]));
        assert_eq!(helper_call_imms(&insns), vec![5, 9]);
    }
}
