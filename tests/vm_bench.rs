//! `skprof bench` in Debian 6.1 and 6.12 guests, kept short for CI: every
//! configuration is timed on every case in every pass, the ratios are
//! there and sane, and a missing PMU (TCG has none) is said, not shown as
//! zeros. The figures themselves are the benchmark's to print, not this
//! test's to judge.

use std::process::Command;

use serde_json::Value;

mod common;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// `skprof bench --json` kept short, with `extra`, as a guest script (the
/// arguments are plain words).
fn bench_script(extra: &[&str]) -> String {
    assert!(extra.iter().all(|a| a
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_,/".contains(c))));
    format!(
        "{SKPROF} bench --json --repeat 1000 --runs 1 {}",
        extra.join(" ")
    )
}

/// The bench's JSON from one script of a [`common::guest_batch`].
fn bench_json(kernel: &str, run: &common::Scenario) -> Value {
    assert_eq!(run.status, 0, "{kernel}: {}", run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{kernel}: no JSON: {}", run.stdout));
    serde_json::from_str(line).expect("bench JSON")
}

/// `skprof bench --json ARGS` in a guest booted with `vm_flags`.
fn bench_in(vm_flags: &[&str], kernel: &str, args: &[&str]) -> Value {
    let out = Command::new(common::skprof_vm())
        .arg("run")
        .args(vm_flags)
        .args(["--kernel", kernel, "--timeout", "600", "--", SKPROF])
        .args(["bench", "--json"])
        .args(args)
        .output()
        .expect("run skprof-vm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{kernel}: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{kernel}: no JSON: {stdout}"));
    serde_json::from_str(line).expect("bench JSON")
}

/// The configurations timed on `kernel`: the floors and the default on
/// both, the others split between the kernels (each loads skprof's probes,
/// which the other VM tests load in every mode on both kernels; here it is
/// the bench's own path that is tested, once).
fn configs(kernel: &str) -> Vec<&'static str> {
    let mut c = vec!["none", "floor", "floor_prog", "attribution"];
    c.extend(if kernel == "6.1" {
        ["aggregation", "time_all", "stack_attribution"].as_slice()
    } else {
        ["ledger", "sites", "places", "kprobe"].as_slice()
    });
    c
}

fn check(kernel: &str) {
    // One pass, one case and one run each keep it short in a loaded TCG
    // guest: loading and attaching the configurations is most of the time.
    // (How ratios spread over passes: the --icount tests below.) The two
    // benches run one after another in one guest (one boot).
    let configs = configs(kernel);
    let flag = configs[1..]
        .iter()
        .map(|c| c.replace('_', "-"))
        .collect::<Vec<_>>()
        .join(",");
    let runs = common::guest_batch(
        kernel,
        1800,
        &[
            (
                "every_config",
                bench_script(&[
                    "--passes",
                    "1",
                    "--cases",
                    "tcp/established",
                    "--configs",
                    &flag,
                ]),
            ),
            (
                "none",
                bench_script(&[
                    "--passes",
                    "1",
                    "--configs",
                    "none",
                    "--cases",
                    "tcp/listener",
                ]),
            ),
        ],
    );
    let v = bench_json(kernel, &runs["every_config"]);
    let cases = ["tcp/established"];
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), configs.len() * cases.len(), "{kernel}");
    {
        let pass = 1;
        for &c in &configs {
            for case in cases {
                let m = ms
                    .iter()
                    .find(|m| m["pass"] == pass && m["config"] == c && m["case"] == case)
                    .unwrap_or_else(|| panic!("{kernel}: {c} {case} pass {pass}"));
                let (min, med) = (
                    m["min_ns"].as_f64().unwrap(),
                    m["median_ns"].as_f64().unwrap(),
                );
                assert!(min > 0.0 && min <= med, "{kernel}: {m}");
            }
        }
    }
    // A ratio for every tracer measurement. The floor is the unit, unless
    // noise made it add nothing (then there is no ratio, null, rather than
    // a meaningless one).
    let rs = v["ratios"].as_array().unwrap();
    assert_eq!(rs.len(), (configs.len() - 1) * cases.len(), "{kernel}");
    for r in rs {
        let added = r["added_ns"].as_f64().unwrap();
        if r["config"] == "floor" {
            match r["x_floor"].as_f64() {
                Some(x) => assert!(added > 0.0 && x == 1.0, "{kernel}: {r}"),
                None => assert!(added <= 0.0, "{kernel}: {r}"),
            }
        }
        assert!(
            r["x_none"].as_f64().is_some_and(|x| x > 0.0),
            "{kernel}: {r}"
        );
        // Attribution by tracing is measured against the floor with the
        // program pair, the others against the helpers' floor.
        let floor = if ["attribution", "sites", "time_all", "places"]
            .contains(&r["config"].as_str().unwrap())
        {
            "floor_prog"
        } else {
            "floor"
        };
        assert_eq!(r["floor"], floor, "{kernel}: {r}");
    }
    assert!(v["spread"].as_array().unwrap().is_empty(), "one pass");
    // The summary: a row per tracer and case, of its one pass.
    let su = v["summary"].as_array().unwrap();
    assert_eq!(su.len(), rs.len(), "{kernel}");
    assert!(su.iter().all(|s| s["passes"] == 1), "{kernel}");
    assert!(
        v["latency_sample"]
            .as_str()
            .is_some_and(|s| s.starts_with("auto") && s.contains("50 us")),
        "{kernel}: {v}"
    );
    // TCG has no PMU: said in one line, no counts.
    assert_eq!(v["hardware_counters"], false, "{kernel}");
    assert!(v["hardware_counters_note"]
        .as_str()
        .unwrap()
        .contains("no PMU"));
    assert!(ms.iter().all(|m| m.get("cycles").is_none()));

    // `--configs none`: the workload alone, for timing an outside tracer.
    let v = bench_json(kernel, &runs["none"]);
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 1, "{kernel}: {v}");
    assert_eq!(ms[0]["config"], "none");
    assert!(v["ratios"].as_array().unwrap().is_empty());
}

#[test]
fn bench_6_1() {
    check("6.1");
}

#[test]
fn bench_6_12() {
    check("6.12");
}

/// Under `skprof-vm run --icount` the guest's clock counts instructions, so
/// the bench's figures are instruction counts: the same in every pass to
/// within what timer ticks and the latency sampler's timed calls add (a
/// few instructions per run over 10000 runs), whatever the host's load, and
/// the default executes more than its floor's empty probes.
fn check_icount(kernel: &str, vm_flags: &[&str]) {
    let v = bench_in(
        vm_flags,
        kernel,
        &[
            "--repeat",
            "10000",
            "--runs",
            "3",
            "--passes",
            "2",
            "--configs",
            "floor-prog,attribution",
            "--cases",
            "tcp/established,tcp/no_socket",
        ],
    );
    // Two passes of the default against its floor: each pass attaches
    // afresh; the spread between them and the median over them are
    // reported (both passes have a ratio: instructions are never noise).
    let sp = v["spread"].as_array().unwrap();
    assert_eq!(sp.len(), 2, "{kernel}: {v}");
    let su = v["summary"].as_array().unwrap();
    for s in su.iter().filter(|s| s["config"] == "attribution") {
        assert_eq!(
            (s["passes"].as_u64(), s["floor"].as_str()),
            (Some(2), Some("floor_prog")),
            "{kernel}: {s}"
        );
    }
    for s in sp {
        let pct = s["spread_pct"].as_f64().unwrap();
        assert!(
            pct < 2.0,
            "{kernel}: ratio moved {pct}% between passes: {s}"
        );
    }
    for s in v["summary"].as_array().unwrap() {
        let x = s["x_floor"].as_f64().unwrap();
        assert!(x > 1.0 && x < 5.0, "{kernel}: {s}");
    }
    eprintln!("{kernel} under --icount: {}", v["summary"]);
}

#[test]
fn bench_icount_6_12() {
    check_icount("6.12", &["--icount"]);
}

/// 6.1 stops its second CPU's clock under --icount: one CPU.
#[test]
fn bench_icount_6_1() {
    check_icount("6.1", &["--icount", "--cpus", "1"]);
}
