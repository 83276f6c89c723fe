//! The reference ledger, user-space side: what the kernel's `ledger` map
//! holds (references traced lookups took and no `bpf_sk_release` dropped
//! yet) and the leak events of runs that ended holding one, turned into
//! leak reports. Pure: fed with readings, tested with recorded streams.
//!
//! On a correct kernel the verifier guarantees that a program releases every
//! reference it acquires before it exits, so a reference outstanding for
//! longer than any program run (the default threshold is 500 ms; runs take
//! microseconds) means either a kernel refcount bug of the kind fixed in
//! 5.19 (request sockets leaked by sk_lookup) or 5.5 (skc_lookup +
//! sk_release on TIME_WAIT/request sockets), or a release skprof did not see.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::sites::Site;

use super::ids::{Helper, SockClass};

/// The tuple a lookup was given (`struct bpf_sock_tuple`), as the program
/// passed it: source is the remote end, destination the local one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum Tuple {
    V4 {
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    V6 {
        saddr: Ipv6Addr,
        daddr: Ipv6Addr,
        sport: u16,
        dport: u16,
    },
    /// A length the kernel rejects anyway (it returned no socket then).
    Other { len: u8 },
}

impl Tuple {
    /// Decodes the first `len` bytes of a `struct bpf_sock_tuple` (network
    /// byte order addresses and ports).
    pub fn decode(bytes: &[u8], len: u8) -> Tuple {
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        match (len, bytes.len()) {
            (12, n) if n >= 12 => Tuple::V4 {
                saddr: Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
                daddr: Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]),
                sport: port(&bytes[8..10]),
                dport: port(&bytes[10..12]),
            },
            (36, n) if n >= 36 => {
                let a = |o: usize| {
                    let mut x = [0u8; 16];
                    x.copy_from_slice(&bytes[o..o + 16]);
                    Ipv6Addr::from(x)
                };
                Tuple::V6 {
                    saddr: a(0),
                    daddr: a(16),
                    sport: port(&bytes[32..34]),
                    dport: port(&bytes[34..36]),
                }
            }
            _ => Tuple::Other { len },
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tuple::V4 {
                saddr,
                daddr,
                sport,
                dport,
            } => write!(f, "{saddr}:{sport} -> {daddr}:{dport}"),
            Tuple::V6 {
                saddr,
                daddr,
                sport,
                dport,
            } => write!(f, "[{saddr}]:{sport} -> [{daddr}]:{dport}"),
            Tuple::Other { len } => write!(f, "(tuple of {len} bytes)"),
        }
    }
}

/// One ledger entry: a socket with references outstanding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutstandingRef {
    /// Kernel address of the socket (only an identity here).
    #[serde(skip)]
    pub sk: u64,
    /// CLOCK_MONOTONIC ns of the (latest) acquire.
    pub acquired_ns: u64,
    /// References outstanding on this socket.
    pub count: u32,
    /// Acquiring program's id, 0 when its caller is not traced.
    pub prog_id: u32,
    pub helper: Helper,
    pub class: SockClass,
    /// `skc_state` at the acquire (TCP state number).
    pub state: u8,
    pub tuple: Tuple,
    pub netns: u32,
    pub cpu: u16,
    /// Reference count just after the acquire (racy: a sanity figure).
    pub refcnt: u32,
    /// Kernel stack id at the acquire, negative when none was taken.
    pub stack_id: i32,
    /// `--sites`: the lookup's call site (0: unknown); groups show it
    /// resolved.
    #[serde(skip)]
    pub site: u64,
}

/// A run that ended still holding a reference it acquired (from the ring
/// buffer): the verifier's promise broken, or a release skprof missed.
/// The ledger's content at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerScan {
    /// CLOCK_MONOTONIC ns of the scan (the references' `acquired_ns` are on
    /// the same clock).
    pub now_ns: u64,
    /// Every outstanding reference. The ledger holds at most
    /// `--ledger-size` sockets, so this stays bounded.
    pub refs: Vec<OutstandingRef>,
}

impl LedgerScan {
    /// References outstanding for at least `age_ns` at the scan.
    pub fn older_than(&self, age_ns: u64) -> impl Iterator<Item = &OutstandingRef> {
        self.refs
            .iter()
            .filter(move |r| self.now_ns.saturating_sub(r.acquired_ns) >= age_ns)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunLeak {
    pub ts_ns: u64,
    pub prog_id: u32,
    /// Filled in by `LeakReport::build`.
    pub prog_name: String,
    #[serde(flatten)]
    pub reference: OutstandingRef,
    /// `--sites`: where the leaked reference was looked up (filled in by
    /// [`LeakReport::locate`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
}

/// Outstanding references grouped by (program, helper, stack).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakGroup {
    pub prog_id: u32,
    pub prog_name: String,
    pub helper: &'static str,
    pub stack_id: i32,
    /// `--sites`: the lookup's call site (0: unknown), a part of the
    /// group's key, and resolved (filled in by [`LeakReport::locate`]).
    #[serde(skip)]
    pub site_addr: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// The kernel stack of `stack_id`, innermost frame first, symbolized
    /// (with `--stacks`; see [`LeakReport::symbolize`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// Sockets in the group, and references they hold.
    pub sockets: u64,
    pub references: u64,
    pub oldest_age_ms: f64,
    /// Distinct tuples, at most `TUPLES_SHOWN`.
    pub tuples: Vec<String>,
    /// Distinct network namespaces (inode numbers) of the lookups, at
    /// most `TUPLES_SHOWN`.
    pub netns: Vec<u32>,
    /// Socket classes and states seen, e.g. "established(1)".
    pub states: Vec<String>,
}

/// How many tuples a group lists.
pub const TUPLES_SHOWN: usize = 8;

/// TCP state names for `skc_state`.
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// One leak scan: references older than the threshold, grouped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakReport {
    pub older_than_ms: f64,
    /// Sockets in the ledger (any age).
    pub outstanding_sockets: u64,
    /// Of those, older than the threshold.
    pub leaked_sockets: u64,
    pub leaked_references: u64,
    pub groups: Vec<LeakGroup>,
    /// Runs that ended holding a reference, since the last report.
    pub run_leaks: Vec<RunLeak>,
}

impl LeakReport {
    /// Names each group's kernel stack: `frames` gives a stack id's frames
    /// (empty when the id is negative, i.e. no stack was taken, or the
    /// stack is gone).
    pub fn symbolize(&mut self, frames: &dyn Fn(i32) -> Vec<String>) {
        for g in &mut self.groups {
            if g.stack_id >= 0 {
                g.stack = frames(g.stack_id);
            }
        }
    }

    /// Names each group's and run leak's call site from `sites` (`--sites`).
    pub fn locate(&mut self, sites: &BTreeMap<u64, Site>) {
        for g in &mut self.groups {
            g.site = sites.get(&g.site_addr).cloned();
        }
        for l in &mut self.run_leaks {
            l.site = sites.get(&l.reference.site).cloned();
        }
    }

    pub fn has_leaks(&self) -> bool {
        self.leaked_references > 0 || !self.run_leaks.is_empty()
    }

    /// Groups the ledger entries older than `older_than_ns` at `now_ns`
    /// (both CLOCK_MONOTONIC), oldest group first.
    /// The report of a reading: its ledger scan and run leaks.
    pub fn of(r: &super::reading::Reading, older_than_ns: u64) -> LeakReport {
        let (refs, now_ns) = r
            .ledger
            .as_ref()
            .map_or((&[][..], r.mono_ns()), |l| (&l.refs[..], l.now_ns));
        let mut rep = LeakReport::build(refs, r.run_leaks.clone(), now_ns, older_than_ns, &|id| {
            r.program_name(id)
        });
        rep.locate(&r.sites);
        rep
    }

    pub fn build(
        refs: &[OutstandingRef],
        mut run_leaks: Vec<RunLeak>,
        now_ns: u64,
        older_than_ns: u64,
        name: &dyn Fn(u32) -> String,
    ) -> LeakReport {
        for l in &mut run_leaks {
            l.prog_name = name(l.prog_id);
        }
        type Key = (u32, Helper, i32, u64);
        struct Acc {
            sockets: u64,
            references: u64,
            oldest: u64,
            tuples: BTreeSet<Tuple>,
            netns: BTreeSet<u32>,
            states: BTreeMap<String, u64>,
        }
        let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
        let (mut leaked_sockets, mut leaked_references) = (0, 0);
        for r in refs {
            let age = now_ns.saturating_sub(r.acquired_ns);
            if age < older_than_ns {
                continue;
            }
            leaked_sockets += 1;
            leaked_references += r.count as u64;
            let g = groups
                .entry((r.prog_id, r.helper, r.stack_id, r.site))
                .or_insert(Acc {
                    sockets: 0,
                    references: 0,
                    oldest: 0,
                    tuples: BTreeSet::new(),
                    netns: BTreeSet::new(),
                    states: BTreeMap::new(),
                });
            g.sockets += 1;
            g.references += r.count as u64;
            g.oldest = g.oldest.max(age);
            if g.tuples.len() < TUPLES_SHOWN {
                g.tuples.insert(r.tuple.clone());
            }
            if g.netns.len() < TUPLES_SHOWN {
                g.netns.insert(r.netns);
            }
            *g.states
                .entry(format!("{} {}", r.class.name(), state_name(r.state)))
                .or_default() += 1;
        }
        let mut groups: Vec<LeakGroup> = groups
            .into_iter()
            .map(|((prog_id, helper, stack_id, site_addr), a)| LeakGroup {
                prog_id,
                prog_name: name(prog_id),
                helper: helper.function(),
                stack_id,
                site_addr,
                site: None,
                stack: Vec::new(),
                sockets: a.sockets,
                references: a.references,
                oldest_age_ms: a.oldest as f64 / 1e6,
                tuples: a.tuples.iter().map(|t| t.to_string()).collect(),
                netns: a.netns.into_iter().collect(),
                states: a.states.iter().map(|(s, n)| format!("{s} ({n})")).collect(),
            })
            .collect();
        groups.sort_by(|a, b| b.oldest_age_ms.total_cmp(&a.oldest_age_ms));
        LeakReport {
            older_than_ms: older_than_ns as f64 / 1e6,
            outstanding_sockets: refs.len() as u64,
            leaked_sockets,
            leaked_references,
            groups,
            run_leaks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(sport: u16, dport: u16) -> Vec<u8> {
        let mut b = vec![127, 0, 0, 1, 127, 0, 0, 1];
        b.extend(sport.to_be_bytes());
        b.extend(dport.to_be_bytes());
        b.resize(36, 0xaa); // caller stack past an IPv4 tuple
        b
    }

    fn r(
        sk: u64,
        acquired_ns: u64,
        prog_id: u32,
        helper: Helper,
        class: SockClass,
        state: u8,
        dport: u16,
    ) -> OutstandingRef {
        OutstandingRef {
            sk,
            acquired_ns,
            count: 1,
            prog_id,
            helper,
            class,
            state,
            tuple: Tuple::decode(&v4(40000, dport), 12),
            netns: 4026531840,
            cpu: 0,
            refcnt: 2,
            stack_id: 7,
            site: 0,
        }
    }

    #[test]
    fn tuples_decode_both_families_and_bad_lengths() {
        assert_eq!(
            Tuple::decode(&v4(40000, 8080), 12).to_string(),
            "127.0.0.1:40000 -> 127.0.0.1:8080"
        );
        let mut b6 = vec![0u8; 36];
        b6[15] = 1;
        b6[31] = 1;
        b6[32..34].copy_from_slice(&1234u16.to_be_bytes());
        b6[34..36].copy_from_slice(&80u16.to_be_bytes());
        assert_eq!(Tuple::decode(&b6, 36).to_string(), "[::1]:1234 -> [::1]:80");
        assert_eq!(Tuple::decode(&b6, 8), Tuple::Other { len: 8 });
        assert_eq!(Tuple::decode(&b6[..10], 12), Tuple::Other { len: 12 });
    }

    /// A recorded ledger: two programs, one leaking established sockets
    /// from two stacks, one young reference (a run in flight), a TIME_WAIT
    /// reference from skc_lookup, and a run-leak event.
    #[test]
    fn ages_group_and_classify_a_recorded_ledger() {
        let ms = 1_000_000;
        let now = 10_000 * ms;
        let mut refs = vec![
            r(
                1,
                now - 2000 * ms,
                11,
                Helper::TcSkLookupTcp,
                SockClass::Established,
                1,
                80,
            ),
            r(
                2,
                now - 900 * ms,
                11,
                Helper::TcSkLookupTcp,
                SockClass::Established,
                1,
                81,
            ),
            r(
                3,
                now - ms,
                11,
                Helper::TcSkLookupTcp,
                SockClass::Established,
                1,
                82,
            ),
            r(
                4,
                now - 600 * ms,
                12,
                Helper::XdpSkcLookupTcp,
                SockClass::TimeWait,
                6,
                83,
            ),
        ];
        refs[1].stack_id = 9;
        refs[1].count = 2;
        let leak = RunLeak {
            ts_ns: now,
            prog_id: 12,
            prog_name: String::new(),
            reference: refs[3].clone(),
            site: None,
        };
        let name = |id: u32| format!("prog{id}");
        let rep = LeakReport::build(&refs, vec![leak], now, 500 * ms, &name);
        assert_eq!(rep.outstanding_sockets, 4);
        assert_eq!((rep.leaked_sockets, rep.leaked_references), (3, 4));
        assert!(rep.has_leaks());
        let g: Vec<(u32, &str, i32, u64, u64)> = rep
            .groups
            .iter()
            .map(|g| (g.prog_id, g.helper, g.stack_id, g.sockets, g.references))
            .collect();
        // Oldest first; the young reference (1 ms) is in no group.
        assert_eq!(
            g,
            vec![
                (11, "bpf_tc_sk_lookup_tcp", 7, 1, 1),
                (11, "bpf_tc_sk_lookup_tcp", 9, 1, 2),
                (12, "bpf_xdp_skc_lookup_tcp", 7, 1, 1),
            ]
        );
        assert_eq!(rep.groups[0].oldest_age_ms, 2000.0);
        assert_eq!(rep.groups[0].prog_name, "prog11");
        assert_eq!(
            rep.groups[0].tuples,
            vec!["127.0.0.1:40000 -> 127.0.0.1:80"]
        );
        assert_eq!(rep.groups[2].states, vec!["time_wait TIME_WAIT (1)"]);
        assert_eq!(rep.groups[2].netns, vec![4026531840]);
        assert_eq!(rep.run_leaks.len(), 1);
        assert_eq!(rep.run_leaks[0].prog_name, "prog12");

        // Stacks are named per group; a missing stack (negative id) stays
        // empty.
        let mut rep = rep;
        rep.groups[2].stack_id = -14;
        rep.symbolize(&|id| vec![format!("frame-of-{id}"), "caller".into()]);
        assert_eq!(rep.groups[0].stack, vec!["frame-of-7", "caller"]);
        assert_eq!(rep.groups[1].stack, vec!["frame-of-9", "caller"]);
        assert!(rep.groups[2].stack.is_empty());
    }

    #[test]
    fn a_balanced_ledger_reports_nothing() {
        let ms = 1_000_000;
        // Only references younger than the threshold: runs in flight.
        let refs = vec![r(
            1,
            5 * ms,
            11,
            Helper::TcSkLookupTcp,
            SockClass::Request,
            12,
            80,
        )];
        let rep = LeakReport::build(&refs, vec![], 6 * ms, 500 * ms, &|_| String::new());
        assert!(!rep.has_leaks());
        assert!(rep.groups.is_empty());
        assert_eq!(rep.outstanding_sockets, 1);
        let empty = LeakReport::build(&[], vec![], 0, 0, &|_| String::new());
        assert!(!empty.has_leaks());
    }

    #[test]
    fn tuples_shown_are_capped() {
        let refs: Vec<OutstandingRef> = (0..20)
            .map(|i| {
                r(
                    i,
                    0,
                    1,
                    Helper::SkLookupTcp,
                    SockClass::Established,
                    1,
                    1000 + i as u16,
                )
            })
            .collect();
        let rep = LeakReport::build(&refs, vec![], 1_000_000_000, 1, &|_| String::new());
        assert_eq!(rep.groups[0].sockets, 20);
        assert_eq!(rep.groups[0].tuples.len(), TUPLES_SHOWN);
    }
}
