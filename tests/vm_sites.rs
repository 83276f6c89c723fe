//! Call sites for real, in Debian 6.1 and 6.12 guests (`skprof-vm`, qemu
//! TCG): the workload's sites case (bpf/sites.bpf.c) has four lookup call
//! sites (two in a `__noinline` subprogram, one on a branch) and two
//! release sites, each counting its own calls. `stat --by site` must give
//! each site's calls, hits and acquired references exactly, on the source
//! line the `SITE:<name>` marker is on, in fentry and in kprobe mode; each
//! release site its releases and the lookup sites whose references it
//! dropped; `annotate` the same figures on the program's source.
//!
//! One guest per kernel runs, for each probe mode in turn: the workload
//! set up and waiting (`--start-on-sigusr1`), `stat --by site --json` (and
//! in fentry mode `annotate --json`) attached, the workload told to start,
//! and both ended once they reported after it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

mod common;
use common::{json_lines, u};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");
/// Runs of the sites case.
const RUNS: u64 = 31;
const MODES: [&str; 2] = ["fentry", "kprobe"];

/// Source line of each `SITE:<name>` marker of bpf/sites.bpf.c.
fn markers() -> BTreeMap<u64, String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/sites.bpf.c"))
        .expect("read bpf/sites.bpf.c");
    src.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let name = l.split("/* SITE:").nth(1)?;
            let name = name.split_whitespace().next()?;
            Some((i as u64 + 1, name.to_string()))
        })
        .collect()
}

fn script(dir: &Path) -> String {
    let d = dir.display();
    let mut s = format!(
        r#"set -u
D={d}
S={SKPROF}
mkdir -p "$D"
{}"#,
        common::SH_WAITFOR
    );
    for m in MODES {
        s += &format!(
            r#"
$S workload --family tc --count 1 --rounds 1 --sites {RUNS} --start-on-sigusr1 --hold --json \
  >"$D/workload_{m}.json" 2>"$D/workload_{m}.err" &
WL=$!
waitfor workload-ready $WL grep -q 'ready, waiting for SIGUSR1' "$D/workload_{m}.err"
$S stat --by site --json --cumulative --probe-mode {m} 1 >"$D/stat_{m}.json" 2>"$D/stat_{m}.err" &
ST=$!
AN=
if [ {m} = fentry ]; then
  $S annotate wl_sites --json --probe-mode {m} --duration 1h >"$D/annotate_{m}.json" 2>"$D/annotate_{m}.err" &
  AN=$!
fi
waitfor stat $ST atleast "$D/stat_{m}.json" '"type":"interval"' 1
[ -z "$AN" ] || waitfor annotate $AN grep -q 'Annotating' "$D/annotate_{m}.err"
kill -USR1 $WL
# --hold: the programs stay loaded (and their figures counted) until the
# tracers are done.
waitfor workload-done $WL grep -q 'done, programs kept' "$D/workload_{m}.err"
n=$(lines "$D/stat_{m}.json" '"type":"interval"')
waitfor stat-after $ST atleast "$D/stat_{m}.json" '"type":"interval"' $((n + 2))
kill -INT $ST; wait $ST; echo "status stat_{m} $?"
[ -z "$AN" ] || {{ kill -INT $AN; wait $AN; echo "status annotate_{m} $?"; }}
kill -INT $WL; wait $WL; echo "status workload_{m} $?"
"#
        );
    }
    s
}

/// The marker of a JSON `site` object's line, if it is one of ours.
fn marker_of<'a>(site: &Value, markers: &'a BTreeMap<u64, String>) -> Option<&'a str> {
    let file = site["line"]["file"].as_str()?;
    if !file.ends_with("sites.bpf.c") {
        return None;
    }
    markers
        .get(&site["line"]["line"].as_u64()?)
        .map(String::as_str)
}

fn check_mode(out: &common::Outputs, mode: &str, markers: &BTreeMap<u64, String>) {
    let k = &out.kernel;
    out.ok(&format!("workload_{mode}"), &format!("workload_{mode}.err"));
    out.ok(&format!("stat_{mode}"), &format!("stat_{mode}.err"));
    let wl = json_lines(&out.read(&format!("workload_{mode}.json")));
    let truth = &wl.last().expect("the workload's JSON")["sites"];
    assert_eq!(u(&truth["runs"]), RUNS, "{k}/{mode}: {truth}");

    let stat = json_lines(&out.read(&format!("stat_{mode}.json")));
    let last = stat
        .iter()
        .rev()
        .find(|l| l["type"] == "interval")
        .expect("an interval");
    // Lookup sites: one row per (site, helper); ours by marker.
    let mut got: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for row in last["helpers"].as_array().expect("rows") {
        let Some(m) = marker_of(&row["site"], markers) else {
            continue;
        };
        assert_eq!(row["program"]["name"], "wl_sites", "{k}/{mode}: {row}");
        let e = got.entry(m.to_string()).or_default();
        e[0] += u(&row["calls"]);
        e[1] += u(&row["hits"]);
        e[2] += u(&row["acquired"]);
    }
    let lookups = truth["lookups"].as_object().expect("lookups");
    for (name, t) in lookups {
        let want = [u(&t["calls"]), u(&t["hits"]), u(&t["acquired"])];
        assert_eq!(
            got.get(name).copied().unwrap_or_default(),
            want,
            "{k}/{mode}: site {name} (calls, hits, acquired); rows by marker {got:?}"
        );
    }
    assert_eq!(got.len(), lookups.len(), "{k}/{mode}: rows {got:?}");

    // Release sites, and whose references they dropped.
    let mut rel: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for r in last["release_sites"].as_array().expect("release_sites") {
        let Some(m) = marker_of(&r["site"], markers) else {
            continue;
        };
        let e = rel.entry(m.to_string()).or_default();
        e.0 += u(&r["calls"]);
        for p in r["from"].as_array().expect("from") {
            let from = marker_of(&p["site"], markers).expect("a lookup site of ours");
            *e.1.entry(from.to_string()).or_default() += u(&p["releases"]);
        }
    }
    let releases = truth["releases"].as_object().expect("releases");
    for (name, n) in releases {
        assert_eq!(
            rel.get(name).map(|r| r.0),
            Some(u(n)),
            "{k}/{mode}: release site {name}: {rel:?}"
        );
    }
    let l = |name: &str, f: &str| u(&lookups[name][f]);
    // References are paired in both modes; a socket that holds none (UDP)
    // only where the program's runs are traced (fentry).
    let mut main_from = BTreeMap::from([("main_tcp".to_string(), l("main_tcp", "acquired"))]);
    if mode == "fentry" {
        main_from.insert("main_udp".into(), l("main_udp", "hits"));
    }
    assert_eq!(rel["release_main"].1, main_from, "{k}/{mode}");
    assert_eq!(
        rel["release_sub"].1,
        BTreeMap::from([("sub_skc".to_string(), l("sub_skc", "acquired"))]),
        "{k}/{mode}"
    );
    assert_eq!(
        u(&last["drops"]["site_unknown"]),
        0,
        "{k}/{mode}: {}",
        last["drops"]
    );
    // annotate is a face of the same readings: once, in fentry mode.
    if mode == "fentry" {
        check_annotate(out, mode, markers, lookups);
    }
}

/// `annotate --json`: every line of the program, the sites on the marker
/// lines with the same counts.
fn check_annotate(
    out: &common::Outputs,
    mode: &str,
    markers: &BTreeMap<u64, String>,
    lookups: &serde_json::Map<String, Value>,
) {
    let k = &out.kernel;
    out.ok(&format!("annotate_{mode}"), &format!("annotate_{mode}.err"));
    let a = json_lines(&out.read(&format!("annotate_{mode}.json")));
    let last = a
        .last()
        .unwrap_or_else(|| panic!("{k}/{mode}: no annotate output"));
    assert_eq!(last["program"]["name"], "wl_sites", "{k}/{mode}");
    let lines = last["lines"].as_array().expect("lines");
    // Every annotated line is the source file's own line, word for word.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/sites.bpf.c"))
        .expect("read bpf/sites.bpf.c");
    let src: Vec<&str> = src.lines().collect();
    for l in lines {
        let n = u(&l["line"]) as usize;
        assert!(
            l["file"]
                .as_str()
                .unwrap_or_default()
                .ends_with("sites.bpf.c")
                && n >= 1
                && l["text"].as_str() == src.get(n - 1).copied(),
            "{k}/{mode}: annotated line {l} is not sites.bpf.c's line {n}"
        );
    }
    for (line, name) in markers {
        let Some(l) = lines.iter().find(|l| l["line"] == *line) else {
            panic!("{k}/{mode}: line {line} ({name}) not annotated")
        };
        assert!(
            l["text"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("SITE:{name}")),
            "{k}/{mode}: line {line}: {l}"
        );
        if let Some(t) = lookups.get(name) {
            let calls: u64 = l["lookups"]
                .as_array()
                .expect("lookups")
                .iter()
                .map(|s| u(&s["calls"]))
                .sum();
            assert_eq!(calls, u(&t["calls"]), "{k}/{mode}: annotate {name}: {l}");
        }
    }
}

fn sites_exact(kernel: &str) {
    let markers = markers();
    assert_eq!(
        markers.len(),
        6,
        "four lookup and two release markers: {markers:?}"
    );
    let dir = std::env::temp_dir().join(format!("skprof-vm-sites-{kernel}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = common::Outputs::run(kernel, 600, dir.clone(), &script(&dir));
    for m in MODES {
        check_mode(&out, m, &markers);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sites_exact_6_1() {
    sites_exact("6.1");
}

#[test]
fn sites_exact_6_12() {
    sites_exact("6.12");
}
