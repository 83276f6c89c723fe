//! Unmatched releases for real, in Debian 6.1 and 6.12 guests (`skprof-vm`,
//! qemu TCG): the workload's sockhash case (bpf/sockhash.bpf.c) releases
//! sockets it took out of a SOCKHASH with `bpf_map_lookup_elem`, references
//! no lookup helper took, while its tc cases acquire and release as usual.
//! Every face of skprof must show exactly the workload's counts: acquired
//! M, released M + N of which N unmatched, and no leak.
//!
//! One guest per kernel runs, side by side, `stat --json --cumulative`,
//! `stat --cumulative` (the table), `leaks --json`, `leaks` (text),
//! `record` and `export`, all attached before a separate `skprof workload
//! --start-on-sigusr1` process is told to start; then it scrapes the
//! exporter once and makes the recording's Markdown report.
//!
//! The wording every face is getting for this balance ("balanced; N
//! releases of references no traced lookup took", a `balance` object in
//! `stat --json`, the exporter's `skprof_release_balance_info` labels) is checked by `assert_balanced_wording` after the counts,
//! so a count failure shows first and a wording failure lists every face's
//! actual text.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{json_lines, u};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");
/// Runs of the sockhash case: each one unmatched release (and one matched
/// lookup + release of its own).
const SOCKHASH_RUNS: u64 = 13;
/// Lookups per tc case (one round): more acquires, of several classes.
const TC_COUNT: u64 = 4;
/// The exporter's default address, inside the guest.
const METRICS: &str = "http://127.0.0.1:9435";

/// The guest script: the workload set up and waiting, every face attached,
/// then the workload runs once; each face reports at least twice more
/// before it is stopped, so its last report holds every call.
fn script(dir: &Path) -> String {
    let d = dir.display();
    let waitfor = common::SH_WAITFOR;
    format!(
        r#"set -u
D={d}
S={SKPROF}
mkdir -p "$D"
{waitfor}
$S workload --family tc --count {TC_COUNT} --rounds 1 --sockhash {SOCKHASH_RUNS} \
  --start-on-sigusr1 --json >"$D/workload.json" 2>"$D/workload.err" &
WL=$!
waitfor workload-ready $WL grep -q 'ready, waiting for SIGUSR1' "$D/workload.err"

$S stat --json --cumulative 1 >"$D/stat.json" 2>"$D/stat_json.err" &
SJ=$!
$S stat --cumulative 1 >"$D/stat.txt" 2>"$D/stat_txt.err" &
ST=$!
$S leaks --json 1 >"$D/leaks.json" 2>"$D/leaks_json.err" &
LJ=$!
$S leaks 1 >"$D/leaks.txt" 2>"$D/leaks_txt.err" &
LT=$!
$S record -o "$D/run.skrec" >"$D/record.out" 2>"$D/record.err" &
RC=$!
$S export >"$D/export.out" 2>"$D/export.err" &
EX=$!
# A first report means the probes are attached and the workload's
# programs (loaded already) are traced.
waitfor stat-json $SJ atleast "$D/stat.json" '^{{' 1
waitfor stat-text $ST atleast "$D/stat.txt" 'bpf_sk_release:' 1
waitfor leaks-json $LJ atleast "$D/leaks.json" '^{{' 1
waitfor leaks-text $LT atleast "$D/leaks.txt" 'ledger:' 1
waitfor record $RC grep -q 'Recording to' "$D/record.err"
waitfor export $EX curl -sf -o /dev/null {METRICS}/metrics

kill -USR1 $WL
wait $WL; echo "status workload $?"

# Two more reports from each: the second began after the workload ended.
a=$(lines "$D/stat.json" '^{{'); b=$(lines "$D/stat.txt" 'bpf_sk_release:')
c=$(lines "$D/leaks.json" '^{{'); e=$(lines "$D/leaks.txt" 'ledger:')
waitfor stat-json-after $SJ atleast "$D/stat.json" '^{{' $((a+2))
waitfor stat-text-after $ST atleast "$D/stat.txt" 'bpf_sk_release:' $((b+2))
waitfor leaks-json-after $LJ atleast "$D/leaks.json" '^{{' $((c+2))
waitfor leaks-text-after $LT atleast "$D/leaks.txt" 'ledger:' $((e+2))
# The exporter collects every second, as the others report: by now it has
# collected since the workload ended; a margin for a slow guest.
sleep 2
curl -s {METRICS}/metrics >"$D/metrics.txt"; echo "status curl $?"

kill -INT $SJ $ST $LJ $LT $RC
kill -TERM $EX
wait $SJ; echo "status stat_json $?"
wait $ST; echo "status stat_text $?"
wait $LJ; echo "status leaks_json $?"
wait $LT; echo "status leaks_text $?"
wait $RC; echo "status record $?"
wait $EX; echo "status export $?"
$S report "$D/run.skrec" >"$D/report.md" 2>"$D/report.err"; echo "status report $?"
echo done
"#
    )
}

fn run_guest(kernel: &str) -> common::Outputs {
    let dir = std::env::temp_dir().join(format!(
        "skprof-sockhash-{}-{}",
        std::process::id(),
        kernel.replace('.', "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // Six skprof processes load their probes and trace the workload's
    // programs on one emulated CPU thread (TCG, thread=single): about
    // 4 minutes on a loaded 2-core host before the workload even starts.
    let out = common::Outputs::run(kernel, 1500, dir.clone(), &script(&dir));
    assert!(out.log.contains("done"), "{kernel}: {}", out.log);
    out
}

/// The workload's own counts: (acquired M, released M + N, unmatched N),
/// and its per-helper rows.
struct Expected {
    acquired: u64,
    dropped: u64,
    unmatched: u64,
    helpers: serde_json::Map<String, Value>,
}

fn expected(o: &common::Outputs) -> Expected {
    o.ok("workload", "workload.err");
    let lines = json_lines(&o.read("workload.json"));
    let w = lines
        .last()
        .unwrap_or_else(|| panic!("{}: no workload JSON", o.kernel));
    let by_helper = &w["by_helper"];
    let helpers = by_helper["helpers"].as_object().unwrap().clone();
    let acquired = helpers.values().map(|h| u(&h["acquired"])).sum();
    let e = Expected {
        acquired,
        dropped: u(&by_helper["release"]["dropped"]),
        unmatched: u(&by_helper["release"]["unmatched"]),
        helpers,
    };
    // The workload's own accounting: the sockhash case ran exactly as
    // asked, and its unmatched releases are on top of the acquired ones.
    assert_eq!(e.unmatched, SOCKHASH_RUNS, "{}: {w}", o.kernel);
    assert_eq!(e.dropped, e.acquired + e.unmatched, "{}: {w}", o.kernel);
    // Its own lookups, plus the tc cases' (established, skc established,
    // TIME_WAIT and request, and IPv6 established when ::1 works).
    assert!(
        e.acquired >= SOCKHASH_RUNS + 4 * TC_COUNT,
        "{}: acquired {}: {w}",
        o.kernel,
        e.acquired
    );
    e
}

/// `stat --json --cumulative`: the last interval has every call.
fn check_stat_json(o: &common::Outputs, e: &Expected) -> Value {
    o.ok("stat_json", "stat_json.err");
    let lines = json_lines(&o.read("stat.json"));
    let last = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "interval")
        .unwrap_or_else(|| panic!("{}: no interval line", o.kernel))
        .clone();
    let k = &o.kernel;
    let rel = &last["release"];
    assert_eq!(u(&last["acquired"]), e.acquired, "{k}: acquired: {last}");
    assert_eq!(u(&rel["dropped"]), e.dropped, "{k}: dropped: {rel}");
    assert_eq!(u(&rel["unmatched"]), e.unmatched, "{k}: unmatched: {rel}");
    assert_eq!(
        u(&rel["unmatched_by_class"]["established"]),
        e.unmatched,
        "{k}: the SOCKHASH held an established socket: {rel}"
    );
    // Matched releases = dropped - unmatched = acquired.
    assert_eq!(u(&rel["dropped"]) - u(&rel["unmatched"]), e.acquired, "{k}");
    for row in last["helpers"].as_array().unwrap() {
        let name = row["helper"].as_str().unwrap();
        let (calls, acq) = match e.helpers.get(name) {
            Some(x) => (u(&x["calls"]), u(&x["acquired"])),
            None => (0, 0),
        };
        assert_eq!(u(&row["calls"]), calls, "{k}: {name} calls");
        assert_eq!(u(&row["acquired"]), acq, "{k}: {name} acquired");
    }
    for (d, n) in last["drops"].as_object().unwrap() {
        assert_eq!(u(n), 0, "{k}: drops.{d}: {last}");
    }
    last
}

/// `stat --cumulative` (the table): its last release line has the counts.
fn check_stat_text(o: &common::Outputs, e: &Expected) -> String {
    o.ok("stat_text", "stat_txt.err");
    let text = o.read("stat.txt");
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("bpf_sk_release:"))
        .unwrap_or_else(|| panic!("{}: no release line:\n{text}", o.kernel));
    // The tc cases hit listeners and UDP sockets too (no-op releases): only
    // the dropped and acquired figures are fixed here.
    let want_dropped = format!("{} dropped a reference", e.dropped);
    let want_acq = format!("; acquired {}", e.acquired);
    assert!(
        line.contains(&want_dropped) && line.contains(&want_acq),
        "{}: wanted {want_dropped:?} and {want_acq:?}, got {line:?}",
        o.kernel
    );
    let last_table = &text[text.rfind("HELPER").unwrap_or(0)..];
    last_table.to_string()
}

/// `leaks --json`: no leak, and the unmatched releases named.
fn check_leaks(o: &common::Outputs, e: &Expected) -> String {
    o.ok("leaks_json", "leaks_json.err");
    o.ok("leaks_text", "leaks_txt.err");
    let k = &o.kernel;
    let reports: Vec<Value> = json_lines(&o.read("leaks.json"))
        .into_iter()
        .filter(|l| l["type"] == "leaks")
        .collect();
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("{k}: no leaks report"));
    for r in &reports {
        assert_eq!(u(&r["leaked_references"]), 0, "{k}: {r}");
        assert!(r["run_leaks"].as_array().unwrap().is_empty(), "{k}: {r}");
    }
    assert_eq!(u(&last["unmatched_releases"]), e.unmatched, "{k}: {last}");
    assert_eq!(u(&last["outstanding_sockets"]), 0, "{k}: {last}");
    let text = o.read("leaks.txt");
    assert!(!text.contains("RUN LEAK"), "{k}: {text}");
    // The last report: each starts "\n[ELAPSEDs] ledger: ...".
    text[text.rfind("\n[").unwrap_or(0)..].to_string()
}

/// The exposition scraped once after the workload: the release counters
/// sum to the workload's counts.
fn check_export(o: &common::Outputs, e: &Expected) {
    assert_eq!(o.status("curl"), 0, "{}: scrape", o.kernel);
    o.ok("export", "export.err");
    let text = o.read("metrics.txt");
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .map(|l| {
                let v = l.rsplit(' ').next().unwrap();
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{}: bad sample {l}", o.kernel))
                    as u64
            })
            .sum()
    };
    let k = &o.kernel;
    assert_eq!(
        sum("skprof_references_unmatched_releases_total"),
        e.unmatched,
        "{k}: unmatched releases in:\n{text}"
    );
    assert_eq!(
        sum("skprof_references_released_total"),
        e.dropped,
        "{k}: released"
    );
    assert_eq!(
        sum("skprof_references_acquired_total"),
        e.acquired,
        "{k}: acquired"
    );
}

/// `record` stopped by SIGINT, then `report` (Markdown).
fn check_report(o: &common::Outputs, e: &Expected) -> String {
    o.ok("record", "record.err");
    o.ok("report", "report.err");
    let md = o.read("report.md");
    let k = &o.kernel;
    for want in [
        format!("{} dropped a reference", e.dropped),
        format!("acquired {}", e.acquired),
    ] {
        assert!(md.contains(&want), "{k}: {want:?} in the report:\n{md}");
    }
    md
}

// ---- The balance's wording, the same in every face (model::words).

/// The sentence every text face shows for this balance.
fn balanced_text(n: u64) -> String {
    format!("balanced; {n} releases of references no traced lookup took")
}

/// The wording checks of one kernel: every mismatch, with the text seen.
fn assert_balanced_wording(
    kernel: &str,
    e: &Expected,
    stat_json: &[Value],
    stat_table: &str,
    leaks_text: &str,
    report_md: &str,
    metrics: &str,
) {
    let want = balanced_text(e.unmatched);
    let mut wrong = Vec::new();
    // The exporter says it as an info metric's labels.
    let said = metrics.lines().any(|l| {
        l.starts_with("skprof_release_balance_info{")
            && l.contains("verdict=\"balanced\"")
            && l.contains(&format!("text=\"{want}\""))
    });
    if !said {
        let lines: Vec<&str> = metrics.lines().filter(|l| l.contains("balance")).collect();
        wrong.push(format!(
            "the exporter lacks {want:?}; it says:\n{}",
            lines.join("\n")
        ));
    }
    for (face, text) in [
        ("stat table", stat_table),
        ("leaks summary", leaks_text),
        ("report Markdown", report_md),
    ] {
        if !text.contains(&want) {
            wrong.push(format!("{face} lacks {want:?}; it says:\n{text}"));
        }
    }
    // Every interval carries a balance object; the last (cumulative, after
    // the workload) has exactly these figures.
    for (i, l) in stat_json.iter().enumerate() {
        if !l["balance"].is_object() {
            let keys: Vec<&String> = l
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            wrong.push(format!(
                "stat --json interval {i} has no balance object; its keys: {keys:?}"
            ));
            break;
        }
    }
    let balance = serde_json::json!({
        "verdict": "balanced",
        "acquired": e.acquired,
        "released": e.acquired,
        "unmatched_releases": e.unmatched,
        "text": want,
    });
    if let Some(last) = stat_json.last() {
        if last["balance"] != balance {
            wrong.push(format!(
                "stat --json last balance is {}, wanted {balance}",
                last["balance"]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{kernel}: wording:\n{}",
        wrong.join("\n\n")
    );
}

fn sockhash(kernel: &str) {
    let o = run_guest(kernel);
    let e = expected(&o);
    let last = check_stat_json(&o, &e);
    let table = check_stat_text(&o, &e);
    let leaks_text = check_leaks(&o, &e);
    check_export(&o, &e);
    let md = check_report(&o, &e);
    eprintln!(
        "{kernel}: acquired {}, released {} of which {} unmatched: every face agrees",
        e.acquired, e.dropped, e.unmatched
    );
    let intervals: Vec<Value> = json_lines(&o.read("stat.json"))
        .into_iter()
        .filter(|l| l["type"] == "interval")
        .collect();
    assert_eq!(intervals.last(), Some(&last));
    let metrics = o.read("metrics.txt");
    assert_balanced_wording(kernel, &e, &intervals, &table, &leaks_text, &md, &metrics);
    let _ = std::fs::remove_dir_all(&o.dir);
}

#[test]
fn sockhash_6_1() {
    sockhash("6.1");
}

#[test]
fn sockhash_6_12() {
    sockhash("6.12");
}
