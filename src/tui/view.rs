//! Drawing: a pure function of the `App`. Nothing here changes state or
//! computes statistics; it lays out and formats what `App::update` computed.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Paragraph, Row as TRow, Sparkline, Table, TableState,
};
use ratatui::Frame;

use super::app::{App, Column, Detail, Row, RowKey, Screen, Window};
use crate::model::hist::{slot_range, LogHist, Percentiles};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::Tuple;
use crate::model::snapshot::Grouping;

const DIM: Style = Style::new().fg(Color::DarkGray);
const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let status = status_line(app);
    let [header, body, status_area, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(u16::from(status.is_some())),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, app);
    match app.screen {
        Screen::Table => draw_table(f, body, app),
        Screen::Detail => draw_detail(f, body, app),
        Screen::Help => draw_help(f, body),
    }
    if let Some(s) = status {
        f.render_widget(Paragraph::new(s), status_area);
    }
    draw_footer(f, footer, app);
}

/// Calls per second, compact: 950.0, 12.3k, 4.56M.
pub fn fmt_rate(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.1}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.2}M", v / 1e6)
    }
}

/// A count, compact past five digits: 12345, 123k, 1.2M.
pub fn fmt_count(v: u64) -> String {
    if v < 100_000 {
        v.to_string()
    } else if v < 10_000_000 {
        format!("{}k", v / 1000)
    } else {
        format!("{:.1}M", v as f64 / 1e6)
    }
}

/// A duration in ns, at most 7 columns: 850ns, 2.31µs, 12.3µs, 123µs,
/// 1.50ms, 2.00s.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    let (x, unit) = if ns < 1_000 {
        return format!("{ns}ns");
    } else if ns < 1_000_000 {
        (v / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    if x < 10.0 {
        format!("{x:.2}{unit}")
    } else if x < 100.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.0}{unit}")
    }
}

fn opt(v: Option<u64>, f: fn(u64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The helper's name in a cell: the function without `bpf_`, or without
/// `lookup_` too where columns are tight.
fn helper_name(h: Helper, compact: bool) -> String {
    let n = h.function().trim_start_matches("bpf_");
    if compact {
        n.replace("lookup_", "")
    } else {
        n.to_string()
    }
}

fn grouping_name(g: Grouping) -> &'static str {
    match g {
        Grouping::Helper => "helper",
        Grouping::Program => "program",
        Grouping::Netns => "netns",
        Grouping::Interface => "interface",
        Grouping::Site => "site",
    }
}

fn fmt_span(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{:.1}s", secs)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

fn sep() -> Span<'static> {
    Span::styled(" │ ", DIM)
}

/// A counter, red when non-zero (it means calls not measured or lost).
fn alarm(label: &str, v: Option<u64>) -> Vec<Span<'static>> {
    let style = if v.is_some_and(|v| v > 0) {
        ALERT
    } else {
        Style::new()
    };
    vec![
        Span::raw(format!("{label} ")),
        Span::styled(opt(v, fmt_count), style),
    ]
}

fn draw_header(f: &mut Frame, area: Rect, app: &App) {
    let t = &app.totals;
    let cur = app.current();
    let mut l1 = vec![
        Span::styled("skprof top", Style::new().bold()),
        sep(),
        Span::raw(app.info.kernel.clone()),
        sep(),
        Span::raw(app.info.probe_mode.clone()),
        sep(),
        Span::raw(format!("{} progs", cur.map_or(0, |c| c.programs_traced()))),
        sep(),
        Span::raw(app.info.origin.clone()),
    ];
    if let Some(s) = cur.and_then(|c| c.status.as_ref()) {
        l1.push(sep());
        l1.push(Span::raw(s.clone()));
    }
    let mut l2 = vec![
        Span::styled(
            format!("{} calls/s", fmt_rate(t.calls_per_s)),
            Style::new().bold(),
        ),
        sep(),
    ];
    l2.extend(alarm("drops", cur.map(|_| t.drops)));
    l2.push(sep());
    l2.extend(alarm("overflow", cur.map(|_| t.overflows)));
    l2.push(sep());
    l2.push(Span::raw(format!("out {}", opt(t.outstanding, fmt_count))));
    l2.push(sep());
    l2.extend(alarm("leaks", t.leaks));
    l2.push(sep());
    l2.push(Span::raw(format!(
        "cpu {}",
        cur.and_then(|c| c.self_cpu_pct)
            .map_or_else(|| "n/a".to_string(), |p| format!("{p:.1}%"))
    )));
    l2.push(sep());
    l2.push(Span::raw(format!(
        "probes {}",
        t.probe_cpu_pct
            .map_or_else(|| "n/a".to_string(), |p| format!("≈{p:.2}%"))
    )));
    let mut l3 = vec![
        Span::raw(format!("by {}", grouping_name(app.grouping))),
        sep(),
        Span::raw(match app.window {
            Window::SinceReset => format!("since reset {}", fmt_span(t.window_s)),
            Window::LastInterval => format!("last {}", fmt_span(t.window_s)),
        }),
        sep(),
        Span::raw(format!(
            "sort {} {}",
            app.sort.title(),
            if app.descending { "▼" } else { "▲" }
        )),
    ];
    if let Some(b) = &t.balance {
        l3.push(sep());
        l3.push(Span::raw(format!("refs {}", b.text)));
    }
    if app.paused {
        l3.push(sep());
        l3.push(Span::styled(
            "PAUSED",
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    f.render_widget(
        Paragraph::new(vec![Line::from(l1), Line::from(l2), Line::from(l3)]),
        area,
    );
}

/// The line above the footer: the source's failure or end, the filter being
/// typed, or the latest error.
fn status_line(app: &App) -> Option<Line<'static>> {
    if let Some(e) = &app.failed {
        return Some(Line::styled(format!("error: {e}"), ALERT));
    }
    if app.editing_filter || !app.filter.is_empty() {
        let cursor = if app.editing_filter { "█" } else { "" };
        return Some(Line::from(vec![
            Span::styled("filter: ", Style::new().bold()),
            Span::raw(format!("{}{cursor}", app.filter)),
            Span::styled(
                format!("  ({} of {} rows)", app.rows.len(), app.rows_total),
                DIM,
            ),
        ]));
    }
    if let Some(e) = app.errors.back() {
        return Some(Line::styled(
            format!("error: {e}"),
            Style::new().fg(Color::Red),
        ));
    }
    app.ended
        .as_ref()
        .map(|e| Line::styled(e.clone(), Style::new().fg(Color::Yellow)))
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let keys: &[(&str, &str)] = match app.screen {
        _ if app.editing_filter => &[("⏎", "keep"), ("Esc", "clear"), ("↑↓", "select")],
        Screen::Help => &[("any key", "back"), ("q", "quit")],
        Screen::Detail => &[
            ("Esc/⏎", "back"),
            ("↑↓", "row"),
            ("space", "pause"),
            ("r", "reset"),
            ("t", "window"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Screen::Table => &[
            ("q", "quit"),
            ("↑↓", "select"),
            ("⏎", "detail"),
            ("s/S", "sort"),
            ("/", "filter"),
            ("g", "group"),
            ("space", "pause"),
            ("r", "reset"),
            ("?", "help"),
        ],
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(
            (*k).to_string(),
            Style::new().bg(Color::DarkGray).fg(Color::White),
        ));
        spans.push(Span::raw(format!(" {what} ")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A numeric column: its width and whether it is shown before another
/// (lower `rank` first when space runs out).
struct NumCol {
    col: Column,
    width: u16,
    rank: u8,
}

const NUM_COLS: [NumCol; 10] = [
    NumCol {
        col: Column::CallsPerS,
        width: 8,
        rank: 0,
    },
    NumCol {
        col: Column::HitPct,
        width: 5,
        rank: 1,
    },
    NumCol {
        col: Column::P50,
        width: 7,
        rank: 5,
    },
    NumCol {
        col: Column::P99,
        width: 7,
        rank: 2,
    },
    NumCol {
        col: Column::Max,
        width: 7,
        rank: 8,
    },
    NumCol {
        col: Column::Acquired,
        width: 6,
        rank: 6,
    },
    NumCol {
        col: Column::Released,
        width: 6,
        rank: 7,
    },
    NumCol {
        col: Column::Outstanding,
        width: 5,
        rank: 4,
    },
    NumCol {
        col: Column::HoldP99,
        width: 7,
        rank: 9,
    },
    NumCol {
        col: Column::Leaks,
        width: 5,
        rank: 3,
    },
];

fn cell_text(r: &Row, c: Column) -> String {
    match c {
        Column::Name => String::new(),
        Column::CallsPerS => fmt_rate(r.calls_per_s),
        Column::HitPct => r.hit_pct.map_or_else(|| "-".into(), |p| format!("{p:.1}")),
        Column::P50 => opt(r.p50, fmt_ns),
        Column::P99 => opt(r.p99, fmt_ns),
        Column::Max => opt(r.max, fmt_ns),
        Column::Acquired => fmt_count(r.acquired),
        Column::Released => opt(r.released, fmt_count),
        Column::Outstanding => opt(r.outstanding, fmt_count),
        Column::HoldP99 => opt(r.hold_p99, fmt_ns),
        Column::Leaks => opt(r.leaks, fmt_count),
    }
}

/// The table's layout at a width: the place column's width (0: none), the
/// helper column's width and naming, the numeric columns shown.
struct Layout1 {
    place_w: u16,
    helper_w: u16,
    compact: bool,
    cols: Vec<&'static NumCol>,
}

fn table_layout(app: &App, width: u16) -> Layout1 {
    let full = layout_with(app, width, false);
    let compact = layout_with(app, width, true);
    if compact.cols.len() > full.cols.len() {
        compact
    } else {
        full
    }
}

fn layout_with(app: &App, width: u16, compact: bool) -> Layout1 {
    // By helper every traced helper has a row; otherwise only the rows
    // shown count (so a width does not change with the filter).
    let all = if app.grouping == Grouping::Helper {
        &app.info.helpers[..]
    } else {
        &[]
    };
    let helper_w = app
        .rows
        .iter()
        .map(|r| r.helper)
        .chain(all.iter().copied())
        .map(|h| helper_name(h, compact).chars().count())
        .max()
        .unwrap_or(6)
        .max(6) as u16;
    // A site's line number is at the end of its label: room for
    // `name[id] file.c:LINE`.
    let cap: u16 = if app.grouping == Grouping::Site {
        44
    } else {
        28
    };
    let mut place_w = if app.grouping == Grouping::Helper {
        0
    } else {
        app.rows
            .iter()
            .map(|r| r.place.chars().count())
            .max()
            .unwrap_or(8)
            .clamp(9, usize::from(cap)) as u16
    };
    // The ledger does not know the packet's device: nothing to show.
    let usable = |c: &NumCol| {
        app.grouping != Grouping::Interface
            || !matches!(
                c.col,
                Column::Released | Column::Outstanding | Column::Leaks
            )
    };
    // The essentials (calls/s, hit %, p99) must fit: a long place column
    // is cut first.
    let essentials: u16 = NUM_COLS
        .iter()
        .filter(|c| c.rank <= 2)
        .map(|c| c.width + 1)
        .sum();
    let names = |p: u16| if p > 0 { p + 1 + helper_w } else { helper_w };
    if place_w > 0 && names(place_w) + essentials > width {
        place_w = width.saturating_sub(helper_w + 1 + essentials).max(9);
    }
    let mut room = width.saturating_sub(names(place_w));
    let mut by_rank: Vec<&NumCol> = NUM_COLS.iter().filter(|c| usable(c)).collect();
    by_rank.sort_by_key(|c| c.rank);
    let mut shown = Vec::new();
    for c in by_rank {
        if c.width < room {
            room -= c.width + 1;
            shown.push(c.col);
        }
    }
    // Spare room widens the place column (long program names).
    if place_w > 0 && place_w < cap {
        place_w += room.min(cap - place_w);
    }
    Layout1 {
        place_w,
        helper_w,
        compact,
        cols: NUM_COLS.iter().filter(|c| shown.contains(&c.col)).collect(),
    }
}

fn truncate(s: &str, w: u16) -> String {
    let w = w as usize;
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn draw_table(f: &mut Frame, area: Rect, app: &App) {
    if app.current().is_none() {
        let msg = match &app.failed {
            Some(_) => "no data: the source failed (see below)",
            None => "waiting for the first reading…",
        };
        draw_centered(f, area, msg);
        return;
    }
    let lay = table_layout(app, area.width);
    let arrow = if app.descending { "▼" } else { "▲" };
    let title = |c: Column, t: &str| {
        if app.sort == c {
            format!("{t}{arrow}")
        } else {
            t.to_string()
        }
    };
    let mut header: Vec<Cell> = Vec::new();
    let mut widths: Vec<Constraint> = Vec::new();
    if lay.place_w > 0 {
        let t = match app.grouping {
            Grouping::Program => "PROGRAM",
            Grouping::Netns => "NETNS",
            Grouping::Site => "SITE",
            _ => "INTERFACE",
        };
        header.push(Cell::from(title(Column::Name, t)));
        widths.push(Constraint::Length(lay.place_w));
    }
    header.push(Cell::from(if lay.place_w > 0 {
        "HELPER".to_string()
    } else {
        title(Column::Name, "HELPER")
    }));
    widths.push(Constraint::Length(lay.helper_w));
    for c in &lay.cols {
        header.push(Cell::from(
            Line::from(title(c.col, c.col.title())).alignment(Alignment::Right),
        ));
        widths.push(Constraint::Length(c.width));
    }
    let rows: Vec<TRow> = app
        .rows
        .iter()
        .map(|r| {
            let mut cells = Vec::new();
            if lay.place_w > 0 {
                cells.push(Cell::from(truncate(&r.place, lay.place_w)));
            }
            cells.push(Cell::from(truncate(
                &helper_name(r.helper, lay.compact),
                lay.helper_w,
            )));
            for c in &lay.cols {
                let text = cell_text(r, c.col);
                let style = if c.col == Column::Leaks && r.leaks.is_some_and(|l| l > 0) {
                    ALERT
                } else if r.calls == 0 && c.col != Column::CallsPerS {
                    DIM
                } else {
                    Style::new()
                };
                cells.push(Cell::from(
                    Line::styled(text, style).alignment(Alignment::Right),
                ));
            }
            TRow::new(cells)
        })
        .collect();
    if rows.is_empty() {
        let [h, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
        f.render_widget(
            Table::new(Vec::<TRow>::new(), widths.clone())
                .header(TRow::new(header).style(Style::new().reversed())),
            h,
        );
        let msg = if app.filter.is_empty() {
            "no lookup calls in this window: rows appear when BPF programs call the helpers"
                .to_string()
        } else {
            format!("no row matches the filter '{}'", app.filter)
        };
        draw_centered(f, rest, &msg);
        return;
    }
    let table = Table::new(rows, widths)
        .header(TRow::new(header).style(Style::new().reversed()))
        .column_spacing(1)
        .row_highlight_style(Style::new().bg(Color::Blue).fg(Color::White).bold())
        .highlight_symbol("");
    let mut state = TableState::default().with_selected(app.selected_index());
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_centered(f: &mut Frame, area: Rect, msg: &str) {
    let [_, mid, _] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(2),
        Constraint::Fill(1),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(msg.to_string())
            .alignment(Alignment::Center)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .style(DIM),
        mid,
    );
}

fn row_title(app: &App, r: &Row) -> String {
    let who = match r.key {
        RowKey::Helper(_) => String::new(),
        _ => format!("{} · ", r.place),
    };
    let window = match app.window {
        Window::SinceReset => "since reset",
        Window::LastInterval => "last interval",
    };
    format!(
        "{who}{} · {} calls {window}",
        r.helper.function(),
        fmt_count(r.calls)
    )
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App) {
    let (Some(row), Some(d)) = (app.selected_row(), app.detail.as_ref()) else {
        draw_centered(
            f,
            area,
            "the selected row is not in this window: Esc to go back",
        );
        return;
    };
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    f.render_widget(
        Paragraph::new(Line::styled(
            format!("▶ {}", row_title(app, row)),
            Style::new().bold(),
        )),
        title,
    );
    let [left, right] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)])
        .spacing(1)
        .areas(body);
    let hold_h = if d.hold.is_some() { 9 } else { 3 };
    let [lat_area, hold_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(hold_h)]).areas(left);
    draw_hist(
        f,
        lat_area,
        &format!("call latency  max {}", fmt_ns(d.latency_pct.max)),
        &d.latency,
        &d.latency_pct,
    );
    match &d.hold {
        Some((h, hp)) => draw_hist(
            f,
            hold_area,
            &format!("reference hold time  max {}", fmt_ns(hp.max)),
            h,
            hp,
        ),
        None => f.render_widget(
            Paragraph::new("hold times are kept per acquiring program: g to group by program")
                .wrap(ratatui::widgets::Wrap { trim: true })
                .style(DIM)
                .block(section("reference hold time")),
            hold_area,
        ),
    }
    let [spark1, spark2, outcomes, refs] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(3),
        Constraint::Length(6),
        Constraint::Min(2),
    ])
    .areas(right);
    draw_spark(f, spark1, "calls/s", &d.calls_series, d.sample_s, |v| {
        fmt_rate(v as f64)
    });
    draw_spark(f, spark2, "p99", &d.p99_series, d.sample_s, fmt_ns);
    draw_outcomes(f, outcomes, d);
    draw_refs(f, refs, d);
}

/// A section title: one line with a rule.
fn section(title: &str) -> Block<'static> {
    Block::new()
        .borders(Borders::TOP)
        .border_style(DIM)
        .title(Span::styled(format!(" {title} "), Style::new().bold()))
}

/// A histogram as horizontal bars, one per power of two (two or more when
/// they do not fit), with the buckets holding p50, p99 and p999 marked.
fn draw_hist(f: &mut Frame, area: Rect, title: &str, h: &LogHist, p: &Percentiles) {
    let block = section(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if h.count == 0 {
        f.render_widget(Paragraph::new("no calls in this window").style(DIM), inner);
        return;
    }
    // The exact percentiles first, then the bars that mark them.
    let mut lines = vec![Line::styled(
        format!(
            "p50 {}  p99 {}  p999 {}",
            fmt_ns(p.p50),
            fmt_ns(p.p99),
            fmt_ns(p.p999),
        ),
        Style::new().fg(Color::Yellow),
    )];
    lines.extend(hist_lines(
        h,
        p,
        inner.width,
        inner.height.saturating_sub(1),
    ));
    f.render_widget(Paragraph::new(lines), inner);
}

/// Bucket of a value: its power of two (values below 1 in bucket 0).
fn pow2(v: u64) -> u32 {
    63 - v.max(1).leading_zeros()
}

pub fn hist_lines(h: &LogHist, p: &Percentiles, width: u16, height: u16) -> Vec<Line<'static>> {
    let mut counts: Vec<(u32, u64)> = Vec::new();
    for &(s, c) in &h.slots {
        let e = pow2(slot_range(s as usize).0);
        match counts.last_mut() {
            Some((le, lc)) if *le == e => *lc += c,
            _ => counts.push((e, c)),
        }
    }
    let (Some(&(lo, _)), Some(&(hi, _))) = (counts.first(), counts.last()) else {
        return Vec::new();
    };
    // Powers of two per bar, so that every bar fits.
    let n = (hi - lo + 1) as usize;
    let per = n.div_ceil(height.max(1) as usize).max(1) as u32;
    let mut bars: Vec<(u32, u64)> = Vec::new();
    let mut e = lo;
    while e <= hi {
        let c: u64 = counts
            .iter()
            .filter(|(x, _)| *x >= e && *x < e + per)
            .map(|x| x.1)
            .sum();
        bars.push((e, c));
        e += per;
    }
    let top = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
    let label_w = 7usize;
    let count_w = 7usize;
    let mark_w = 13usize;
    let bar_w = (width as usize)
        .saturating_sub(label_w + count_w + mark_w + 3)
        .max(1);
    bars.iter()
        .map(|&(e, c)| {
            let lo_v = 1u64 << e;
            let hi_v = 1u64 << (e + per);
            let marks: Vec<&str> = [(p.p50, "p50"), (p.p99, "p99"), (p.p999, "p999")]
                .iter()
                .filter(|(v, _)| *v >= lo_v && *v < hi_v || (e == lo && *v < lo_v))
                .map(|x| x.1)
                .collect();
            let len = ((c as f64 / top as f64) * bar_w as f64).ceil() as usize;
            let len = if c > 0 { len.max(1) } else { 0 };
            Line::from(vec![
                Span::styled(format!("{:>label_w$} ", fmt_ns(lo_v)), DIM),
                Span::styled(
                    format!("{:<bar_w$}", "█".repeat(len)),
                    Style::new().fg(Color::Cyan),
                ),
                Span::raw(format!(" {:>count_w$}", fmt_count(c))),
                Span::styled(
                    format!(" {}", marks.join(" ")),
                    Style::new().fg(Color::Yellow).bold(),
                ),
            ])
        })
        .collect()
}

/// The series, made to fit `width` columns: consecutive samples merged
/// (the largest kept, so a spike shows), newest at the right.
pub fn fit_series(series: &[u64], width: usize) -> (Vec<u64>, usize) {
    if width == 0 || series.is_empty() {
        return (Vec::new(), 1);
    }
    let per = series.len().div_ceil(width);
    // Grouped from the newest backwards, so the newest bar is complete.
    let mut out: Vec<u64> = series
        .rchunks(per)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    out.reverse();
    (out, per)
}

fn draw_spark(
    f: &mut Frame,
    area: Rect,
    what: &str,
    series: &[u64],
    sample_s: f64,
    fmt: impl Fn(u64) -> String,
) {
    let (data, per) = fit_series(series, area.width as usize);
    let now = series.last().copied();
    let max = series.iter().copied().max();
    let span = series.len() as f64 * sample_s;
    let title = match (now, max) {
        (Some(n), Some(m)) => format!(
            "{what} now {} max {} · last {}{}",
            fmt(n),
            fmt(m),
            fmt_span(span),
            if per > 1 {
                format!(" ({}s/bar)", (per as f64 * sample_s).round())
            } else {
                String::new()
            }
        ),
        _ => format!("{what}: no history yet"),
    };
    let block = section(&title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Green)),
        inner,
    );
}

fn draw_outcomes(f: &mut Frame, area: Rect, d: &Detail) {
    let total: u64 = d.outcomes.iter().sum();
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            100.0 * n as f64 / total as f64
        }
    };
    let classes: Vec<String> = SockClass::ALL
        .iter()
        .filter(|c| d.hits_by_class[c.index()] > 0)
        .map(|c| {
            format!(
                "{} {}",
                class_abbrev(*c),
                fmt_count(d.hits_by_class[c.index()])
            )
        })
        .collect();
    let mut lines = Vec::new();
    for o in Outcome::ALL {
        let n = d.outcomes[o.index()];
        let mut spans = vec![
            Span::raw(format!("{:<9}", o.name())),
            Span::raw(format!("{:>7} {:>5.1}%", fmt_count(n), pct(n))),
        ];
        if o == Outcome::Hit && !classes.is_empty() {
            spans.push(Span::styled(format!(" {}", classes.join(", ")), DIM));
        } else if o != Outcome::Hit && n > 0 && o != Outcome::NoSocket {
            // A malformed call: the program's bug, not a missing socket.
            spans[1].style = Style::new().fg(Color::Yellow);
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(
        Paragraph::new(lines).block(section(&format!(
            "outcomes  acquired {}",
            fmt_count(d.acquired)
        ))),
        area,
    );
}

fn draw_refs(f: &mut Frame, area: Rect, d: &Detail) {
    let Some(refs) = &d.refs else {
        f.render_widget(
            Paragraph::new("no ledger (--no-ledger, not recorded, or grouped by interface)")
                .style(DIM)
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(section("outstanding references")),
            area,
        );
        return;
    };
    let lines: Vec<Line> = if refs.is_empty() {
        vec![Line::styled("none", DIM)]
    } else {
        refs.iter()
            .map(|r| {
                let age = d.ledger_now_ns.saturating_sub(r.acquired_ns);
                let style = if age >= super::app::LEAK_AGE_NS {
                    ALERT
                } else {
                    Style::new()
                };
                Line::from(vec![
                    Span::styled(format!("{:>6} ", fmt_ns(age)), style),
                    Span::raw(format!(
                        "{:<3} {}",
                        class_abbrev(r.class),
                        fmt_tuple(&r.tuple)
                    )),
                ])
            })
            .collect()
    };
    f.render_widget(
        Paragraph::new(lines).block(section(&format!(
            "outstanding references {}",
            fmt_count(d.refs_total)
        ))),
        area,
    );
}

/// Three letters for a socket class (the tuple needs the room).
fn class_abbrev(c: SockClass) -> &'static str {
    match c {
        SockClass::Listener => "lst",
        SockClass::Established => "est",
        SockClass::TimeWait => "tw",
        SockClass::Request => "req",
        SockClass::Udp => "udp",
        SockClass::Other => "oth",
    }
}

/// A lookup tuple in the fewest columns: `src:port→dst:port`.
fn fmt_tuple(t: &Tuple) -> String {
    match t {
        Tuple::V4 {
            saddr,
            daddr,
            sport,
            dport,
        } => format!("{saddr}:{sport}→{daddr}:{dport}"),
        Tuple::V6 {
            saddr,
            daddr,
            sport,
            dport,
        } => format!("[{saddr}]:{sport}→[{daddr}]:{dport}"),
        Tuple::Other { len } => format!("({len}-byte tuple)"),
    }
}

fn draw_help(f: &mut Frame, area: Rect) {
    let k = |key: &str, what: &str| {
        Line::from(vec![
            Span::styled(format!("{key:>12}  "), Style::new().bold()),
            Span::raw(what.to_string()),
        ])
    };
    let lines = vec![
        k("↑↓ j k", "select a row (PgUp PgDn Home End)"),
        k(
            "Enter",
            "drill down: histograms, history, outcomes, references",
        ),
        k("s  >  <", "sort by the next / previous column"),
        k("S", "reverse the sort"),
        k("/", "filter by program, helper, netns or program id"),
        k(
            "g",
            "group by program, helper, netns, interface (site with --sites)",
        ),
        k("t", "figures since reset, or over the last interval"),
        k("space", "pause (readings go on in the background)"),
        k("r", "reset: figures count from now"),
        k("Esc", "back; clear the filter; quit"),
        k("q  Ctrl-C", "quit"),
        Line::raw(""),
        Line::styled(
            "CALLS/s: last interval. HIT%, P50..MAX (call latency), ACQ (references",
            DIM,
        ),
        Line::styled(
            "taken), REL (released), HOLD99: over the window. OUT: outstanding now;",
            DIM,
        ),
        Line::styled(
            "LEAKS: outstanding > 500 ms, or runs that ended holding one. cpu: skprof's",
            DIM,
        ),
        Line::styled(
            "threads; probes: calls/s x the --calibrate cost per lookup (one core = 100%).",
            DIM,
        ),
        Line::styled(
            "Narrow terminals hide HOLD99, MAX, REL, ACQ first; the drill-down has all.",
            DIM,
        ),
        Line::styled(
            "Sockets: lst listener, est established, tw TIME_WAIT, req request, udp.",
            DIM,
        ),
        Line::styled(
            "By interface, REL/OUT/LEAKS are not known: the ledger has no device.",
            DIM,
        ),
    ];
    f.render_widget(Paragraph::new(lines).block(section("keys")), area);
}
