//! The built-in workload: BPF programs of skprof's own that call every
//! socket-lookup helper family a known, exact number of times, so skprof
//! shows real data on an idle machine and tests can assert exact counts.
//!
//! - tc and XDP programs run through BPF_PROG_TEST_RUN (`repeat = n`);
//! - a cgroup/connect4 program runs once per connect() of a UDP socket;
//! - a cgroup_skb/ingress program runs once per datagram our UDP socket
//!   receives;
//! - opt-in (`Workload::enable_sockhash`), a tc program that releases
//!   sockets it took out of a SOCKHASH (see [`sockhash`]).
//!
//! Each program performs the case set in its config (lookup, tuple, len,
//! netns_id, flags) against sockets the workload made in its own network
//! namespace, releases what it found, and counts what really happened. The
//! [`Tally`] is built from those counters, after checking them against the
//! expected result of every case (see [`cases`]).
//!
//! Needs root. Set-up creates a network namespace (held by an fd, the
//! calling thread stays where it was) and, for the cgroup programs, a
//! cgroup v2 under the hierarchy's root, to which they are attached
//! through BPF links, so the kernel detaches them if the process dies.
//! Drop detaches, closes and removes everything; a cgroup left by a killed
//! process is removed by the next set-up.

pub mod bpf;
pub mod cases;
mod cgroup;
pub mod cli;
mod fixture;
mod optin;
pub mod packet;
pub mod sites;
pub mod sockhash;
mod sys;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{Link, ProgramInput};

use crate::model::ids::{Family, Outcome, Proto, SockClass};
use bpf::{wl_config, wl_tuple, Counters, WorkloadSkel};
use cases::{cases_for, Case, Expect};
use cgroup::{Netns, WorkloadCgroup};
use fixture::{Fixture, Tuple};
use sites::{SitesCase, SitesCounters};
use sockhash::SockhashCase;

pub use crate::model::tally::{HelperTally, Tally};
pub use bpf::Counters as ProgramCounters;
pub use cli::{run_cli, FamilyArg, WorkloadArgs};

/// All four families, in `Family` order.
pub const ALL_FAMILIES: [Family; 4] = [Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr];

/// Lookups done in one go (one test run, or one stretch of connect()s or
/// datagrams) between checks of the stop flag and deadline.
const MAX_CHUNK: u64 = 65_536;
/// With a rate, a chunk is about this long a slice of the schedule.
const PACING_SLICE: f64 = 0.02;
/// An XDP test run with repeat > 1 installs the program in the XDP
/// dispatcher and removes it afterwards (bpf_prog_test_run_xdp(), both
/// waiting for an RCU grace period): ~18 ms per call on the 6.18 host,
/// whatever the count. Below this many runs, one test run per lookup
/// (2-3 µs each here) is cheaper.
const XDP_MIN_REPEAT: u64 = 8192;
const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadOpts {
    /// Lookups per case per round (at least 1).
    pub count: u64,
    /// Stop `run` after this many rounds.
    pub rounds: Option<u64>,
    /// Target lookups per second for `run`, paced; unlimited if `None`.
    pub rate: Option<f64>,
    /// Stop `run` after this long.
    pub duration: Option<Duration>,
    /// Families to run; empty means all.
    pub families: Vec<Family>,
}

impl WorkloadOpts {
    /// One round of the tc cases, `count` lookups each: what `bench`,
    /// `--calibrate` and `leaks --self-test` time or run.
    pub fn tc_round(count: u64) -> WorkloadOpts {
        WorkloadOpts {
            count,
            rounds: Some(1),
            rate: None,
            duration: None,
            families: vec![Family::Tc],
        }
    }
}

impl Default for WorkloadOpts {
    fn default() -> Self {
        WorkloadOpts {
            count: 100,
            rounds: None,
            rate: None,
            duration: None,
            families: ALL_FAMILIES.to_vec(),
        }
    }
}

/// Short name of a family's program, for messages.
pub fn family_program(f: Family) -> &'static str {
    match f {
        Family::Generic => "cgroup_skb/ingress",
        Family::Tc => "tc",
        Family::Xdp => "xdp",
        Family::SockAddr => "cgroup/connect4",
    }
}

/// Whether the running kernel has the `bpf_tc_*` lookup functions (6.5+,
/// and later 6.1.y): there a tc program's lookups land instead of the
/// generic ones. Read from /proc/kallsyms; false if it cannot be read.
pub fn kernel_has_tc_variants() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf_tc_sk_lookup_tcp"))
        })
        .unwrap_or(false)
}

pub struct Workload {
    // Field order is drop order: detach the programs, close the sockets,
    // remove the cgroup, then free the netns and the BPF object.
    /// Held for their Drop: closing a link detaches its program (and the
    /// kernel closes them if the process dies).
    _links: Vec<Link>,
    /// The opt-in sockhash case (its own object and sockets).
    sockhash: Option<SockhashCase>,
    /// The opt-in sites case, and what its sites counted so far.
    sites: Option<(SitesCase, SitesCounters)>,
    fixture: Fixture,
    /// Only when a cgroup program runs (generic, sock_addr).
    cgroup: Option<WorkloadCgroup>,
    netns: Netns,
    skel: WorkloadSkel<'static>,
    count: u64,
    rounds: Option<u64>,
    rate: Option<f64>,
    duration: Option<Duration>,
    families: Vec<Family>,
}

impl Workload {
    /// The tc program the bench times (for probes on the program itself).
    pub fn tc_prog_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.skel.progs.wl_tc_lookup.as_fd()
    }

    /// Loads the programs, creates the netns, sockets and cgroup, and
    /// attaches the cgroup programs the chosen families need. Needs root.
    pub fn setup(opts: &WorkloadOpts) -> Result<Workload> {
        ensure!(opts.count >= 1, "workload count must be at least 1");
        if let Some(r) = opts.rate {
            ensure!(
                r.is_finite() && r > 0.0,
                "workload rate must be a positive number, not {r}"
            );
        }
        if !sys::is_root() {
            bail!("the workload needs root (BPF programs, a network namespace and a cgroup)");
        }
        let mut families: Vec<Family> = if opts.families.is_empty() {
            ALL_FAMILIES.to_vec()
        } else {
            opts.families.clone()
        };
        families.sort();
        families.dedup();

        let skel = bpf::load()?;
        let needs_cgroup = families
            .iter()
            .any(|f| matches!(f, Family::Generic | Family::SockAddr));
        let cgroup = needs_cgroup.then(WorkloadCgroup::create).transpose()?;
        let netns = Netns::create().context("create the workload network namespace")?;
        let fixture = {
            let inside = netns.enter()?;
            let f = Fixture::create(cgroup.as_ref()).context("create the workload sockets")?;
            inside.leave()?;
            f
        };

        let mut links = Vec::new();
        if let Some(cg) = &cgroup {
            let cg_fd = cg.fd().as_raw_fd();
            if families.contains(&Family::SockAddr) {
                let link = skel
                    .progs
                    .wl_connect4
                    .attach_cgroup(cg_fd)
                    .with_context(|| {
                        format!("attach cgroup/connect4 to {}", cg.path().display())
                    })?;
                links.push(link);
            }
            if families.contains(&Family::Generic) {
                let link = skel
                    .progs
                    .wl_skb_ingress
                    .attach_cgroup(cg_fd)
                    .with_context(|| {
                        format!("attach cgroup_skb/ingress to {}", cg.path().display())
                    })?;
                links.push(link);
            }
        }

        Ok(Workload {
            _links: links,
            sockhash: None,
            sites: None,
            fixture,
            cgroup,
            netns,
            skel,
            count: opts.count,
            rounds: opts.rounds,
            rate: opts.rate,
            duration: opts.duration,
            families,
        })
    }

    /// Adds the sockhash case to every round: `per_round` runs of a tc
    /// program that holds an established socket from `bpf_sk_lookup_tcp`
    /// while it releases another it took out of a SOCKHASH, so each run
    /// adds one acquire, and two releases that drop a reference, one of
    /// them of a reference no lookup helper took (an unmatched release).
    /// Loads its own BPF object: without this call the workload's programs
    /// and counts are the same as ever.
    pub fn enable_sockhash(&mut self, per_round: u64) -> Result<()> {
        let inside = self.netns.enter()?;
        let case = SockhashCase::create(per_round).context("set up the sockhash case")?;
        inside.leave()?;
        self.sockhash = Some(case);
        Ok(())
    }

    /// Adds the sites case to every round: `per_round` runs of a tc
    /// program with four lookup and two release call sites that count
    /// their own calls (see [`sites`]).
    pub fn enable_sites(&mut self, per_round: u64) -> Result<()> {
        let inside = self.netns.enter()?;
        let case = SitesCase::create(per_round).context("set up the sites case")?;
        inside.leave()?;
        self.sites = Some((case, SitesCounters::default()));
        Ok(())
    }

    /// Runs per round of the sites case, if enabled.
    pub fn sites_per_round(&self) -> Option<u64> {
        self.sites.as_ref().map(|(c, _)| c.per_round)
    }

    /// What the sites case's call sites counted, if enabled.
    pub fn sites_counts(&self) -> Option<SitesCounters> {
        self.sites.as_ref().map(|(_, t)| *t)
    }

    /// Runs per round of the sockhash case, if enabled.
    pub fn sockhash_per_round(&self) -> Option<u64> {
        self.sockhash.as_ref().map(|c| c.per_round)
    }

    /// The families this workload runs, in `Family` order.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the IPv6 cases run (::1 usable in the workload's netns).
    pub fn has_ipv6(&self) -> bool {
        self.fixture.has_ipv6()
    }

    /// Why the IPv6 cases are skipped, if they are.
    pub fn ipv6_skip_reason(&self) -> Option<&str> {
        self.fixture.no_ipv6.as_deref()
    }

    /// The cases `family` runs each round, in order.
    pub fn cases(&self, family: Family) -> Vec<&'static Case> {
        cases_for(family, self.has_ipv6()).collect()
    }

    /// Lookups per round, all families together (and the sockhash case's,
    /// one per run).
    pub fn lookups_per_round(&self) -> u64 {
        self.families
            .iter()
            .map(|&f| self.cases(f).len() as u64)
            .sum::<u64>()
            * self.count
            + self.sockhash_per_round().unwrap_or(0)
            + self.sites_counts_per_round()
    }

    /// The cgroup holding the cgroup programs' driver sockets (none when
    /// only tc and XDP run).
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|c| c.path())
    }

    /// The running totals of one family's program, since set-up.
    pub fn counters(&self, family: Family) -> Result<ProgramCounters> {
        bpf::counters(&self.skel, family)
    }

    /// Replaces the TIME_WAIT and request sockets now, as a long run does
    /// when they near their expiry (for tests of that path).
    #[doc(hidden)]
    pub fn renew_sockets(&mut self) -> Result<()> {
        let inside = self.netns.enter()?;
        for target in [cases::Target::TimeWait, cases::Target::Request] {
            self.fixture
                .refresh_older_than(target, Duration::ZERO, Duration::ZERO)?;
        }
        inside.leave()
    }

    /// Runs every case of every family `count` times, unpaced.
    pub fn run_round(&mut self) -> Result<Tally> {
        let mut ctl = Control::new(None, None, None);
        let (mut tally, complete) = self.round(&mut ctl)?;
        debug_assert!(complete);
        tally.rounds = 1;
        Ok(tally)
    }

    /// Runs rounds until `rounds` are done, `duration` has passed or
    /// `stop` is set, paced to `rate` lookups per second. Stopping between
    /// chunks of a round leaves a partial round in the tally (still exact:
    /// every chunk is checked on its own).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<Tally> {
        let deadline = self.duration.map(|d| Instant::now() + d);
        let mut ctl = Control::new(Some(stop), deadline, self.rate);
        let mut total = Tally::default();
        while self.rounds.is_none_or(|r| total.rounds < r) {
            let (t, complete) = self.round(&mut ctl)?;
            total.merge(&t);
            if !complete {
                break;
            }
            total.rounds += 1;
        }
        Ok(total)
    }

    /// One round; `false` if it was cut short by the stop flag or deadline.
    /// The tuples (as `src -> dst`, the form skprof's reports print) of the
    /// `family` cases whose lookups take a reference, as they are now (the
    /// TIME_WAIT and request sockets are renewed from time to time).
    pub fn acquiring_tuples(&mut self, family: Family) -> Result<Vec<String>> {
        let inside = self.netns.enter()?;
        let mut out = Vec::new();
        for case in cases_for(family, self.has_ipv6()) {
            let e = case.expect(family);
            if e.outcome == Outcome::Hit && e.class.is_some_and(|c| c.refcounted()) {
                let t = self.fixture.tuple(case.ip, case.target)?;
                out.push(format!("{} -> {}", t.src, t.dst));
            }
        }
        inside.leave()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Times one tc or XDP case (by name, e.g. "tcp/listener"): `repeat`
    /// runs of the family's program in one BPF_PROG_TEST_RUN, returning the
    /// kernel's mean ns per run (it times the runs alone, not the syscall).
    /// For benchmarks: the lookups are not tallied.
    pub fn time_case(&mut self, family: Family, case_name: &str, repeat: u32) -> Result<f64> {
        ensure!(
            matches!(family, Family::Tc | Family::Xdp),
            "only tc and XDP cases can be timed (BPF_PROG_TEST_RUN)"
        );
        let case = cases_for(family, self.has_ipv6())
            .find(|c| c.name == case_name)
            .with_context(|| format!("no {family:?} case named {case_name}"))?;
        let inside = self.netns.enter()?;
        self.fixture.refresh(case.target)?;
        let tuple = self.fixture.tuple(case.ip, case.target)?;
        let frame = packet::craft(case.proto, tuple.src, tuple.dst);
        let cfg = self.config(family, case, &tuple);
        bpf::set_config(&mut self.skel, cfg)?;
        let (prog, name) = match family {
            Family::Tc => (&self.skel.progs.wl_tc_lookup, "wl_tc_lookup"),
            _ => (&self.skel.progs.wl_xdp_lookup, "wl_xdp_lookup"),
        };
        let input = ProgramInput {
            data_in: Some(&frame),
            repeat,
            ..Default::default()
        };
        let out = prog
            .test_run(input)
            .with_context(|| format!("BPF_PROG_TEST_RUN {name} (repeat {repeat})"));
        bpf::set_config(&mut self.skel, wl_config::default())?;
        inside.leave()?;
        Ok(out?.duration.as_nanos() as f64)
    }

    fn round(&mut self, ctl: &mut Control<'_>) -> Result<(Tally, bool)> {
        // tc and XDP test runs look up in the netns of the calling thread
        // (bpf_prog_test_run_skb/xdp use current's loopback device), and
        // renewing the TIME_WAIT socket must happen there too.
        let inside = self.netns.enter()?;
        let mut tally = Tally::default();
        let families = self.families.clone();
        for family in families {
            for case in cases_for(family, self.has_ipv6()) {
                let complete = self
                    .run_case(family, case, ctl, &mut tally)
                    .with_context(|| format!("{} case {}", family_program(family), case.name))?;
                if !complete {
                    inside.leave()?;
                    return Ok((tally, false));
                }
            }
        }
        let complete = self
            .run_sockhash(ctl, &mut tally)
            .context("tc sockhash case")?
            && self.run_sites(ctl, &mut tally).context("tc sites case")?;
        inside.leave()?;
        Ok((tally, complete))
    }

    /// Lookups per round of the sites case: two or three a run.
    fn sites_counts_per_round(&self) -> u64 {
        self.sites_per_round().map_or(0, |n| 2 * n + n.div_ceil(3))
    }

    /// The sites case's runs of one round, if enabled, in checked chunks.
    fn run_sites(&mut self, ctl: &mut Control<'_>, tally: &mut Tally) -> Result<bool> {
        let Some((case, total)) = &mut self.sites else {
            return Ok(true);
        };
        ctl.chunks(case.per_round, |n| {
            let d = case.run(n)?;
            d.record(tally);
            total.add(&d);
            Ok(())
        })
    }

    /// The sockhash case's runs of one round, if enabled, in checked chunks.
    fn run_sockhash(&self, ctl: &mut Control<'_>, tally: &mut Tally) -> Result<bool> {
        let Some(case) = &self.sockhash else {
            return Ok(true);
        };
        ctl.chunks(case.per_round, |n| {
            let d = case.run(n)?;
            // What the program saw (`run` checked it is n of each): its
            // lookups are a tc program's bpf_sk_lookup_tcp calls.
            for c in SockClass::ALL {
                tally.record(
                    Family::Tc,
                    Proto::Tcp,
                    Outcome::Hit,
                    Some(c),
                    d.lookup_hits[c.index()],
                );
                tally.record_unmatched_release(c, d.map_hits[c.index()]);
            }
            Ok(())
        })
    }

    fn run_case(
        &mut self,
        family: Family,
        case: &Case,
        ctl: &mut Control<'_>,
        tally: &mut Tally,
    ) -> Result<bool> {
        let expect = case.expect(family);
        let mut left = self.count;
        while left > 0 {
            let n = left.min(ctl.chunk());
            if !ctl.wait_turn() {
                return Ok(false);
            }
            self.fixture.refresh(case.target)?;
            let tuple = self.fixture.tuple(case.ip, case.target)?;
            let before = bpf::counters(&self.skel, family)?;
            let cfg = self.config(family, case, &tuple);
            bpf::set_config(&mut self.skel, cfg)?;
            let driven = self.drive(family, case, &tuple, n);
            bpf::set_config(&mut self.skel, wl_config::default())?;
            driven?;
            let delta = bpf::counters(&self.skel, family)?.since(&before);
            check(case, expect, n, &delta)?;
            record_observed(tally, family, case.proto, expect, &delta);
            ctl.done += n;
            left -= n;
        }
        Ok(true)
    }

    fn config(&self, family: Family, case: &Case, tuple: &Tuple) -> wl_config {
        let mut cfg = wl_config {
            armed: 1,
            family: bpf::family_id(family),
            proto: bpf::proto_id(case.proto),
            len: case.len_arg(),
            netns_id: case.netns_id,
            flags: case.flags,
            tuple: wl_tuple_of(tuple),
            ..Default::default()
        };
        if let Some(d) = &self.fixture.drivers {
            cfg.connect_cookie = d.connect_cookie;
            cfg.ingress_cookie = d.ingress_cookie;
            cfg.connect_port = u32::from(d.connect_to.port());
            cfg.ingress_port = u32::from(d.ingress_port);
        }
        cfg
    }

    /// Makes `family`'s program run `n` times.
    fn drive(&self, family: Family, case: &Case, tuple: &Tuple, n: u64) -> Result<()> {
        let frame = packet::craft(case.proto, tuple.src, tuple.dst);
        let test_run = optin::test_run;
        match family {
            Family::Tc => test_run(&self.skel.progs.wl_tc_lookup, &frame, n, TC_ACT_OK),
            Family::Xdp if n < XDP_MIN_REPEAT => {
                for _ in 0..n {
                    test_run(&self.skel.progs.wl_xdp_lookup, &frame, 1, XDP_PASS)?;
                }
                Ok(())
            }
            Family::Xdp => test_run(&self.skel.progs.wl_xdp_lookup, &frame, n, XDP_PASS),
            Family::SockAddr | Family::Generic => {
                let d = self
                    .fixture
                    .drivers
                    .as_ref()
                    .context("no driver sockets (no cgroup)")?;
                if family == Family::SockAddr {
                    fixture::drive_connect(d, n)
                } else {
                    fixture::drive_ingress(d, n)
                }
            }
        }
    }
}

/// The case's tuple as the programs read it: addresses and ports in network
/// byte order in memory.
pub(super) fn wl_tuple_of(t: &Tuple) -> wl_tuple {
    use std::net::IpAddr;
    let words = |o: [u8; 16]| -> [u32; 4] {
        let mut w = [0u32; 4];
        for (i, c) in o.chunks_exact(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    };
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let mut w = wl_tuple {
        sport: t.src.port().to_be(),
        dport: t.dst.port().to_be(),
        ..Default::default()
    };
    match (t.src.ip(), t.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.saddr[0] = u32::from_ne_bytes(s.octets());
            w.daddr[0] = u32::from_ne_bytes(d.octets());
        }
        (s, d) => {
            w.saddr = words(v6(s).octets());
            w.daddr = words(v6(d).octets());
            w.ipv6 = 1;
        }
    }
    w
}

/// Checks one chunk's counter deltas against the case's expectation.
fn check(case: &Case, expect: Expect, n: u64, d: &Counters) -> Result<()> {
    let p = bpf::proto_id(case.proto).0 as usize;
    let mut want = Counters {
        runs: d.runs, // other sockets of the cgroup may run it: not ours
        ours: n,
        ..Counters::default()
    };
    want.lookups[p] = n;
    match expect.class {
        Some(c) if expect.outcome == Outcome::Hit => {
            want.hits[p][c.index()] = n;
            want.releases[c.index()] = n;
        }
        _ => want.misses[p] = n,
    }
    if *d == want {
        return Ok(());
    }
    bail!(
        "expected {n} lookups each {}, the program saw {}",
        describe_expect(case.proto, expect),
        describe(d)
    )
}

fn describe_expect(proto: Proto, e: Expect) -> String {
    match e.class {
        Some(c) => format!("{proto:?} hit on a {} socket", c.name()),
        None => format!("{proto:?} miss ({})", e.outcome.name()),
    }
}

fn describe(d: &Counters) -> String {
    let protos = [Proto::Tcp, Proto::Udp, Proto::SkcTcp];
    let mut parts = vec![format!("{} runs performing a lookup", d.ours)];
    if d.bad_config > 0 {
        parts.push(format!("{} refused configs", d.bad_config));
    }
    for (i, p) in protos.iter().enumerate() {
        if d.lookups[i] > 0 {
            parts.push(format!("{} {p:?} lookups", d.lookups[i]));
        }
        if d.misses[i] > 0 {
            parts.push(format!("{} {p:?} misses", d.misses[i]));
        }
        for c in SockClass::ALL {
            if d.hits[i][c.index()] > 0 {
                parts.push(format!(
                    "{} {p:?} hits on {}",
                    d.hits[i][c.index()],
                    c.name()
                ));
            }
        }
    }
    for c in SockClass::ALL {
        if d.releases[c.index()] > 0 {
            parts.push(format!(
                "{} releases of {}",
                d.releases[c.index()],
                c.name()
            ));
        }
    }
    parts.join(", ")
}

/// Adds what the program recorded to the tally. Misses are attributed to
/// the reason the arguments give (the program only sees NULL); `check`
/// has already confirmed the counts match the expectation.
fn record_observed(tally: &mut Tally, family: Family, proto: Proto, expect: Expect, d: &Counters) {
    let p = bpf::proto_id(proto).0 as usize;
    for c in SockClass::ALL {
        tally.record(family, proto, Outcome::Hit, Some(c), d.hits[p][c.index()]);
    }
    let miss = if expect.outcome == Outcome::Hit {
        Outcome::NoSocket
    } else {
        expect.outcome
    };
    tally.record(family, proto, miss, None, d.misses[p]);
}

/// Stop flag, deadline and pacing of `Workload::run`.
struct Control<'a> {
    stop: Option<&'a AtomicBool>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    start: Instant,
    /// Lookups done so far, for the pacing schedule.
    done: u64,
}

impl<'a> Control<'a> {
    fn new(stop: Option<&'a AtomicBool>, deadline: Option<Instant>, rate: Option<f64>) -> Self {
        Control {
            stop,
            deadline,
            rate,
            start: Instant::now(),
            done: 0,
        }
    }

    fn chunk(&self) -> u64 {
        match self.rate {
            Some(r) => ((r * PACING_SLICE) as u64).clamp(1, MAX_CHUNK),
            None => MAX_CHUNK,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits until the next chunk is due at the target rate; false if the
    /// run must stop instead.
    /// `total` runs in chunks of at most [`chunk`](Self::chunk), each when
    /// its turn comes (`run` gets the chunk's size); false when stopped
    /// before the end.
    fn chunks(&mut self, total: u64, mut run: impl FnMut(u64) -> Result<()>) -> Result<bool> {
        let mut left = total;
        while left > 0 {
            let n = left.min(self.chunk());
            if !self.wait_turn() {
                return Ok(false);
            }
            run(n)?;
            self.done += n;
            left -= n;
        }
        Ok(true)
    }

    fn wait_turn(&self) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let Some(rate) = self.rate else { return true };
            let due = self.start + Duration::from_secs_f64(self.done as f64 / rate);
            let now = Instant::now();
            if now >= due {
                return true;
            }
            // Short sleeps, so a stop request is seen promptly.
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn tuple_bytes_are_in_network_order() {
        let t = Tuple {
            src: "127.0.0.1:9".parse().unwrap(),
            dst: "10.1.2.3:8080".parse().unwrap(),
        };
        let w = wl_tuple_of(&t);
        assert_eq!(w.saddr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(w.daddr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(w.sport.to_ne_bytes(), [0, 9]);
        assert_eq!(w.dport.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(w.ipv6, 0);
        let s: SocketAddr = "[::1]:80".parse().unwrap();
        let w = wl_tuple_of(&Tuple { src: s, dst: s });
        assert_eq!(w.ipv6, 1);
        assert_eq!(w.daddr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(w.daddr[0], 0);
    }

    #[test]
    fn check_accepts_exact_and_refuses_other_counts() {
        let case = cases::CASES
            .iter()
            .find(|c| c.name == "skc_tcp/time_wait")
            .unwrap();
        let expect = case.expect(Family::Tc);
        let mut d = Counters {
            runs: 10,
            ours: 10,
            ..Default::default()
        };
        d.lookups[2] = 10;
        d.hits[2][SockClass::TimeWait.index()] = 10;
        d.releases[SockClass::TimeWait.index()] = 10;
        check(case, expect, 10, &d).unwrap();
        let mut t = Tally::default();
        record_observed(&mut t, Family::Tc, Proto::SkcTcp, expect, &d);
        let mut want = Tally::default();
        want.record(
            Family::Tc,
            Proto::SkcTcp,
            Outcome::Hit,
            Some(SockClass::TimeWait),
            10,
        );
        assert_eq!(t, want);

        // One lookup found the socket already gone.
        let mut bad = d;
        bad.hits[2][SockClass::TimeWait.index()] = 9;
        bad.releases[SockClass::TimeWait.index()] = 9;
        bad.misses[2] = 1;
        let e = check(case, expect, 10, &bad).unwrap_err().to_string();
        assert!(e.contains("1 SkcTcp misses"), "{e}");
    }

    #[test]
    fn misses_are_attributed_to_the_argument_reason() {
        let case = cases::CASES
            .iter()
            .find(|c| c.name == "udp/bad_len")
            .unwrap();
        let expect = case.expect(Family::SockAddr);
        let mut d = Counters {
            ours: 5,
            ..Default::default()
        };
        d.lookups[1] = 5;
        d.misses[1] = 5;
        check(case, expect, 5, &d).unwrap();
        let mut t = Tally::default();
        record_observed(&mut t, Family::SockAddr, Proto::Udp, expect, &d);
        assert_eq!(t.calls(Family::SockAddr, Proto::Udp, Outcome::BadLen), 5);
        assert!(t.hits.is_empty());
    }

    #[test]
    fn pacing_chunks() {
        assert_eq!(Control::new(None, None, None).chunk(), MAX_CHUNK);
        assert_eq!(Control::new(None, None, Some(2000.0)).chunk(), 40);
        assert_eq!(Control::new(None, None, Some(1.0)).chunk(), 1);
        let stop = AtomicBool::new(true);
        assert!(!Control::new(Some(&stop), None, None).wait_turn());
        assert!(Control::new(None, None, None).wait_turn());
    }
}
