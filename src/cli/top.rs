//! `skprof top`: the interactive dashboard (see `crate::tui`) on the live
//! probes.

use std::io::IsTerminal;

use anyhow::Result;

use crate::error::SkprofError;
use crate::model::snapshot::Grouping;
use crate::tui::collector::{LiveSource, Source};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Time between readings: 1s, 500ms, 0.1 (seconds when no unit).
    #[arg(long, default_value = "1s", value_parser = parse_refresh)]
    pub interval: f64,
    /// Rows at start (g cycles through them): per (program, helper),
    /// helper, (netns, helper) or (interface, helper).
    #[arg(long, value_enum, default_value_t = Grouping::Program)]
    pub by: Grouping,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

/// `--interval`: a duration with a unit (as the workload's), or seconds.
pub fn parse_refresh(s: &str) -> Result<f64, String> {
    let secs = crate::workload::cli::parse_duration(s)?.as_secs_f64();
    super::parse_interval(&secs.to_string())
}

pub fn run(args: TopArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(SkprofError::Usage(
            "skprof top needs a terminal; for text or JSON output use skprof stat".into(),
        )
        .into());
    }
    let grouping = args.by;
    let make = move || -> Result<Box<dyn Source>> {
        Ok(Box::new(LiveSource::start(&args.session, args.interval)?))
    };
    crate::tui::run(make, grouping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn interval_takes_units() {
        assert_eq!(parse_refresh("1s"), Ok(1.0));
        assert_eq!(parse_refresh("100ms"), Ok(0.1));
        assert_eq!(parse_refresh("2"), Ok(2.0));
        assert!(parse_refresh("1ms").is_err(), "below 10 ms");
        assert!(parse_refresh("fast").is_err());
    }

    #[test]
    fn top_parses_its_flags() {
        let cli =
            Cli::try_parse_from(["skprof", "top", "--interval", "500ms", "--by", "netns"]).unwrap();
        let Command::Top(a) = cli.command else {
            panic!("not top");
        };
        assert_eq!((a.interval, a.by), (0.5, Grouping::Netns));
    }
}
