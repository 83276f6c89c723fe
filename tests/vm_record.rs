//! `skprof record` for real, in Debian 6.1 and 6.12 guests (`skprof-vm`,
//! qemu TCG), then `skprof report` on the host: the recording's totals must
//! equal the built-in workload's own exact counts; a recording stopped by
//! SIGINT ends cleanly and still holds every call; one killed with SIGKILL
//! reads back up to its last complete reading, with a warning. The full
//! recording's HTML page, SVG and PNG figures are made on the host too,
//! with the same counts in the report written beside them.

use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::u;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// Lookups per workload case.
const N: u64 = 40;

/// Runs a shell script in a guest; returns its stdout.
fn in_vm(kernel: &str, script: &str) -> String {
    let out = common::guest_sh(kernel, 500, script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "guest script failed on {kernel}:\n{stdout}\n{stderr}"
    );
    stdout
}

fn report(path: &str) -> (Output, Value) {
    let o = Command::new(SKPROF)
        .args(["report", path, "--format", "json"])
        .output()
        .expect("run skprof report");
    assert_eq!(
        o.status.code(),
        Some(0),
        "report {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = serde_json::from_slice(&o.stdout).expect("report --format json prints JSON");
    (o, v)
}

/// Every helper row of the report against the workload's counts stored in
/// the same recording; returns the calls checked.
fn totals_match_workload(kernel: &str, what: &str, v: &Value) -> u64 {
    let expected = &v["workload"]["expected"];
    let exp_helpers = expected["helpers"]
        .as_object()
        .unwrap_or_else(|| panic!("{kernel} {what}: no workload counts: {v}"));
    let mut checked = 0;
    let totals = &v["totals"];
    for row in totals["helpers"].as_array().unwrap() {
        let name = row["helper"].as_str().unwrap();
        let calls = u(&row["calls"]);
        let Some(exp) = exp_helpers.get(name) else {
            assert_eq!(calls, 0, "{kernel} {what}: {name} was not driven");
            continue;
        };
        assert_eq!(calls, u(&exp["calls"]), "{kernel} {what}: {name} calls");
        for o in ["hit", "no_socket", "bad_len", "bad_netns", "bad_flags"] {
            assert_eq!(
                u(&row["outcomes"][o]),
                u(&exp["outcomes"][o]),
                "{kernel} {what}: {name} outcome {o}"
            );
        }
        for c in ["listener", "established", "time_wait", "request", "udp"] {
            assert_eq!(
                u(&row["acquired_by_class"][c]),
                u(&exp["acquired_by_class"][c]),
                "{kernel} {what}: {name} acquired {c}"
            );
        }
        // Every call is counted; the histogram holds the timed ones
        // (latency sampling: back-to-back lookups are sampled).
        let lat = &row["latency_ns"];
        assert!(
            u(&lat["count"]) <= calls && (calls == 0) == (u(&lat["count"]) == 0),
            "{kernel} {what}: {name} timed {} of {calls}",
            lat["count"]
        );
        assert_eq!(row["timed"], lat["count"], "{kernel} {what}: {name}");
        if calls > 0 {
            assert!(
                u(&lat["p50"]) > 0 && u(&lat["p50"]) <= u(&lat["p99"]),
                "{kernel} {what}: {name}: {lat}"
            );
        }
        checked += calls;
    }
    assert_eq!(
        u(&totals["release"]["dropped"]),
        u(&expected["release"]["dropped"]),
        "{kernel} {what}: refcounted releases"
    );
    assert_eq!(u(&totals["acquired"]), u(&totals["release"]["dropped"]));
    for d in ["unmatched_exits", "evicted_entries", "recursion_misses"] {
        assert_eq!(u(&totals["drops"][d]), 0, "{kernel} {what}: drops.{d}");
    }
    checked
}

/// `skprof report -o DIR --format html,svg,png,json` on the host: a
/// figure of each kind, a latency figure per helper the workload drove,
/// the page with every figure inline, and the same counts as `full`.
fn figures(kernel: &str, rec: &str, dir: &str, full: &Value) {
    let o = Command::new(SKPROF)
        .args(["report", rec, "-o", dir, "--format", "html,svg,png,json"])
        .output()
        .expect("run skprof report");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{kernel}: report -o: {err}");
    let file = |name: &str| {
        let p = std::path::Path::new(dir).join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{kernel}: {}: {e}", p.display()))
    };
    let v: Value = serde_json::from_slice(&file("report.json")).unwrap();
    assert_eq!(v["totals"], full["totals"], "{kernel}: the same report");
    totals_match_workload(kernel, "report -o", &v);
    let mut names = vec![
        "percentiles-over-time".to_string(),
        "rate-over-time".into(),
        "hold-time".into(),
        "programs".into(),
    ];
    for row in v["totals"]["helpers"].as_array().unwrap() {
        if u(&row["calls"]) > 0 {
            names.push(format!("latency-{}", row["helper"].as_str().unwrap()));
        }
    }
    assert_eq!(names.len(), 4 + 12, "{kernel}: every helper was driven");
    for n in &names {
        let svg = String::from_utf8(file(&format!("{n}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{kernel}: {n}"
        );
        let png = file(&format!("{n}.png"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{kernel}: {n}");
    }
    let html = String::from_utf8(file("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), names.len(), "{kernel}");
    for row in v["totals"]["helpers"].as_array().unwrap() {
        let cells = format!(
            "<tr data-helper=\"{}\"><td><code>{}</code></td><td class=\"n calls\" data-v=\"{}\">",
            row["helper"].as_str().unwrap(),
            row["helper"].as_str().unwrap(),
            row["calls"]
        );
        assert!(html.contains(&cells), "{kernel}: {cells}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn record_and_report(kernel: &str) {
    let base = format!("/tmp/skprof-vmrec-{}-{kernel}", std::process::id());
    let (full, int, kill) = (
        format!("{base}-full.skrec"),
        format!("{base}-int.skrec"),
        format!("{base}-kill.skrec"),
    );
    let log = format!("{base}.log");
    let script = format!(
        r#"set -u
{SKPROF} record -o {full} --workload --workload-rounds 1 --workload-count {N} \
  --workload-rate 1000000 --duration 300s
echo "full exit $?"
# Wait for the recording to start (the workload is set up and traced),
# then stop it: once with SIGINT, once with SIGKILL.
run() {{
  sig=$1; shift
  "$@" 2>{log} &
  pid=$!
  i=0
  while ! grep -q '^Recording to' {log} && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
  sleep 2
  kill -$sig $pid
  wait $pid
  echo "$sig exit $?"
}}
run INT {SKPROF} record -o {int} --workload --workload-rate 500 --interval 500ms
run KILL {SKPROF} record -o {kill} --interval 100ms
rm -f {log}
"#
    );
    let out = in_vm(kernel, &script);
    let cleanup = || {
        for f in [&full, &int, &kill] {
            let _ = std::fs::remove_file(f);
        }
    };
    assert!(out.contains("full exit 0"), "{kernel}: {out}");
    assert!(out.contains("INT exit 0"), "{kernel}: {out}");
    assert!(out.contains("KILL exit 137"), "{kernel}: {out}");

    // One workload round, recorded to its end.
    let (o, v) = report(&full);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(v["truncated"], false);
    assert_eq!(v["meta"]["probe_mode"], "fentry");
    assert!(
        v["meta"]["kernel"].as_str().unwrap().starts_with(kernel),
        "{kernel}: {}",
        v["meta"]["kernel"]
    );
    let exp_helpers = v["workload"]["expected"]["helpers"].as_object().unwrap();
    assert_eq!(exp_helpers.len(), 12, "{kernel}: all 12 helper functions");
    let calls = totals_match_workload(kernel, "full", &v);
    assert!(calls >= 12 * N, "{kernel}: {calls} calls");
    // Every call is attributed to a workload program, and the program rows
    // add up to the helper rows.
    let programs = v["programs"]["helpers"].as_array().unwrap();
    for row in v["totals"]["helpers"].as_array().unwrap() {
        let by_prog: u64 = programs
            .iter()
            .filter(|p| p["helper"] == row["helper"])
            .map(|p| u(&p["calls"]))
            .sum();
        assert_eq!(by_prog, u(&row["calls"]), "{kernel}: {}", row["helper"]);
    }
    for p in programs {
        let name = p["program"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("wl_"),
            "{kernel}: {} calls of {} attributed to {name} (attribution off: {}); the programs: {programs:?}",
            p["calls"],
            p["helper"],
            v["meta"]["attribution_off"]
        );
    }
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len() as u64, u(&v["intervals"]));
    let series_calls: u64 = series
        .iter()
        .flat_map(|p| p["helpers"].as_array().unwrap())
        .map(|h| u(&h["calls"]))
        .sum();
    assert_eq!(series_calls, calls, "{kernel}: the series adds up");
    assert_eq!(u(&v["leaks"]["run_leaks"]), 0);
    assert_eq!(u(&v["leaks"]["ledger"]["leaked_references"]), 0);
    figures(kernel, &full, &format!("{base}-report"), &v);

    // SIGINT: a clean end, and every call the workload made is in it.
    let (o, v) = report(&int);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(v["truncated"], false);
    let calls = totals_match_workload(kernel, "SIGINT", &v);
    assert!(calls > 0, "{kernel}: the workload ran before SIGINT");

    // SIGKILL: no End frame; the complete readings are reported.
    let (o, v) = report(&kill);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("skprof: warning: {kill}: recording not finished")),
        "{err}"
    );
    assert_eq!(v["truncated"], true);
    assert!(u(&v["intervals"]) >= 2, "{kernel}: {}", v["intervals"]);
    cleanup();
}

#[test]
fn record_then_report_6_1() {
    record_and_report("6.1");
}

#[test]
fn record_then_report_6_12() {
    record_and_report("6.12");
}
