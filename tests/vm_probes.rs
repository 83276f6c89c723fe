//! The probes for real: skprof runs inside Debian 6.1 and 6.12 guests
//! (`skprof-vm`, qemu TCG) on the built-in workload, and its counts must
//! equal the workload's own ground truth exactly.

use serde_json::Value;

mod common;
use common::{json_lines, u};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// Lookups per workload case.
const N: u64 = 40;

/// One script's output in the guest.
use common::Scenario as Run;

/// What a `skprof stat --json --cumulative --workload ...` script printed:
/// its last interval, and the workload's own counts.
fn stat_totals(kernel: &str, run: &Run) -> (Value, Value) {
    assert_eq!(
        run.status, 0,
        "skprof stat failed on {kernel}: {}",
        run.stderr
    );
    let lines = json_lines(&run.stdout);
    let last = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "interval")
        .expect("an interval line")
        .clone();
    let expected = lines
        .iter()
        .find(|l| l["type"] == "workload")
        .expect("a workload line")["expected"]
        .clone();
    (last, expected)
}

/// One workload round under `skprof stat --json --cumulative`. Latency
/// sampling (`--latency-sample`, default auto) changes what is timed, never
/// what is counted: fentry runs with the default and kprobe with every call
/// timed.
fn exact_counts_script(mode: &str) -> String {
    format!(
        "{SKPROF} stat --json --cumulative --probe-mode {mode} --workload \
         --workload-rounds 1 --workload-count {N} --workload-rate 1000000 {} 120",
        if mode == "kprobe" {
            "--latency-sample all"
        } else {
            ""
        }
    )
}

/// [`exact_counts_script`]'s run: every figure equals the workload's own
/// counts.
fn exact_counts(kernel: &str, mode: &str, run: &Run) {
    let time_all = mode == "kprobe";
    let (last, expected) = stat_totals(kernel, run);
    assert_eq!(last["probe_mode"], mode);

    let helpers = last["helpers"].as_array().expect("helpers");
    let exp_helpers = expected["helpers"].as_object().expect("expected.helpers");
    assert_eq!(
        exp_helpers.len(),
        12,
        "the workload reaches all 12 helper functions on {kernel}: {expected}"
    );
    let mut total_acquired = 0;
    for row in helpers {
        let name = row["helper"].as_str().unwrap();
        let calls = u(&row["calls"]);
        let Some(exp) = exp_helpers.get(name) else {
            assert_eq!(calls, 0, "{kernel}/{mode}: {name} was not driven");
            continue;
        };
        assert_eq!(calls, u(&exp["calls"]), "{kernel}/{mode} {name} calls");
        assert_eq!(calls % N, 0, "{name}: whole cases of N lookups");
        for o in ["hit", "no_socket", "bad_len", "bad_netns", "bad_flags"] {
            assert_eq!(
                u(&row["outcomes"][o]),
                u(&exp["outcomes"][o]),
                "{kernel}/{mode} {name} outcome {o}"
            );
        }
        for c in [
            "listener",
            "established",
            "time_wait",
            "request",
            "udp",
            "other",
        ] {
            assert_eq!(
                u(&row["hits_by_class"][c]),
                u(&exp["hits_by_class"][c]),
                "{kernel}/{mode} {name} hits of class {c}"
            );
            assert_eq!(
                u(&row["acquired_by_class"][c]),
                u(&exp["acquired_by_class"][c]),
                "{kernel}/{mode} {name} acquired of class {c}"
            );
        }
        let lat = &row["latency_ns"];
        if time_all {
            assert_eq!(u(&lat["count"]), calls, "{name}: histogram total == calls");
        } else {
            // Back-to-back lookups (rate 1000000) come faster than the
            // sampling budget: some are timed, never more than were made.
            assert!(
                u(&lat["count"]) > 0 && u(&lat["count"]) <= calls,
                "{kernel}/{mode} {name}: timed {} of {calls}",
                lat["count"]
            );
        }
        assert_eq!(row["timed"], lat["count"], "{name}");
        let (p50, p90, p99, max) = (
            u(&lat["p50"]),
            u(&lat["p90"]),
            u(&lat["p99"]),
            u(&lat["max"]),
        );
        assert!(
            p50 > 0 && u(&lat["min"]) > 0,
            "{name}: percentiles > 0: {lat}"
        );
        assert!(
            p50 <= p90 && p90 <= p99 && p99 <= max,
            "{name}: ordered: {lat}"
        );
        total_acquired += u(&row["acquired"]);
    }
    let rel = &last["release"];
    assert_eq!(total_acquired, u(&last["acquired"]));
    assert_eq!(
        u(&rel["dropped"]),
        total_acquired,
        "acquired == refcounted releases"
    );
    assert_eq!(u(&rel["dropped"]), u(&expected["release"]["dropped"]));
    assert_eq!(u(&rel["noop"]), u(&expected["release"]["noop"]));
    assert_eq!(u(&rel["null"]), 0);
    assert!(total_acquired > 0, "the workload acquires references");
    for d in [
        "unmatched_exits",
        "evicted_entries",
        "recursion_misses",
        "hist_overflow",
    ] {
        assert_eq!(u(&last["drops"][d]), 0, "{kernel}/{mode} drops.{d}");
    }
}

/// `stat --workload` whose COUNT ends before the workload (no rounds, no
/// duration).
fn count_ends_before_the_workload_script() -> String {
    format!("{SKPROF} stat --json --cumulative --workload --workload-count 5 1 3")
}

/// [`count_ends_before_the_workload_script`]'s run: the workload is stopped
/// before the last reading and its traffic (cgroup_skb and XDP lookups run
/// as packets arrive) drained, so the last interval and the workload's line
/// agree on every helper.
fn count_ends_before_the_workload(kernel: &str, run: &Run) {
    let (last, expected) = stat_totals(kernel, run);
    let exp_helpers = expected["helpers"].as_object().expect("expected.helpers");
    assert!(
        !exp_helpers.is_empty(),
        "{kernel}: the workload ran: {expected}"
    );
    let mut checked = 0;
    for row in last["helpers"].as_array().expect("helpers") {
        let name = row["helper"].as_str().unwrap();
        let want = exp_helpers.get(name).map_or(0, |e| u(&e["calls"]));
        assert_eq!(u(&row["calls"]), want, "{kernel}: {name} calls");
        checked += u64::from(want > 0);
    }
    assert_eq!(
        checked,
        exp_helpers.len() as u64,
        "{kernel}: every driven helper"
    );
    assert_eq!(
        u(&last["release"]["dropped"]),
        u(&expected["release"]["dropped"]),
        "{kernel}: releases"
    );
    assert_eq!(last["balance"]["verdict"], "balanced", "{kernel}: {last}");
}

/// `--by program` with two copies of the workload, attributed by program
/// tracing or (`flags`: kprobe mode, `--attribute-by stack`) by kernel
/// stack. Every call timed, so that each program's hold times count every
/// reference it took.
fn attribution_exact_script(flags: &str) -> String {
    format!(
        "{SKPROF} stat --json --cumulative --by program --workload --workload-copies 2 \
         --workload-rounds 1 --workload-count {N} --workload-rate 1000000 --latency-sample all \
         {flags} 120"
    )
}

/// [`attribution_exact_script`]'s run: every call is attributed to the
/// program that made it, two programs per helper.
fn attribution_exact(kernel: &str, run: &Run) {
    let (last, expected) = stat_totals(kernel, run);
    assert_eq!(last["by"], "program");
    let rows = last["helpers"].as_array().unwrap();
    let exp_helpers = expected["helpers"].as_object().unwrap();
    assert_eq!(exp_helpers.len(), 12);
    for (helper, exp) in exp_helpers {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["helper"] == *helper).collect();
        assert_eq!(
            mine.len(),
            2,
            "{kernel}: two programs call {helper}: {mine:?}"
        );
        let want_name = if helper.starts_with("bpf_tc_") {
            "wl_tc_lookup"
        } else if helper.starts_with("bpf_xdp_") {
            "wl_xdp_lookup"
        } else if helper.starts_with("bpf_sock_addr_") {
            "wl_connect4"
        } else {
            "wl_skb_ingress"
        };
        let ids: Vec<u64> = mine.iter().map(|r| u(&r["program"]["id"])).collect();
        assert_ne!(ids[0], ids[1], "{kernel} {helper}: distinct programs");
        for r in &mine {
            assert_eq!(r["program"]["name"], want_name, "{kernel} {helper}");
            assert!(
                u(&r["program"]["slot"]) > 0,
                "{kernel} {helper}: attributed"
            );
            assert_eq!(
                u(&r["calls"]) * 2,
                u(&exp["calls"]),
                "{kernel} {helper}: calls per program"
            );
            for o in ["hit", "no_socket", "bad_len", "bad_netns", "bad_flags"] {
                assert_eq!(
                    u(&r["outcomes"][o]) * 2,
                    u(&exp["outcomes"][o]),
                    "{kernel} {helper} {o} per program"
                );
            }
            assert_eq!(
                u(&r["acquired"]) * 2,
                u(&exp["acquired"]),
                "{kernel} {helper} acquired"
            );
        }
    }
    assert!(
        rows.iter().all(|r| u(&r["program"]["slot"]) > 0),
        "{kernel}: no call left unattributed"
    );
    // Each program's hold-time histogram counts the references it took
    // (the same figure on each of its rows).
    for r in rows {
        let acquired_by_program: u64 = rows
            .iter()
            .filter(|x| x["program"]["id"] == r["program"]["id"])
            .map(|x| u(&x["acquired"]))
            .sum();
        assert_eq!(
            u(&r["hold_ns"]["count"]),
            acquired_by_program,
            "{kernel}: {r}"
        );
    }
    assert_eq!(u(&last["release"]["unmatched"]), 0);
    assert_eq!(u(&last["drops"]["run_table_full"]), 0);
}

/// `--by interface` on one workload round.
fn places_exact_script() -> String {
    format!(
        "{SKPROF} stat --json --cumulative --by interface --workload \
         --workload-rounds 1 --workload-count {N} --workload-rate 1000000 120"
    )
}

/// [`places_exact_script`]'s run: every call is placed in the workload's
/// one network namespace, on a device for the packet helpers and on none
/// for sock_addr, and the places add up to the workload's exact counts.
fn places_exact(kernel: &str, run: &Run) {
    let (last, expected) = stat_totals(kernel, run);
    assert_eq!(last["by"], "interface");
    let rows = last["helpers"].as_array().unwrap();
    let netns: Vec<u64> = rows.iter().map(|r| u(&r["place"]["netns"])).collect();
    assert!(netns[0] > 0, "{kernel}: netns known: {rows:?}");
    assert!(
        netns.iter().all(|&n| n == netns[0]),
        "{kernel}: one namespace: {netns:?}"
    );
    for (helper, exp) in expected["helpers"].as_object().unwrap() {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["helper"] == *helper).collect();
        let calls: u64 = mine.iter().map(|r| u(&r["calls"])).sum();
        assert_eq!(
            calls,
            u(&exp["calls"]),
            "{kernel} {helper}: calls over places"
        );
        for r in mine {
            let ifindex = u(&r["place"]["ifindex"]);
            if helper.starts_with("bpf_sock_addr_") {
                assert_eq!(ifindex, 0, "{kernel} {helper}: no device");
            } else {
                assert!(ifindex > 0, "{kernel} {helper}: a device: {r}");
            }
        }
    }
}

/// skprof started and ended by SIGINT (its clean stop; SIGTERM takes the
/// same handler and is sent in vm_leaks_watch) and by SIGKILL (the kernel
/// detaches what a dead process held).
fn signals_detach_script(kernel: &str) -> String {
    // The guests share the host's /tmp, and their shells' PIDs are alike:
    // name the output file after this host process and the kernel.
    let out_file = format!("/tmp/skprof-sig-{}-{kernel}", std::process::id());
    format!(
        r#"set -u
count() {{ bpftool prog show 2>/dev/null | grep -cE 'name (fentry|fexit|kprobe|kretprobe)_bpf_' ; }}
links() {{ bpftool link show 2>/dev/null | grep -c '^[0-9]' ; }}
echo "before $(count) $(links)"
for sig in INT KILL; do
  {SKPROF} stat 1 >{out_file} 2>&1 &
  pid=$!
  i=0
  # The banner is printed once every probe is attached.
  while ! grep -q '^Tracing' {out_file} && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  echo "attached $sig $(count)"
  kill -$sig $pid
  wait $pid
  echo "exit $sig $?"
  i=0
  while [ "$(count)" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  echo "after $sig $(count) $(links)"
done
rm -f {out_file}
"#
    )
}

/// [`signals_detach_script`]'s run: the guest was clean before, and skprof
/// killed by each signal leaves nothing attached.
fn signals_detach(kernel: &str, run: &Run) {
    assert_eq!(run.status, 0, "{kernel}: {}", run.stderr);
    let out = &run.stdout;
    assert!(out.contains("before 0 0"), "{kernel}: clean guest: {out}");
    for sig in ["INT", "KILL"] {
        // 13 fentry + 12 fexit programs attached while running.
        assert!(
            out.contains(&format!("attached {sig} 25")),
            "{kernel}: {out}"
        );
        assert!(
            out.contains(&format!("after {sig} 0 0")),
            "{kernel} {sig}: {out}"
        );
    }
    // SIGINT ends skprof cleanly; SIGKILL is 128 + 9.
    assert!(out.contains("exit INT 0"), "{out}");
    assert!(out.contains("exit KILL 137"), "{out}");
}

/// `skprof check` in the guest: fentry works, all functions present.
fn check_in_guest(kernel: &str, run: &Run) {
    assert_eq!(run.status, 0, "{kernel}: {}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).expect("check --json");
    assert_eq!(v["mode"], "fentry");
    assert_eq!(v["fentry"]["ok"], true);
    assert_eq!(v["kprobe"]["ok"], true);
    assert_eq!(v["has_tc_variants"], true, "Debian {kernel} has bpf_tc_*");
    for f in v["functions"].as_array().unwrap() {
        assert_eq!(f["btf"], true, "{f}");
    }
}

/// Every scenario above in one guest of `kernel`, one after another (one
/// boot for all), then each one's checks. `check` and `signals_detach`
/// first: the latter's "before" line sees a guest no skprof has run in.
fn probes(kernel: &str) {
    let attribution = [
        ("attribution_exact", ""),
        ("stack_attribution_kprobe", "--probe-mode kprobe"),
        ("stack_attribution_fentry", "--attribute-by stack"),
    ];
    let mut scripts = vec![
        ("check", format!("{SKPROF} check --json")),
        ("signals_detach", signals_detach_script(kernel)),
        ("fentry_exact_counts", exact_counts_script("fentry")),
        ("kprobe_exact_counts", exact_counts_script("kprobe")),
        (
            "count_ends_before_the_workload",
            count_ends_before_the_workload_script(),
        ),
    ];
    scripts.extend(attribution.map(|(name, flags)| (name, attribution_exact_script(flags))));
    scripts.push(("places_exact", places_exact_script()));
    // Each script took at most a minute or two on a loaded host.
    let runs = common::guest_batch(kernel, 1800, &scripts);
    let mut checks: Vec<common::Check> = vec![
        ("check", Box::new(|| check_in_guest(kernel, &runs["check"]))),
        (
            "signals_detach",
            Box::new(|| signals_detach(kernel, &runs["signals_detach"])),
        ),
        (
            "fentry_exact_counts",
            Box::new(|| exact_counts(kernel, "fentry", &runs["fentry_exact_counts"])),
        ),
        (
            "kprobe_exact_counts",
            Box::new(|| exact_counts(kernel, "kprobe", &runs["kprobe_exact_counts"])),
        ),
        (
            "count_ends_before_the_workload",
            Box::new(|| {
                count_ends_before_the_workload(kernel, &runs["count_ends_before_the_workload"])
            }),
        ),
        (
            "places_exact",
            Box::new(|| places_exact(kernel, &runs["places_exact"])),
        ),
    ];
    for (name, _) in attribution {
        let run = &runs[name];
        checks.push((name, Box::new(move || attribution_exact(kernel, run))));
    }
    common::check_all(&format!("vm_probes {kernel}"), checks);
}

#[test]
fn probes_6_1() {
    probes("6.1");
}

#[test]
fn probes_6_12() {
    probes("6.12");
}
