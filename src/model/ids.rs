//! Names for the indices used in the BPF maps (`bpf/skprof.h`).
//!
//! The numeric values are the C enum values; `tests` in `crate::bpf` check
//! them against the skeleton's generated enums so the two cannot drift.

use serde::Serialize;

/// Program families that can call a lookup helper, each landing in its own
/// kernel function (see `Helper::for_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// The generic functions: cgroup_skb, sk_skb, and tc on kernels without
    /// the `bpf_tc_*` variants.
    Generic,
    Tc,
    Xdp,
    SockAddr,
}

/// Which lookup a program asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// `bpf_sk_lookup_tcp`
    Tcp,
    /// `bpf_sk_lookup_udp`
    Udp,
    /// `bpf_skc_lookup_tcp`
    SkcTcp,
}

/// A traced kernel function implementing a lookup helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Helper {
    SkLookupTcp = 0,
    SkLookupUdp,
    SkcLookupTcp,
    TcSkLookupTcp,
    TcSkLookupUdp,
    TcSkcLookupTcp,
    XdpSkLookupTcp,
    XdpSkLookupUdp,
    XdpSkcLookupTcp,
    SockAddrSkLookupTcp,
    SockAddrSkLookupUdp,
    SockAddrSkcLookupTcp,
}

impl Helper {
    pub const COUNT: usize = 12;
    pub const ALL: [Helper; Helper::COUNT] = [
        Helper::SkLookupTcp,
        Helper::SkLookupUdp,
        Helper::SkcLookupTcp,
        Helper::TcSkLookupTcp,
        Helper::TcSkLookupUdp,
        Helper::TcSkcLookupTcp,
        Helper::XdpSkLookupTcp,
        Helper::XdpSkLookupUdp,
        Helper::XdpSkcLookupTcp,
        Helper::SockAddrSkLookupTcp,
        Helper::SockAddrSkLookupUdp,
        Helper::SockAddrSkcLookupTcp,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Helper> {
        Helper::ALL.get(i).copied()
    }

    /// The kernel function name (BTF / kallsyms symbol).
    pub fn function(self) -> &'static str {
        match self {
            Helper::SkLookupTcp => "bpf_sk_lookup_tcp",
            Helper::SkLookupUdp => "bpf_sk_lookup_udp",
            Helper::SkcLookupTcp => "bpf_skc_lookup_tcp",
            Helper::TcSkLookupTcp => "bpf_tc_sk_lookup_tcp",
            Helper::TcSkLookupUdp => "bpf_tc_sk_lookup_udp",
            Helper::TcSkcLookupTcp => "bpf_tc_skc_lookup_tcp",
            Helper::XdpSkLookupTcp => "bpf_xdp_sk_lookup_tcp",
            Helper::XdpSkLookupUdp => "bpf_xdp_sk_lookup_udp",
            Helper::XdpSkcLookupTcp => "bpf_xdp_skc_lookup_tcp",
            Helper::SockAddrSkLookupTcp => "bpf_sock_addr_sk_lookup_tcp",
            Helper::SockAddrSkLookupUdp => "bpf_sock_addr_sk_lookup_udp",
            Helper::SockAddrSkcLookupTcp => "bpf_sock_addr_skc_lookup_tcp",
        }
    }

    pub fn from_function(name: &str) -> Option<Helper> {
        Helper::ALL.into_iter().find(|h| h.function() == name)
    }

    pub fn family(self) -> Family {
        match self.index() / 3 {
            0 => Family::Generic,
            1 => Family::Tc,
            2 => Family::Xdp,
            _ => Family::SockAddr,
        }
    }

    pub fn proto(self) -> Proto {
        match self.index() % 3 {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => Proto::SkcTcp,
        }
    }

    /// The function a program of `family` lands in when it calls the `proto`
    /// lookup. `has_tc_variants`: whether the kernel has `bpf_tc_*` (6.5+,
    /// backported into later 6.1.y); without them tc calls the generic ones.
    pub fn for_call(family: Family, proto: Proto, has_tc_variants: bool) -> Helper {
        let family = match family {
            Family::Tc if !has_tc_variants => Family::Generic,
            f => f,
        };
        let base = match family {
            Family::Generic => 0,
            Family::Tc => 3,
            Family::Xdp => 6,
            Family::SockAddr => 9,
        };
        let off = match proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::SkcTcp => 2,
        };
        Helper::ALL[base + off]
    }
}

/// How a lookup ended (`enum skprof_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Hit = 0,
    NoSocket,
    BadLen,
    BadNetns,
    BadFlags,
}

impl Outcome {
    pub const COUNT: usize = 5;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Hit,
        Outcome::NoSocket,
        Outcome::BadLen,
        Outcome::BadNetns,
        Outcome::BadFlags,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Outcome> {
        Outcome::ALL.get(i).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::NoSocket => "no_socket",
            Outcome::BadLen => "bad_len",
            Outcome::BadNetns => "bad_netns",
            Outcome::BadFlags => "bad_flags",
        }
    }
}

/// Kind of socket returned by a lookup or given to `bpf_sk_release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SockClass {
    Listener = 0,
    Established,
    TimeWait,
    Request,
    Udp,
    Other,
}

impl SockClass {
    pub const COUNT: usize = 6;
    pub const ALL: [SockClass; SockClass::COUNT] = [
        SockClass::Listener,
        SockClass::Established,
        SockClass::TimeWait,
        SockClass::Request,
        SockClass::Udp,
        SockClass::Other,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            SockClass::Listener => "listener",
            SockClass::Established => "established",
            SockClass::TimeWait => "time_wait",
            SockClass::Request => "request",
            SockClass::Udp => "udp",
            SockClass::Other => "other",
        }
    }

    /// Whether a lookup returning this class takes a reference (kernel-side
    /// `sk_is_refcounted`: not a full socket, or SOCK_RCU_FREE clear).
    pub fn refcounted(self) -> bool {
        matches!(
            self,
            SockClass::Established | SockClass::TimeWait | SockClass::Request
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_index_round_trip_and_names_unique() {
        for (i, h) in Helper::ALL.iter().enumerate() {
            assert_eq!(h.index(), i);
            assert_eq!(Helper::from_index(i), Some(*h));
            assert_eq!(Helper::from_function(h.function()), Some(*h));
            assert_eq!(Helper::for_call(h.family(), h.proto(), true), *h);
        }
        assert_eq!(Helper::from_index(Helper::COUNT), None);
    }

    #[test]
    fn tc_falls_back_to_generic_without_tc_variants() {
        assert_eq!(
            Helper::for_call(Family::Tc, Proto::Udp, false),
            Helper::SkLookupUdp
        );
        assert_eq!(
            Helper::for_call(Family::Tc, Proto::SkcTcp, true),
            Helper::TcSkcLookupTcp
        );
        assert_eq!(
            Helper::for_call(Family::Xdp, Proto::Tcp, false),
            Helper::XdpSkLookupTcp
        );
    }
}
