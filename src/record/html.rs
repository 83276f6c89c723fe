//! The HTML report: one self-contained file (no script, no external
//! resource), the figures inline as SVG, the summary tables and the
//! recording's metadata.
//!
//! Every string taken from the recording (host, kernel, command line,
//! program names, the attribution note) is escaped: a BPF program's name
//! is chosen by whoever loaded it. The page is also well-formed XML
//! (polyglot HTML: self-closed void elements, only the five XML entities),
//! so tests read it with an XML parser.

use std::fmt::Write as _;

use anyhow::Result;

use crate::model::snapshot::{HelperStats, ProgramRef};

use super::plot;
use super::render::utc;
use super::summary::Summary;

/// `s` as HTML text or attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0 text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: 'DejaVu Sans', Verdana, sans-serif; margin: 24px; color: #222; max-width: 1280px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.release td { background: #fafafa; font-style: italic; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 8px; }
.bad { color: #b00000; font-weight: bold; }
figure { margin: 16px 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
code { font-size: 12px; }
";

/// A numeric cell: the figure as shown, and the exact value in `data-v`.
fn num(out: &mut String, class: &str, shown: String, exact: String) {
    let _ = write!(
        out,
        "<td class=\"n {class}\" data-v=\"{}\">{}</td>",
        esc(&exact),
        esc(&shown)
    );
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// The cells every row has: calls .. acquired.
fn figures_cells(out: &mut String, r: &HelperStats, calls_per_s: bool) {
    num(out, "calls", r.calls.to_string(), r.calls.to_string());
    if calls_per_s {
        num(
            out,
            "calls_per_s",
            format!("{:.1}", r.calls_per_s),
            r.calls_per_s.to_string(),
        );
    }
    num(
        out,
        "hit_pct",
        format!("{:.1}", r.hit_pct),
        r.hit_pct.to_string(),
    );
    let l = &r.latency_ns;
    for (class, v) in [
        ("p50", l.p50),
        ("p99", l.p99),
        ("p999", l.p999),
        ("max", l.max),
    ] {
        num(out, class, us(v), v.to_string());
    }
    num(
        out,
        "acquired",
        r.acquired.to_string(),
        r.acquired.to_string(),
    );
}

fn meta_table(out: &mut String, s: &Summary) {
    let m = &s.meta;
    let rows: Vec<(&str, String)> = vec![
        ("Host", m.hostname.clone()),
        ("Kernel", m.kernel.clone()),
        ("Probe mode", m.probe_mode.clone()),
        ("skprof version", m.skprof_version.clone()),
        ("Recording format", s.format_version.to_string()),
        ("Start", utc(s.start_unix_ms)),
        ("End", utc(s.end_unix_ms)),
        ("Interval", format!("{} ms", m.interval_ms)),
        (
            "Duration",
            format!("{:.1} s in {} intervals", s.elapsed_s, s.intervals),
        ),
        ("Command", m.command.join(" ")),
        (
            "Attribution",
            m.attribution_off
                .as_ref()
                .map_or("per program".to_string(), |why| format!("off: {why}")),
        ),
    ];
    out.push_str("<table id=\"meta\">\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    out.push_str("</table>\n");
}

/// References still outstanding past `LEAK_AGE_NS` at the end, of one
/// helper (and one program id, when given).
fn leaked(s: &Summary, helper: &str, prog_id: Option<u32>) -> u64 {
    s.leaks.ledger.as_ref().map_or(0, |l| {
        l.groups
            .iter()
            .filter(|g| g.helper == helper && prog_id.is_none_or(|id| g.prog_id == id))
            .map(|g| g.references)
            .sum()
    })
}

fn helper_table(out: &mut String, s: &Summary) {
    out.push_str(
        "<table id=\"helpers\">\n<thead><tr><th>Helper</th><th>Calls</th><th>Calls/s</th>\
         <th>Hit %</th><th>p50 (µs)</th><th>p99 (µs)</th><th>p99.9 (µs)</th><th>Max (µs)</th>\
         <th>Acquired</th><th>Released</th><th>Leaked</th></tr></thead>\n<tbody>\n",
    );
    for r in &s.totals.helpers {
        let _ = write!(
            out,
            "<tr data-helper=\"{0}\"><td><code>{0}</code></td>",
            esc(r.helper)
        );
        figures_cells(out, r, true);
        // bpf_sk_release does not say which lookup took the reference: its
        // releases are on the release row only.
        out.push_str("<td class=\"n released\">–</td>");
        let n = leaked(s, r.helper, None);
        num(out, "leaked", n.to_string(), n.to_string());
        out.push_str("</tr>\n");
    }
    let t = &s.totals;
    let rel = &t.release;
    let leaked_total = s.leaks.leaked_references();
    let _ = write!(
        out,
        "<tr class=\"release\" data-helper=\"bpf_sk_release\"><td><code>bpf_sk_release</code></td>"
    );
    num(out, "calls", rel.calls.to_string(), rel.calls.to_string());
    out.push_str("<td colspan=\"6\">");
    let _ = write!(
        out,
        "{} dropped a reference, {} no-op, {} NULL; hold p50 {} µs, p99 {} µs",
        rel.dropped,
        rel.noop,
        rel.null,
        us(rel.hold_ns.p50),
        us(rel.hold_ns.p99)
    );
    out.push_str("</td>");
    num(
        out,
        "acquired",
        t.acquired.to_string(),
        t.acquired.to_string(),
    );
    num(
        out,
        "released",
        rel.dropped.to_string(),
        rel.dropped.to_string(),
    );
    num(
        out,
        "leaked",
        leaked_total.to_string(),
        leaked_total.to_string(),
    );
    out.push_str("</tr>\n</tbody>\n</table>\n");
    let _ = writeln!(
        out,
        "<p id=\"balance\">bpf_sk_release: {} calls, {} dropped a reference; acquired {} → {}.</p>",
        rel.calls,
        rel.dropped,
        t.acquired,
        esc(&t.balance.text),
    );
}

fn program_table(out: &mut String, s: &Summary) {
    if let Some(why) = &s.meta.attribution_off {
        let _ = writeln!(out, "<p>No per-program attribution: {}.</p>", esc(why));
    }
    if s.programs.helpers.is_empty() {
        return;
    }
    out.push_str(
        "<table id=\"programs\">\n<thead><tr><th>Program</th><th>Helper</th><th>Calls</th>\
         <th>Hit %</th><th>p50 (µs)</th><th>p99 (µs)</th><th>p99.9 (µs)</th><th>Max (µs)</th>\
         <th>Acquired</th><th>Released</th><th>Hold p99 (µs)</th><th>Leaked</th></tr></thead>\n<tbody>\n",
    );
    let rows = &s.programs.helpers;
    let mut i = 0;
    while i < rows.len() {
        let prog = rows[i].program.clone().unwrap_or(ProgramRef {
            slot: 0,
            id: 0,
            name: "?".into(),
        });
        // The program's rows are consecutive; its hold figures (the
        // references it acquired, released) span them.
        let n = rows[i..]
            .iter()
            .take_while(|r| {
                r.program.as_ref().map(|p| (p.slot, p.id)) == Some((prog.slot, prog.id))
            })
            .count()
            .max(1);
        for (j, r) in rows[i..i + n].iter().enumerate() {
            let label = if prog.id != 0 {
                format!("{}[{}]", prog.name, prog.id)
            } else {
                prog.name.clone()
            };
            let _ = write!(
                out,
                "<tr data-program=\"{}\" data-helper=\"{}\">",
                esc(&label),
                esc(r.helper)
            );
            if j == 0 {
                let _ = write!(out, "<td rowspan=\"{n}\">{}</td>", esc(&label));
            }
            let _ = write!(out, "<td><code>{}</code></td>", esc(r.helper));
            figures_cells(out, r, false);
            if j == 0 {
                let (released, hold) = match r.hold_ns {
                    Some(h) if h.count > 0 => (h.count.to_string(), us(h.p99)),
                    _ => ("0".to_string(), "–".to_string()),
                };
                let _ = write!(
                    out,
                    "<td class=\"n released\" rowspan=\"{n}\">{released}</td>\
                     <td class=\"n hold_p99\" rowspan=\"{n}\">{hold}</td>"
                );
            }
            let l = leaked(s, r.helper, Some(prog.id));
            num(out, "leaked", l.to_string(), l.to_string());
            out.push_str("</tr>\n");
        }
        i += n;
    }
    out.push_str("</tbody>\n</table>\n");
    out.push_str(
        "<p>Released: references the program acquired that were released, and how long they \
         were held; a program's figures, over all its helpers.</p>\n",
    );
}

/// An SVG document as an inline element: without an XML declaration.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// The whole page.
pub fn page(s: &Summary) -> Result<String> {
    let m = &s.meta;
    let host = if m.hostname.is_empty() {
        "unknown host"
    } else {
        &m.hostname
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <title>skprof report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        esc(host)
    );
    let _ = writeln!(
        out,
        "<h1>skprof report: {}, kernel {} ({})</h1>",
        esc(host),
        esc(&m.kernel),
        esc(&m.probe_mode)
    );
    if s.truncated {
        out.push_str(
            "<p class=\"warn\" id=\"truncated\">Warning: the recording was cut off (no End \
             frame): it covers up to its last complete frame.</p>\n",
        );
    }
    meta_table(&mut out, s);

    out.push_str("<h2>Per helper function</h2>\n");
    helper_table(&mut out, s);

    let d = &s.totals.drops;
    let _ = writeln!(
        out,
        "<h2>Drops</h2>\n<p id=\"drops\" data-v=\"{}\"{}>{}</p>",
        d.total(),
        if d.total() > 0 { " class=\"bad\"" } else { "" },
        if d.total() == 0 {
            "None: every call was measured.".to_string()
        } else {
            format!("{}: {}.", d.total(), esc(&d.describe()))
        }
    );

    let l = &s.leaks;
    let ledger = super::render::ledger_sentence(l);
    let _ = writeln!(
        out,
        "<h2>Leaks</h2>\n<p id=\"leaks\"{}>{} traced program runs ended holding a reference; {}.</p>",
        if l.run_leaks > 0 || l.leaked_references() > 0 {
            " class=\"bad\""
        } else {
            ""
        },
        l.run_leaks,
        esc(&ledger)
    );

    out.push_str("<h2>Per program</h2>\n");
    program_table(&mut out, s);

    out.push_str("<h2>Figures</h2>\n");
    let figures = plot::figures(s);
    if figures.is_empty() {
        out.push_str("<p>No traced helper function was called: nothing to plot.</p>\n");
    }
    for f in figures {
        let svg = plot::svg(s, &f)?;
        let _ = writeln!(
            out,
            "<figure id=\"fig-{}\">\n{}\n<figcaption>{} (<code>{}.svg</code>)</figcaption>\n</figure>",
            esc(&f.name),
            inline_svg(&svg),
            esc(&f.title),
            esc(&f.name)
        );
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::summary_of_three as summary;

    fn parse(html: &str) -> roxmltree::Document<'_> {
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(html, opt).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn escapes_what_the_recording_says() {
        assert_eq!(esc("<b>&\"x'</b>"), "&lt;b&gt;&amp;&quot;x&#39;&lt;/b&gt;");
        assert_eq!(esc("a\u{1}b"), "a\u{fffd}b");
    }

    #[test]
    fn a_hostile_program_name_stays_text() {
        let mut s = summary(false);
        let evil = "<script>alert(1)</script>&x";
        for r in &mut s.programs.helpers {
            if let Some(p) = &mut r.program {
                if p.id == 41 {
                    *p = ProgramRef {
                        name: evil.into(),
                        ..p.clone()
                    };
                }
            }
        }
        s.meta.hostname = "h<o>st".into();
        let html = page(&s).unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;x[41]"));
        let doc = parse(&html);
        let cell = doc
            .descendants()
            .find(|n| n.attribute("data-program") == Some(&format!("{evil}[41]")))
            .expect("the row of the program");
        assert_eq!(cell.attribute("data-helper"), Some("bpf_tc_sk_lookup_tcp"));
    }

    #[test]
    fn the_page_has_meta_tables_and_inline_figures() {
        let s = summary(true);
        let html = page(&s).unwrap();
        let doc = parse(&html);
        let by_id = |id: &str| {
            doc.descendants()
                .find(|n| n.attribute("id") == Some(id))
                .unwrap_or_else(|| panic!("#{id}"))
        };
        assert!(by_id("truncated").text().unwrap().contains("cut off"));
        let meta: String = by_id("meta")
            .descendants()
            .filter_map(|n| n.text())
            .collect();
        for want in ["testhost", "6.12.0-test", "fentry", "1000 ms"] {
            assert!(meta.contains(want), "{meta}");
        }
        let tc = doc
            .descendants()
            .find(|n| {
                n.tag_name().name() == "tr"
                    && n.attribute("data-helper") == Some("bpf_tc_sk_lookup_tcp")
                    && n.attribute("data-program").is_none()
            })
            .unwrap();
        let cell = |class: &str| {
            tc.children()
                .find(|c| {
                    c.attribute("class")
                        .is_some_and(|k| k.split(' ').any(|k| k == class))
                })
                .unwrap()
        };
        assert_eq!(cell("calls").text(), Some("300"));
        assert_eq!(cell("hit_pct").text(), Some("100.0"));
        let p99 = s.totals.helpers[1].latency_ns.p99;
        assert_eq!(
            cell("p99").attribute("data-v"),
            Some(p99.to_string().as_str())
        );
        // The fixture has unmatched exits: shown, in red.
        let drops = s.totals.drops.total();
        assert!(drops > 0);
        let d = by_id("drops");
        assert_eq!(d.attribute("data-v"), Some(drops.to_string().as_str()));
        assert_eq!(d.attribute("class"), Some("bad"));
        assert!(d.text().unwrap().contains("unmatched exits"));
        let svgs = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "svg")
            .count();
        assert_eq!(svgs, plot::figures(&s).len());
        assert!(svgs >= 5);
        // Self-contained: nothing is fetched, nothing runs.
        for bad in ["<script", "<link", "src=\"", "href=\"http", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
    }
}
