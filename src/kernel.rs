//! What the running kernel offers: its release, BTF, which helper functions
//! exist (BTF for fentry, kallsyms for kprobes), and our privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::ids::Helper;

/// The release function every probe set also traces.
pub const RELEASE_FN: &str = "bpf_sk_release";

/// Kernel functions the probes can attach to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelFunctions {
    /// Present as BTF `FUNC`s (fentry/fexit can attach).
    pub btf: BTreeSet<String>,
    /// Present in /proc/kallsyms as text symbols (kprobes can attach).
    pub kallsyms: BTreeSet<String>,
    /// Why BTF could not be read, if it could not.
    pub btf_error: Option<String>,
    /// Addresses of the built-in text symbols among the traced functions
    /// and `__bpf_call_base`, as /proc/kallsyms gave them (zero when
    /// hidden): what call-site capture and attribution resolve against.
    /// Kept from the one read at start-up, since producing /proc/kallsyms
    /// takes the kernel a second under emulation and it is the same text.
    #[serde(skip)]
    pub addrs: BTreeMap<String, u64>,
    /// Why /proc/kallsyms could not be read, if it could not.
    #[serde(skip)]
    pub kallsyms_error: Option<String>,
}

impl KernelFunctions {
    pub fn discover() -> KernelFunctions {
        let wanted: Vec<&str> = Helper::ALL
            .iter()
            .map(|h| h.function())
            .chain([RELEASE_FN])
            .collect();
        let (btf, btf_error) = match btf_functions(&wanted) {
            Ok(set) => (set, None),
            Err(e) => (BTreeSet::new(), Some(format!("{e:#}"))),
        };
        let (kallsyms, addrs, kallsyms_error) = match fs::read_to_string("/proc/kallsyms") {
            Ok(text) => (
                kallsyms_functions(&text, &wanted),
                kallsyms_addrs(&text, &wanted),
                None,
            ),
            Err(e) => (
                BTreeSet::new(),
                BTreeMap::new(),
                Some(format!("read /proc/kallsyms: {e}")),
            ),
        };
        KernelFunctions {
            btf,
            kallsyms,
            btf_error,
            addrs,
            kallsyms_error,
        }
    }

    /// Helpers that fentry/fexit can trace here.
    pub fn btf_helpers(&self) -> Vec<Helper> {
        Helper::ALL
            .into_iter()
            .filter(|h| self.btf.contains(h.function()))
            .collect()
    }

    /// Helpers that kprobes can trace here.
    pub fn kallsyms_helpers(&self) -> Vec<Helper> {
        Helper::ALL
            .into_iter()
            .filter(|h| self.kallsyms.contains(h.function()))
            .collect()
    }

    /// Whether tc programs land in `bpf_tc_*` (6.5+, some 6.1.y) rather
    /// than the generic functions.
    pub fn has_tc_variants(&self) -> bool {
        self.btf.contains(Helper::TcSkLookupTcp.function())
            || self.kallsyms.contains(Helper::TcSkLookupTcp.function())
    }
}

fn btf_functions(wanted: &[&str]) -> Result<BTreeSet<String>> {
    let btf =
        libbpf_rs::btf::Btf::from_vmlinux().context("read kernel BTF /sys/kernel/btf/vmlinux")?;
    Ok(wanted
        .iter()
        .filter(|name| {
            btf.type_by_name::<libbpf_rs::btf::types::Func<'_>>(name)
                .is_some()
        })
        .map(|s| s.to_string())
        .collect())
}

/// Names from `wanted` that /proc/kallsyms lists as text symbols.
pub fn kallsyms_functions(text: &str, wanted: &[&str]) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            let (_addr, kind, name) = (it.next()?, it.next()?, it.next()?);
            let is_text = matches!(kind, "t" | "T");
            // A module symbol carries "[module]" after the name; the helpers
            // are built in, but accept both.
            (is_text && wanted.contains(&name)).then(|| name.to_string())
        })
        .collect()
}

/// Addresses of `wanted` and `__bpf_call_base` among /proc/kallsyms'
/// built-in text symbols (a module symbol carries "[module]" after its
/// name; the helpers are built into vmlinux).
pub fn kallsyms_addrs(text: &str, wanted: &[&str]) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            let (addr, kind, name) = (it.next()?, it.next()?, it.next()?);
            if !matches!(kind, "t" | "T") || it.next().is_some() {
                return None;
            }
            if name != CALL_BASE_SYM && !wanted.contains(&name) {
                return None;
            }
            Some((name.to_string(), u64::from_str_radix(addr, 16).ok()?))
        })
        .collect()
}

/// The symbol BPF helper calls are relative to: a call's `imm` is the
/// helper's address minus this one.
pub const CALL_BASE_SYM: &str = "__bpf_call_base";

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Effective capabilities relevant to loading tracing programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Privileges {
    pub euid_root: bool,
    pub cap_sys_admin: bool,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
}

impl Privileges {
    pub fn current() -> Privileges {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        Privileges::from_status(&status)
    }

    /// From the text of /proc/self/status (CapEff and Uid lines).
    /// Two lines, so parsed here: procfs's `Status` also requires Name, Pid,
    /// PPid and more, and fails whole when any of them does not parse.
    pub fn from_status(status: &str) -> Privileges {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
        };
        let cap_eff = u64::from_str_radix(field("CapEff:"), 16).unwrap_or(0);
        let euid = field("Uid:")
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        let bit = |n: u32| cap_eff & (1u64 << n) != 0;
        Privileges {
            euid_root: euid == Some(0),
            cap_sys_admin: bit(21),
            cap_perfmon: bit(38),
            cap_bpf: bit(39),
        }
    }

    /// Enough to load and attach tracing programs (CAP_SYS_ADMIN, or
    /// CAP_BPF + CAP_PERFMON since 5.8).
    pub fn sufficient(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_parsing_keeps_text_symbols_only() {
        let text = "ffffffff81e962b0 T bpf_tc_sk_lookup_tcp\n\
                    ffffffff81e96000 t bpf_sk_lookup_udp\n\
                    ffffffff82000000 D bpf_sk_release\n\
                    ffffffff81e96100 T bpf_sk_lookup_tcpx\n\
                    garbage\n";
        let got = kallsyms_functions(
            text,
            &[
                "bpf_tc_sk_lookup_tcp",
                "bpf_sk_lookup_udp",
                "bpf_sk_release",
                "bpf_sk_lookup_tcp",
            ],
        );
        let want: BTreeSet<String> = ["bpf_tc_sk_lookup_tcp", "bpf_sk_lookup_udp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn privileges_from_status() {
        let root = "Name:\tx\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
        let p = Privileges::from_status(root);
        assert!(p.euid_root && p.cap_bpf && p.cap_perfmon && p.sufficient());
        let user = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n";
        let p = Privileges::from_status(user);
        assert!(!p.euid_root && !p.sufficient());
        let bpf_only = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t000000c000000000\n";
        assert!(Privileges::from_status(bpf_only).sufficient());
    }

    #[test]
    fn tc_variants_detected_from_either_source() {
        let mut k = KernelFunctions::default();
        assert!(!k.has_tc_variants());
        k.kallsyms.insert("bpf_tc_sk_lookup_tcp".into());
        assert!(k.has_tc_variants());
    }
}
