//! `leaks --watch`: the leak watch daemon, logging structured lines.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::LeaksArgs;
use crate::export::log::{Level, Logger};
use crate::model::ids::Helper;
use crate::model::leak_watch::{DropWatch, LeakWatch, WatchEvent};
use crate::model::ledger::{LeakGroup, LeakReport};
use crate::model::reading::Reading;
use crate::model::snapshot::{Grouping, IntervalStats};
use crate::model::words;
use crate::session::{LiveSource, Signals};

/// Frames of a leak group's stack shown in a `--watch` log line.
const STACK_FRAMES_LOGGED: usize = 4;

/// `--watch`: a long-running leak watch logging structured lines (see
/// `LeaksArgs::watch` and docs/leaks.md).
pub(super) fn watch(args: &LeaksArgs) -> Result<()> {
    let log = Logger {
        format: args.log_format,
    };
    let signals = Signals::install()?;
    let mut live = LiveSource::start(
        &args.session.options(),
        Duration::from_secs_f64(args.interval),
    )?;
    let info = live.info();
    let base = live.next(&signals)?.context("stopped at start")?;
    let older_than_ns = args.older_than.as_nanos() as u64;
    log.log_values(
        Level::Info,
        "watching for leaked socket references",
        &[
            ("kernel", info.kernel.clone().into()),
            ("probe_mode", info.probe_mode.clone().into()),
            ("helpers", info.helpers.len().into()),
            ("programs", base.attribution.programs.len().into()),
            ("attribution", (base.attribution.mode != "off").into()),
            ("ledger_size", args.session.ledger_size.into()),
            ("older_than_ms", (older_than_ns as f64 / 1e6).into()),
            ("interval_s", args.interval.into()),
            (
                "summary_interval_s",
                args.summary_interval.as_secs_f64().into(),
            ),
            ("max_groups", args.max_groups.into()),
            ("stacks", args.session.stacks.into()),
        ],
    );
    if let Some(why) = &base.attribution.off_reason {
        log.warn("no per-program attribution", &[("why", why.clone())]);
    }
    if let Some(why) = &info.fallback_reason {
        log.warn("fentry unavailable, using kprobes", &[("why", why.clone())]);
    }
    // Kept alive until the end: its sockets are the ones the leaks name.
    let _self_test = if args.self_test {
        let (w, expected, _) = live.self_test(args.self_test_count)?;
        let by_helper: serde_json::Map<String, serde_json::Value> = Helper::ALL
            .iter()
            .map(|&h| (h, expected.acquired[h.index()].iter().sum::<u64>()))
            .filter(|&(_, n)| n > 0)
            .map(|(h, n)| (h.function().to_string(), n.into()))
            .collect();
        log.log_values(
            Level::Info,
            "self-test: references taken with bpf_sk_release untraced",
            &[
                (
                    "acquired",
                    expected.acquired.iter().flatten().sum::<u64>().into(),
                ),
                ("acquired_by_helper", by_helper.into()),
            ],
        );
        Some(w)
    } else {
        None
    };

    // Uptime and --duration count from here: loading takes a while.
    let started = Instant::now();
    let mut leaks = LeakWatch::new(args.max_groups as usize);
    let mut drops = DropWatch::default();
    let mut state = WatchState::default();
    let end = args.duration.map(|d| started + d);
    let summary_every = args.summary_interval;
    let mut next_summary = Instant::now() + summary_every;
    let mut programs = base.attribution.programs.len();
    live.end_at(next_summary);
    let reason: String = loop {
        let r = match live.next(&signals) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => break signals.stopped().unwrap_or("stop").into(),
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => {
                crate::cli::daemon::log_rescan(&r, &log);
                programs = r.attribution.programs.len();
                let uptime_ms = started.elapsed().as_millis() as u64;
                let s = scan(&r, older_than_ns);
                let events = leaks.update(&s.report, uptime_ms);
                log_events(events, &live, args, &leaks, &log);
                for (reason, count, total) in drops.update(&s.drops) {
                    log.log_values(
                        Level::Warn,
                        "measurements dropped",
                        &[
                            ("reason", reason.into()),
                            ("count", count.into()),
                            ("total", total.into()),
                        ],
                    );
                }
                for e in &r.errors {
                    log.error("reading", &[("error", e.clone())]);
                }
                state.last = Some(s.summary);
                state.last_error = None;
                if r.workload_done {
                    // Its exact counts on stdout; the watch goes on.
                    crate::cli::print_workload(&mut live, true)?;
                    log.info("workload done", &[]);
                }
            }
            Err(e) => {
                state.scan_errors += 1;
                let msg = crate::error::one_line(&e);
                // The same failure every interval is logged once.
                if state.last_error.as_deref() != Some(msg.as_str()) {
                    log.error("leak scan failed", &[("error", msg.clone())]);
                    state.last_error = Some(msg);
                }
            }
        }
        if args.exit_on_leak && leaks.leaked() {
            break "leak (--exit-on-leak)".into();
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break "--duration".into();
        }
        if Instant::now() >= next_summary {
            next_summary = Instant::now() + summary_every;
            log.log_values(
                Level::Info,
                "summary",
                &summary_fields(started, programs, &leaks, &drops, &state),
            );
        }
        live.end_at(end.map_or(next_summary, |e| e.min(next_summary)));
    };
    crate::cli::print_workload(&mut live, true)?;
    let mut fields = summary_fields(started, programs, &leaks, &drops, &state);
    // Dropping the session detaches every probe and program tracer.
    drop(live);
    let leaked = args.exit_on_leak && leaks.leaked();
    fields.insert(0, ("reason", reason.into()));
    fields.insert(1, ("exit_code", if leaked { 5 } else { 0 }.into()));
    log.log_values(Level::Info, "stopped", &fields);
    if leaked {
        return Err(super::leaks_found());
    }
    Ok(())
}

/// What a summary line shows of the last good scan.
#[derive(Default)]
struct WatchState {
    last: Option<ScanSummary>,
    scan_errors: u64,
    last_error: Option<String>,
}

#[derive(Default, Clone)]
struct ScanSummary {
    outstanding_sockets: u64,
    leaked_sockets: u64,
    leaked_references: u64,
    unmatched_releases: u64,
}

/// One scan's findings.
struct Scan {
    report: LeakReport,
    drops: crate::model::snapshot::Drops,
    summary: ScanSummary,
}

/// The leak report, the losses and the summary figures of a reading.
fn scan(r: &Reading, older_than_ns: u64) -> Scan {
    let report = LeakReport::of(r, older_than_ns);
    // The loss counters since start, as `stat` computes them.
    let drops = IntervalStats::compute(&r.snapshot, 1.0, &[], Grouping::Helper, r).drops;
    let summary = ScanSummary {
        outstanding_sockets: report.outstanding_sockets,
        leaked_sockets: report.leaked_sockets,
        leaked_references: report.leaked_references,
        unmatched_releases: r.snapshot.counters.release_unmatched.iter().sum(),
    };
    Scan {
        report,
        drops,
        summary,
    }
}

/// The fields of the summary and stop lines.
fn summary_fields(
    started: Instant,
    programs: usize,
    leaks: &LeakWatch,
    drops: &DropWatch,
    state: &WatchState,
) -> Vec<(&'static str, serde_json::Value)> {
    let last = state.last.clone().unwrap_or_default();
    let t = &leaks.totals;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| crate::export::procstat::parse_rss(&s))
        .unwrap_or(0);
    vec![
        ("uptime_s", started.elapsed().as_secs().into()),
        ("programs", programs.into()),
        ("outstanding_sockets", last.outstanding_sockets.into()),
        ("leaked_sockets", last.leaked_sockets.into()),
        ("leaked_references", last.leaked_references.into()),
        ("groups_tracked", leaks.tracked().into()),
        ("groups_untracked", leaks.untracked().into()),
        ("groups_seen_total", t.groups_seen.into()),
        ("references_leaked_total", t.references_leaked.into()),
        (
            "references_released_late_total",
            t.references_released_late.into(),
        ),
        ("groups_resolved_total", t.groups_resolved.into()),
        ("run_leaks_total", t.run_leaks.into()),
        ("groups_overflow_total", t.groups_overflow.into()),
        ("drops_total", drops.total().into()),
        (
            "ledger_full_total",
            drops.reason_total("ledger_full").into(),
        ),
        (
            "events_lost_total",
            drops.reason_total("events_lost").into(),
        ),
        ("unmatched_releases", last.unmatched_releases.into()),
        ("scans", t.scans.into()),
        ("scan_errors", state.scan_errors.into()),
        ("rss_bytes", rss.into()),
    ]
}

/// Logs what a scan changed. Stacks are symbolized only for groups logged
/// (kallsyms read at most once per scan).
fn log_events(
    events: Vec<WatchEvent>,
    live: &LiveSource,
    args: &LeaksArgs,
    leaks: &LeakWatch,
    log: &Logger,
) {
    let mut stack_of = |id: i32| -> String {
        let frames = live.stacks(&[id]).remove(&id).unwrap_or_default();
        frames
            .iter()
            .take(STACK_FRAMES_LOGGED)
            .cloned()
            .collect::<Vec<_>>()
            .join(" <- ")
    };
    for ev in events {
        match ev {
            WatchEvent::New(g) => {
                let fields = group_fields(&g, args, &mut stack_of);
                log.log_values(Level::Warn, "leak", &fields);
            }
            WatchEvent::Grew { group, before } => {
                let mut fields = group_fields(&group, args, &mut stack_of);
                fields.push(("before", before.into()));
                log.log_values(Level::Warn, "leak grew", &fields);
            }
            WatchEvent::PartlyReleased { group, released } => log.log_values(
                Level::Info,
                "leak partly released",
                &[
                    ("program", group.prog_name.clone().into()),
                    ("prog_id", group.prog_id.into()),
                    ("helper", group.helper.into()),
                    ("stack_id", group.stack_id.into()),
                    ("released", released.into()),
                    ("count", group.references.into()),
                    ("age_ms", group.oldest_age_ms.round().into()),
                ],
            ),
            WatchEvent::Resolved(r) => log.log_values(
                Level::Info,
                "leak resolved",
                &[
                    ("program", r.prog_name.into()),
                    ("prog_id", r.prog_id.into()),
                    ("helper", r.helper.into()),
                    ("stack_id", r.stack_id.into()),
                    ("released", r.released.into()),
                    ("peak", r.peak.into()),
                    ("age_ms", r.oldest_age_ms.round().into()),
                    ("tracked_s", (r.tracked_ms / 1000).into()),
                ],
            ),
            WatchEvent::RunLeaks {
                program,
                helper,
                site,
                count,
            } => {
                let mut f = vec![
                    ("program", program.into()),
                    ("helper", helper.into()),
                    ("count", count.into()),
                ];
                if let Some(s) = site {
                    f.push(("site", s.into()));
                }
                log.log_values(Level::Warn, "run leak", &f)
            }
            WatchEvent::Overflow {
                untracked,
                max_groups,
            } => log.log_values(
                Level::Warn,
                "leak groups over --max-groups",
                &[
                    ("untracked", untracked.into()),
                    ("max_groups", max_groups.into()),
                    ("groups_overflow_total", leaks.totals.groups_overflow.into()),
                ],
            ),
        }
    }
}

/// A new or grown group's fields.
fn group_fields(
    g: &LeakGroup,
    args: &LeaksArgs,
    stack_of: &mut dyn FnMut(i32) -> String,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut f: Vec<(&'static str, serde_json::Value)> = vec![
        ("program", g.prog_name.clone().into()),
        ("prog_id", g.prog_id.into()),
        ("helper", g.helper.into()),
        ("count", g.references.into()),
        ("sockets", g.sockets.into()),
        ("age_ms", g.oldest_age_ms.round().into()),
        ("netns", g.netns.clone().into()),
        ("states", g.states.clone().into()),
    ];
    if args.session.stacks {
        f.push(("stack_id", g.stack_id.into()));
        if g.stack_id >= 0 {
            f.push(("stack", stack_of(g.stack_id).into()));
        }
    }
    if let Some(s) = &g.site {
        f.push(("site", words::site_source(s).into()));
    }
    if args.log_tuples {
        f.push(("tuples", g.tuples.clone().into()));
    }
    f
}
