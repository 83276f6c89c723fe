//! `skprof stat`: a periodic table (or JSON lines) per helper function.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bpf::probes::ProbeKind;
use crate::model::hist::Percentiles;
use crate::model::snapshot::{Grouping, HelperStats, IntervalStats, ProgramRef};
use crate::model::window::Window;
use crate::model::words;
use crate::session::{self, LiveSource, Signals};

/// Latency units of the table (`--units`). JSON is always in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Units {
    Ns,
    Us,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Seconds between reports (fractions allowed).
    #[arg(default_value_t = 1.0, value_parser = super::parse_interval)]
    pub interval: f64,
    /// Number of reports, then exit (default: until Ctrl-C, or until the
    /// workload given with --workload-rounds/--workload-duration is done).
    pub count: Option<u64>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Latency units of the table.
    #[arg(long, value_enum, default_value_t = Units::Us)]
    pub units: Units,
    /// Rows per helper function, or per (calling program, network
    /// namespace, or interface; helper).
    #[arg(long, value_enum, default_value_t = Grouping::Helper)]
    pub by: Grouping,
    /// Report totals since start instead of per-interval values.
    #[arg(long)]
    pub cumulative: bool,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

/// One JSON line of `skprof stat --json`.
#[derive(Serialize)]
struct JsonInterval<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    unix_ms: u128,
    elapsed_s: f64,
    probe_mode: ProbeKind,
    cumulative: bool,
    /// ns the probes add per lookup, with --calibrate.
    #[serde(skip_serializing_if = "Option::is_none")]
    overhead_ns_per_lookup: Option<f64>,
    #[serde(flatten)]
    stats: &'a IntervalStats,
}

pub fn run(args: &StatArgs) -> Result<()> {
    let signals = Signals::install()?;
    let mut opts = args.session.options();
    // Where each call happened is read only when the rows are places.
    opts.places = matches!(args.by, Grouping::Netns | Grouping::Interface);
    opts.sites |= args.by == Grouping::Site;
    let mut live = LiveSource::start(&opts, Duration::from_secs_f64(args.interval))?;
    let info = live.info();
    let mut out = std::io::stdout().lock();
    let attribution = live.session().attribution();
    if args.json {
        writeln!(out, "{}", session::start_line(&info, &attribution)).context("write to stdout")?;
    } else {
        writeln!(out, "{}", session::banner(&info, &attribution)).context("write to stdout")?;
    }
    out.flush().context("flush stdout")?;
    let mut window = Window::default();
    let mut started_ns = None;
    let mut n = 0u64;
    loop {
        // The last reading comes after the workload stopped and its traffic
        // drained, so it holds every call the workload's line counts.
        if args.count.is_some_and(|c| n + 1 >= c) {
            live.last_reading_next();
        }
        let Some(mut r) = live.next(&signals)? else {
            break;
        };
        for e in &r.errors {
            eprintln!("skprof: {e}");
        }
        let now_ns = r.mono_ns();
        let started = *started_ns.get_or_insert(now_ns);
        // The first reading is the baseline.
        let Some(step) = window.push(std::mem::take(&mut r.snapshot), &r.freed_slots) else {
            continue;
        };
        let step = if args.cumulative {
            window.since_first().unwrap_or(step)
        } else {
            step
        };
        let stats = IntervalStats::compute(&step.delta, step.secs, &info.helpers, args.by, &r);
        if args.json {
            let line = JsonInterval {
                kind: "interval",
                unix_ms: r.unix_ms as u128,
                elapsed_s: now_ns.saturating_sub(started) as f64 / 1e9,
                probe_mode: live.session().probes.kind(),
                cumulative: args.cumulative,
                overhead_ns_per_lookup: info.probe_ns_per_lookup,
                stats: &stats,
            };
            serde_json::to_writer(&mut out, &line).context("write JSON")?;
            writeln!(out).context("write to stdout")?;
        } else {
            write!(
                out,
                "{}",
                format_table(&stats, args.units, &words::clock_utc(r.unix_ms))
            )
            .context("write to stdout")?;
        }
        out.flush().context("flush stdout")?;
        n += 1;
        if r.workload_done || args.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    super::print_workload(&mut live, args.json)
}

pub(super) fn fmt_lat(ns: u64, units: Units) -> String {
    match units {
        Units::Ns => ns.to_string(),
        Units::Us => format!("{:.2}", ns as f64 / 1000.0),
    }
}

fn program_label(p: &ProgramRef) -> String {
    words::truncate(&words::program_label(p), 24)
}

/// What the first column says for a row of `--by program|netns|interface`.
fn row_label(r: &HelperStats) -> String {
    if let Some(site) = &r.site {
        return words::site_label(site);
    }
    if let Some(p) = &r.program {
        return program_label(p);
    }
    let Some(place) = &r.place else {
        return String::new();
    };
    match (place.ifindex, &place.interface) {
        (None, _) => place.netns.to_string(),
        (Some(0), _) => format!("-@{}", place.netns),
        (Some(_), Some(name)) => format!("{name}@{}", place.netns),
        (Some(i), None) => format!("if{i}@{}", place.netns),
    }
}

/// The text report of one interval (pure: tested below).
pub fn format_table(s: &IntervalStats, units: Units, clock: &str) -> String {
    let u = match units {
        Units::Ns => "ns",
        Units::Us => "us",
    };
    let first_col = match s.by {
        Grouping::Helper => None,
        Grouping::Program => Some("PROGRAM"),
        Grouping::Netns => Some("NETNS"),
        Grouping::Interface => Some("INTERFACE"),
        Grouping::Site => Some("SITE"),
    };
    let width = if s.by == Grouping::Site { 40 } else { 24 };
    let prog_col = |label: &str| {
        if first_col.is_some() {
            format!("{label:<width$} ")
        } else {
            String::new()
        }
    };
    let mut t = format!(
        "\n{clock}  interval {:.2}s  (latency in {u})\n{}{:<30} {:>9} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        s.interval_s,
        prog_col(first_col.unwrap_or_default()),
        "HELPER",
        "CALLS",
        "CALLS/s",
        "HIT%",
        "P50",
        "P90",
        "P99",
        "MAX",
        "ACQ"
    );
    for r in &s.helpers {
        let p: &Percentiles = &r.latency_ns;
        let lat = |v: u64| {
            if r.calls == 0 {
                "-".to_string()
            } else {
                fmt_lat(v, units)
            }
        };
        t += &format!(
            "{}{:<30} {:>9} {:>10.1} {:>6.1} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            prog_col(&row_label(r)),
            r.helper,
            r.calls,
            r.calls_per_s,
            r.hit_pct,
            lat(p.p50),
            lat(p.p90),
            lat(p.p99),
            lat(p.max),
            r.acquired
        );
    }
    let rel = &s.release;
    t += &format!(
        "bpf_sk_release: {} calls, {} dropped a reference, {} no-op, {} NULL; acquired {} \u{2192} {}\n",
        rel.calls, rel.dropped, rel.noop, rel.null, s.acquired, s.balance.text
    );
    for r in &s.release_sites {
        let from: Vec<String> = r
            .from
            .iter()
            .map(|p| format!("{} ({})", words::site_place(&p.site), p.releases))
            .collect();
        t += &format!(
            "  release at {}: {} calls, {} dropped, {} no-op, {} NULL{}\n",
            words::site_label(&r.site),
            r.calls,
            r.dropped,
            r.noop,
            r.null,
            if from.is_empty() {
                String::new()
            } else {
                format!("; looked up at {}", from.join(", "))
            }
        );
    }
    if rel.hold_ns.count > 0 {
        t += &format!(
            "{}: p50 {} p99 {} max {} {u}\n",
            words::hold_coverage(rel.hold_ns.count, s.balance.released),
            fmt_lat(rel.hold_ns.p50, units),
            fmt_lat(rel.hold_ns.p99, units),
            fmt_lat(rel.hold_ns.max, units),
        );
    }
    let d = &s.drops;
    if d.total() > 0 {
        t += &format!("DROPS: {}\n", d.describe());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hist::{slot_of, LogHist, SLOTS};
    use crate::model::ids::{Helper, Outcome, SockClass};
    use crate::model::snapshot::{Cell, CellKey, Snapshot};

    fn sample(by: Grouping) -> IntervalStats {
        let mut s = Snapshot::default();
        let mut dense = vec![0; SLOTS];
        for v in [1000u64, 2000, 3000, 4000] {
            dense[slot_of(v)] += 1;
        }
        let mut cell = Cell {
            calls: LogHist::from_dense(4, 10_000, 4000, 0, &dense).count,
            hist: LogHist::from_dense(4, 10_000, 4000, 0, &dense),
            ..Default::default()
        };
        cell.hits[SockClass::Established.index()] = 4;
        cell.acquired[SockClass::Established.index()] = 4;
        let key = CellKey {
            prog: 3,
            helper: Helper::TcSkLookupTcp,
            outcome: Outcome::Hit,
            netns: 4026531840,
            ifindex: 1,
            site: 0,
        };
        s.cells.insert(key, cell.clone());
        // Same helper from a second namespace, through a sock_addr-less
        // device-less path (ifindex 0).
        s.cells.insert(
            CellKey {
                outcome: Outcome::NoSocket,
                netns: 4026532000,
                ifindex: 0,
                site: 0,
                ..key
            },
            Cell {
                calls: LogHist::from_dense(4, 10_000, 4000, 0, &dense).count,
                hist: LogHist::from_dense(4, 10_000, 4000, 0, &dense),
                ..Default::default()
            },
        );
        s.counters.released[SockClass::Established.index()] = 3;
        s.counters.unmatched_exit[0] = 2;
        let label = |slot| ProgramRef {
            slot,
            id: 42,
            name: "cilium_tproxy_ingress_handler".into(),
        };
        IntervalStats::compute(
            &s,
            2.0,
            &[Helper::SkLookupTcp, Helper::TcSkLookupTcp],
            by,
            &label,
        )
    }

    #[test]
    fn table_shows_rows_release_balance_and_drops() {
        let t = format_table(&sample(Grouping::Helper), Units::Us, "12:00:00");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "12:00:00  interval 2.00s  (latency in us)");
        assert!(lines[2].starts_with("HELPER"));
        // Idle helpers show dashes, not zeros posing as latencies.
        assert!(lines[3].starts_with("bpf_sk_lookup_tcp") && lines[3].contains(" - "));
        let tc: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(tc[0], "bpf_tc_sk_lookup_tcp");
        assert_eq!(&tc[1..4], ["8", "4.0", "50.0"]);
        assert_eq!(tc[8], "4");
        assert_eq!(tc[7], "4.00", "max is exact");
        assert!(
            lines[5].contains("3 dropped a reference")
                && lines[5].ends_with(
                    "acquired 4 \u{2192} 1 still held (in flight at the window's edges)"
                ),
            "{t}"
        );
        assert!(lines[6].starts_with("DROPS: 2 unmatched exits"));
    }

    #[test]
    fn program_rows_are_labelled() {
        let t = format_table(&sample(Grouping::Program), Units::Us, "x");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("PROGRAM"), "{t}");
        // Only the called (program, helper) pair, name cut to 24 columns.
        assert!(
            lines[3].starts_with("cilium_tproxy_ingress_h… bpf_tc_sk_lookup_tcp"),
            "{t}"
        );
        assert!(lines[4].starts_with("bpf_sk_release"), "{t}");
    }

    #[test]
    fn netns_and_interface_rows_split_by_place() {
        let t = format_table(&sample(Grouping::Netns), Units::Us, "x");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("NETNS"), "{t}");
        let a: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            &a[..5],
            ["4026531840", "bpf_tc_sk_lookup_tcp", "4", "2.0", "100.0"]
        );
        let b: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            &b[..5],
            ["4026532000", "bpf_tc_sk_lookup_tcp", "4", "2.0", "0.0"]
        );

        let t = format_table(&sample(Grouping::Interface), Units::Us, "x");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("INTERFACE"), "{t}");
        // No name known in the test labels: the ifindex, and "-" for none.
        assert!(lines[3].starts_with("if1@4026531840 "), "{t}");
        assert!(lines[4].starts_with("-@4026532000 "), "{t}");
    }

    #[test]
    fn ns_units_are_integers() {
        let t = format_table(&sample(Grouping::Helper), Units::Ns, "x");
        assert!(t.contains(" 4000 "), "{t}");
    }
}
