//! The reference ledger for real, in Debian 6.1 and 6.12 guests: a million
//! balanced lookups leave nothing behind, and releases the ledger is made to
//! miss (`skprof leaks --self-test`) are reported exactly, with exit code 5.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

mod common;
use common::u;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// `skprof ARGS` as a guest script (the arguments are plain words).
fn skprof(args: &[&str]) -> String {
    assert!(args.iter().all(|a| !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))));
    format!("{SKPROF} {}", args.join(" "))
}

/// A script's exit status, JSON lines and stderr.
fn parsed(run: &common::Scenario) -> (i32, Vec<Value>, String) {
    (
        run.status,
        common::json_lines(&run.stdout),
        run.stderr.clone(),
    )
}

/// 28 tc cases x 3000 lookups x 12 rounds = 1,008,000 lookups, every one
/// released by the workload's programs.
fn balanced_script() -> String {
    skprof(&"leaks --json --workload --workload-family tc --workload-count 3000 --workload-rounds 12 --workload-rate 1000000000".split(' ').collect::<Vec<_>>())
}

/// [`balanced_script`]'s run: nothing leaked, nothing left in the ledger.
fn balanced(kernel: &str, run: &common::Scenario) {
    let (status, lines, stderr) = parsed(run);
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

/// Releases untraced for one round (`leaks --self-test`).
fn injected_script() -> String {
    skprof(
        &"leaks --json --self-test --stacks --older-than 0 --exit-on-leak"
            .split(' ')
            .collect::<Vec<_>>(),
    )
}

/// [`injected_script`]'s run: every reference the round took is reported,
/// per helper, with the workload's tuples, and exit code 5.
fn injected(kernel: &str, run: &common::Scenario) {
    let (status, lines, stderr) = parsed(run);
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
    // The self-test records call sites: every group names the workload's
    // source line that called its helper (bpf_tc_sk_lookup_tcp is the
    // program's bpf_sk_lookup_tcp() call, and so on).
    let called = |helper: &str| {
        let h = helper.trim_start_matches("bpf_");
        let h = ["tc_", "xdp_", "sock_addr_"]
            .iter()
            .fold(h, |h, p| h.strip_prefix(p).unwrap_or(h));
        format!("bpf_{h}(")
    };
    for g in report["groups"].as_array().unwrap() {
        let line = &g["site"]["line"];
        assert!(
            line["file"]
                .as_str()
                .unwrap_or_default()
                .ends_with("workload.bpf.c")
                && line["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&called(g["helper"].as_str().unwrap())),
            "{kernel}: a leak group without its lookup's line: {g}"
        );
    }
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
        // A run leak's helper is the reference's enum name: TcSkLookupTcp
        // is the function bpf_tc_sk_lookup_tcp.
        let helper = l["helper"]
            .as_str()
            .unwrap()
            .chars()
            .fold(String::from("bpf"), |mut s, c| {
                if c.is_ascii_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
                s
            });
        assert!(
            l["site"]["line"]["text"]
                .as_str()
                .unwrap_or_default()
                .contains(&called(&helper)),
            "{kernel}: a run leak without its lookup's line: {l}"
        );
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

/// Where a `leaks --trace` run of [`trace_agrees_scripts`] writes.
fn trace_file(kernel: &str, what: &str) -> String {
    format!(
        "/tmp/skprof-trace-{}-{kernel}-{what}.jsonl",
        std::process::id()
    )
}

/// The two runs of [`trace_agrees`]: a balanced workload, the self-test.
fn trace_agrees_scripts(kernel: &str) -> [String; 2] {
    let balanced = skprof(&[
        "leaks",
        "--json",
        "--trace",
        &trace_file(kernel, "balanced"),
        "--workload",
        "--workload-count",
        "2",
        "--workload-rounds",
        "1",
        "--workload-copies",
        "2",
    ]);
    let self_test = skprof(&[
        "leaks",
        "--json",
        "--trace",
        &trace_file(kernel, "self-test"),
        "--ledger-size",
        "3",
        "--self-test",
        "--self-test-count",
        "2",
        "--older-than",
        "0",
        "--exit-on-leak",
    ]);
    [balanced, self_test]
}

/// `skprof leaks --trace`: the kernel's ledger, replayed through the model,
/// agrees with it step by step, for a balanced workload with two programs
/// per helper (every family), and for the self-test with a ledger too small
/// for its sockets (leaks and overflow). The counts are the workload's.
fn trace_agrees(kernel: &str, balanced: &common::Scenario, self_test: &common::Scenario) {
    let file = trace_file(kernel, "balanced");
    let (status, lines, stderr) = parsed(balanced);
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

    let (status, lines, stderr) = parsed(self_test);
    let _ = std::fs::remove_file(trace_file(kernel, "self-test"));
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

/// Every scenario in one guest of `kernel`, one after another (one boot
/// for all), then each one's checks.
fn ledger(kernel: &str) {
    let [trace_balanced, trace_self_test] = trace_agrees_scripts(kernel);
    let runs = common::guest_batch(
        kernel,
        1600,
        &[
            ("balanced_million", balanced_script()),
            ("trace_balanced", trace_balanced),
            ("trace_self_test", trace_self_test),
            ("injected_imbalance", injected_script()),
        ],
    );
    common::check_all(
        &format!("vm_ledger {kernel}"),
        vec![
            (
                "balanced_million",
                Box::new(|| balanced(kernel, &runs["balanced_million"])),
            ),
            (
                "trace_agrees",
                Box::new(|| {
                    trace_agrees(kernel, &runs["trace_balanced"], &runs["trace_self_test"])
                }),
            ),
            (
                "injected_imbalance",
                Box::new(|| injected(kernel, &runs["injected_imbalance"])),
            ),
        ],
    );
}

#[test]
fn ledger_6_1() {
    ledger("6.1");
}

#[test]
fn ledger_6_12() {
    ledger("6.12");
}
