//! The built-in workload on the host kernel: needs root (BPF programs, a
//! network namespace, a cgroup v2). Skipped, with a message, otherwise.
//!
//! The expected counts are computed here from N and this file's own list
//! of cases, not taken from the library's plan.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skprof::model::ids::{Family, Helper, Outcome, Proto, SockClass};
use skprof::workload::{kernel_has_tc_variants, Tally, Workload, WorkloadOpts, ALL_FAMILIES};

/// Workloads move the process between cgroups during set-up and share the
/// two cores: run these tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_root(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() == Some("0") {
        true
    } else {
        eprintln!("SKIPPED {test}: needs root (BPF programs, a network namespace and a cgroup v2)");
        false
    }
}

/// What each case of a round does, per lookup, as this test knows it:
/// (lookup, outcome, class of the socket for hits).
fn expected_cases(f: Family, ipv6: bool) -> Vec<(Proto, Outcome, Option<SockClass>)> {
    use Outcome::*;
    use Proto::*;
    let mut v = vec![
        (Tcp, Hit, Some(SockClass::Listener)),    // 127.0.0.1 listener
        (Tcp, Hit, Some(SockClass::Established)), // server side of an accepted connection
        (Tcp, NoSocket, None),                    // TIME_WAIT: sk_lookup gives NULL
        (Tcp, Hit, Some(SockClass::Listener)),    // request socket: its listener
        (Tcp, NoSocket, None),                    // unused port
        (Udp, Hit, Some(SockClass::Udp)),
        (Udp, NoSocket, None),
        (SkcTcp, Hit, Some(SockClass::Listener)),
        (SkcTcp, Hit, Some(SockClass::Established)),
        (SkcTcp, Hit, Some(SockClass::TimeWait)),
        (SkcTcp, Hit, Some(SockClass::Request)),
        (SkcTcp, NoSocket, None),
    ];
    for p in [Tcp, Udp, SkcTcp] {
        v.push((p, BadLen, None));
        // netns_id 1 << 32: out of range, but XDP's u32 makes it id 0,
        // which does not exist.
        v.push((p, if f == Family::Xdp { NoSocket } else { BadNetns }, None));
        v.push((p, NoSocket, None)); // valid but unknown netns id
        v.push((p, BadFlags, None));
    }
    if ipv6 {
        v.push((Tcp, Hit, Some(SockClass::Listener)));
        v.push((Udp, Hit, Some(SockClass::Udp)));
        v.push((SkcTcp, Hit, Some(SockClass::Established)));
        v.push((Tcp, NoSocket, None));
    }
    v
}

fn refcounted(c: SockClass) -> bool {
    // kernel: !sk_fullsock(sk) || !sock_flag(sk, SOCK_RCU_FREE); listeners
    // and UDP sockets are SOCK_RCU_FREE.
    matches!(
        c,
        SockClass::Established | SockClass::TimeWait | SockClass::Request
    )
}

fn expected_tally(families: &[Family], n: u64, ipv6: bool, rounds: u64) -> Tally {
    let mut t = Tally {
        rounds,
        ..Tally::default()
    };
    let n = n * rounds;
    fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K, n: u64) {
        *m.entry(k).or_insert(0) += n;
    }
    for &f in families {
        for (p, o, class) in expected_cases(f, ipv6) {
            bump(&mut t.runs, f, n);
            bump(&mut t.calls, (f, p, o), n);
            if let Some(c) = class {
                bump(&mut t.hits, (f, p, c), n);
                if refcounted(c) {
                    bump(&mut t.acquired, (f, p, c), n);
                    bump(&mut t.released, c, n);
                } else {
                    bump(&mut t.release_noop, c, n);
                }
            }
        }
    }
    t
}

fn assert_tally_eq(got: &Tally, want: &Tally) {
    assert_eq!(got.rounds, want.rounds, "rounds");
    assert_eq!(got.runs, want.runs, "program runs per family");
    assert_eq!(got.calls, want.calls, "calls per (family, proto, outcome)");
    assert_eq!(got.hits, want.hits, "hits per (family, proto, class)");
    assert_eq!(got.acquired, want.acquired, "acquired references");
    assert_eq!(
        got.released, want.released,
        "releases that dropped a reference"
    );
    assert_eq!(got.release_noop, want.release_noop, "no-op releases");
    assert_eq!(got, want);
}

#[test]
fn one_round_gives_exact_counts() {
    if !is_root("one_round_gives_exact_counts") {
        return;
    }
    let _s = serial();
    const N: u64 = 100;
    let proc_cgroup_before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut w = Workload::setup(&WorkloadOpts {
        count: N,
        ..WorkloadOpts::default()
    })
    .expect("workload set-up");
    let ipv6 = w.has_ipv6();
    if let Some(why) = w.ipv6_skip_reason() {
        eprintln!("note: IPv6 cases skipped: {why}");
    }
    assert_eq!(w.families(), &ALL_FAMILIES);
    let cgroup = w.cgroup_path().expect("cgroup programs run").to_path_buf();
    assert!(cgroup.is_dir());
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        proc_cgroup_before,
        "the process is back in its own cgroup after set-up"
    );

    let tally = w.run_round().expect("one round");
    let want = expected_tally(&ALL_FAMILIES, N, ipv6, 1);
    assert_tally_eq(&tally, &want);

    for f in ALL_FAMILIES {
        let cases = expected_cases(f, ipv6).len() as u64;
        assert_eq!(
            w.cases(f).len() as u64,
            cases,
            "{f:?}: the library runs the cases this test knows"
        );
        let c = w.counters(f).unwrap();
        // Every run of the program since set-up was one of ours: the
        // cgroup programs saw no foreign socket, and nothing ran twice.
        assert_eq!(c.runs, cases * N, "{f:?} program runs");
        assert_eq!(c.ours, cases * N, "{f:?} runs that did a lookup");
        assert_eq!(c.bad_config, 0);
        assert_eq!(tally.runs[&f], c.ours);
        assert_eq!(c.lookups.iter().sum::<u64>(), cases * N);
        assert_eq!(
            c.releases.iter().sum::<u64>(),
            c.hit_total(),
            "{f:?}: every hit released"
        );
    }

    // The same figures per kernel function.
    let has_tc = kernel_has_tc_variants();
    let h = tally.by_helper(has_tc);
    let tc_skc = Helper::for_call(Family::Tc, Proto::SkcTcp, has_tc);
    let expect_tc_tw = if has_tc { N } else { 2 * N }; // generic shares it without bpf_tc_*
    assert_eq!(h.hits(tc_skc, SockClass::TimeWait), expect_tc_tw);
    assert_eq!(h.acquired(Helper::XdpSkcLookupTcp, SockClass::Request), N);
    assert_eq!(h.calls(Helper::XdpSkLookupTcp, Outcome::BadNetns), 0);
    assert_eq!(h.calls(Helper::SockAddrSkLookupUdp, Outcome::BadNetns), N);
    assert_eq!(
        h.calls(Helper::SkLookupUdp, Outcome::BadFlags),
        if has_tc { N } else { 2 * N }
    );
    let total: u64 = Helper::ALL.iter().map(|&x| h.total_calls(x)).sum();
    assert_eq!(total, tally.total_calls());
    let released: u64 = h.released.iter().sum();
    let acquired: u64 = h.acquired.iter().flatten().sum();
    assert_eq!(released, acquired, "every reference taken is dropped");

    // A second round adds exactly as much again, also with new TIME_WAIT
    // and request sockets (what a run does before the old ones expire).
    w.renew_sockets()
        .expect("renew the TIME_WAIT and request sockets");
    let mut two = tally.clone();
    two.merge(&w.run_round().expect("second round"));
    assert_tally_eq(&two, &expected_tally(&ALL_FAMILIES, N, ipv6, 2));

    drop(w);
    assert!(
        !cgroup.exists(),
        "cgroup {} removed on drop",
        cgroup.display()
    );
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        proc_cgroup_before
    );
}

#[test]
fn run_obeys_rounds_families_rate_and_stop() {
    if !is_root("run_obeys_rounds_families_rate_and_stop") {
        return;
    }
    let _s = serial();
    let families = vec![Family::Xdp, Family::SockAddr];
    let mut w = Workload::setup(&WorkloadOpts {
        count: 7,
        rounds: Some(3),
        families: families.clone(),
        ..WorkloadOpts::default()
    })
    .expect("workload set-up");
    let ipv6 = w.has_ipv6();
    let stop = AtomicBool::new(false);
    let t = w.run(&stop).expect("run 3 rounds");
    assert_tally_eq(
        &t,
        &expected_tally(&[Family::SockAddr, Family::Xdp], 7, ipv6, 3),
    );
    assert_eq!(w.counters(Family::Tc).unwrap().runs, 0, "tc not selected");
    assert_eq!(
        w.counters(Family::Generic).unwrap().runs,
        0,
        "cgroup_skb not attached"
    );
    drop(w);

    // Paced: about rate x duration lookups, never more than one chunk over.
    let rate = 5000.0;
    let mut w = Workload::setup(&WorkloadOpts {
        count: 50,
        rate: Some(rate),
        duration: Some(Duration::from_millis(400)),
        families: vec![Family::Tc],
        ..WorkloadOpts::default()
    })
    .expect("workload set-up");
    assert!(w.cgroup_path().is_none(), "tc alone needs no cgroup");
    let t0 = Instant::now();
    let t = w.run(&stop).expect("paced run");
    let secs = t0.elapsed().as_secs_f64();
    let calls = t.total_calls() as f64;
    eprintln!("paced run: {calls} lookups in {secs:.3} s (target {rate}/s)");
    assert!(
        (0.35..1.0).contains(&secs),
        "stopped by the deadline: {secs}"
    );
    assert!(
        calls <= rate * secs + 100.0,
        "not faster than the rate: {calls} in {secs}"
    );
    assert!(
        calls >= rate * 0.4 * 0.6,
        "roughly at the rate: {calls} in {secs}"
    );
    let c = w.counters(Family::Tc).unwrap();
    assert_eq!(
        c.ours as f64, calls,
        "tally = program's own count, partial round included"
    );

    // A stop request ends the run before any lookup.
    let stop = AtomicBool::new(true);
    assert_eq!(w.run(&stop).unwrap().total_calls(), 0);
}

#[test]
fn round_of_1000_timing() {
    if !is_root("round_of_1000_timing") {
        return;
    }
    let _s = serial();
    const N: u64 = 1000;
    let t0 = Instant::now();
    let mut w = Workload::setup(&WorkloadOpts {
        count: N,
        ..WorkloadOpts::default()
    })
    .expect("workload set-up");
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let tally = w.run_round().expect("one round of 1000");
    let round = t1.elapsed();
    assert_tally_eq(&tally, &expected_tally(&ALL_FAMILIES, N, w.has_ipv6(), 1));
    eprintln!(
        "count=1000: set-up {:.1} ms, one round ({} lookups) {:.1} ms",
        setup.as_secs_f64() * 1e3,
        tally.total_calls(),
        round.as_secs_f64() * 1e3
    );
    drop(w);
    for f in ALL_FAMILIES {
        let mut w = Workload::setup(&WorkloadOpts {
            count: N,
            families: vec![f],
            ..WorkloadOpts::default()
        })
        .expect("workload set-up");
        let t = Instant::now();
        let tally = w.run_round().expect("one round");
        let d = t.elapsed();
        eprintln!(
            "  {f:?}: {} lookups in {:.1} ms ({:.0} ns per program run)",
            tally.total_calls(),
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e9 / tally.total_calls() as f64
        );
    }
}
