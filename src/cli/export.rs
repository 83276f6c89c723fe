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

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::SkprofError;
use crate::export::http::{Body, Published, Server, Shared};
use crate::export::log::{LogFormat, Logger};
use crate::export::metrics::{Calibration, Collection, ExportOptions, Exporter, ProbeInfo};
use crate::export::procstat;
use crate::session::{LiveSource, Signals, SourceInfo};

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
    /// Time between collections (what a scrape sees is at most this old;
    /// e.g. 1s, 500ms; a plain number is seconds).
    #[arg(long, default_value = "1s", value_parser = crate::duration::interval)]
    pub interval: Duration,
    /// Outstanding references older than this count as leaked (e.g.
    /// 500ms, 2s; a plain number is seconds).
    #[arg(long, default_value = "500ms", value_parser = crate::duration::up_to_a_day)]
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
    /// How long a program that went away keeps its final figures in the
    /// output (so scrapes see its last calls), then its series are
    /// dropped (e.g. 60s, 5m; a plain number is seconds). The default
    /// covers Prometheus's default 1 m scrape interval.
    #[arg(long, default_value = "60s", value_parser = crate::duration::up_to_a_day)]
    pub keep_gone: Duration,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub http_workers: u64,
    #[command(flatten)]
    pub session: super::SessionArgs,
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
    let mut live = LiveSource::start(&args.session.options(), args.interval)?;
    let info = live.info();
    let mut exporter = Exporter::new(ExportOptions {
        max_series: args.max_export_series as usize,
        older_than_ns: args.older_than.as_nanos() as u64,
        export_tuples: args.export_tuples,
        max_tuples: args.max_tuples,
        keep_gone: (args.keep_gone.as_secs_f64() / args.interval.as_secs_f64()).ceil() as u64,
    });
    // The calibrated per-lookup cost, with --calibrate; without it the
    // family is exported empty rather than guessed.
    exporter.calibration = info.probe_ns_per_lookup.map(|ns| Calibration {
        seconds_per_call: ns / 1e9,
        source: format!("--calibrate at start, {}", info.kernel),
    });
    let shared: Shared = Arc::new(RwLock::new(Arc::new(Published::default())));
    let first = live.next(&signals)?;
    let attribution = first
        .as_ref()
        .map(|r| r.attribution.clone())
        .unwrap_or_default();
    if let Some(r) = first {
        collect(Ok(r), &info, &live, &mut exporter, &shared, &log);
    }
    let server = Server::start(listener, Arc::clone(&shared), args.http_workers as usize)?;
    log.info(
        "exporting",
        &[
            ("listen", server.local_addr().to_string()),
            ("probe_mode", info.probe_mode.clone()),
            ("kernel", info.kernel.clone()),
            ("helpers", info.helpers.len().to_string()),
            ("programs", attribution.programs.len().to_string()),
            ("interval_s", args.interval.as_secs_f64().to_string()),
        ],
    );
    if let Some(why) = &attribution.off_reason {
        log.warn("no per-program attribution", &[("why", why.clone())]);
    }
    let result = loop {
        let reading = match live.next(&signals) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => break Ok(()),
            Err(e) => Err(e),
        };
        let workload_done = reading.as_ref().is_ok_and(|r| r.workload_done);
        if let Ok(r) = &reading {
            super::daemon::log_rescan(r, &log);
        }
        collect(reading, &info, &live, &mut exporter, &shared, &log);
        if workload_done {
            // Its exact counts, for comparison with the metrics; the
            // exporter goes on serving.
            if let Err(e) = super::print_workload(&mut live, true) {
                break Err(e);
            }
            log.info("workload done", &[]);
        }
    };
    let served = server.served.load(Ordering::Relaxed);
    let busy = server.refused.load(Ordering::Relaxed);
    server.shutdown();
    let printed = super::print_workload(&mut live, true);
    // Dropping the session detaches every probe and program tracer.
    drop(live);
    log.info(
        "stopped",
        &[
            ("requests", served.to_string()),
            ("refused_busy", busy.to_string()),
        ],
    );
    result.and(printed)
}

/// One collection: update, render, publish a reading (the program slots
/// the session let go right after it are the exporter's to forget). A
/// failure is logged and marks the endpoint unhealthy (`/healthz`); the
/// last good exposition stays served.
fn collect(
    reading: Result<crate::model::reading::Reading>,
    info: &SourceInfo,
    live: &LiveSource,
    exporter: &mut Exporter,
    shared: &Shared,
    log: &Logger,
) {
    let started = Instant::now();
    match reading.and_then(|reading| {
        let mut r = Collection {
            probe: ProbeInfo {
                mode: info.probe_mode.clone(),
                kernel: info.kernel.clone(),
                attribution: reading.attribution.mode.clone(),
                probes_attached: info.probes_attached,
                programs_traced: reading.attribution.traced(),
                programs_by_stack: reading.attribution.by_stack,
                programs_untraceable: reading.attribution.untraceable,
            },
            reading,
            self_stats: procstat::read_self(),
        };
        exporter.update(&mut r, live.freed_after_last_reading());
        r.self_stats.collect_seconds = started.elapsed().as_secs_f64();
        exporter.render(&r).context("render the metrics")
    }) {
        Ok(x) => {
            let p = Published {
                openmetrics: Body::new(x.openmetrics.into_bytes()),
                prometheus: Body::new(x.prometheus.into_bytes()),
                healthy: true,
            };
            if let Ok(mut g) = shared.write() {
                *g = Arc::new(p);
            }
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
