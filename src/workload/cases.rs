//! The cases the workload performs, and what each must produce.
//!
//! Expected outcomes follow `__bpf_skc_lookup()` / `__bpf_sk_lookup()` in
//! net/core/filter.c and the `Outcome` semantics of bpf/skprof.h; the
//! programs' counters then confirm each case did exactly that.

use serde::Serialize;

use crate::model::ids::{Family, Outcome, Proto, SockClass};

/// `sizeof(bpf_sock_tuple.ipv4)` and `.ipv6`: the only valid `len`s.
pub const LEN_IPV4: u32 = 12;
pub const LEN_IPV6: u32 = 36;
/// A `len` that is neither: the helper returns NULL at once.
pub const BAD_LEN: u32 = 8;
/// BPF_F_CURRENT_NETNS: any negative s32 means the caller's netns.
pub const CURRENT_NETNS: u64 = u64::MAX;
/// Fails `(s32)netns_id < 0 || netns_id <= S32_MAX` for the u64 argument;
/// the XDP variants take a u32, which truncates it to netns id 0.
pub const BAD_NETNS: u64 = 0x1_0000_0000;
/// A valid netns id that no namespace has in the workload's netns: the
/// lookup fails in get_net_ns_by_id() (a "no socket" miss).
pub const UNKNOWN_NETNS: u64 = 0x7fff_ff00;
/// Any flag is refused.
pub const BAD_FLAGS: u64 = 1;

/// IP version of a case's tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ip {
    V4,
    V6,
}

/// The socket a case's tuple points at, in the workload's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A TCP listener (any source address and port).
    Listener,
    /// The server side of an accepted, established connection.
    Established,
    /// The client side of a connection it closed first: an
    /// inet_timewait_sock in TIME_WAIT.
    TimeWait,
    /// A request socket (NEW_SYN_RECV): the listener has TCP_DEFER_ACCEPT,
    /// so the client's bare final ACK is dropped and the request stays.
    Request,
    /// A bound, unconnected UDP socket.
    UdpBound,
    /// A port nothing is bound to.
    Unused,
}

/// What a lookup helper returns for a tuple pointing at `target` when the
/// other arguments are valid: the class of the socket, or `None` (NULL).
pub fn expected_hit(proto: Proto, target: Target) -> Option<SockClass> {
    match (proto, target) {
        (Proto::Tcp | Proto::SkcTcp, Target::Listener) => Some(SockClass::Listener),
        (Proto::Tcp | Proto::SkcTcp, Target::Established) => Some(SockClass::Established),
        // __bpf_sk_lookup(): sk_to_full_sk() of a timewait socket is not a
        // full socket, so the reference is dropped and NULL returned.
        (Proto::Tcp, Target::TimeWait) => None,
        (Proto::SkcTcp, Target::TimeWait) => Some(SockClass::TimeWait),
        // __bpf_sk_lookup(): the request's listener, without a reference.
        (Proto::Tcp, Target::Request) => Some(SockClass::Listener),
        (Proto::SkcTcp, Target::Request) => Some(SockClass::Request),
        (Proto::Udp, Target::UdpBound) => Some(SockClass::Udp),
        _ => None,
    }
}

/// The miss the arguments alone cause, in the order skprof.h lists them
/// (`__bpf_skc_lookup()` checks len, then flags and netns_id together).
/// `family` matters because the XDP variants declare `netns_id` as u32.
pub fn arg_outcome(family: Family, len: u32, netns_id: u64, flags: u64) -> Option<Outcome> {
    if len != LEN_IPV4 && len != LEN_IPV6 {
        return Some(Outcome::BadLen);
    }
    let netns_id = match family {
        Family::Xdp => u64::from(netns_id as u32),
        _ => netns_id,
    };
    if !((netns_id as i32) < 0 || netns_id <= i32::MAX as u64) {
        return Some(Outcome::BadNetns);
    }
    if flags != 0 {
        return Some(Outcome::BadFlags);
    }
    None
}

/// Whether a (valid) `netns_id` means the caller's netns: a negative s32,
/// after XDP's truncation to u32.
pub fn is_current_netns(family: Family, netns_id: u64) -> bool {
    let netns_id = match family {
        Family::Xdp => u64::from(netns_id as u32),
        _ => netns_id,
    };
    (netns_id as i32) < 0
}

/// The expected result of one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Expect {
    pub outcome: Outcome,
    /// For hits: the class of the returned socket.
    pub class: Option<SockClass>,
}

/// Which families run a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Only {
    All,
    /// Every family but XDP: there the u32 netns_id cannot be out of range.
    NotXdp,
    /// XDP only: the u32 truncation of netns_id.
    Xdp,
}

/// One case: a lookup with fixed arguments, run `count` times per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Case {
    pub name: &'static str,
    pub proto: Proto,
    pub ip: Ip,
    pub target: Target,
    /// `len` argument; `None`: the tuple's real size (12 or 36).
    pub len: Option<u32>,
    pub netns_id: u64,
    pub flags: u64,
    pub only: Only,
}

impl Case {
    const fn new(name: &'static str, proto: Proto, ip: Ip, target: Target) -> Case {
        Case {
            name,
            proto,
            ip,
            target,
            len: None,
            netns_id: CURRENT_NETNS,
            flags: 0,
            only: Only::All,
        }
    }
    const fn len(mut self, len: u32) -> Case {
        self.len = Some(len);
        self
    }
    const fn netns(mut self, id: u64, only: Only) -> Case {
        self.netns_id = id;
        self.only = only;
        self
    }
    const fn flags(mut self, flags: u64) -> Case {
        self.flags = flags;
        self
    }

    /// The `len` argument passed to the helper.
    pub fn len_arg(&self) -> u32 {
        self.len.unwrap_or(match self.ip {
            Ip::V4 => LEN_IPV4,
            Ip::V6 => LEN_IPV6,
        })
    }

    pub fn applies(&self, family: Family, has_ipv6: bool) -> bool {
        if self.ip == Ip::V6 && !has_ipv6 {
            return false;
        }
        match self.only {
            Only::All => true,
            Only::NotXdp => family != Family::Xdp,
            Only::Xdp => family == Family::Xdp,
        }
    }

    /// What one lookup of this case returns when run by `family`.
    pub fn expect(&self, family: Family) -> Expect {
        if let Some(outcome) = arg_outcome(family, self.len_arg(), self.netns_id, self.flags) {
            return Expect {
                outcome,
                class: None,
            };
        }
        if !is_current_netns(family, self.netns_id) {
            // A lookup in the netns with that id (get_net_ns_by_id()); the
            // workload's netns has given no id to any netns, so there is
            // none: NULL.
            return Expect {
                outcome: Outcome::NoSocket,
                class: None,
            };
        }
        match expected_hit(self.proto, self.target) {
            Some(class) => Expect {
                outcome: Outcome::Hit,
                class: Some(class),
            },
            None => Expect {
                outcome: Outcome::NoSocket,
                class: None,
            },
        }
    }
}

use Ip::{V4, V6};
use Proto::{SkcTcp, Tcp, Udp};
use Target::*;

/// Every case, in the order a round runs them (per family).
pub const CASES: &[Case] = &[
    // Hits and plain misses, IPv4.
    Case::new("tcp/listener", Tcp, V4, Listener),
    Case::new("tcp/established", Tcp, V4, Established),
    Case::new("tcp/time_wait", Tcp, V4, TimeWait),
    Case::new("tcp/request", Tcp, V4, Request),
    Case::new("tcp/no_socket", Tcp, V4, Unused),
    Case::new("udp/bound", Udp, V4, UdpBound),
    Case::new("udp/no_socket", Udp, V4, Unused),
    Case::new("skc_tcp/listener", SkcTcp, V4, Listener),
    Case::new("skc_tcp/established", SkcTcp, V4, Established),
    Case::new("skc_tcp/time_wait", SkcTcp, V4, TimeWait),
    Case::new("skc_tcp/request", SkcTcp, V4, Request),
    Case::new("skc_tcp/no_socket", SkcTcp, V4, Unused),
    // Argument misses, aimed at a live socket so the arguments alone miss.
    Case::new("tcp/bad_len", Tcp, V4, Listener).len(BAD_LEN),
    Case::new("tcp/bad_netns", Tcp, V4, Listener).netns(BAD_NETNS, Only::NotXdp),
    Case::new("tcp/netns_u32_truncated", Tcp, V4, Listener).netns(BAD_NETNS, Only::Xdp),
    Case::new("tcp/unknown_netns", Tcp, V4, Listener).netns(UNKNOWN_NETNS, Only::All),
    Case::new("tcp/bad_flags", Tcp, V4, Listener).flags(BAD_FLAGS),
    Case::new("udp/bad_len", Udp, V4, UdpBound).len(BAD_LEN),
    Case::new("udp/bad_netns", Udp, V4, UdpBound).netns(BAD_NETNS, Only::NotXdp),
    Case::new("udp/netns_u32_truncated", Udp, V4, UdpBound).netns(BAD_NETNS, Only::Xdp),
    Case::new("udp/unknown_netns", Udp, V4, UdpBound).netns(UNKNOWN_NETNS, Only::All),
    Case::new("udp/bad_flags", Udp, V4, UdpBound).flags(BAD_FLAGS),
    Case::new("skc_tcp/bad_len", SkcTcp, V4, Listener).len(BAD_LEN),
    Case::new("skc_tcp/bad_netns", SkcTcp, V4, Listener).netns(BAD_NETNS, Only::NotXdp),
    Case::new("skc_tcp/netns_u32_truncated", SkcTcp, V4, Listener).netns(BAD_NETNS, Only::Xdp),
    Case::new("skc_tcp/unknown_netns", SkcTcp, V4, Listener).netns(UNKNOWN_NETNS, Only::All),
    Case::new("skc_tcp/bad_flags", SkcTcp, V4, Listener).flags(BAD_FLAGS),
    // IPv6 (len 36), when ::1 is usable.
    Case::new("tcp/listener6", Tcp, V6, Listener),
    Case::new("udp/bound6", Udp, V6, UdpBound),
    Case::new("skc_tcp/established6", SkcTcp, V6, Established),
    Case::new("tcp/no_socket6", Tcp, V6, Unused),
];

/// The cases `family` runs, in order.
pub fn cases_for(family: Family, has_ipv6: bool) -> impl Iterator<Item = &'static Case> {
    CASES.iter().filter(move |c| c.applies(family, has_ipv6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn argument_checks_follow_the_kernel() {
        use Family::*;
        assert_eq!(arg_outcome(Tc, 12, CURRENT_NETNS, 0), None);
        assert_eq!(arg_outcome(Tc, 36, 0, 0), None);
        assert_eq!(arg_outcome(Tc, 8, CURRENT_NETNS, 0), Some(Outcome::BadLen));
        assert_eq!(arg_outcome(Tc, 13, CURRENT_NETNS, 1), Some(Outcome::BadLen));
        assert_eq!(
            arg_outcome(Generic, 12, BAD_NETNS, 0),
            Some(Outcome::BadNetns)
        );
        assert_eq!(arg_outcome(SockAddr, 12, i32::MAX as u64, 0), None);
        assert_eq!(
            arg_outcome(SockAddr, 12, i32::MAX as u64 + 1, 0),
            None,
            "(s32) < 0"
        );
        assert_eq!(arg_outcome(SockAddr, 12, 0xffff_ffff, 0), None, "(s32) -1");
        assert_eq!(
            arg_outcome(Tc, 12, CURRENT_NETNS, BAD_FLAGS),
            Some(Outcome::BadFlags)
        );
        // XDP: a u32 is never out of range, whatever the upper half was.
        assert_eq!(arg_outcome(Xdp, 12, BAD_NETNS, 0), None);
        assert_eq!(arg_outcome(Xdp, 12, 0x1_8000_0000, 0), None);
        assert_eq!(
            arg_outcome(Xdp, 12, CURRENT_NETNS, BAD_FLAGS),
            Some(Outcome::BadFlags)
        );
    }

    #[test]
    fn expectations() {
        let by_name = |n: &str| CASES.iter().find(|c| c.name == n).unwrap();
        let hit = |c| Expect {
            outcome: Outcome::Hit,
            class: Some(c),
        };
        let miss = |o| Expect {
            outcome: o,
            class: None,
        };
        for f in [Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr] {
            assert_eq!(by_name("tcp/time_wait").expect(f), miss(Outcome::NoSocket));
            assert_eq!(
                by_name("skc_tcp/time_wait").expect(f),
                hit(SockClass::TimeWait)
            );
            assert_eq!(by_name("tcp/request").expect(f), hit(SockClass::Listener));
            assert_eq!(
                by_name("skc_tcp/request").expect(f),
                hit(SockClass::Request)
            );
            assert_eq!(by_name("udp/bound6").expect(f), hit(SockClass::Udp));
            assert_eq!(by_name("udp/bad_len").expect(f), miss(Outcome::BadLen));
            assert_eq!(
                by_name("skc_tcp/unknown_netns").expect(f),
                miss(Outcome::NoSocket)
            );
            assert_eq!(by_name("tcp/bad_flags").expect(f), miss(Outcome::BadFlags));
        }
        assert_eq!(
            by_name("tcp/bad_netns").expect(Family::Tc),
            miss(Outcome::BadNetns)
        );
        assert_eq!(
            by_name("tcp/netns_u32_truncated").expect(Family::Xdp),
            miss(Outcome::NoSocket)
        );
        assert_eq!(by_name("tcp/listener6").len_arg(), 36);
        assert!(is_current_netns(Family::Xdp, CURRENT_NETNS));
        assert!(is_current_netns(Family::Tc, 0xffff_ffff), "(s32) -1");
        assert!(!is_current_netns(Family::Xdp, BAD_NETNS), "u32 0 is an id");
        assert!(!is_current_netns(Family::Tc, UNKNOWN_NETNS));
        assert_eq!(by_name("tcp/listener").len_arg(), 12);
    }

    #[test]
    fn applicability() {
        let n = |f, v6| cases_for(f, v6).count();
        assert_eq!(n(Family::Tc, true), n(Family::Xdp, true));
        assert_eq!(n(Family::Tc, true), n(Family::Tc, false) + 4);
        assert!(cases_for(Family::Xdp, true)
            .all(|c| c.expect(Family::Xdp).outcome != Outcome::BadNetns));
        assert_eq!(
            cases_for(Family::SockAddr, true)
                .filter(|c| c.expect(Family::SockAddr).outcome == Outcome::BadNetns)
                .count(),
            3
        );
        // Every proto and every outcome is exercised by every family but
        // XDP, which cannot produce bad_netns.
        for f in [Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr] {
            for p in [Proto::Tcp, Proto::Udp, Proto::SkcTcp] {
                for o in Outcome::ALL {
                    let seen =
                        cases_for(f, false).any(|c| c.proto == p && c.expect(f).outcome == o);
                    assert_eq!(
                        seen,
                        !(f == Family::Xdp && o == Outcome::BadNetns),
                        "{f:?} {p:?} {o:?}"
                    );
                }
            }
        }
    }
}
