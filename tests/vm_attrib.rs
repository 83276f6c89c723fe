//! Attribution for real, in Debian 6.1 and 6.12 guests (qemu TCG): the
//! attributor must find exactly the built-in workload's four programs with
//! the helpers each one calls, trace their runs, report a BTF-less program
//! as untraceable, respect its capacity, and detach and free the slots once
//! the workload is gone.
//!
//! Each test re-runs its own test binary inside `skprof_vm::run` with
//! `SKPROF_ATTRIB_IN_VM=1` (SKPROF_* variables pass into the guest), which
//! makes the same test do the in-guest part instead.

use std::collections::BTreeSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use skprof::attrib::{attach::NOT_BY_LINK, Attachment, Attributor, Method, TracedProgram};
use skprof::bpf::probes::{ProbeMode, ProbeOptions, Probes};
use skprof::kernel::KernelFunctions;
use skprof::model::ids::{Family, Helper, Proto};
use skprof::workload::{Workload, WorkloadOpts, ALL_FAMILIES};
use skprof_vm::{self as vm, Job, Kernel, VmConfig};

const IN_VM: &str = "SKPROF_ATTRIB_IN_VM";

/// Boots `kernel` and runs this test binary's `test` in it.
fn in_vm(kernel: Kernel, test: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let job = Job::new([
        exe.to_string_lossy().into_owned(),
        "--exact".into(),
        test.into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ])
    .env(IN_VM, "1");
    let mut cfg = VmConfig::new(kernel);
    cfg.timeout = Duration::from_secs(240);
    let out = vm::run(&cfg, &job).expect("run the guest");
    println!(
        "--- {test} on {} (boot {} ms, total {} ms) ---\n{}\n{}",
        out.kernel, out.boot_ms, out.total_ms, out.stdout, out.stderr
    );
    assert_eq!(
        out.status, 0,
        "in-guest part failed on {}:\n{}\n{}",
        out.kernel, out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("attrib guest: ok"),
        "the guest did not run the checks: {}",
        out.stdout
    );
}

#[test]
fn attrib_in_vm_6_1() {
    if std::env::var_os(IN_VM).is_some() {
        return guest();
    }
    in_vm(Kernel::V6_1, "attrib_in_vm_6_1");
}

#[test]
fn attrib_in_vm_6_12() {
    if std::env::var_os(IN_VM).is_some() {
        return guest();
    }
    in_vm(Kernel::V6_12, "attrib_in_vm_6_12");
}

/// Encodes one `struct bpf_insn` (x86: the register nibbles are dst low).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [code, (src << 4) | dst, 0, 0, 0, 0, 0, 0];
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// Loads, without BTF, a tc program that looks up a TCP socket and releases
/// what it finds: it calls the helpers but cannot be fentry-traced.
fn load_btf_less_lookup() -> OwnedFd {
    use skprof::attrib::xlated::CALL;
    let lookup = libbpf_rs::libbpf_sys::BPF_FUNC_sk_lookup_tcp as i32;
    let release = libbpf_rs::libbpf_sys::BPF_FUNC_sk_release as i32;
    let mut p = vec![
        insn(0xbf, 6, 1, 0, 0), // r6 = r1 (ctx)
        insn(0xb7, 2, 0, 0, 0), // r2 = 0
    ];
    for off in [-40i16, -32, -24, -16, -8] {
        p.push(insn(0x7b, 10, 2, off, 0)); // *(u64 *)(r10 + off) = r2
    }
    p.extend([
        insn(0xbf, 1, 6, 0, 0),   // r1 = ctx
        insn(0xbf, 2, 10, 0, 0),  // r2 = r10
        insn(0x07, 2, 0, 0, -40), // r2 += -40 (the zeroed tuple)
        insn(0xb7, 3, 0, 0, 12),  // r3 = sizeof(tuple.ipv4)
        insn(0xb7, 4, 0, 0, -1),  // r4 = BPF_F_CURRENT_NETNS
        insn(0xb7, 5, 0, 0, 0),   // r5 = 0 (flags)
        insn(CALL, 0, 0, 0, lookup),
        insn(0x15, 0, 0, 2, 0), // if r0 == 0 goto +2
        insn(0xbf, 1, 0, 0, 0), // r1 = r0
        insn(CALL, 0, 0, 0, release),
        insn(0xb7, 0, 0, 0, 0), // r0 = 0
        insn(0x95, 0, 0, 0, 0), // exit
    ]);
    let bytes: Vec<u8> = p.iter().flatten().copied().collect();
    // Copy into properly typed (aligned) instructions.
    let mut insns = vec![libbpf_rs::libbpf_sys::bpf_insn::default(); p.len()];
    // SAFETY: `bpf_insn` is a plain 8-byte C struct and `insns` holds
    // exactly `bytes.len()` bytes of them; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), insns.as_mut_ptr().cast::<u8>(), bytes.len());
    }
    let name = c"skprof_no_btf";
    let license = c"GPL";
    // SAFETY: the name and license are NUL-terminated, `insns` holds
    // `insns.len()` instructions, and null options are allowed.
    let fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_load(
            libbpf_rs::libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            std::ptr::null_mut(),
        )
    };
    assert!(
        fd >= 0,
        "load the BTF-less program: {}",
        std::io::Error::from_raw_os_error(-fd)
    );
    // SAFETY: a new program fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn loaded_prog_ids() -> BTreeSet<u32> {
    libbpf_rs::query::ProgInfoIter::default()
        .map(|i| i.id)
        .collect()
}

fn expected_helpers(family: Family, has_tc: bool) -> Vec<Helper> {
    let mut h: Vec<Helper> = [Proto::Tcp, Proto::Udp, Proto::SkcTcp]
        .into_iter()
        .map(|p| Helper::for_call(family, p, has_tc))
        .collect();
    h.sort();
    h
}

fn guest() {
    let t_start = Instant::now();
    skprof::bpf::init_logging();
    let kernel = skprof::kernel::release();
    let funcs = KernelFunctions::discover();
    let has_tc = funcs.has_tc_variants();
    let probes = Probes::load(ProbeMode::Fentry, &funcs, &ProbeOptions::default())
        .expect("load the helper probes");
    let mut wl = Workload::setup(&WorkloadOpts {
        count: 3,
        rounds: Some(1),
        families: ALL_FAMILIES.to_vec(),
        ..WorkloadOpts::default()
    })
    .expect("set up the workload");
    let no_btf = load_btf_less_lookup();
    let t_setup = t_start.elapsed();

    // Capacity: two slots for five programs (the workload's four and the
    // BTF-less one, attributed by stack); dropping the attributor detaches
    // (the programs live on: the workload holds them).
    {
        let mut small = Attributor::new(2, false);
        let r = small
            .rescan(probes.shared_maps())
            .expect("rescan (2 slots)");
        assert_eq!(small.capacity(), 2);
        assert_eq!(r.attached.len(), 2, "{r:?}");
        assert_eq!(r.over_capacity, 3, "{r:?}");
        assert_eq!(small.over_capacity(), 3);
    }

    let mut at = Attributor::new(16, false);
    let t0 = Instant::now();
    let r1 = at.rescan(probes.shared_maps()).expect("first rescan");
    let t_rescan1 = t0.elapsed();
    println!("kernel {kernel}, bpf_tc_* present: {has_tc}");
    println!("first rescan: {}", serde_json::to_string(&r1).unwrap());
    for p in at.programs() {
        println!("traced: {}", serde_json::to_string(p).unwrap());
    }
    for (s, why) in at.untraceable() {
        println!(
            "untraceable: {} because {why}",
            serde_json::to_string(s).unwrap()
        );
    }
    assert_eq!(at.liveness(), None, "the bpf_prog iterator must work here");
    assert!(r1.warnings.is_empty(), "{:?}", r1.warnings);
    assert_eq!(r1.over_capacity, 0);

    // Exactly the workload's programs traced, with the right helpers.
    let names: Vec<&str> = at
        .programs()
        .filter(|p| p.method == Method::Trace)
        .map(|p| p.name.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "wl_connect4",
            "wl_skb_ingress",
            "wl_tc_lookup",
            "wl_xdp_lookup"
        ],
        "traced programs on {kernel}"
    );
    let by_name = |n: &str| -> &TracedProgram { at.programs().find(|p| p.name == n).unwrap() };
    let cgroup = wl
        .cgroup_path()
        .expect("the workload has a cgroup")
        .display()
        .to_string();
    for (name, family, ty) in [
        ("wl_tc_lookup", Family::Tc, "sched_cls"),
        ("wl_xdp_lookup", Family::Xdp, "xdp"),
        ("wl_connect4", Family::SockAddr, "cgroup_sock_addr"),
        ("wl_skb_ingress", Family::Generic, "cgroup_skb"),
    ] {
        let p = by_name(name);
        assert_eq!(p.prog_type, ty, "{name}");
        assert_eq!(p.helpers, expected_helpers(family, has_tc), "{name}");
        assert!(p.calls_sk_release, "{name}");
        assert_eq!(p.tag.len(), 16, "{name}: tag {}", p.tag);
        assert!((1..=16).contains(&p.slot), "{name}: slot {}", p.slot);
        assert_eq!(at.by_slot(p.slot).map(|q| q.id), Some(p.id));
        match family {
            Family::Tc | Family::Xdp => {
                assert!(p.attachments.is_empty(), "{name}: {:?}", p.attachments);
                assert_eq!(p.attach, NOT_BY_LINK);
            }
            Family::SockAddr | Family::Generic => {
                let want = if family == Family::SockAddr {
                    "cgroup_inet4_connect"
                } else {
                    "cgroup_inet_ingress"
                };
                match p.attachments.as_slice() {
                    [Attachment::Cgroup {
                        path, attach_type, ..
                    }] => {
                        assert_eq!(attach_type, want, "{name}");
                        assert_eq!(path.as_deref(), Some(cgroup.as_str()), "{name}");
                    }
                    other => panic!("{name}: attachments {other:?}"),
                }
                assert_eq!(p.attach, format!("{want} on cgroup {cgroup}"));
            }
        }
    }
    let slots: BTreeSet<u32> = at.programs().map(|p| p.slot).collect();
    assert_eq!(slots.len(), 5, "distinct slots");

    // The BTF-less program cannot be traced: it is attributed by kernel
    // stack instead, with its JIT image listed, and the reason kept.
    assert!(at.untraceable().is_empty(), "{:?}", at.untraceable());
    let s = by_name("skprof_no_btf");
    assert_eq!(s.method, Method::Stack);
    assert_eq!(s.prog_type, "sched_cls");
    assert_eq!(
        s.helpers,
        vec![Helper::for_call(Family::Tc, Proto::Tcp, has_tc)]
    );
    assert!(s.calls_sk_release);
    let why = s.fallback.as_deref().unwrap_or_default();
    assert!(why.contains("no BTF"), "{why}");
    assert!(!s.jit.is_empty(), "a JIT image to match stacks against");
    let ranges = at.jit_ranges();
    assert!(
        !ranges.is_empty() && ranges.iter().all(|r| r.prog_id == s.id && r.slot == s.slot),
        "only the stack-attributed program is in the JIT table: {ranges:?}"
    );
    let no_btf_id = s.id;

    // A second rescan changes nothing and never re-attaches.
    let r2 = at.rescan(probes.shared_maps()).expect("second rescan");
    assert!(
        r2.attached.is_empty() && r2.detached.is_empty() && r2.untraceable.is_empty(),
        "{r2:?}"
    );
    assert_eq!(
        at.programs().map(|p| p.slot).collect::<BTreeSet<_>>(),
        slots
    );

    // One workload round: every run of a traced program is recorded.
    let family_runs = |wl: &Workload| -> u64 {
        ALL_FAMILIES
            .iter()
            .map(|&f| wl.counters(f).expect("workload counters").runs)
            .sum()
    };
    let runs0 = family_runs(&wl);
    let table0 = at.run_table().expect("read the run table");
    let t1 = Instant::now();
    let tally = wl.run_round().expect("one workload round");
    let t_round = t1.elapsed();
    let table1 = at.run_table().expect("read the run table");
    let runs1 = family_runs(&wl);
    println!(
        "round: {} lookups, program runs {} (workload) / {} (run table), run table {}",
        tally.total_calls(),
        runs1 - runs0,
        table1.runs_started - table0.runs_started,
        serde_json::to_string(&table1).unwrap()
    );
    assert!(runs1 > runs0);
    assert_eq!(
        table1.runs_started - table0.runs_started,
        runs1 - runs0,
        "every run of a traced program is in the run table"
    );
    assert_eq!(table1.run_table_full, 0);
    assert!(
        table1.in_flight.is_empty(),
        "no run left in flight: {:?}",
        table1.in_flight
    );

    // Drop the workload and the BTF-less program: the next rescan detaches,
    // frees the slots, and the kernel then frees the programs.
    let ids: BTreeSet<u32> = at.programs().map(|p| p.id).collect();
    assert!(ids.contains(&no_btf_id));
    drop(wl);
    drop(no_btf);
    let t2 = Instant::now();
    let r3 = at
        .rescan(probes.shared_maps())
        .expect("rescan after the workload");
    let t_rescan3 = t2.elapsed();
    println!(
        "after the workload: {}",
        serde_json::to_string(&r3).unwrap()
    );
    assert_eq!(
        r3.detached.iter().map(|d| d.id).collect::<BTreeSet<_>>(),
        ids
    );
    assert_eq!(
        r3.freed_slots.iter().copied().collect::<BTreeSet<_>>(),
        slots
    );
    assert_eq!(at.programs().count(), 0);
    assert!(at.untraceable().is_empty(), "{:?}", at.untraceable());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = loaded_prog_ids();
        let left: Vec<u32> = ids
            .iter()
            .chain([&no_btf_id])
            .filter(|id| live.contains(id))
            .copied()
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded after detaching"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r4 = at
        .rescan(probes.shared_maps())
        .expect("rescan, nothing left");
    assert_eq!(r4, Default::default());
    println!(
        "timings: setup {:?}, first rescan {:?}, round {:?}, detaching rescan {:?}, total {:?}",
        t_setup,
        t_rescan1,
        t_round,
        t_rescan3,
        t_start.elapsed()
    );
    println!("attrib guest: ok");
}
