//! `skprof report --format html,svg,png,md,json` on a recording written
//! with the library's `Writer` (no BPF): the files it writes, the SVGs as
//! XML with the right labels, the PNGs as images, the HTML table's numbers
//! against the JSON report's, and the page rendered by headless Chromium
//! (screenshot and DOM).
//!
//! `SKPROF_KEEP_REPORT=DIR` keeps the report and the screenshot in DIR, to
//! look at them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skprof::model::hist::LogHist;
use skprof::model::ids::{Helper, Outcome, SockClass};
use skprof::model::snapshot::{Cell, CellKey, ProgramRef, Snapshot};
use skprof::record::plot::duration_label;
use skprof::record::{Frame, Interval, Leaks, LedgerScan, Meta, Writer};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// A directory of this test's own, removed on drop unless kept.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "skprof-report-figures-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HELPERS: [Helper; 4] = [
    Helper::SkLookupTcp,
    Helper::TcSkLookupTcp,
    Helper::TcSkLookupUdp,
    Helper::XdpSkLookupUdp,
];

/// A name no BPF program can have, as a hostile recording may hold.
const ODD_NAME: &str = "xdp<&>\"lb\"";

fn key(prog: u32, helper: Helper, outcome: Outcome) -> CellKey {
    CellKey {
        prog,
        helper,
        outcome,
        netns: 4_026_531_840,
        ifindex: 2,
        site: 0,
    }
}

/// `n` latencies around `base` with a long tail (1% at 10x, 0.1% at 50x).
fn lat(n: u64, base: u64, seed: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let j = (i * 7919 + seed * 104_729) % 1000;
            let v = base + (j * base) / 1000;
            match j {
                0 => v * 50,
                1..=10 => v * 10,
                _ => v,
            }
        })
        .collect()
}

/// Cumulative readings, 1 s apart: per interval i, the tc TCP helper gets
/// a varying number of hits (program 1, established, acquired and
/// released), the tc UDP helper hits and misses (program 1), the XDP UDP
/// helper misses (program 2, `ODD_NAME`), and 7 bad lengths come from an
/// untraced caller. Latencies grow after the middle of the recording.
fn readings(n: u64) -> Vec<Interval> {
    let mut cells: BTreeMap<CellKey, Vec<u64>> = BTreeMap::new();
    let mut holds: Vec<u64> = Vec::new();
    let mut hits_tc = 0;
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 {
            let slow = if i > n / 2 { 3 } else { 1 };
            let tc = 200 + (i * 37) % 150;
            hits_tc += tc;
            let mut add = |k: CellKey, v: Vec<u64>| cells.entry(k).or_default().extend(v);
            add(
                key(1, Helper::TcSkLookupTcp, Outcome::Hit),
                lat(tc, 1800 * slow, i),
            );
            add(
                key(1, Helper::TcSkLookupUdp, Outcome::Hit),
                lat(60 + i * 5, 900, i),
            );
            add(
                key(1, Helper::TcSkLookupUdp, Outcome::NoSocket),
                lat(40, 700, i),
            );
            add(
                key(2, Helper::XdpSkLookupUdp, Outcome::NoSocket),
                lat(120, 600 * slow, i),
            );
            add(key(0, Helper::SkLookupTcp, Outcome::BadLen), lat(7, 250, i));
            holds.extend(lat(tc, 40_000, i));
        }
        let mut s = Snapshot {
            mono_ns: 5_000 + i * 1_000_000_000,
            ..Default::default()
        };
        for (k, v) in &cells {
            let mut c = Cell {
                calls: LogHist::from_values(v).count,
                hist: LogHist::from_values(v),
                ..Default::default()
            };
            if k.outcome == Outcome::Hit {
                let class = if k.helper == Helper::TcSkLookupTcp {
                    SockClass::Established
                } else {
                    SockClass::Udp
                };
                c.hits[class.index()] = v.len() as u64;
                if class == SockClass::Established {
                    c.acquired[class.index()] = v.len() as u64;
                }
            }
            s.cells.insert(*k, c);
        }
        if !holds.is_empty() {
            s.holds.insert(1, LogHist::from_values(&holds));
        }
        s.counters.released[SockClass::Established.index()] = hits_tc;
        out.push(Interval {
            unix_ms: 1_700_000_000_000 + i * 1000,
            snapshot: s,
            labels: vec![
                ProgramRef {
                    slot: 1,
                    id: 31,
                    name: "tc_steer".into(),
                },
                ProgramRef {
                    slot: 2,
                    id: 32,
                    name: ODD_NAME.into(),
                },
            ],
            forgotten: Vec::new(),
        });
    }
    out
}

fn write_recording(path: &Path, n: u64) {
    let meta = Meta {
        skprof_version: "0.1.0".into(),
        kernel: "6.12.0-figures".into(),
        probe_mode: "fentry".into(),
        hostname: "plot<host>".into(),
        start_unix_ms: 1_700_000_000_000,
        interval_ms: 1000,
        helpers: HELPERS.to_vec(),
        attribution_off: None,
        command: vec!["skprof".into(), "record".into(), "-o".into(), "x".into()],
    };
    let mut w = Writer::create(path, &meta).unwrap();
    for i in readings(n) {
        w.append(&Frame::Interval(Box::new(i))).unwrap();
    }
    w.append(&Frame::Leaks(Leaks {
        unix_ms: 1_700_000_000_000 + n * 1000,
        run_leaks: Vec::new(),
        ledger: Some(LedgerScan {
            now_ns: n * 1_000_000_000,
            refs: Vec::new(),
        }),
    }))
    .unwrap();
    w.finish().unwrap();
}

fn parse_xml(text: &str) -> roxmltree::Document<'_> {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(text, opt).unwrap_or_else(|e| panic!("not XML: {e}"))
}

/// Every text node under the document, joined by newlines.
fn texts(doc: &roxmltree::Document) -> String {
    doc.descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// (width, height) and the number of distinct colours of a PNG file.
fn png_facts(path: &Path) -> (u32, u32, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    (info.width, info.height, colours.len())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The cell of class `class` in a table row.
fn cell<'a>(row: roxmltree::Node<'a, 'a>, class: &str) -> roxmltree::Node<'a, 'a> {
    row.children()
        .find(|c| {
            c.attribute("class")
                .is_some_and(|k| k.split(' ').any(|k| k == class))
        })
        .unwrap_or_else(|| panic!("no {class} cell"))
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// The HTML table's figures equal the JSON report's, to the digit shown
/// and exactly in `data-v`.
fn html_matches_json(html: &str, v: &Value) {
    let doc = parse_xml(html);
    let rows: Vec<_> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "tr" && n.attribute("data-helper").is_some())
        .collect();
    let helper_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.attribute("data-program").is_none())
        .collect();
    let json_rows = v["totals"]["helpers"].as_array().unwrap();
    // One row per helper, and the bpf_sk_release row.
    assert_eq!(helper_rows.len(), json_rows.len() + 1);
    let check = |row: roxmltree::Node, j: &Value, what: &str| {
        let calls = cell(row, "calls");
        assert_eq!(calls.text().unwrap(), u(&j["calls"]).to_string(), "{what}");
        let hit = cell(row, "hit_pct");
        assert_eq!(
            hit.text().unwrap(),
            format!("{:.1}", j["hit_pct"].as_f64().unwrap()),
            "{what}"
        );
        assert_eq!(
            hit.attribute("data-v").unwrap().parse::<f64>().unwrap(),
            j["hit_pct"].as_f64().unwrap(),
            "{what}"
        );
        for p in ["p50", "p99", "p999", "max"] {
            let c = cell(row, p);
            let ns = u(&j["latency_ns"][p]);
            assert_eq!(
                c.attribute("data-v"),
                Some(ns.to_string().as_str()),
                "{what} {p}"
            );
            assert_eq!(c.text().unwrap(), us(ns), "{what} {p}");
        }
        assert_eq!(
            cell(row, "acquired").text().unwrap(),
            u(&j["acquired"]).to_string(),
            "{what}"
        );
    };
    for j in json_rows {
        let name = j["helper"].as_str().unwrap();
        let row = **helper_rows
            .iter()
            .find(|r| r.attribute("data-helper") == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}"));
        check(row, j, name);
        assert_eq!(
            cell(row, "calls_per_s").text().unwrap(),
            format!("{:.1}", j["calls_per_s"].as_f64().unwrap())
        );
    }
    let release = helper_rows
        .iter()
        .find(|r| r.attribute("data-helper") == Some("bpf_sk_release"))
        .unwrap();
    let t = &v["totals"];
    assert_eq!(
        cell(**release, "released").text().unwrap(),
        u(&t["release"]["dropped"]).to_string()
    );
    assert_eq!(
        cell(**release, "acquired").text().unwrap(),
        u(&t["acquired"]).to_string()
    );
    let json_programs = v["programs"]["helpers"].as_array().unwrap();
    let program_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.attribute("data-program").is_some())
        .collect();
    assert_eq!(program_rows.len(), json_programs.len());
    for j in json_programs {
        let p = &j["program"];
        let label = match u(&p["id"]) {
            0 => p["name"].as_str().unwrap().to_string(),
            id => format!("{}[{id}]", p["name"].as_str().unwrap()),
        };
        let row = program_rows
            .iter()
            .find(|r| {
                r.attribute("data-program") == Some(label.as_str())
                    && r.attribute("data-helper") == j["helper"].as_str()
            })
            .unwrap_or_else(|| panic!("no row for {label} {}", j["helper"]));
        check(**row, j, &label);
    }
    let drops = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("drops"))
        .unwrap();
    let total: u64 = t["drops"].as_object().unwrap().values().map(u).sum();
    assert_eq!(drops.attribute("data-v"), Some(total.to_string().as_str()));
}

/// Runs `cmd` to its end, or kills it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chromium (scripts/deps.sh installs Debian's chromium)");
    // Drain stdout on a thread: the DOM can outgrow a pipe's buffer.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_end(&mut e, &mut stderr);
    }
    std::process::Output {
        status,
        stdout: reader.join().unwrap(),
        stderr,
    }
}

/// Headless Chromium as the machine allows it: as root no sandbox, no GPU,
/// and none of the background connections a closed network refuses.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    run_bounded(&mut cmd, Duration::from_secs(180))
}

#[test]
fn html_svg_png_md_json_from_one_recording() {
    let tmp = Tmp::new("all");
    let rec = tmp.0.join("fig.skrec");
    write_recording(&rec, 21);
    let out = tmp.0.join("out");
    let o = Command::new(SKPROF)
        .args(["report", rec.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--format", "html,svg,png,md,json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("wrote 8 svg figures in"), "{err}");

    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(v["intervals"], 20);
    let figures = [
        "latency-bpf_sk_lookup_tcp",
        "latency-bpf_tc_sk_lookup_tcp",
        "latency-bpf_tc_sk_lookup_udp",
        "latency-bpf_xdp_sk_lookup_udp",
        "percentiles-over-time",
        "rate-over-time",
        "hold-time",
        "programs",
    ];
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = ["report.html", "report.json", "report.md"]
        .map(String::from)
        .to_vec();
    for f in figures {
        want.push(format!("{f}.png"));
        want.push(format!("{f}.svg"));
    }
    want.sort();
    assert_eq!(names, want);

    // The SVGs: XML, with the percentiles the JSON has.
    let tc = &v["totals"]["helpers"][1];
    assert_eq!(tc["helper"], "bpf_tc_sk_lookup_tcp");
    let svg = std::fs::read_to_string(out.join("latency-bpf_tc_sk_lookup_tcp.svg")).unwrap();
    let doc = parse_xml(&svg);
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(doc.root_element().attribute("width"), Some("960"));
    let text = texts(&doc);
    for (p, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
        let label = format!("{name} {}", duration_label(u(&tc["latency_ns"][p]) as f64));
        assert!(text.contains(&label), "{label} not in {text}");
    }
    assert!(text.contains(&format!(
        "bpf_tc_sk_lookup_tcp: latency of {} calls",
        u(&tc["calls"])
    )));
    assert!(text.contains("latency per call (log scale)"), "{text}");
    let rects = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect")
        .count();
    assert!(rects > 5, "histogram bars: {rects}");
    // Time series: a polyline per called helper in each panel, the legend.
    for f in ["percentiles-over-time", "rate-over-time"] {
        let svg = std::fs::read_to_string(out.join(format!("{f}.svg"))).unwrap();
        let doc = parse_xml(&svg);
        let lines = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "polyline")
            .count();
        assert!(lines >= 2 * 4, "{f}: {lines} lines");
        let text = texts(&doc);
        for h in HELPERS {
            assert!(
                text.contains(h.function()),
                "{f} legend lacks {}",
                h.function()
            );
        }
        assert!(text.contains("20 s"), "{f}: time axis {text}");
    }
    let programs = std::fs::read_to_string(out.join("programs.svg")).unwrap();
    let text = texts(&parse_xml(&programs));
    assert!(text.contains("tc_steer[31] bpf_tc_sk_lookup_tcp"), "{text}");
    assert!(
        text.contains(&format!("{ODD_NAME}[32] bpf_xdp_sk_lookup_udp")),
        "{text}"
    );
    assert!(text.contains("(not traced) bpf_sk_lookup_tcp"), "{text}");
    let hold = std::fs::read_to_string(out.join("hold-time.svg")).unwrap();
    let hold_p99 = u(&v["totals"]["release"]["hold_ns"]["p99"]);
    let text = texts(&parse_xml(&hold));
    assert!(
        text.contains(&format!("p99 {}", duration_label(hold_p99 as f64))),
        "{text}"
    );

    // The PNGs: images of the figure's size with more than a few colours
    // (text is anti-aliased; an empty plot has a handful).
    for f in figures {
        let (w, h, colours) = png_facts(&out.join(format!("{f}.png")));
        assert_eq!(w, 960, "{f}");
        assert!((240..=2000).contains(&h), "{f}: {h}");
        assert!(colours > 20, "{f}: {colours} colours");
    }

    // The HTML page: well-formed, escaped, its numbers the JSON's.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("plot&lt;host&gt;"));
    assert!(!html.contains(ODD_NAME), "program name not escaped");
    html_matches_json(&html, &v);
    let doc = parse_xml(&html);
    let inline = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "svg")
        .count();
    assert_eq!(inline, figures.len());

    // Chromium renders it: the DOM has the tables and every figure, and
    // the screenshot is a picture, not a blank page.
    let profile = tmp.0.join("chromium-profile");
    let url = format!("file://{}", out.join("report.html").display());
    let o = chromium(&profile, &["--dump-dom", &url]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(dom.contains("<table id=\"helpers\">"), "{dom}");
    assert!(dom.contains("<table id=\"programs\">"), "{dom}");
    assert_eq!(dom.matches("<svg").count(), figures.len(), "{dom}");
    assert!(
        dom.contains("xdp&lt;&amp;&gt;\"lb\"[32]"),
        "the name as text"
    );
    assert!(!dom.contains("<script"));
    let shot = tmp.0.join("screenshot.png");
    let o = chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            &url,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (w, h, colours) = png_facts(&shot);
    assert_eq!((w, h), (1280, 2000));
    assert!(colours > 50, "a blank page? {colours} colours");

    if let Some(keep) = std::env::var_os("SKPROF_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), keep.join(e.file_name())).unwrap();
        }
        std::fs::copy(&shot, keep.join("screenshot.png")).unwrap();
    }
}

#[test]
fn html_goes_to_stdout_and_figures_need_a_directory() {
    let tmp = Tmp::new("stdout");
    let rec = tmp.0.join("s.skrec");
    write_recording(&rec, 3);
    let o = Command::new(SKPROF)
        .args(["report", rec.to_str().unwrap(), "--format", "html"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let html = String::from_utf8(o.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    for f in ["svg", "png"] {
        let o = Command::new(SKPROF)
            .args(["report", rec.to_str().unwrap(), "--format", f])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("writes one file per figure: add -o DIR"),
            "{err}"
        );
    }
}
