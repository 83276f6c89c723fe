//! The forms of a report and a comparison: JSON for tools, CSV for
//! spreadsheets, Markdown for pull requests (pure), and for a report also
//! one self-contained HTML page and the figures as SVG or PNG files (see
//! `html` and `plot`).

use std::fmt::Write as _;

use anyhow::{anyhow, Result};

use crate::model::snapshot::{HelperStats, IntervalStats};

use super::compare::{CompareRow, Comparison, Figures};
use super::summary::{Summary, LEAK_AGE_NS};
use super::{html, plot};

/// An output format of `skprof report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
    Md,
    /// One page: tables, metadata and every figure inline.
    Html,
    /// One file per figure.
    Svg,
    /// One file per figure.
    Png,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Json,
        Format::Csv,
        Format::Md,
        Format::Html,
        Format::Svg,
        Format::Png,
    ];
    /// What `--compare` writes (a comparison has no figures).
    pub const TEXT: [Format; 3] = [Format::Json, Format::Csv, Format::Md];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Md => "md",
            Format::Html => "html",
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }

    /// Written as one file per figure (never to stdout).
    pub fn is_figures(self) -> bool {
        matches!(self, Format::Svg | Format::Png)
    }
}

/// One file of a report: its name in the output directory, its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A report in format `f`, as files named `<stem>.<ext>` (text formats
/// and HTML) or `<figure>.<ext>` (SVG, PNG: see `plot::figures`).
pub fn summary_files(s: &Summary, f: Format, stem: &str) -> Result<Vec<OutFile>> {
    let figures = |draw: fn(&Summary, &plot::Figure) -> Result<Vec<u8>>| {
        plot::figures(s)
            .iter()
            .map(|fig| {
                Ok(OutFile {
                    name: format!("{}.{}", fig.name, f.extension()),
                    bytes: draw(s, fig)?,
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    match f {
        Format::Svg => figures(|s, fig| plot::svg(s, fig).map(String::into_bytes)),
        Format::Png => figures(plot::png),
        _ => Ok(vec![OutFile {
            name: format!("{stem}.{}", f.extension()),
            bytes: summary(s, f)?.into_bytes(),
        }]),
    }
}

/// A report as one document (every format but the figures).
pub fn summary(s: &Summary, f: Format) -> Result<String> {
    match f {
        Format::Json => Ok(json(s)),
        Format::Csv => Ok(summary_csv(s)),
        Format::Md => Ok(summary_md(s)),
        Format::Html => html::page(s),
        Format::Svg | Format::Png => Err(anyhow!(
            "--format {} writes one file per figure: add -o DIR",
            f.extension()
        )),
    }
}

/// A comparison as one document (json, csv or md).
pub fn comparison(c: &Comparison, f: Format) -> Result<String> {
    match f {
        Format::Json => Ok(json(c)),
        Format::Csv => Ok(compare_csv(c)),
        Format::Md => Ok(compare_md(c)),
        _ => Err(anyhow!(
            "--compare writes json, csv or md, not {}",
            f.extension()
        )),
    }
}

fn json(v: &impl serde::Serialize) -> String {
    // Plain data (strings, numbers, maps with string keys): serializing it
    // cannot fail; the fallback keeps the output a JSON document anyway.
    let mut s = serde_json::to_string_pretty(v)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    s.push('\n');
    s
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(out: &mut String, fields: &[String]) {
    let line: Vec<String> = fields.iter().map(|f| field(f)).collect();
    out.push_str(&line.join(","));
    out.push('\n');
}

const SUMMARY_CSV_HEADER: &[&str] = &[
    "scope",
    "program_slot",
    "program_id",
    "program",
    "helper",
    "calls",
    "calls_per_s",
    "hits",
    "hit_pct",
    "no_socket",
    "bad_len",
    "bad_netns",
    "bad_flags",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    "mean_ns",
    "acquired",
    "released",
    "hold_p50_ns",
    "hold_p99_ns",
    "drops",
];

fn helper_csv_row(scope: &str, r: &HelperStats) -> Vec<String> {
    let (slot, id, name) = match &r.program {
        Some(p) => (p.slot.to_string(), p.id.to_string(), p.name.clone()),
        None => Default::default(),
    };
    let l = &r.latency_ns;
    let (hold50, hold99) = match r.hold_ns {
        Some(h) => (h.p50.to_string(), h.p99.to_string()),
        None => Default::default(),
    };
    vec![
        scope.into(),
        slot,
        id,
        name,
        r.helper.into(),
        r.calls.to_string(),
        format!("{:.3}", r.calls_per_s),
        r.hits.to_string(),
        format!("{:.3}", r.hit_pct),
        r.outcomes.no_socket.to_string(),
        r.outcomes.bad_len.to_string(),
        r.outcomes.bad_netns.to_string(),
        r.outcomes.bad_flags.to_string(),
        l.p50.to_string(),
        l.p90.to_string(),
        l.p99.to_string(),
        l.p999.to_string(),
        l.max.to_string(),
        format!("{:.1}", l.mean),
        r.acquired.to_string(),
        // Releases are not attributable to a helper: only the release row
        // has them.
        String::new(),
        hold50,
        hold99,
        (r.unmatched_exits + r.evicted_entries).to_string(),
    ]
}

/// One row per helper function, one per (program, helper), and one for
/// `bpf_sk_release` with the recording's drops.
fn summary_csv(s: &Summary) -> String {
    let mut out = String::new();
    let header: Vec<String> = SUMMARY_CSV_HEADER.iter().map(|h| h.to_string()).collect();
    csv_line(&mut out, &header);
    for r in &s.totals.helpers {
        csv_line(&mut out, &helper_csv_row("helper", r));
    }
    for r in &s.programs.helpers {
        csv_line(&mut out, &helper_csv_row("program", r));
    }
    let t = &s.totals;
    let rel = &t.release;
    let mut row = vec![String::new(); SUMMARY_CSV_HEADER.len()];
    row[0] = "release".into();
    row[4] = "bpf_sk_release".into();
    row[5] = rel.calls.to_string();
    row[6] = format!("{:.3}", rate(rel.calls, s.elapsed_s));
    row[19] = t.acquired.to_string();
    row[20] = rel.dropped.to_string();
    row[21] = rel.hold_ns.p50.to_string();
    row[22] = rel.hold_ns.p99.to_string();
    row[23] = t.drops.total().to_string();
    csv_line(&mut out, &row);
    out
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in ms.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = crate::model::clock::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn program_label(r: &HelperStats) -> String {
    match &r.program {
        Some(p) if p.id != 0 => format!("{}[{}]", p.name, p.id),
        Some(p) => p.name.clone(),
        None => String::new(),
    }
}

/// What the last ledger scan found, in words (Markdown and HTML alike).
pub fn ledger_sentence(l: &super::summary::LeakSummary) -> String {
    match &l.ledger {
        Some(r) => format!(
            "{} references outstanding for over {} ms at the end",
            r.leaked_references,
            LEAK_AGE_NS / 1_000_000
        ),
        None => "no ledger scan at the end".to_string(),
    }
}

fn release_lines(out: &mut String, t: &IntervalStats) {
    let rel = &t.release;
    let _ = writeln!(
        out,
        "\n**bpf_sk_release:** {} calls, {} dropped a reference, {} no-op, {} NULL; acquired {} → {}.",
        rel.calls, rel.dropped, rel.noop, rel.null, t.acquired, t.balance.text
    );
    if rel.hold_ns.count > 0 {
        let _ = writeln!(
            out,
            "\n**References held:** {}: p50 {} µs, p99 {} µs, max {} µs.",
            crate::model::words::hold_coverage(rel.hold_ns.count, t.balance.released),
            us(rel.hold_ns.p50),
            us(rel.hold_ns.p99),
            us(rel.hold_ns.max),
        );
    }
    let d = &t.drops;
    if d.total() == 0 {
        let _ = writeln!(out, "\n**Drops:** none (every call was measured).");
    } else {
        let _ = writeln!(out, "\n**Drops:** {}.", d.describe());
    }
}

fn summary_md(s: &Summary) -> String {
    let m = &s.meta;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## skprof report: {}, kernel {} ({})\n",
        if m.hostname.is_empty() {
            "unknown host"
        } else {
            &m.hostname
        },
        m.kernel,
        m.probe_mode
    );
    let _ = writeln!(
        out,
        "{:.1} s in {} intervals from {}, recorded by skprof {} (format {}).",
        s.elapsed_s,
        s.intervals,
        utc(s.start_unix_ms),
        m.skprof_version,
        s.format_version
    );
    if s.truncated {
        let _ = writeln!(
            out,
            "\n> **Warning:** the recording was cut off (no End frame): it covers up to its last complete frame."
        );
    }
    let called: Vec<&HelperStats> = s.totals.helpers.iter().filter(|r| r.calls > 0).collect();
    let _ = writeln!(
        out,
        "\n| Helper | Calls | Calls/s | Hit % | p50 (µs) | p90 (µs) | p99 (µs) | p99.9 (µs) | Max (µs) | Acquired |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for r in &called {
        let l = &r.latency_ns;
        let _ = writeln!(
            out,
            "| `{}` | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.helper,
            r.calls,
            r.calls_per_s,
            r.hit_pct,
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max),
            r.acquired
        );
    }
    let idle = s.totals.helpers.len() - called.len();
    if called.is_empty() {
        let _ = writeln!(out, "\nNo traced helper function was called.");
    } else if idle > 0 {
        let _ = writeln!(
            out,
            "\n{idle} more traced helper functions were not called."
        );
    }
    release_lines(&mut out, &s.totals);
    let l = &s.leaks;
    let ledger = ledger_sentence(l);
    let _ = writeln!(
        out,
        "\n**Leaks:** {} traced program runs ended holding a reference; {ledger}.",
        l.run_leaks
    );
    if let Some(why) = &m.attribution_off {
        let _ = writeln!(out, "\nNo per-program attribution: {why}.");
    } else if !s.programs.helpers.is_empty() {
        let _ = writeln!(
            out,
            "\n### Per program\n\n\
             | Program | Helper | Calls | Calls/s | Hit % | p50 (µs) | p99 (µs) | Max (µs) | Acquired | Hold p99 (µs) |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for r in &s.programs.helpers {
            let l = &r.latency_ns;
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                program_label(r),
                r.helper,
                r.calls,
                r.calls_per_s,
                r.hit_pct,
                us(l.p50),
                us(l.p99),
                us(l.max),
                r.acquired,
                r.hold_ns.map_or("-".to_string(), |h| us(h.p99))
            );
        }
    }
    out
}

const COMPARE_CSV_HEADER: &[&str] = &[
    "scope",
    "program",
    "helper",
    "base_calls",
    "new_calls",
    "base_calls_per_s",
    "new_calls_per_s",
    "calls_per_s_change_pct",
    "base_p50_ns",
    "new_p50_ns",
    "p50_change_pct",
    "base_p99_ns",
    "new_p99_ns",
    "p99_change_pct",
    "hit_pct_change",
    "gated",
    "regressed",
];

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.3}"))
}

fn side_fields(f: Option<Figures>, get: impl Fn(&Figures) -> String) -> String {
    f.as_ref().map_or(String::new(), get)
}

fn compare_csv(c: &Comparison) -> String {
    let mut out = String::new();
    let header: Vec<String> = COMPARE_CSV_HEADER.iter().map(|h| h.to_string()).collect();
    csv_line(&mut out, &header);
    let rows = c
        .helpers
        .iter()
        .map(|r| ("helper", r))
        .chain(c.programs.iter().map(|r| ("program", r)));
    for (scope, r) in rows {
        csv_line(
            &mut out,
            &[
                scope.into(),
                r.program.clone().unwrap_or_default(),
                r.helper.into(),
                side_fields(r.base, |f| f.calls.to_string()),
                side_fields(r.new, |f| f.calls.to_string()),
                side_fields(r.base, |f| format!("{:.3}", f.calls_per_s)),
                side_fields(r.new, |f| format!("{:.3}", f.calls_per_s)),
                opt(r.calls_per_s_change_pct),
                side_fields(r.base, |f| f.p50_ns.to_string()),
                side_fields(r.new, |f| f.p50_ns.to_string()),
                opt(r.p50_change_pct),
                side_fields(r.base, |f| f.p99_ns.to_string()),
                side_fields(r.new, |f| f.p99_ns.to_string()),
                opt(r.p99_change_pct),
                opt(r.hit_pct_change),
                r.gated.to_string(),
                r.regressed.to_string(),
            ],
        );
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:+.1}%"))
}

fn compare_table(out: &mut String, rows: &[CompareRow], programs: bool) {
    let first = if programs { "| Program " } else { "" };
    let _ = writeln!(
        out,
        "{first}| Helper | Calls/s base | Calls/s new | Δ | p50 base (µs) | p50 new (µs) | Δ | p99 base (µs) | p99 new (µs) | Δ | |\n\
         {}|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        if programs { "|---" } else { "" }
    );
    for r in rows {
        let f = |x: Option<Figures>, g: fn(&Figures) -> String| x.as_ref().map_or("–".into(), g);
        let verdict = if r.regressed {
            "**p99 regressed**"
        } else if r.base.is_none() {
            "new"
        } else if r.new.is_none() {
            "gone"
        } else {
            ""
        };
        let prog = if programs {
            format!("| {} ", r.program.as_deref().unwrap_or(""))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{prog}| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {verdict} |",
            r.helper,
            f(r.base, |x| format!("{:.1}", x.calls_per_s)),
            f(r.new, |x| format!("{:.1}", x.calls_per_s)),
            pct(r.calls_per_s_change_pct),
            f(r.base, |x| us(x.p50_ns)),
            f(r.new, |x| us(x.p50_ns)),
            pct(r.p50_change_pct),
            f(r.base, |x| us(x.p99_ns)),
            f(r.new, |x| us(x.p99_ns)),
            pct(r.p99_change_pct),
        );
    }
}

fn compare_md(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## skprof compare: {} → {}\n", c.base.path, c.new.path);
    for (name, s) in [("Base", &c.base), ("New", &c.new)] {
        let _ = writeln!(
            out,
            "- {name}: `{}`, kernel {} ({}), {:.1} s from {}, skprof {}{}",
            s.path,
            s.kernel,
            s.probe_mode,
            s.elapsed_s,
            utc(s.start_unix_ms),
            s.skprof_version,
            if s.truncated { ", cut off" } else { "" }
        );
    }
    out.push('\n');
    if c.helpers.is_empty() {
        let _ = writeln!(out, "No helper function was called in either recording.");
    } else {
        compare_table(&mut out, &c.helpers, false);
    }
    if !c.programs.is_empty() {
        let _ = writeln!(out, "\n### Per program\n");
        compare_table(&mut out, &c.programs, true);
    }
    match c.max_regression_pct {
        Some(max) if c.regressions.is_empty() => {
            let _ = writeln!(
                out,
                "\n**Gate passed:** no p99 grew by more than {max}% (rows with at least {} calls on both sides).",
                c.min_calls
            );
        }
        Some(max) => {
            let _ = writeln!(
                out,
                "\n**Gate failed:** p99 grew by more than {max}%: {}.",
                c.regressions.join("; ")
            );
        }
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::compare::compare;
    use crate::record::tests::summary_of_three as summary;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(1_709_164_800_999), "2024-02-29 00:00:00 UTC");
        assert_eq!(utc(951_868_800_000), "2000-03-01 00:00:00 UTC");
    }

    #[test]
    fn csv_has_a_row_per_helper_program_and_release() {
        let s = summary(false);
        let text = super::summary(&s, Format::Csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("scope,program_slot,program_id,program,helper,calls,"));
        let cols = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols), "{text}");
        // 3 helpers, 4 (program, helper) pairs, the release row.
        assert_eq!(lines.len(), 1 + 3 + 4 + 1, "{text}");
        let tc: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(
            &tc[..6],
            ["helper", "", "", "", "bpf_tc_sk_lookup_tcp", "300"]
        );
        let prog: Vec<&str> = lines[5].split(',').collect();
        assert_eq!(
            &prog[..6],
            [
                "program",
                "1",
                "41",
                "tc_ingress",
                "bpf_tc_sk_lookup_tcp",
                "200"
            ]
        );
        let rel: Vec<&str> = lines[8].split(',').collect();
        assert_eq!(
            (rel[0], rel[4], rel[20]),
            ("release", "bpf_sk_release", "200")
        );
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
    }

    #[test]
    fn markdown_has_the_tables_and_warns_of_a_cut_off_file() {
        let md = super::summary(&summary(false), Format::Md).unwrap();
        assert!(
            md.starts_with("## skprof report: testhost, kernel 6.12.0-test (fentry)"),
            "{md}"
        );
        assert!(
            md.contains("| `bpf_tc_sk_lookup_tcp` | 300 | 150.0 | 100.0 |"),
            "{md}"
        );
        assert!(md.contains("acquired 200 → balanced"), "{md}");
        assert!(md.contains("### Per program"), "{md}");
        assert!(
            md.contains("| tc_ingress[41] | `bpf_tc_sk_lookup_tcp` | 200 |"),
            "{md}"
        );
        assert!(!md.contains("Warning"));
        let md = super::summary(&summary(true), Format::Md).unwrap();
        assert!(
            md.contains("**Warning:** the recording was cut off"),
            "{md}"
        );
    }

    #[test]
    fn json_is_one_document_with_totals_and_series() {
        let v: serde_json::Value =
            serde_json::from_str(&super::summary(&summary(false), Format::Json).unwrap()).unwrap();
        assert_eq!(v["type"], "report");
        assert_eq!(v["meta"]["helpers"][1], "bpf_tc_sk_lookup_tcp");
        assert_eq!(v["totals"]["helpers"][1]["calls"], 300);
        assert_eq!(v["series"].as_array().unwrap().len(), 2);
        assert!(v.get("workload").is_none());
    }

    #[test]
    fn a_comparison_shows_deltas_and_the_gate() {
        let s = summary(false);
        let c = compare("a.skrec", &s, "b.skrec", &s, Some(5.0), 1);
        let md = super::comparison(&c, Format::Md).unwrap();
        assert!(
            md.starts_with("## skprof compare: a.skrec → b.skrec"),
            "{md}"
        );
        assert!(
            md.contains("| `bpf_tc_sk_lookup_tcp` | 150.0 | 150.0 | +0.0% |"),
            "{md}"
        );
        assert!(md.contains("**Gate passed:**"), "{md}");
        let csv = super::comparison(&c, Format::Csv).unwrap();
        assert_eq!(csv.lines().count(), 1 + 3 + 4, "{csv}");
        let v: serde_json::Value =
            serde_json::from_str(&super::comparison(&c, Format::Json).unwrap()).unwrap();
        assert_eq!(v["type"], "compare");
        assert_eq!(v["max_regression_pct"], 5.0);
    }
}
