//! `skprof export`: a Prometheus/OpenMetrics endpoint for the probes'
//! aggregates, meant to run as a daemon (see
//! `packaging/skprof-export.service`).
//!
//! The main thread collects every `--interval`: it rescans the BPF
//! programs, reads the maps, the ledger and the leak events, renders the
//! exposition once and publishes it; the HTTP workers only copy the last
//! rendering out, so scrapes cost the same however often they come and
//! never touch the maps. SIGTERM/SIGINT end it cleanly (every probe and
//! program tracer detaches with the process's BPF links); SIGHUP rescans
//! the loaded programs at once and logs which ones are attributed.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::daemon::{Programs, Signals};
use super::{Session, WorkloadRunner};
use crate::bpf::probes::{monotonic_ns, ProbeKind};
use crate::error::SkprofError;
use crate::export::http::{Body, Published, Server, Shared};
use crate::export::log::{LogFormat, Logger};
use crate::export::metrics::{Calibration, ExportOptions, Exporter, ProbeInfo, Reading};
use crate::export::procstat;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Address and port to serve /metrics on. Loopback by default; any
    /// other address needs --allow-remote.
    #[arg(long, default_value = "127.0.0.1:9435")]
    pub listen: SocketAddr,
    /// Allow --listen on a non-loopback address (the metrics name the BPF
    /// programs running on this host; put a firewall or a TLS proxy in
    /// front). Logged as a warning.
    #[arg(long)]
    pub allow_remote: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds between collections (what a scrape sees is at most this
    /// old).
    #[arg(long, default_value_t = 1.0, value_parser = super::parse_interval)]
    pub interval: f64,
    /// Outstanding references older than this count as leaked (e.g.
    /// 500ms, 2s; a plain number is milliseconds).
    #[arg(long, default_value = "500ms", value_parser = super::leaks::parse_age)]
    pub older_than: Duration,
    /// Per-program series exported at most: each (program, helper,
    /// outcome) label set costs its call counter and latency histogram
    /// (25 series); label sets beyond are left out, first come first kept,
    /// and counted in skprof_export_label_sets_refused.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(25..=10_000_000))]
    pub max_export_series: u64,
    /// Export each leaked reference with its lookup tuple (IP addresses and
    /// ports) and network namespace. Off by default: addresses are
    /// personal data in many places.
    #[arg(long)]
    pub export_tuples: bool,
    /// Leaked references exported with their tuple, at most.
    #[arg(long, default_value_t = 16, requires = "export_tuples")]
    pub max_tuples: usize,
    /// Seconds a program that went away keeps its final figures in the
    /// output (so scrapes see its last calls), then its series are
    /// dropped. The default covers Prometheus's default 1 m scrape interval.
    #[arg(long, default_value_t = 60.0, value_parser = parse_keep)]
    pub keep_gone: f64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub http_workers: u64,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

fn parse_keep(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 86400")),
    }
}

/// Why a bind address is refused without --allow-remote (pure).
pub fn check_listen(addr: &SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "--listen {addr} is not a loopback address: the metrics describe this host's BPF \
             programs; add --allow-remote to serve them to the network"
        ))
    }
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let log = Logger {
        format: args.log_format,
    };
    check_listen(&args.listen, args.allow_remote).map_err(SkprofError::Usage)?;
    let signals = Signals::install()?;
    // Bind before loading probes: a taken port fails fast, with nothing
    // attached.
    let listener =
        crate::export::http::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    if !args.listen.ip().is_loopback() {
        log.warn(
            "serving metrics on a non-loopback address (--allow-remote)",
            &[("listen", args.listen.to_string())],
        );
    }
    let mut session = Session::start(&args.session)?;
    let mut exporter = Exporter::new(ExportOptions {
        max_series: args.max_export_series as usize,
        older_than_ns: args.older_than.as_nanos() as u64,
        export_tuples: args.export_tuples,
        max_tuples: args.max_tuples,
        keep_gone: (args.keep_gone / args.interval).ceil() as u64,
    });
    // The calibrated per-lookup cost, with --calibrate; without it the
    // family is exported empty rather than guessed.
    exporter.calibration = session.overhead.map(|o| Calibration {
        seconds_per_call: o.ns_per_lookup / 1e9,
        source: format!("--calibrate at start, {}", session.kernel),
    });
    let mut workload = WorkloadRunner::start(&args.session, &mut session)?;
    let shared: Shared = Arc::new(RwLock::new(Arc::new(Published::default())));
    let mut programs = Programs::new(&session);
    let first = read(&session, args);
    collect(first, &mut session, &mut exporter, &shared, &[], &log);
    let server = Server::start(listener, Arc::clone(&shared), args.http_workers as usize)?;
    log.info(
        "exporting",
        &[
            ("listen", server.local_addr().to_string()),
            ("probe_mode", session.probes.kind().to_string()),
            ("kernel", session.kernel.clone()),
            ("helpers", session.probes.helpers().len().to_string()),
            ("programs", programs.len().to_string()),
            ("interval_s", args.interval.to_string()),
        ],
    );
    if let Some(why) = &session.attrib_off {
        log.warn("no per-program attribution", &[("why", why.clone())]);
    }

    let mut next = Instant::now() + Duration::from_secs_f64(args.interval);
    let result = loop {
        signals.wait_until(next);
        if signals.stopped().is_some() {
            break Ok(());
        }
        let rescan = signals.take_hup();
        next = Instant::now() + Duration::from_secs_f64(args.interval);
        // Read before the rescan: a program that went away since the last
        // collection is still in the maps until the rescan lets it go, so
        // its last calls are counted.
        let reading = read(&session, args);
        let freed = programs.rescan(&mut session, rescan, &log);
        collect(reading, &mut session, &mut exporter, &shared, &freed, &log);
        if workload.as_ref().is_some_and(|w| w.finished()) {
            if let Some(w) = workload.take() {
                // Its exact counts, for comparison with the metrics; the
                // exporter goes on serving.
                let mut out = std::io::stdout().lock();
                let done = w
                    .finish(&session, true, &mut out)
                    .and_then(|()| out.flush().context("flush stdout"));
                match done {
                    Ok(()) => log.info("workload done", &[]),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    let served = server.served.load(Ordering::Relaxed);
    let busy = server.refused.load(Ordering::Relaxed);
    server.shutdown();
    if let Some(w) = workload.take() {
        let mut out = std::io::stdout().lock();
        w.finish(&session, true, &mut out)?;
        out.flush().context("flush stdout")?;
    }
    // Dropping the session detaches every probe and program tracer.
    drop(session);
    log.info(
        "stopped",
        &[
            ("requests", served.to_string()),
            ("refused_busy", busy.to_string()),
        ],
    );
    result
}

/// One collection: update, render, publish a reading made before the
/// rescan that freed `freed`. A failure is logged and marks the endpoint
/// unhealthy (`/healthz`); the last good exposition stays served.
fn collect(
    reading: Result<Reading>,
    session: &mut Session,
    exporter: &mut Exporter,
    shared: &Shared,
    freed: &[u32],
    log: &Logger,
) {
    let started = Instant::now();
    match reading.and_then(|mut r| {
        exporter.update(&mut r, freed);
        r.self_stats.collect_seconds = started.elapsed().as_secs_f64();
        let x = exporter.render(&r).context("render the metrics")?;
        Ok((r, x))
    }) {
        Ok((r, x)) => {
            let p = Published {
                openmetrics: Body::new(x.openmetrics.into_bytes()),
                prometheus: Body::new(x.prometheus.into_bytes()),
                healthy: true,
            };
            if let Ok(mut g) = shared.write() {
                *g = Arc::new(p);
            }
            // Names of programs neither live nor in the ledger are not
            // needed any more: keep the map bounded over program churn.
            let keep: BTreeSet<u32> = r
                .programs
                .values()
                .map(|p| p.id)
                .chain(r.ledger.iter().flatten().map(|x| x.prog_id))
                .collect();
            session.names.retain(|id, _| keep.contains(id));
        }
        Err(e) => {
            log.error(
                "collection failed",
                &[("error", crate::error::one_line(&e))],
            );
            if let Ok(mut g) = shared.write() {
                let old = Arc::clone(&g);
                *g = Arc::new(Published {
                    openmetrics: Body::new(old.openmetrics.bytes.clone()),
                    prometheus: Body::new(old.prometheus.bytes.clone()),
                    healthy: false,
                });
            }
        }
    }
}

/// Reads everything one exposition shows.
fn read(session: &Session, args: &ExportArgs) -> Result<Reading> {
    let snapshot = session.probes.read()?;
    let programs = snapshot
        .programs()
        .into_iter()
        .chain(
            session
                .attrib
                .iter()
                .flat_map(|a| a.programs().map(|p| p.slot)),
        )
        .map(|slot| (slot, session.program(slot)))
        .collect();
    let ledger = if args.session.no_ledger {
        None
    } else {
        Some(session.probes.read_ledger()?)
    };
    let now_ns = monotonic_ns();
    let run_leaks = session.probes.take_events()?.run_leaks;
    let (traced, by_stack) = session.attrib.as_ref().map_or((0, 0), |a| {
        let stack = a
            .programs()
            .filter(|p| p.method == crate::attrib::Method::Stack)
            .count() as u64;
        (a.programs().count() as u64 - stack, stack)
    });
    let attribution = match (&session.attrib, session.probes.kind()) {
        (None, _) => "off",
        (Some(_), ProbeKind::Kprobe) => "stack",
        (Some(_), _) if args.session.attribute_by == super::AttributeBy::Stack => "stack",
        (Some(_), _) => "trace",
    };
    Ok(Reading {
        snapshot,
        programs,
        names: session.names.clone(),
        ledger,
        now_ns,
        run_leaks,
        probe: ProbeInfo {
            mode: ProbeInfo::mode_name(session.probes.kind()),
            kernel: session.kernel.clone(),
            attribution: attribution.into(),
            probes_attached: session.probes.attached() as u64,
            programs_traced: traced,
            programs_by_stack: by_stack,
            programs_untraceable: session
                .attrib
                .as_ref()
                .map_or(0, |a| a.untraceable().len() as u64),
        },
        self_stats: procstat::read_self(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn loopback_is_the_default_and_remote_needs_the_flag() {
        let cli = Cli::try_parse_from(["skprof", "export"]).unwrap();
        let Command::Export(a) = cli.command else {
            panic!("not export")
        };
        assert_eq!(a.listen, "127.0.0.1:9435".parse().unwrap());
        assert!(check_listen(&a.listen, false).is_ok());
        assert!(check_listen(&"[::1]:9435".parse().unwrap(), false).is_ok());
        let remote: SocketAddr = "0.0.0.0:9435".parse().unwrap();
        let err = check_listen(&remote, false).unwrap_err();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(check_listen(&remote, true).is_ok());
        assert!(Cli::try_parse_from(["skprof", "export", "--max-tuples", "3"]).is_err());
        assert!(Cli::try_parse_from(["skprof", "export", "--listen", "nowhere"]).is_err());
    }
}
