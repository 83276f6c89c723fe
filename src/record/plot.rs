//! The figures of `skprof report` (plotters): SVG for the HTML report and
//! for `--format svg`, PNG for `--format png`.
//!
//! What is plotted is computed by pure functions of the `Summary` (bins,
//! lines, bars, axis ranges, which figures exist), which the tests check;
//! the drawing functions only lay those out. Text is drawn with DejaVu
//! Sans embedded in the binary (`assets/fonts`), registered with plotters'
//! ab_glyph backend: the PNGs need a real font to rasterize text and a
//! fresh machine may have none (or no fontconfig), and the SVGs need its
//! metrics to lay out labels.
//!
//! Figures, by file stem (`<stem>.svg`, `<stem>.png`):
//! - `latency-<helper function>`: one per helper function that was called,
//!   the latency histogram on a log-scaled axis, p50/p99/p99.9 marked;
//! - `percentiles-over-time`: p50 and p99 per helper, per interval;
//! - `rate-over-time`: calls/s and hit ratio per helper, per interval;
//! - `hold-time`: how long references were held, acquire to release
//!   (only when some reference was released);
//! - `programs`: calls and p99 per (program, helper) (only when calls
//!   were attributed to programs).

use std::ops::Range;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{EmptyElement, PathElement, Text};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::model::hist::{slot_range, LogHist, Percentiles};
use crate::model::snapshot::UNATTRIBUTED;

use super::summary::Summary;

/// DejaVu Sans 2.37, unmodified (licence in `assets/fonts/LICENSE-DejaVu`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

pub const WIDTH: u32 = 960;
const HIST_HEIGHT: u32 = 460;
const SERIES_HEIGHT: u32 = 640;
/// Room on the right of the time-series figures for the helpers' legend.
const LEGEND_WIDTH: u32 = 230;
/// The per-program figure lists at most this many rows (the busiest).
pub const PROGRAM_ROWS: usize = 30;
/// Histogram bars per power of two.
const BINS_PER_OCTAVE: u32 = 4;

/// Distinct colours for the helpers, by their index in the recording's
/// helper list, so a helper has the same colour in every figure.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Which figure, and what it is drawn from.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Index into `Summary::totals.helpers`.
    Latency(usize),
    Percentiles,
    Rate,
    Hold,
    Programs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem, stable (documented in the README).
    pub name: String,
    pub title: String,
    pub kind: Kind,
}

/// The figures a summary has: empty plots are left out.
pub fn figures(s: &Summary) -> Vec<Figure> {
    let mut out = Vec::new();
    for (i, r) in s.totals.helpers.iter().enumerate() {
        if r.calls > 0 {
            out.push(Figure {
                name: format!("latency-{}", r.helper),
                title: format!("{}: latency of {} calls", r.helper, r.calls),
                kind: Kind::Latency(i),
            });
        }
    }
    if !out.is_empty() {
        out.push(Figure {
            name: "percentiles-over-time".into(),
            title: "Latency percentiles per interval".into(),
            kind: Kind::Percentiles,
        });
        out.push(Figure {
            name: "rate-over-time".into(),
            title: "Calls/s and hit ratio per interval".into(),
            kind: Kind::Rate,
        });
    }
    if hold_hist(s).count > 0 {
        out.push(Figure {
            name: "hold-time".into(),
            title: "Reference hold time, acquire to release".into(),
            kind: Kind::Hold,
        });
    }
    if !s.programs.helpers.is_empty() && s.programs.helpers.iter().any(|r| r.calls > 0) {
        out.push(Figure {
            name: "programs".into(),
            title: "Calls and p99 latency per program and helper".into(),
            kind: Kind::Programs,
        });
    }
    out
}

/// A histogram bar: `count` values in `[lo, hi)` ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin {
    pub lo: u64,
    pub hi: u64,
    pub count: u64,
}

/// The log-linear slots of `h` merged into `per_octave` equal bins per
/// power of two (a slot is 1/32 of an octave: too thin to see). Slots nest
/// in the bins exactly, so no count is split or moved. Values below 1 ns
/// are shown in the [1, 2) bin: a log axis has no 0.
pub fn log_bins(h: &LogHist, per_octave: u32) -> Vec<Bin> {
    let per = u64::from(per_octave.max(1));
    let mut out: Vec<Bin> = Vec::new();
    for &(slot, count) in &h.slots {
        if count == 0 {
            continue;
        }
        let v = slot_range(slot as usize).0.max(1);
        let e = 63 - v.leading_zeros();
        let base = 1u64 << e;
        // Which of the octave's `per` parts `v` is in; below `per` the
        // parts would be narrower than 1 ns, so the octave is one bin.
        let (lo, hi) = if base >= per {
            let part = (v - base) * per / base;
            (base + part * base / per, base + (part + 1) * base / per)
        } else {
            (base, base * 2)
        };
        match out.last_mut() {
            Some(b) if b.lo == lo => b.count += count,
            _ => out.push(Bin { lo, hi, count }),
        }
    }
    out
}

/// A log axis covering `[lo, hi]`, widened to whole decades (at least
/// one), never below 1.
pub fn log_range(lo: f64, hi: f64) -> Range<f64> {
    let lo = lo.max(1.0);
    let hi = hi.max(lo);
    let a = 10f64.powf(lo.log10().floor());
    let mut b = 10f64.powf(hi.log10().ceil());
    if b <= a {
        b = a * 10.0;
    }
    a..b
}

/// A linear axis from 0 with headroom above `max` (never empty).
pub fn linear_range(max: f64, headroom: f64) -> Range<f64> {
    if max.is_finite() && max > 0.0 {
        0.0..max * headroom
    } else {
        0.0..1.0
    }
}

/// A duration in ns as an axis label: "750 ns", "2.5 µs", "10 ms", "1.2 s".
pub fn duration_label(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    let text = if v >= 100.0 || (v - v.round()).abs() < 0.05 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} {unit}")
}

/// A count as an axis label: 950, 12k, 3.4M.
pub fn count_label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The percentile lines of a histogram figure: (label, ns).
pub fn markers(p: &Percentiles, with_p999: bool) -> Vec<(String, u64)> {
    let mut m = vec![
        (format!("p50 {}", duration_label(p.p50 as f64)), p.p50),
        (format!("p99 {}", duration_label(p.p99 as f64)), p.p99),
    ];
    if with_p999 {
        m.push((format!("p99.9 {}", duration_label(p.p999 as f64)), p.p999));
    }
    m
}

/// One helper's values over the intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub helper: &'static str,
    /// Colour index (the helper's index in the recording).
    pub color: usize,
    /// (seconds since the baseline, value), in runs of consecutive
    /// intervals: a line is not drawn across an interval without a value.
    pub runs: Vec<Vec<(f64, f64)>>,
}

impl Line {
    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.runs.iter().flatten().copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    P50,
    P99,
    CallsPerS,
    HitPct,
}

/// A line per helper that was called in the recording. Latencies and the
/// hit ratio have no value in an interval without calls: such intervals
/// are gaps, which end a run (a line across them would show values that
/// were never measured), where calls/s is 0.
pub fn lines(s: &Summary, m: Metric) -> Vec<Line> {
    let called: Vec<(usize, &'static str)> = s
        .totals
        .helpers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.calls > 0)
        .map(|(i, r)| (i, r.helper))
        .collect();
    called
        .into_iter()
        .map(|(i, helper)| {
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut run = Vec::new();
            for p in &s.series {
                let h = p.helpers.iter().find(|h| h.helper == helper);
                let v = match (m, h) {
                    (Metric::CallsPerS, Some(h)) => Some(h.calls_per_s),
                    (_, None) => None,
                    (_, Some(h)) if h.calls == 0 => None,
                    (Metric::P50, Some(h)) => Some(h.p50_ns as f64),
                    (Metric::P99, Some(h)) => Some(h.p99_ns as f64),
                    (Metric::HitPct, Some(h)) => Some(h.hit_pct),
                };
                match v {
                    Some(v) => run.push((p.elapsed_s, v)),
                    None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
                    None => {}
                }
            }
            if !run.is_empty() {
                runs.push(run);
            }
            Line {
                helper,
                color: i,
                runs,
            }
        })
        .collect()
}

/// The smallest and largest value of the lines (None without points).
pub fn value_span(lines: &[Line]) -> Option<(f64, f64)> {
    let mut it = lines.iter().flat_map(|l| l.points().map(|p| p.1));
    let first = it.next()?;
    Some(it.fold((first, first), |(a, b), v| (a.min(v), b.max(v))))
}

/// One interval's calls/s, stacked by helper: (colour, bottom, top).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The interval, in seconds since the baseline.
    pub from: f64,
    pub to: f64,
    pub parts: Vec<(usize, f64, f64)>,
}

/// Calls/s per interval as stacked columns, helpers in the recording's
/// order: bursts of different helpers (as the workload makes them) stay
/// readable where a dozen lines would cross, and the column's top is the
/// total.
pub fn rate_columns(s: &Summary) -> Vec<Column> {
    s.series
        .iter()
        .map(|p| {
            let mut top = 0.0;
            let parts = p
                .helpers
                .iter()
                .filter(|h| h.calls > 0)
                .filter_map(|h| {
                    let i = s.totals.helpers.iter().position(|t| t.helper == h.helper)?;
                    let bottom = top;
                    top += h.calls_per_s;
                    Some((i, bottom, top))
                })
                .collect();
            Column {
                from: p.elapsed_s - p.interval_s,
                to: p.elapsed_s,
                parts,
            }
        })
        .collect()
}

/// The time axis: from the baseline to the last reading.
pub fn time_range(s: &Summary) -> Range<f64> {
    let end = s.series.last().map_or(0.0, |p| p.elapsed_s);
    0.0..end.max(1e-3)
}

/// Every reference hold time of the recording, all programs merged.
pub fn hold_hist(s: &Summary) -> LogHist {
    let mut h = LogHist::default();
    for v in s.total.holds.values() {
        h.merge(v);
    }
    h
}

/// A row of the per-program figure.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramBar {
    pub label: String,
    /// Colour index of the helper.
    pub color: usize,
    pub calls: u64,
    pub p99_ns: u64,
}

/// Longest label drawn in full; longer ones are cut with "…".
const LABEL_CHARS: usize = 44;

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The busiest `max` (program, helper) rows, busiest first, and how many
/// more there are.
pub fn program_bars(s: &Summary, max: usize) -> (Vec<ProgramBar>, usize) {
    let mut rows: Vec<ProgramBar> = s
        .programs
        .helpers
        .iter()
        .filter(|r| r.calls > 0)
        .map(|r| {
            let prog = match &r.program {
                Some(p) if p.slot == UNATTRIBUTED || p.id == 0 => p.name.clone(),
                Some(p) => format!("{}[{}]", p.name, p.id),
                None => "?".into(),
            };
            ProgramBar {
                label: shorten(&format!("{prog} {}", r.helper), LABEL_CHARS),
                color: s
                    .totals
                    .helpers
                    .iter()
                    .position(|t| t.helper == r.helper)
                    .unwrap_or(0),
                calls: r.calls,
                p99_ns: r.latency_ns.p99,
            }
        })
        .collect();
    // Stable: rows of equal calls keep the report's order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.calls));
    let hidden = rows.len().saturating_sub(max);
    rows.truncate(max);
    (rows, hidden)
}

/// Height of the per-program figure for `rows` rows.
pub fn programs_height(rows: usize) -> u32 {
    (120 + 24 * rows as u32).max(240)
}

/// Width in px of the label column for `labels` at `font_px`: DejaVu Sans
/// averages about 0.6 em per character; capped at `max`.
pub fn label_width(labels: &[&str], font_px: u32, max: u32) -> u32 {
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (chars * font_px * 6 / 10 + 16).min(max)
}

/// The figure's size in px.
pub fn size(s: &Summary, f: &Figure) -> (u32, u32) {
    match f.kind {
        Kind::Latency(_) | Kind::Hold => (WIDTH, HIST_HEIGHT),
        Kind::Percentiles | Kind::Rate => (WIDTH, SERIES_HEIGHT),
        Kind::Programs => (
            WIDTH,
            programs_height(program_bars(s, PROGRAM_ROWS).0.len()),
        ),
    }
}

fn font_ready() -> Result<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

/// A plotters error as ours, naming the figure.
fn err<E: std::fmt::Display>(name: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw figure {name}: {e}")
}

/// The figure as an SVG document.
pub fn svg(s: &Summary, f: &Figure) -> Result<String> {
    font_ready()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size(s, f)).into_drawing_area();
        draw(&root, s, f)?;
        root.present().map_err(err(&f.name))?;
    }
    Ok(out)
}

/// The figure as a PNG file (8-bit RGB).
pub fn png(s: &Summary, f: &Figure) -> Result<Vec<u8>> {
    font_ready()?;
    let (w, h) = size(s, f);
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, s, f)?;
        root.present().map_err(err(&f.name))?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc
        .write_header()
        .map_err(|e| anyhow!("cannot encode figure {} as PNG: {e}", f.name))?;
    wr.write_image_data(&buf)
        .map_err(|e| anyhow!("cannot encode figure {} as PNG: {e}", f.name))?;
    wr.finish()
        .map_err(|e| anyhow!("cannot encode figure {} as PNG: {e}", f.name))?;
    Ok(out)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, s: &Summary, f: &Figure) -> Result<()> {
    let e = err(&f.name);
    root.fill(&WHITE).map_err(&e)?;
    let body = root
        .titled(&f.title, (FAMILY, 20).into_font())
        .map_err(&e)?;
    match f.kind {
        Kind::Latency(i) => {
            let r = &s.totals.helpers[i];
            let mut h = LogHist::default();
            for (k, c) in &s.total.cells {
                if k.helper.function() == r.helper {
                    h.merge(&c.hist);
                }
            }
            histogram(
                &body,
                &log_bins(&h, BINS_PER_OCTAVE),
                &markers(&r.latency_ns, true),
                color(i),
                "latency per call (log scale)",
                "calls",
            )
            .map_err(&e)
        }
        Kind::Hold => {
            let p = &s.totals.release.hold_ns;
            histogram(
                &body,
                &log_bins(&hold_hist(s), BINS_PER_OCTAVE),
                &markers(p, true),
                RGBColor(90, 90, 170),
                "hold time, acquire to release (log scale)",
                "references",
            )
            .map_err(&e)
        }
        Kind::Percentiles => {
            let (panels, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
            let (top, bottom) = panels.split_vertically(panels.dim_in_pixel().1 / 2);
            let p50 = lines(s, Metric::P50);
            let p99 = lines(s, Metric::P99);
            // One scale for both panels, so they compare at a glance.
            let span = value_span(&[p50.clone(), p99.clone()].concat()).unwrap_or((1.0, 10.0));
            let y = log_range(span.0, span.1);
            let x = time_range(s);
            latency_panel(&top, "p50", &p50, x.clone(), y.clone()).map_err(&e)?;
            latency_panel(&bottom, "p99", &p99, x, y).map_err(&e)?;
            draw_legend(&legend, &p50).map_err(&e)
        }
        Kind::Rate => {
            let (panels, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
            let (top, bottom) = panels.split_vertically(panels.dim_in_pixel().1 / 2);
            let columns = rate_columns(s);
            let hit = lines(s, Metric::HitPct);
            let x = time_range(s);
            let max = columns
                .iter()
                .filter_map(|c| c.parts.last().map(|p| p.2))
                .fold(0.0, f64::max);
            rate_panel(&top, &columns, x.clone(), linear_range(max, 1.1)).map_err(&e)?;
            linear_panel(&bottom, "hit %", &hit, x, 0.0..105.0, &|v| {
                format!("{v:.0}%")
            })
            .map_err(&e)?;
            draw_legend(&legend, &lines(s, Metric::CallsPerS)).map_err(&e)
        }
        Kind::Programs => {
            let (bars, hidden) = program_bars(s, PROGRAM_ROWS);
            programs(&body, &bars, hidden).map_err(&e)
        }
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Bars on a log-scaled axis, with vertical percentile lines labelled at
/// staggered heights (p99 and p99.9 are often close).
fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bins: &[Bin],
    marks: &[(String, u64)],
    bar: RGBColor,
    x_desc: &str,
    y_desc: &str,
) -> DrawResult<DB> {
    let lo = bins.first().map_or(1, |b| b.lo) as f64;
    let hi = bins.iter().map(|b| b.hi).max().unwrap_or(10) as f64;
    let x = log_range(lo, hi);
    let top = bins.iter().map(|b| b.count).max().unwrap_or(1) as f64;
    // Headroom above the tallest bar for the marker labels.
    let y = linear_range(top, 1.45);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(28)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.clone().log_scale(), y.clone())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(12)
        .y_labels(6)
        .x_label_formatter(&|v| duration_label(*v))
        .y_label_formatter(&|v| count_label(*v))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(bins.iter().map(|b| {
        Rectangle::new(
            [(b.lo as f64, 0.0), (b.hi as f64, b.count as f64)],
            bar.mix(0.75).filled(),
        )
    }))?;
    let (xa, xb) = (x.start.log10(), x.end.log10());
    for (i, (label, ns)) in marks.iter().enumerate() {
        let v = (*ns).max(1) as f64;
        let style = ShapeStyle::from(&MARK[i % MARK.len()]).stroke_width(2);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(v, 0.0), (v, y.end * 0.97)],
            style,
        )))?;
        // Labels right of their line, or left of it near the right edge.
        let right_side = (v.log10() - xa) / (xb - xa) > 0.72;
        let (dx, pos) = if right_side {
            (-5, Pos::new(HPos::Right, VPos::Center))
        } else {
            (5, Pos::new(HPos::Left, VPos::Center))
        };
        let text = TextStyle::from((FAMILY, 14).into_font())
            .color(&MARK[i % MARK.len()])
            .pos(pos);
        let at = (v, y.end * (0.93 - 0.075 * i as f64));
        chart.draw_series(std::iter::once(
            EmptyElement::at(at) + Text::new(label.clone(), (dx, 0), text),
        ))?;
    }
    Ok(())
}

/// Marker colours: p50, p99, p99.9.
const MARK: [RGBColor; 3] = [
    RGBColor(0, 110, 0),
    RGBColor(200, 90, 0),
    RGBColor(190, 0, 0),
];

fn draw_lines<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    lines: &[Line],
) -> DrawResult<DB> {
    let points: usize = lines.iter().map(|l| l.points().count()).sum();
    for l in lines {
        let c = color(l.color);
        for run in &l.runs {
            chart.draw_series(LineSeries::new(run.iter().copied(), c.stroke_width(2)))?;
            // A lone reading has no line: a dot shows it. Dots on every
            // reading only while they do not blot the lines.
            if run.len() == 1 || points <= 60 {
                chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
    }
    Ok(())
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    what: &str,
    lines: &[Line],
    x: Range<f64>,
    y: Range<f64>,
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y.log_scale())?;
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&|v| format!("{v:.0} s"))
        .y_label_formatter(&|v| duration_label(*v))
        .x_desc("time since start")
        .y_desc(format!("{what} latency (log)"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    draw_lines(&mut chart, lines)
}

fn rate_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    columns: &[Column],
    x: Range<f64>,
    y: Range<f64>,
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0} s"))
        .y_label_formatter(&|v| count_label(*v))
        .x_desc("time since start")
        .y_desc("calls/s (stacked by helper)")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(columns.iter().flat_map(|c| {
        c.parts.iter().map(|&(i, lo, hi)| {
            Rectangle::new([(c.from, lo), (c.to, hi)], color(i).mix(0.85).filled())
        })
    }))?;
    Ok(())
}

fn linear_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    what: &str,
    lines: &[Line],
    x: Range<f64>,
    y: Range<f64>,
    fmt: &dyn Fn(&f64) -> String,
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0} s"))
        .y_label_formatter(fmt)
        .x_desc("time since start")
        .y_desc(what)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    draw_lines(&mut chart, lines)
}

/// The helpers' colours, one per row, in a column of their own (a legend
/// box inside a plot would hide lines).
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Line],
) -> DrawResult<DB> {
    let font = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, l) in lines.iter().enumerate() {
        let y = 30 + 22 * i as i32;
        area.draw(&PathElement::new(
            vec![(6, y), (30, y)],
            color(l.color).stroke_width(3),
        ))?;
        area.draw(&Text::new(l.helper.to_string(), (36, y), font.clone()))?;
    }
    Ok(())
}

/// Horizontal bars, busiest row on top: calls on the left, p99 on the
/// right, the row labels once, left of both.
fn programs<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bars: &[ProgramBar],
    hidden: usize,
) -> DrawResult<DB> {
    let n = bars.len().max(1);
    // An integer range holds both its ends: n rows are 0..=n-1.
    let rows = 0..n - 1;
    let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
    let label_px = label_width(&labels, 13, WIDTH / 2);
    let (w, h) = area.dim_in_pixel();
    let (body, foot) = area.split_vertically(h - if hidden > 0 { 24 } else { 0 });
    if hidden > 0 {
        foot.draw(&Text::new(
            format!("{hidden} more rows with fewer calls are in the report's tables"),
            (label_px as i32, 4),
            (FAMILY, 13).into_font(),
        ))?;
    }
    let (left, right) = body.split_horizontally(label_px + (w - label_px) / 2);
    // Row i (busiest first) sits in segment n-1-i, counted from the bottom.
    let row_of = |seg: usize| n.checked_sub(seg + 1).and_then(|i| bars.get(i));
    let calls_max = bars.iter().map(|b| b.calls).max().unwrap_or(1) as f64;
    let p99_max = bars.iter().map(|b| b.p99_ns).max().unwrap_or(1) as f64;
    let label_fmt = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(seg) => row_of(*seg).map_or(String::new(), |b| b.label.clone()),
        _ => String::new(),
    };
    let mut calls = ChartBuilder::on(&left)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(label_px)
        .build_cartesian_2d(linear_range(calls_max, 1.12), rows.clone().into_segmented())?;
    calls
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .x_labels(5)
        .y_label_formatter(&label_fmt)
        .x_label_formatter(&|v| count_label(*v))
        .x_desc("calls")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let bar_of = |seg: usize, v: f64, c: RGBColor| {
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(seg)),
                (v, SegmentValue::Exact(seg + 1)),
            ],
            c.mix(0.8).filled(),
        )
    };
    calls.draw_series(
        (0..bars.len())
            .filter_map(|seg| row_of(seg).map(|b| bar_of(seg, b.calls as f64, color(b.color)))),
    )?;
    let mut p99 = ChartBuilder::on(&right)
        .margin(10)
        .margin_right(24)
        .x_label_area_size(40)
        .y_label_area_size(8)
        .build_cartesian_2d(linear_range(p99_max, 1.12), rows.into_segmented())?;
    p99.configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .x_labels(5)
        .y_label_formatter(&|_| String::new())
        .x_label_formatter(&|v| duration_label(*v))
        .x_desc("p99 latency")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    p99.draw_series(
        (0..bars.len())
            .filter_map(|seg| row_of(seg).map(|b| bar_of(seg, b.p99_ns as f64, color(b.color)))),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::summary::summarize;
    use crate::record::tests::{meta, readings};
    use crate::record::Recording;

    fn summary(n: u64) -> Summary {
        summarize(&Recording {
            path: "x".into(),
            format_version: 1,
            meta: meta(),
            intervals: readings(n),
            leaks: Vec::new(),
            workload: None,
            truncated: false,
            warning: None,
        })
        .unwrap()
    }

    #[test]
    fn bins_nest_the_slots_and_keep_every_count() {
        let values: Vec<u64> = (0..5000).map(|i| 1 + (i * 7919) % 100_000).collect();
        let h = LogHist::from_values(&values);
        let bins = log_bins(&h, 4);
        assert_eq!(bins.iter().map(|b| b.count).sum::<u64>(), 5000);
        for w in bins.windows(2) {
            assert!(w[0].hi <= w[1].lo, "{w:?}");
        }
        for b in &bins {
            assert!(b.lo < b.hi);
            // A bin is a quarter octave (or a whole one below 4 ns).
            if b.lo >= 4 {
                let base = 1u64 << (63 - b.lo.leading_zeros());
                assert_eq!(b.hi - b.lo, base / 4, "{b:?}");
            }
        }
        // 1000 and 1100 share [1024, 1280)? No: 1000 is in [896, 1024).
        let h = LogHist::from_values(&[1000, 1100, 1200, 0]);
        let bins = log_bins(&h, 4);
        assert_eq!(
            bins,
            [
                Bin {
                    lo: 1,
                    hi: 2,
                    count: 1
                },
                Bin {
                    lo: 896,
                    hi: 1024,
                    count: 1
                },
                Bin {
                    lo: 1024,
                    hi: 1280,
                    count: 2
                },
            ]
        );
        assert!(log_bins(&LogHist::default(), 4).is_empty());
    }

    #[test]
    fn axis_ranges_are_whole_decades_and_never_empty() {
        assert_eq!(log_range(2300.0, 41_000.0), 1000.0..100_000.0);
        assert_eq!(log_range(1000.0, 1000.0), 1000.0..10_000.0);
        assert_eq!(log_range(0.0, 0.0), 1.0..10.0);
        assert_eq!(log_range(500.0, 100.0), 100.0..1000.0);
        assert_eq!(linear_range(200.0, 1.5), 0.0..300.0);
        assert_eq!(linear_range(0.0, 1.5), 0.0..1.0);
        assert_eq!(linear_range(f64::NAN, 1.5), 0.0..1.0);
    }

    #[test]
    fn labels_read_as_people_write_them() {
        assert_eq!(duration_label(750.0), "750 ns");
        assert_eq!(duration_label(1000.0), "1 µs");
        assert_eq!(duration_label(2500.0), "2.5 µs");
        assert_eq!(duration_label(12_340.0), "12.3 µs");
        assert_eq!(duration_label(10_000_000.0), "10 ms");
        assert_eq!(duration_label(1.25e9), "1.25 s");
        assert_eq!(count_label(950.0), "950");
        assert_eq!(count_label(2500.0), "2.5k");
        assert_eq!(count_label(12_000.0), "12k");
        assert_eq!(count_label(3_400_000.0), "3.4M");
        assert_eq!(count_label(0.5), "0.5");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(label_width(&["a"; 0], 13, 400), 16);
        assert_eq!(label_width(&["x".repeat(1000).as_str()], 13, 400), 400);
    }

    #[test]
    fn figures_exist_for_called_helpers_holds_and_programs() {
        let s = summary(3);
        let names: Vec<String> = figures(&s).into_iter().map(|f| f.name).collect();
        // bpf_sk_lookup_tcp (untraced caller), tc_tcp and tc_udp calls.
        let called: Vec<&str> = s
            .totals
            .helpers
            .iter()
            .filter(|r| r.calls > 0)
            .map(|r| r.helper)
            .collect();
        let mut want: Vec<String> = called.iter().map(|h| format!("latency-{h}")).collect();
        want.extend(
            [
                "percentiles-over-time",
                "rate-over-time",
                "hold-time",
                "programs",
            ]
            .map(String::from),
        );
        assert_eq!(names, want);
        assert!(names.contains(&"latency-bpf_tc_sk_lookup_tcp".to_string()));

        // Nothing called: no figure at all.
        let mut quiet = s.clone();
        for r in &mut quiet.totals.helpers {
            r.calls = 0;
        }
        quiet.total.holds.clear();
        quiet.programs.helpers.clear();
        assert!(figures(&quiet).is_empty());
    }

    #[test]
    fn lines_have_a_point_per_interval_and_gaps_without_calls() {
        let mut s = summary(4);
        let rate = lines(&s, Metric::CallsPerS);
        let tc = rate
            .iter()
            .find(|l| l.helper == "bpf_tc_sk_lookup_tcp")
            .unwrap();
        assert_eq!(tc.runs, [vec![(1.0, 150.0), (2.0, 150.0), (3.0, 150.0)]]);
        assert_eq!(tc.color, 1);
        // No calls in the second interval: calls/s 0, no p99 and no hit %.
        for h in &mut s.series[1].helpers {
            h.calls = 0;
            h.calls_per_s = 0.0;
        }
        let rate = lines(&s, Metric::CallsPerS);
        assert_eq!(rate[1].runs.len(), 1);
        assert_eq!(rate[1].runs[0][1], (2.0, 0.0));
        // The gap splits the latency and hit lines in two runs.
        let p99 = lines(&s, Metric::P99);
        let runs: Vec<Vec<f64>> = p99[1]
            .runs
            .iter()
            .map(|r| r.iter().map(|p| p.0).collect())
            .collect();
        assert_eq!(runs, [[1.0], [3.0]]);
        let hit = lines(&s, Metric::HitPct);
        assert_eq!(hit[1].runs, [[(1.0, 100.0)], [(3.0, 100.0)]]);
        assert_eq!(hit[1].points().count(), 2);
        // Calls/s stacks: the second interval has no column parts.
        let cols = rate_columns(&s);
        assert_eq!(cols.len(), 3);
        assert!(cols[1].parts.is_empty());
        assert_eq!((cols[0].from, cols[0].to), (0.0, 1.0));
        let top = cols[0].parts.last().unwrap().2;
        let sum: f64 = s.series[0].helpers.iter().map(|h| h.calls_per_s).sum();
        assert_eq!(top, sum);
        for w in cols[0].parts.windows(2) {
            assert_eq!(w[0].2, w[1].1, "stacked");
        }
        let span = value_span(&p99).unwrap();
        assert!(span.0 > 0.0 && span.0 <= span.1);
        assert_eq!(value_span(&[]), None);
        assert_eq!(time_range(&s), 0.0..3.0);
    }

    #[test]
    fn program_bars_are_the_busiest_rows_first() {
        let s = summary(3);
        let (bars, hidden) = program_bars(&s, PROGRAM_ROWS);
        assert_eq!(hidden, 0);
        let calls: Vec<u64> = bars.iter().map(|b| b.calls).collect();
        let mut sorted = calls.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(calls, sorted);
        assert_eq!(bars[0].label, "tc_ingress[41] bpf_tc_sk_lookup_tcp");
        assert!(bars.iter().any(|b| b.label.starts_with("(not traced) ")));
        let (two, hidden) = program_bars(&s, 2);
        assert_eq!((two.len(), hidden), (2, bars.len() - 2));
        assert_eq!(programs_height(0), 240);
        assert_eq!(programs_height(30), 840);
    }

    #[test]
    fn every_figure_draws_as_svg_and_png() {
        let s = summary(4);
        let mut one_row = s.clone();
        one_row.programs.helpers.truncate(1);
        let programs = Figure {
            name: "programs".into(),
            title: "one row".into(),
            kind: Kind::Programs,
        };
        svg(&one_row, &programs).unwrap();
        for f in figures(&s) {
            let svg = svg(&s, &f).unwrap();
            let doc =
                roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            assert_eq!(doc.root_element().tag_name().name(), "svg");
            assert!(svg.contains(&f.title), "{}", f.name);
            let png = png(&s, &f).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
}
