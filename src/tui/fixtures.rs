//! A recorded-style session for the dashboard's tests: cumulative readings
//! one second apart of a Cilium-like node. A tc program steering TCP and UDP
//! by socket (one reference leaked), an XDP load balancer on a pod's
//! interface, a connect4 program, and untraced cgroup_skb callers, with
//! realistic rates (calls/s) and latencies (µs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::app::{Action, App};
use crate::model::hist::LogHist;
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::LedgerScan;
use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};
use crate::model::reading::{Reading, SourceInfo};
use crate::model::snapshot::{Cell, CellKey, Grouping, ProgramRef, Snapshot};

pub const INIT_NS: u32 = 4026531840;
pub const POD_NS: u32 = 4026532449;
/// CLOCK_MONOTONIC of the first reading's ledger scan.
const LEDGER_T0: u64 = 1_000_000_000_000;
/// The probes were loaded this long before the first reading.
const LOADED_S: u64 = 5;

/// One aggregate of the fixture: calls per second and their latency.
struct Spec {
    prog: u32,
    helper: Helper,
    outcome: Outcome,
    netns: u32,
    ifindex: u32,
    per_s: u64,
    /// Typical latency, ns.
    center_ns: u64,
    class: Option<SockClass>,
}

fn specs() -> Vec<Spec> {
    use Helper::*;
    use Outcome::*;
    let s = |prog, helper, outcome, netns, ifindex, per_s, center_ns, class| Spec {
        prog,
        helper,
        outcome,
        netns,
        ifindex,
        per_s,
        center_ns,
        class,
    };
    vec![
        s(
            1,
            TcSkLookupTcp,
            Hit,
            INIT_NS,
            2,
            1200,
            2300,
            Some(SockClass::Established),
        ),
        s(1, TcSkLookupTcp, NoSocket, INIT_NS, 2, 300, 1600, None),
        s(
            1,
            TcSkLookupUdp,
            Hit,
            INIT_NS,
            2,
            400,
            1900,
            Some(SockClass::Udp),
        ),
        s(1, TcSkLookupUdp, NoSocket, INIT_NS, 2, 100, 1500, None),
        s(
            2,
            XdpSkLookupUdp,
            Hit,
            POD_NS,
            7,
            2500,
            1100,
            Some(SockClass::Udp),
        ),
        s(2, XdpSkLookupUdp, BadNetns, POD_NS, 7, 5, 300, None),
        s(
            3,
            SockAddrSkLookupTcp,
            Hit,
            POD_NS,
            0,
            80,
            3500,
            Some(SockClass::Listener),
        ),
        s(3, SockAddrSkLookupTcp, NoSocket, POD_NS, 0, 20, 2900, None),
        s(
            0,
            SkLookupUdp,
            Hit,
            INIT_NS,
            1,
            150,
            2000,
            Some(SockClass::Udp),
        ),
        s(
            0,
            SkcLookupTcp,
            Hit,
            INIT_NS,
            1,
            10,
            4000,
            Some(SockClass::TimeWait),
        ),
        s(0, SkcLookupTcp, BadLen, INIT_NS, 1, 2, 250, None),
    ]
}

/// The i-th latency of an aggregate: spread ±40% around the center, every
/// 50th call eight times slower (a tail for p99 to find).
fn latency(center: u64, i: u64) -> u64 {
    let frac = (i.wrapping_mul(2654435761) % 1000) as f64 / 1000.0;
    let v = (center as f64 * (0.6 + 0.8 * frac)) as u64;
    if i % 50 == 49 {
        v * 8
    } else {
        v
    }
}

pub fn programs() -> BTreeMap<u32, ProgramRef> {
    [
        (0, 0, "(not traced)"),
        (1, 812, "cil_from_netdev"),
        (2, 815, "xdp_lb_steer"),
        (3, 901, "cgroup_connect4"),
    ]
    .into_iter()
    .map(|(slot, id, name)| {
        (
            slot,
            ProgramRef {
                slot,
                id,
                name: name.into(),
            },
        )
    })
    .collect()
}

pub fn info() -> SourceInfo {
    SourceInfo {
        kernel: "6.12.38+deb13-amd64".into(),
        probe_mode: "fentry".into(),
        origin: "replay node1.skrec".into(),
        helpers: Helper::ALL.to_vec(),
        interval_s: 1.0,
        probe_ns_per_lookup: Some(120.0),
        ..SourceInfo::default()
    }
}

fn tuple(sport: u16, dport: u16) -> Tuple {
    Tuple::V4 {
        saddr: Ipv4Addr::new(10, 0, 1, 5),
        daddr: Ipv4Addr::new(10, 0, 0, 7),
        sport,
        dport,
    }
}

fn outstanding(
    prog_id: u32,
    helper: Helper,
    class: SockClass,
    age_ns: u64,
    now: u64,
) -> OutstandingRef {
    OutstandingRef {
        sk: 0xffff_8880_1234_0000 + age_ns,
        acquired_ns: now - age_ns,
        count: 1,
        prog_id,
        helper,
        class,
        state: if class == SockClass::TimeWait { 6 } else { 1 },
        tuple: tuple(43210, 8080),
        netns: INIT_NS,
        cpu: 1,
        refcnt: 2,
        stack_id: -1,
        site: 0,
    }
}

/// The k-th reading (k = 0 is the first, `LOADED_S` seconds after load).
pub fn batch(k: u64) -> Reading {
    let secs = LOADED_S + k;
    let mut snapshot = Snapshot {
        mono_ns: secs * 1_000_000_000,
        ..Default::default()
    };
    let mut acquired_by_slot: BTreeMap<u32, u64> = BTreeMap::new();
    for s in specs() {
        let n = s.per_s * secs;
        let values: Vec<u64> = (0..n).map(|i| latency(s.center_ns, i)).collect();
        let mut cell = Cell {
            calls: LogHist::from_values(&values).count,
            hist: LogHist::from_values(&values),
            ..Default::default()
        };
        if let Some(c) = s.class {
            cell.hits[c.index()] = n;
            if c.refcounted() {
                cell.acquired[c.index()] = n;
                *acquired_by_slot.entry(s.prog).or_default() += n;
            }
        }
        let key = CellKey {
            prog: s.prog,
            helper: s.helper,
            outcome: s.outcome,
            netns: s.netns,
            ifindex: s.ifindex,
            site: 0,
        };
        snapshot.cells.insert(key, cell);
    }
    let now = LEDGER_T0 + k * 1_000_000_000;
    // slot 1 leaked one established reference 0.5 s before the first
    // reading; the untraced skc caller leaked a TIME_WAIT one at reading 1.
    let mut refs = vec![
        outstanding(
            812,
            Helper::TcSkLookupTcp,
            SockClass::Established,
            500_000_000 + k * 1_000_000_000,
            now,
        ),
        outstanding(
            812,
            Helper::TcSkLookupTcp,
            SockClass::Established,
            20_000,
            now,
        ),
    ];
    if k >= 1 {
        refs.push(outstanding(
            0,
            Helper::SkcLookupTcp,
            SockClass::TimeWait,
            (k - 1) * 1_000_000_000 + 100_000_000,
            now,
        ));
    }
    for (slot, acquired) in &acquired_by_slot {
        let held: u64 = refs
            .iter()
            .filter(|r| (r.prog_id == 812 && *slot == 1) || (r.prog_id == 0 && *slot == 0))
            .count() as u64;
        let released = acquired - held;
        let holds: Vec<u64> = (0..released)
            .map(|i| latency(if *slot == 1 { 3100 } else { 5200 }, i))
            .collect();
        snapshot.holds.insert(*slot, LogHist::from_values(&holds));
    }
    let acquired_total: u64 = acquired_by_slot.values().sum();
    snapshot.counters.released[SockClass::Established.index()] = acquired_total - refs.len() as u64;
    snapshot.counters.release_noop[SockClass::Udp.index()] = (400 + 2500 + 150) * secs;
    snapshot.counters.release_noop[SockClass::Listener.index()] = 80 * secs;
    let run_leaks = if k == 2 {
        vec![RunLeak {
            ts_ns: now - 300_000_000,
            prog_id: 812,
            prog_name: "cil_from_netdev[812]".into(),
            reference: outstanding(
                812,
                Helper::TcSkLookupTcp,
                SockClass::Established,
                300_000_000,
                now,
            ),
            site: None,
        }]
    } else {
        Vec::new()
    };
    Reading {
        snapshot,
        programs: programs(),
        interfaces: [
            ((INIT_NS, 2), "eth0".to_string()),
            ((INIT_NS, 1), "lo".to_string()),
        ]
        .into_iter()
        .collect(),
        attribution: crate::model::reading::AttributionInfo {
            mode: "trace".into(),
            programs: (1..=3).map(|i| (i, format!("prog{i}"))).collect(),
            ..Default::default()
        },
        freed_slots: Vec::new(),
        ledger: Some(LedgerScan { now_ns: now, refs }),
        run_leaks,
        errors: Vec::new(),
        self_cpu_pct: Some(0.4),
        status: Some(format!("frame {}", k + 1)),
        ..Default::default()
    }
}

/// An app that has taken readings 0..n.
pub fn app_with(n: u64, grouping: Grouping) -> App {
    let mut app = App::new(info(), grouping);
    for k in 0..n {
        app.update(Action::Tick(Box::new(batch(k))));
    }
    app
}

/// Where the fixture's helpers are called from (`--sites`): the tc
/// program's `bpf_tc_sk_lookup_tcp` from two lines (hits from the
/// established path, the rest from the listener fallback), every other
/// (program, helper) from one. The untraced callers' site is in no known
/// program.
fn site_of(prog: u32, helper: Helper, outcome: Outcome) -> (u64, Option<(u32, &'static str)>) {
    let base = 0xffff_ffff_c000_0000 + u64::from(prog) * 0x1_0000;
    let h = helper.index() as u64 * 0x100;
    match (prog, helper, outcome) {
        (0, ..) => (base + h + 0x2f, None),
        (1, Helper::TcSkLookupTcp, Outcome::Hit) => (
            base + h + 0x4a,
            Some((1130, "sk = bpf_sk_lookup_tcp(ctx, tuple, len, netns, 0);")),
        ),
        (1, Helper::TcSkLookupTcp, _) => (
            base + h + 0x9e,
            Some((1187, "sk = bpf_sk_lookup_tcp(ctx, &ln, len, netns, 0);")),
        ),
        _ => (
            base + h + 0x4a,
            Some((400 + helper.index() as u32, "sk = lookup(ctx, t);")),
        ),
    }
}

/// [`batch`] with call sites: every aggregate keyed by its site, the
/// sites resolved, the tc program's outstanding references on its
/// established path's site.
pub fn batch_with_sites(k: u64) -> Reading {
    use crate::model::sites::{Site, SourceLine};
    let mut r = batch(k);
    let programs = programs();
    let cells = std::mem::take(&mut r.snapshot.cells);
    for (mut key, cell) in cells {
        let (addr, line) = site_of(key.prog, key.helper, key.outcome);
        key.site = addr;
        r.snapshot.cells.insert(key, cell);
        let p = &programs[&key.prog];
        let site = Site {
            addr,
            prog_id: p.id,
            prog_name: p.name.clone(),
            func: p.name.clone(),
            offset: (addr & 0xfff) as u32 - 5,
            insn: line.map(|(n, _)| n / 4),
            line: line.map(|(n, text)| SourceLine {
                insn: n / 4,
                file: "/src/cilium/bpf/bpf_host.c".into(),
                line: n,
                col: 9,
                text: format!("\t{text}"),
            }),
        };
        r.sites.insert(addr, site);
    }
    let (est, _) = site_of(1, Helper::TcSkLookupTcp, Outcome::Hit);
    let (untraced, _) = site_of(0, Helper::SkcLookupTcp, Outcome::Hit);
    if let Some(l) = r.ledger.as_mut() {
        for o in &mut l.refs {
            o.site = if o.prog_id == 812 { est } else { untraced };
        }
    }
    for l in &mut r.run_leaks {
        l.reference.site = est;
    }
    r
}

/// An app that has taken readings 0..n with call sites.
pub fn app_with_sites(n: u64, grouping: Grouping) -> App {
    let mut app = App::new(info(), grouping);
    for k in 0..n {
        app.update(Action::Tick(Box::new(batch_with_sites(k))));
    }
    app
}
