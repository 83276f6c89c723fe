//! `skprof top`: the interactive dashboard (see `crate::tui`), on the live
//! probes or on a recording.

use std::io::IsTerminal;

use anyhow::Result;

use crate::error::SkprofError;
use crate::model::snapshot::Grouping;
use crate::session::{LiveSource, ReplaySource, Source};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Time between readings: 1s, 500ms, 0.1 (seconds when no unit).
    #[arg(long, default_value = "1s", value_parser = crate::duration::interval)]
    pub interval: std::time::Duration,
    /// Rows at start (g cycles through them): per (program, helper),
    /// helper, (netns, helper), (interface, helper) or (call site,
    /// helper): `prog[id] file.c:LINE` (site records call sites, as
    /// --sites; see `skprof bench` for their price).
    #[arg(long, value_enum, default_value_t = Grouping::Program)]
    pub by: Grouping,
    /// Play a recording made by `skprof record` instead of tracing: the
    /// readings come at their recorded pace, then the last one stays.
    #[arg(long, value_name = "FILE", conflicts_with = "workload")]
    pub replay: Option<std::path::PathBuf>,
    /// Replay speed: 2 plays twice as fast, 0.5 half as fast.
    #[arg(long, default_value_t = 1.0, requires = "replay", value_parser = parse_speed)]
    pub speed: f64,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a speed from 0.01 to 1000")),
    }
}

pub fn run(args: TopArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(SkprofError::Usage(
            "skprof top needs a terminal; for text or JSON output use skprof stat".into(),
        )
        .into());
    }
    let grouping = args.by;
    let mut opts = args.session.options();
    // `g` regroups by netns and interface at any time.
    opts.places = true;
    opts.sites |= grouping == Grouping::Site;
    let interval = args.interval;
    let make = move || -> Result<Box<dyn Source>> {
        match &args.replay {
            Some(path) => Ok(Box::new(ReplaySource::open(path, args.speed)?)),
            None => Ok(Box::new(LiveSource::start(&opts, interval)?)),
        }
    };
    crate::tui::run(make, grouping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn top_parses_its_flags() {
        let cli = Cli::try_parse_from([
            "skprof",
            "top",
            "--interval",
            "500ms",
            "--by",
            "netns",
            "--replay",
            "x.rec",
            "--speed",
            "4",
        ])
        .unwrap();
        let Command::Top(a) = cli.command else {
            panic!("not top");
        };
        assert_eq!(
            (a.interval, a.by, a.speed),
            (std::time::Duration::from_millis(500), Grouping::Netns, 4.0)
        );
        assert_eq!(a.replay.as_deref(), Some(std::path::Path::new("x.rec")));
        // A replay has no live workload, and a speed needs a replay.
        assert!(Cli::try_parse_from(["skprof", "top", "--replay", "x", "--workload"]).is_err());
        assert!(Cli::try_parse_from(["skprof", "top", "--speed", "2"]).is_err());
        assert!(Cli::try_parse_from(["skprof", "top", "--speed", "0"]).is_err());
    }
}
