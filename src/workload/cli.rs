//! `skprof workload`: the built-in workload on its own, so it can run in
//! one terminal while skprof traces in another.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{family_program, kernel_has_tc_variants, HelperTally, Tally, Workload, WorkloadOpts};
use crate::model::ids::{Family, Helper, Outcome, SockClass};

/// `--family` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyArg {
    /// tc program (BPF_PROG_TEST_RUN)
    Tc,
    /// XDP program (BPF_PROG_TEST_RUN)
    Xdp,
    /// cgroup/connect4 program (connect() calls)
    SockAddr,
    /// cgroup_skb/ingress program (UDP datagrams)
    Generic,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Family {
        match f {
            FamilyArg::Tc => Family::Tc,
            FamilyArg::Xdp => Family::Xdp,
            FamilyArg::SockAddr => Family::SockAddr,
            FamilyArg::Generic => Family::Generic,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Lookups per case per round.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Stop after this many rounds (default: run until --duration or Ctrl-C).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Target lookups per second, paced (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this long, e.g. 30s, 500ms, 2m (plain numbers are seconds).
    #[arg(long, value_parser = crate::duration::positive)]
    pub duration: Option<Duration>,
    /// Program families to run, comma-separated (default: all).
    #[arg(long = "family", value_enum, value_delimiter = ',')]
    pub families: Vec<FamilyArg>,
    /// Print the tally as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also run the sockhash case N times per round: a tc program holds an
    /// established socket from bpf_sk_lookup_tcp while it takes another out
    /// of a SOCKHASH with bpf_map_lookup_elem and releases it. Each run: one
    /// acquire, two releases, one of them of a reference no lookup helper
    /// took (an unmatched release in skprof's figures).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub sockhash: Option<u64>,
    /// Also run the sites case N times per round: a tc program with four
    /// lookup call sites (two in a subprogram, one on a branch) and two
    /// release sites, each counting its own calls; `--json` gives each
    /// site's counts by its `SITE:` marker in bpf/sites.bpf.c.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub sites: Option<u64>,
    /// After set-up (programs loaded, sockets made) print "skprof workload:
    /// ready" on stderr and wait for SIGUSR1 before the first lookup, so a
    /// tracer started meanwhile traces the programs from their first run.
    #[arg(long)]
    pub start_on_sigusr1: bool,
    /// After the last round, print the counts and keep the programs loaded
    /// until Ctrl-C (SIGINT/SIGTERM), so a tracer still sees them: a
    /// program that goes away takes its aggregates with it.
    #[arg(long)]
    pub hold: bool,
}

impl WorkloadArgs {
    pub fn opts(&self) -> WorkloadOpts {
        WorkloadOpts {
            count: self.count,
            rounds: self.rounds,
            rate: self.rate,
            duration: self.duration,
            families: self.families.iter().map(|&f| f.into()).collect(),
        }
    }
}

/// Runs the workload until its rounds or duration are done or SIGINT /
/// SIGTERM, then prints what it did.
pub fn run_cli(args: &WorkloadArgs) -> Result<()> {
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("install handler for signal {sig}"))?;
    }
    // Installed before set-up: a SIGUSR1 sent as soon as "ready" shows
    // must not find the default action (terminate) in place.
    let go = Arc::new(AtomicBool::new(false));
    if args.start_on_sigusr1 {
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&go))
            .context("install handler for SIGUSR1")?;
    }
    let mut w = Workload::setup(&args.opts()).context("set up the workload")?;
    if let Some(n) = args.sockhash {
        w.enable_sockhash(n)?;
    }
    if let Some(n) = args.sites {
        w.enable_sites(n)?;
    }
    if !args.json {
        let mut fams: Vec<&str> = w.families().iter().map(|&f| family_program(f)).collect();
        if w.sockhash_per_round().is_some() {
            fams.push("tc sockhash");
        }
        let cases: usize = w
            .families()
            .iter()
            .map(|&f| w.cases(f).len())
            .sum::<usize>()
            + usize::from(w.sockhash_per_round().is_some());
        eprintln!(
            "skprof workload: {} ({cases} cases), {} lookups per case per round, {} per round, {}; {}",
            fams.join(", "),
            w.count(),
            w.lookups_per_round(),
            args.rate.map_or("unpaced".to_string(), |r| format!("{r} lookups/s")),
            match (args.rounds, args.duration) {
                (None, None) => "until Ctrl-C".to_string(),
                (r, d) => [r.map(|r| format!("{r} rounds")), d.map(|d| format!("{d:?}"))]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" or "),
            }
        );
        if let Some(why) = w.ipv6_skip_reason() {
            eprintln!("skprof workload: IPv6 cases skipped: {why}");
        }
        if let Some(n) = w.sockhash_per_round() {
            eprintln!(
                "skprof workload: sockhash case: {n} runs per round, each one lookup and two \
                 releases, one unmatched"
            );
        }
    }
    if args.start_on_sigusr1 {
        eprintln!(
            "skprof workload: ready, waiting for SIGUSR1 (pid {})",
            std::process::id()
        );
        while !go.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let started = Instant::now();
    let tally = w.run(&stop)?;
    let elapsed = started.elapsed();
    let sites = w.sites_counts();
    let hold = args.hold.then_some(w);

    let has_tc = kernel_has_tc_variants();
    let by_helper = tally.by_helper(has_tc);
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "tally": tally,
            "by_helper": by_helper,
            "has_tc_variants": has_tc,
            "elapsed_seconds": elapsed.as_secs_f64(),
            "sites": sites.map(|s| s.by_marker()),
        });
        writeln!(out, "{v}").context("write to stdout")?;
    } else {
        write!(out, "{}", render_tables(&tally, &by_helper, elapsed)).context("write to stdout")?;
    }
    if let Some(w) = hold {
        out.flush().context("flush stdout")?;
        eprintln!("skprof workload: done, programs kept loaded until Ctrl-C (--hold)");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(w);
    }
    Ok(())
}

/// The human-readable report: calls per function and outcome, hits per
/// class, and the release balance.
pub fn render_tables(tally: &Tally, h: &HelperTally, elapsed: Duration) -> String {
    let mut s = String::new();
    let total = tally.total_calls();
    let secs = elapsed.as_secs_f64();
    s += &format!(
        "{} rounds, {total} lookups in {secs:.3} s ({:.0}/s)\n\n",
        tally.rounds,
        if secs > 0.0 { total as f64 / secs } else { 0.0 }
    );
    s += &format!("{:<30}{:>10}", "helper function", "calls");
    for o in Outcome::ALL {
        s += &format!("{:>11}", o.name());
    }
    s += "\n";
    for helper in h.helpers() {
        s += &format!("{:<30}{:>10}", helper.function(), h.total_calls(helper));
        for o in Outcome::ALL {
            s += &format!("{:>11}", h.calls(helper, o));
        }
        s += "\n";
    }
    s += &format!("\n{:<30}", "hits by class (+refs taken)");
    for c in SockClass::ALL {
        s += &format!("{:>16}", c.name());
    }
    s += "\n";
    for helper in Helper::ALL
        .into_iter()
        .filter(|&x| h.calls(x, Outcome::Hit) > 0)
    {
        s += &format!("{:<30}", helper.function());
        for c in SockClass::ALL {
            let (n, a) = (h.hits(helper, c), h.acquired(helper, c));
            let cell = match (n, a) {
                (0, _) => "-".to_string(),
                (n, 0) => n.to_string(),
                (n, a) => format!("{n} (+{a})"),
            };
            s += &format!("{cell:>16}");
        }
        s += "\n";
    }
    let list = |a: &[u64; SockClass::COUNT]| -> String {
        let v: Vec<String> = SockClass::ALL
            .into_iter()
            .filter(|c| a[c.index()] > 0)
            .map(|c| format!("{} {}", c.name(), a[c.index()]))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    };
    s += &format!(
        "\nbpf_sk_release: dropped a reference: {}\n                no-op (no reference held): {}\n",
        list(&h.released),
        list(&h.release_noop)
    );
    if h.release_unmatched.iter().any(|&n| n > 0) {
        s += &format!(
            "                of those dropped, references no lookup took (unmatched): {}\n",
            list(&h.release_unmatched)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::Proto;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkloadArgs,
    }

    #[test]
    fn parses_arguments() {
        let c = Cli::try_parse_from([
            "x",
            "--count",
            "5",
            "--family",
            "tc,sock-addr",
            "--family",
            "generic",
            "--duration",
            "250ms",
            "--rate",
            "1000",
            "--json",
        ])
        .unwrap();
        let o = c.args.opts();
        assert_eq!(o.count, 5);
        assert_eq!(
            o.families,
            vec![Family::Tc, Family::SockAddr, Family::Generic]
        );
        assert_eq!(o.duration, Some(Duration::from_millis(250)));
        assert_eq!(o.rate, Some(1000.0));
        assert!(c.args.json);
        assert!(Cli::try_parse_from(["x", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--family", "kprobe"]).is_err());
        let d = Cli::try_parse_from(["x"]).unwrap().args;
        assert_eq!((d.sockhash, d.start_on_sigusr1), (None, false));
        let d = d.opts();
        assert_eq!((d.count, d.rounds, d.families.len()), (100, None, 0));
        let s = Cli::try_parse_from(["x", "--sockhash", "7", "--start-on-sigusr1"]).unwrap();
        assert_eq!((s.args.sockhash, s.args.start_on_sigusr1), (Some(7), true));
        assert!(Cli::try_parse_from(["x", "--sockhash", "0"]).is_err());
    }

    #[test]
    fn tables_show_every_helper_used() {
        let mut t = Tally {
            rounds: 1,
            ..Default::default()
        };
        t.record(
            Family::Xdp,
            Proto::SkcTcp,
            Outcome::Hit,
            Some(SockClass::Request),
            4,
        );
        t.record(Family::Tc, Proto::Udp, Outcome::BadFlags, None, 2);
        let s = render_tables(&t, &t.by_helper(true), Duration::from_secs(1));
        assert!(s.contains("bpf_xdp_skc_lookup_tcp"), "{s}");
        assert!(s.contains("bpf_tc_sk_lookup_udp"), "{s}");
        assert!(s.contains("4 (+4)"), "{s}");
        assert!(s.contains("dropped a reference: request 4"), "{s}");
        assert!(s.contains("6 lookups"), "{s}");
        assert!(!s.contains("unmatched"), "{s}");
        t.record_unmatched_release(SockClass::Established, 3);
        let s = render_tables(&t, &t.by_helper(true), Duration::from_secs(1));
        assert!(
            s.contains("dropped a reference: established 3, request 4"),
            "{s}"
        );
        assert!(s.contains("(unmatched): established 3"), "{s}");
    }
}
