//! `skprof report` and `skprof record` on the host, on recordings written
//! with the library's `Writer`: the figures it prints, where it writes
//! them, and one-line errors (never a panic) for every kind of bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use skprof::model::hist::LogHist;
use skprof::model::ids::{Helper, Outcome, SockClass};
use skprof::model::snapshot::{Cell, CellKey, Grouping, IntervalStats, ProgramRef, Snapshot};
use skprof::model::tally::HelperTally;
use skprof::record::{Frame, Interval, Leaks, LedgerScan, Meta, Writer, FORMAT_VERSION, MAGIC};

/// A path of this test process's own, removed (file or directory) on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p =
            std::env::temp_dir().join(format!("skprof-record-host-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        Tmp(p)
    }

    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

mod common;
use common::{skprof, stderr_of};

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code 1 and one `skprof: error:` line naming `what`.
fn assert_fails(o: &Output, code: i32, what: &[&str]) {
    let err = stderr_of(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("skprof: error: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    for w in what {
        assert!(err.contains(w), "{err:?} lacks {w:?}");
    }
}

const HELPERS: [Helper; 3] = [
    Helper::SkLookupTcp,
    Helper::TcSkLookupTcp,
    Helper::XdpSkLookupUdp,
];

fn meta() -> Meta {
    Meta {
        skprof_version: "0.1.0".into(),
        kernel: "6.12.0-host-test".into(),
        probe_mode: "fentry".into(),
        hostname: "box".into(),
        start_unix_ms: 1_700_000_000_000,
        interval_ms: 1000,
        helpers: HELPERS.to_vec(),
        attribution_off: None,
        command: vec!["skprof".into(), "record".into()],
    }
}

/// `n` latencies spread over [base, 4 base).
fn lat(n: u64, base: u64) -> LogHist {
    LogHist::from_values(
        &(0..n)
            .map(|i| base + (i * 7919) % (3 * base))
            .collect::<Vec<_>>(),
    )
}

fn key(prog: u32, helper: Helper, outcome: Outcome) -> CellKey {
    CellKey {
        prog,
        helper,
        outcome,
        netns: 4_026_531_840,
        ifindex: 1,
        site: 0,
    }
}

/// Cumulative readings: reading `i` holds `i` rounds of 200 tc hits
/// (program 1, established, acquired), 40 XDP misses (program 2) and 9 bad
/// lengths from an untraced caller. `slow` scales the tc latencies.
fn readings(n: u64, slow: u64) -> Vec<Interval> {
    (0..n)
        .map(|i| {
            let mut s = Snapshot {
                mono_ns: 1_000 + i * 1_000_000_000,
                ..Default::default()
            };
            if i > 0 {
                let mut tc = Cell {
                    calls: lat(200 * i, 2000 * slow).count,
                    hist: lat(200 * i, 2000 * slow),
                    ..Default::default()
                };
                tc.hits[SockClass::Established.index()] = 200 * i;
                tc.acquired[SockClass::Established.index()] = 200 * i;
                s.cells
                    .insert(key(1, Helper::TcSkLookupTcp, Outcome::Hit), tc);
                s.cells.insert(
                    key(2, Helper::XdpSkLookupUdp, Outcome::NoSocket),
                    Cell {
                        calls: lat(40 * i, 700).count,
                        hist: lat(40 * i, 700),
                        ..Default::default()
                    },
                );
                s.cells.insert(
                    key(0, Helper::SkLookupTcp, Outcome::BadLen),
                    Cell {
                        calls: lat(9 * i, 300).count,
                        hist: lat(9 * i, 300),
                        ..Default::default()
                    },
                );
                s.holds.insert(1, lat(200 * i, 5000));
                s.counters.released[SockClass::Established.index()] = 200 * i;
            }
            Interval {
                unix_ms: 1_700_000_000_000 + i * 1000,
                snapshot: s,
                labels: vec![
                    ProgramRef {
                        slot: 1,
                        id: 10 + slow as u32,
                        name: "tc_lookup".into(),
                    },
                    ProgramRef {
                        slot: 2,
                        id: 20 + slow as u32,
                        name: "xdp_lookup".into(),
                    },
                ],
                forgotten: Vec::new(),
            }
        })
        .collect()
}

fn tally() -> HelperTally {
    let mut t = HelperTally::default();
    t.calls[Helper::TcSkLookupTcp.index()][Outcome::Hit.index()] = 800;
    t.calls[Helper::XdpSkLookupUdp.index()][Outcome::NoSocket.index()] = 160;
    t.hits[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 800;
    t.acquired[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 800;
    t.released[SockClass::Established.index()] = 800;
    t
}

/// Writes `n` readings, an empty leak scan, the workload tally and End;
/// returns the byte offset where each frame after Meta starts.
fn write(path: &Path, n: u64, slow: u64) -> Vec<u64> {
    let mut w = Writer::create(path, &meta()).unwrap();
    let mut starts = Vec::new();
    for i in readings(n, slow) {
        starts.push(w.bytes());
        w.append(&Frame::Interval(Box::new(i))).unwrap();
    }
    starts.push(w.bytes());
    w.append(&Frame::Leaks(Leaks {
        unix_ms: 1_700_000_009_000,
        run_leaks: Vec::new(),
        ledger: Some(LedgerScan {
            now_ns: 9_000_000_000,
            refs: Vec::new(),
        }),
    }))
    .unwrap();
    starts.push(w.bytes());
    w.append(&Frame::Workload(Box::new(tally()))).unwrap();
    starts.push(w.bytes());
    w.finish().unwrap();
    starts
}

fn report_json(path: &str) -> Value {
    let o = skprof(&["report", path, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    serde_json::from_slice(&o.stdout).expect("report --format json prints JSON")
}

#[test]
fn json_totals_are_stat_cumulative_s_figures() {
    let f = Tmp::new("totals.skrec");
    write(&f.0, 5, 1);
    let v = report_json(f.s());
    assert_eq!(v["type"], "report");
    assert_eq!(v["truncated"], false);
    assert_eq!(v["intervals"], 4);
    // What `skprof stat --json --cumulative` computes at the last reading:
    // the same function on last minus baseline.
    let rs = readings(5, 1);
    let delta = rs[4].snapshot.delta(&rs[0].snapshot);
    let labels = |slot: u32| {
        rs[4]
            .labels
            .iter()
            .find(|p| p.slot == slot)
            .cloned()
            .unwrap_or(ProgramRef {
                slot,
                id: 0,
                name: "(not traced)".into(),
            })
    };
    for (by, field) in [
        (Grouping::Helper, "totals"),
        (Grouping::Program, "programs"),
    ] {
        let stat = IntervalStats::compute(&delta, 4.0, &HELPERS, by, &labels);
        assert_eq!(v[field], serde_json::to_value(&stat).unwrap(), "{field}");
    }
    let tc = &v["totals"]["helpers"][1];
    assert_eq!(tc["helper"], "bpf_tc_sk_lookup_tcp");
    assert_eq!(
        (tc["calls"].as_u64(), tc["acquired"].as_u64()),
        (Some(800), Some(800))
    );
    assert_eq!(tc["calls_per_s"], 200.0);
    // The workload's counts travel with the recording.
    assert_eq!(
        v["workload"]["expected"]["helpers"]["bpf_tc_sk_lookup_tcp"]["calls"],
        800
    );
    assert_eq!(v["series"].as_array().unwrap().len(), 4);
    assert_eq!(v["series"][3]["helpers"][1]["calls"], 200);
    assert_eq!(v["leaks"]["ledger"]["leaked_references"], 0);
}

#[test]
fn markdown_goes_to_stdout_and_every_format_to_a_directory() {
    let f = Tmp::new("formats.skrec");
    write(&f.0, 3, 1);
    let o = skprof(&["report", f.s()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let md = stdout_of(&o);
    assert!(
        md.starts_with("## skprof report: box, kernel 6.12.0-host-test (fentry)"),
        "{md}"
    );
    assert!(
        md.contains("| `bpf_tc_sk_lookup_tcp` | 400 | 200.0 | 100.0 |"),
        "{md}"
    );
    assert!(
        md.contains("| tc_lookup[11] | `bpf_tc_sk_lookup_tcp` | 400 |"),
        "{md}"
    );

    let dir = Tmp::new("formats-out");
    let o = skprof(&["report", f.s(), "-o", dir.s()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(o.stdout.is_empty());
    for ext in ["json", "csv", "md"] {
        let p = dir.0.join(format!("report.{ext}"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!text.is_empty());
    }
    assert_eq!(
        std::fs::read_to_string(dir.0.join("report.md")).unwrap(),
        md,
        "the same Markdown either way"
    );
    let csv = std::fs::read_to_string(dir.0.join("report.csv")).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.starts_with("helper,,,,bpf_tc_sk_lookup_tcp,400,")),
        "{csv}"
    );

    let only = Tmp::new("formats-only");
    let o = skprof(&["report", f.s(), "-o", only.s(), "--format", "csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let names: Vec<String> = std::fs::read_dir(&only.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["report.csv"]);

    // Several formats cannot share stdout.
    let o = skprof(&["report", f.s(), "--format", "json,md"]);
    assert_fails(&o, 2, &["only one can go to stdout"]);
}

#[test]
fn an_unwritable_output_directory_is_one_line() {
    let f = Tmp::new("unwritable.skrec");
    write(&f.0, 2, 1);
    // Under a regular file: fails even for root.
    let dir = format!("{}/sub", f.s());
    let o = skprof(&["report", f.s(), "-o", &dir]);
    assert_fails(&o, 1, &["cannot create output directory", &dir]);
}

fn bad_file(name: &str, bytes: &[u8]) -> Tmp {
    let t = Tmp::new(name);
    std::fs::write(&t.0, bytes).unwrap();
    t
}

#[test]
fn every_kind_of_bad_file_is_its_own_one_line_error() {
    let good = Tmp::new("good.skrec");
    let starts = write(&good.0, 3, 1);
    let full = std::fs::read(&good.0).unwrap();

    let empty = bad_file("empty.skrec", b"");
    let o = skprof(&["report", empty.s()]);
    assert_fails(&o, 1, &[empty.s(), "empty file, not a skprof recording"]);

    let text = bad_file("text.skrec", b"interval,calls\n1,2\n");
    let o = skprof(&["report", text.s()]);
    assert_fails(
        &o,
        1,
        &[text.s(), "not a skprof recording (it does not start"],
    );

    let mut future = MAGIC.to_vec();
    future.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    future.extend_from_slice(&full[12..]);
    let future = bad_file("future.skrec", &future);
    let o = skprof(&["report", future.s()]);
    assert_fails(
        &o,
        1,
        &[
            future.s(),
            &format!("format version {} is newer", FORMAT_VERSION + 1),
        ],
    );

    let mut corrupt = full.clone();
    let second = starts[1] as usize;
    corrupt[second + 30] ^= 0x40;
    let corrupt = bad_file("corrupt.skrec", &corrupt);
    let o = skprof(&["report", corrupt.s()]);
    assert_fails(
        &o,
        1,
        &[
            corrupt.s(),
            &format!("corrupt recording at byte {second}"),
            "checksum",
        ],
    );

    let cut_meta = bad_file("cut-meta.skrec", &full[..starts[0] as usize - 3]);
    let o = skprof(&["report", cut_meta.s()]);
    assert_fails(&o, 1, &[cut_meta.s(), "truncated recording", "Meta frame"]);

    let missing = Tmp::new("missing.skrec");
    let o = skprof(&["report", missing.s()]);
    assert_fails(&o, 1, &["cannot open", missing.s()]);

    let dir = Tmp::new("dir.skrec");
    std::fs::create_dir(&dir.0).unwrap();
    let o = skprof(&["report", dir.s()]);
    assert_fails(&o, 1, &["cannot open", dir.s(), "Is a directory"]);

    // The baseline alone: nothing to report.
    let one = bad_file("one.skrec", &full[..starts[1] as usize]);
    let o = skprof(&["report", one.s()]);
    assert_fails(&o, 1, &[one.s(), "no complete interval", "holds 1 reading"]);
}

#[test]
fn a_cut_off_recording_reports_its_complete_intervals_with_a_warning() {
    let good = Tmp::new("cut-src.skrec");
    let starts = write(&good.0, 4, 1);
    let full = std::fs::read(&good.0).unwrap();
    // Cut inside the last interval frame: three readings survive.
    let cut = bad_file("cut.skrec", &full[..starts[3] as usize + 17]);
    let o = skprof(&["report", cut.s(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let err = stderr_of(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "skprof: warning: {}: recording not finished (cut off inside the frame at byte {}",
            cut.s(),
            starts[3]
        )),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["truncated"], true);
    assert_eq!(v["intervals"], 2);
    assert_eq!(v["totals"]["helpers"][1]["calls"], 400);
    assert!(v.get("workload").is_none());
}

#[test]
fn compare_gates_on_p99() {
    let base = Tmp::new("base.skrec");
    let same = Tmp::new("same.skrec");
    let slow = Tmp::new("slow.skrec");
    write(&base.0, 4, 1);
    write(&same.0, 4, 1);
    write(&slow.0, 4, 2);

    let o = skprof(&[
        "report",
        "--compare",
        base.s(),
        same.s(),
        "--max-regression",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let md = stdout_of(&o);
    assert!(md.contains("**Gate passed:**"), "{md}");

    let o = skprof(&[
        "report",
        "--compare",
        base.s(),
        slow.s(),
        "--max-regression",
        "10",
        "--format",
        "json",
    ]);
    assert_fails(
        &o,
        6,
        &["p99 regression: p99 grew by more than 10%: bpf_tc_sk_lookup_tcp p99 +"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("the comparison is printed first");
    assert_eq!(v["type"], "compare");
    let tc = &v["helpers"][1];
    assert_eq!(tc["helper"], "bpf_tc_sk_lookup_tcp");
    assert_eq!(tc["regressed"], true);
    // Program ids differ between the runs; names match them.
    let progs: Vec<&str> = v["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["program"].as_str().unwrap())
        .collect();
    assert_eq!(progs, ["(not traced)", "tc_lookup", "xdp_lookup"]);
    assert!(v["programs"][1]["base"].is_object() && v["programs"][1]["new"].is_object());

    // Without a gate the same comparison passes.
    let o = skprof(&["report", "--compare", base.s(), slow.s()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));

    // A bad side is named.
    let empty = bad_file("cmp-empty.skrec", b"");
    let o = skprof(&["report", "--compare", base.s(), empty.s()]);
    assert_fails(&o, 1, &[empty.s(), "empty file"]);
}

#[test]
fn record_fails_cleanly_here() {
    // An unwritable output fails before anything is loaded.
    let o = skprof(&[
        "record",
        "-o",
        "/nonexistent-skprof-dir/x.skrec",
        "--duration",
        "1s",
    ]);
    assert_fails(&o, 1, &["cannot create /nonexistent-skprof-dir/x.skrec"]);
    // On a host that cannot trace, the session's error, and no file left.
    let out = Tmp::new("record-host.skrec");
    let o = skprof(&["record", "-o", out.s(), "--duration", "1s"]);
    if o.status.code() != Some(0) {
        let code = o.status.code().unwrap();
        assert!(code == 3 || code == 4, "{}", stderr_of(&o));
        assert_fails(&o, code, &[]);
        assert!(!out.0.exists(), "no empty recording left behind");
    }
    let o = skprof(&["record", "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(2), "-o is required");
    let o = skprof(&["record", "-o", out.s(), "--interval", "1ms"]);
    assert_eq!(o.status.code(), Some(2));
}
