//! The reference ledger for real, in Debian 6.1 and 6.12 guests: a million
//! balanced lookups leave nothing behind, and releases the ledger is made to
//! miss (`skprof leaks --self-test`) are reported exactly, with exit code 5.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

mod common;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

fn in_vm(kernel: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(common::skprof_vm())
        .args(["run", "--kernel", kernel, "--timeout", "400", "--", SKPROF])
        .args(args)
        .output()
        .expect("run skprof-vm");
    let status = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        status != 124 && status != 125,
        "VM harness failed on {kernel}: {stderr}"
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
        .collect();
    (status, lines, stderr)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// 28 tc cases x 3000 lookups x 12 rounds = 1,008,000 lookups, every one
/// released by the workload's programs.
fn balanced(kernel: &str) {
    let (status, lines, stderr) = in_vm(
        kernel,
        &[
            "leaks",
            "--json",
            "--workload",
            "--workload-family",
            "tc",
            "--workload-count",
            "3000",
            "--workload-rounds",
            "12",
            "--workload-rate",
            "1000000000",
        ],
    );
    assert_eq!(status, 0, "{kernel}: {stderr}");
    let expected = &lines
        .iter()
        .find(|l| l["type"] == "workload")
        .expect("workload line")["expected"];
    let calls: u64 = expected["helpers"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| u(&h["calls"]))
        .sum();
    assert!(calls >= 1_000_000, "{kernel}: only {calls} lookups");
    let acquired = u(&expected["release"]["dropped"]);
    assert!(
        acquired > 100_000,
        "{kernel}: the workload acquires references"
    );
    let reports: Vec<&Value> = lines.iter().filter(|l| l["type"] == "leaks").collect();
    assert!(!reports.is_empty());
    for r in &reports {
        assert_eq!(u(&r["leaked_references"]), 0, "{kernel}: {r}");
        assert_eq!(r["run_leaks"].as_array().unwrap().len(), 0, "{kernel}: {r}");
        assert_eq!(
            u(&r["unmatched_releases"]),
            0,
            "{kernel}: false unmatched releases: {r}"
        );
    }
    // After the workload, nothing is left in the ledger at all.
    assert_eq!(u(&reports.last().unwrap()["outstanding_sockets"]), 0);
}

/// Releases untraced for one round: every reference the round took must be
/// reported, per helper, with the workload's tuples, and exit code 5.
fn injected(kernel: &str) {
    let (status, lines, stderr) = in_vm(
        kernel,
        &[
            "leaks",
            "--json",
            "--self-test",
            "--stacks",
            "--older-than",
            "0",
            "--exit-on-leak",
        ],
    );
    assert_eq!(status, 5, "{kernel}: leak exit code: {stderr}");
    assert!(stderr.starts_with("skprof: error: leaks found"), "{stderr}");
    let expected = &lines
        .iter()
        .find(|l| l["type"] == "self_test")
        .expect("self_test line")["expected"];
    let report = lines
        .iter()
        .find(|l| l["type"] == "leaks")
        .expect("leaks line");

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (helper, row) in expected["helpers"].as_object().unwrap() {
        let a = u(&row["acquired"]);
        if a > 0 {
            want.insert(helper.clone(), a);
        }
    }
    assert!(
        want.len() >= 2,
        "{kernel}: sk and skc lookups acquire: {expected}"
    );
    let self_test = lines.iter().find(|l| l["type"] == "self_test").unwrap();
    let want_tuples: BTreeSet<&str> = self_test["tuples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut got_tuples: BTreeSet<&str> = BTreeSet::new();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for g in report["groups"].as_array().unwrap() {
        *got.entry(g["helper"].as_str().unwrap().to_string())
            .or_default() += u(&g["references"]);
        assert!(!g["tuples"].as_array().unwrap().is_empty());
        for t in g["tuples"].as_array().unwrap() {
            got_tuples.insert(t.as_str().unwrap());
        }
    }
    assert_eq!(got, want, "{kernel}: leaked references per helper");
    // Exactly the sockets of the workload's acquiring cases.
    assert_eq!(got_tuples, want_tuples, "{kernel}: leaked tuples");
    assert_eq!(u(&report["leaked_references"]), want.values().sum::<u64>());
    // Every run that acquired ended holding its reference.
    let run_leaks = report["run_leaks"].as_array().unwrap();
    // Each acquiring run took exactly one reference and ended holding it.
    assert_eq!(
        run_leaks.len() as u64,
        want.values().sum::<u64>(),
        "{kernel}: run leak events"
    );
    for l in run_leaks {
        assert!(
            l["prog_name"]
                .as_str()
                .unwrap()
                .starts_with("wl_tc_lookup["),
            "{l}"
        );
    }
    for g in report["groups"].as_array().unwrap() {
        assert!(
            g["prog_name"]
                .as_str()
                .unwrap()
                .starts_with("wl_tc_lookup["),
            "{kernel}: the tc program took them: {g}"
        );
        assert!(u(&g["prog_id"]) > 0);
        // Each socket's class and a real state (an unread one shows as
        // UNKNOWN). Hashed UDP sockets are SOCK_RCU_FREE, so UDP hits take
        // no reference and every group here is a TCP lookup's.
        let helper = g["helper"].as_str().unwrap();
        for s in g["states"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(!s.contains("UNKNOWN"), "{kernel}: {helper}: {s}");
            assert_eq!(
                helper.contains("udp"),
                s.starts_with("udp "),
                "{kernel}: {helper}: {s}"
            );
        }
        // --stacks: the symbolized stack starts at the helper (skprof's own
        // probe frames trimmed) and goes through the calling program.
        let stack: Vec<&str> = g["stack"]
            .as_array()
            .unwrap_or_else(|| panic!("{kernel}: a stack: {g}"))
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            stack[0].starts_with(&format!("{helper}+")),
            "{kernel}: {stack:?}"
        );
        assert!(
            stack.iter().any(|f| f.contains("_wl_tc_lookup+")),
            "{kernel}: {stack:?}"
        );
    }
}

/// `skprof leaks --trace`: the kernel's ledger, replayed through the model,
/// agrees with it step by step, for a balanced workload with two programs
/// per helper (every family), and for the self-test with a ledger too small
/// for its sockets (leaks and overflow). The counts are the workload's.
fn trace_agrees(kernel: &str) {
    let file = format!("/tmp/skprof-trace-{}-{kernel}.jsonl", std::process::id());
    let (status, lines, stderr) = in_vm(
        kernel,
        &[
            "leaks",
            "--json",
            "--trace",
            &file,
            "--workload",
            "--workload-count",
            "2",
            "--workload-rounds",
            "1",
            "--workload-copies",
            "2",
        ],
    );
    assert_eq!(status, 0, "{kernel}: {stderr}");
    let check = lines
        .iter()
        .find(|l| l["type"] == "trace_check")
        .expect("trace_check line");
    let expected = &lines
        .iter()
        .find(|l| l["type"] == "workload")
        .expect("workload line")["expected"];
    assert_eq!(check["agrees"], true, "{kernel}: {check}");
    assert_eq!(check["quiescent"], true, "{kernel}: {check}");
    let t = &check["tally"];
    let acquired: u64 = expected["helpers"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| u(&h["acquired"]))
        .sum();
    assert!(acquired > 0);
    assert_eq!(u(&t["acquired"]), acquired, "{kernel}: {check}");
    assert_eq!(u(&t["closed"]), acquired, "{kernel}: {check}");
    assert_eq!(u(&t["noop"]), u(&expected["release"]["noop"]), "{kernel}");
    assert_eq!((u(&t["unmatched"]), u(&t["run_leaks"])), (0, 0), "{kernel}");
    let recorded = std::fs::read_to_string(&file).expect("the trace file");
    let _ = std::fs::remove_file(&file);
    // The file is what was checked: one record per event, after a header.
    assert_eq!(
        recorded.lines().filter(|l| l.starts_with('{')).count() as u64,
        u(&t["events"])
    );

    let (status, lines, stderr) = in_vm(
        kernel,
        &[
            "leaks",
            "--json",
            "--trace",
            &file,
            "--ledger-size",
            "3",
            "--self-test",
            "--self-test-count",
            "2",
            "--older-than",
            "0",
            "--exit-on-leak",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(status, 5, "{kernel}: leaks found: {stderr}");
    let check = lines
        .iter()
        .find(|l| l["type"] == "trace_check")
        .expect("trace_check line");
    assert_eq!(check["agrees"], true, "{kernel}: {check}");
    let t = &check["tally"];
    // Every reference the self-test took was held by its run: exactly the
    // workload's count.
    let took: u64 = lines
        .iter()
        .find(|l| l["type"] == "self_test")
        .expect("self_test line")["expected"]["helpers"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| u(&h["acquired"]))
        .sum();
    assert_eq!(u(&t["acquired"]), took, "{kernel}: {check}");
    // At each run's end its reference moves to the global ledger: room for
    // 3 sockets and more distinct sockets than that, so it overflowed.
    assert!(
        u(&t["ledger_full"]) > 0,
        "{kernel}: the ledger overflowed: {check}"
    );
    assert_eq!(u(&t["closed"]), 0, "{kernel}: releases untraced");
    // Every reference leaked from its run: reported, or refused by the
    // full ledger.
    assert_eq!(
        u(&t["run_leaks"]) + u(&t["ledger_full"]),
        took,
        "{kernel}: {check}"
    );
}

#[test]
fn trace_agrees_6_1() {
    trace_agrees("6.1");
}

#[test]
fn trace_agrees_6_12() {
    trace_agrees("6.12");
}

#[test]
fn balanced_million_6_1() {
    balanced("6.1");
}

#[test]
fn balanced_million_6_12() {
    balanced("6.12");
}

#[test]
fn injected_imbalance_6_1() {
    injected("6.1");
}

#[test]
fn injected_imbalance_6_12() {
    injected("6.12");
}
