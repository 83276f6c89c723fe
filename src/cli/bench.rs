//! `skprof bench`: what tracing costs per traced program run. Drives the
//! built-in workload's tc program through BPF_PROG_TEST_RUN (the kernel
//! times the runs itself) with no tracer, with skprof's helper probes, and
//! with the probes plus per-program attribution (by tracing the program,
//! and by kernel stack), and prints ns per run and
//! the ratios. Absolute numbers are noisy (and inflated ~30-50x under TCG):
//! read the ratios, taken within one run.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::attrib::Attributor;
use crate::bpf::probes::{ProbeMode, ProbeOptions, Probes};
use crate::kernel::KernelFunctions;
use crate::model::ids::Family;
use crate::workload::{Workload, WorkloadOpts};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Program runs per measurement (one BPF_PROG_TEST_RUN).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Measurements per (case, configuration); min and median are shown.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Workload cases to time (tc family).
    #[arg(long, value_delimiter = ',', default_values_t = ["tcp/established".to_string(), "tcp/listener".to_string(), "udp/bound".to_string(), "tcp/no_socket".to_string()])]
    pub cases: Vec<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The tracer configurations, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Config {
    /// No tracer attached.
    None,
    /// skprof's helper probes (fentry/fexit, aggregation and ledger).
    Probes,
    /// The probes plus fentry/fexit on the calling program (attribution and
    /// the per-run leak check).
    Attribution,
    /// The probes plus attribution by kernel stack (the fallback where a
    /// program cannot be traced).
    StackAttribution,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub case: String,
    pub config: Config,
    pub min_ns: f64,
    pub median_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case: String,
    /// ns per program run added by the probes, over no tracer.
    pub probes_added_ns: f64,
    /// ns per program run added by attribution, over the probes alone.
    pub attribution_added_ns: f64,
    /// Run cost with attribution / run cost without it (probes only).
    pub attribution_ratio: f64,
    /// Run cost with probes / run cost with no tracer.
    pub probes_ratio: f64,
    /// ns per program run added by stack attribution, over the probes alone.
    pub stack_added_ns: f64,
    /// Run cost with stack attribution / run cost with probes only.
    pub stack_ratio: f64,
}

/// Min and median of measurements (pure).
pub fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (v[0], median)
}

/// Per-case summary from the medians (pure).
pub fn summarize(ms: &[Measurement]) -> Vec<CaseSummary> {
    let mut cases: Vec<&str> = Vec::new();
    for m in ms {
        if !cases.contains(&m.case.as_str()) {
            cases.push(&m.case);
        }
    }
    cases
        .into_iter()
        .filter_map(|c| {
            let get = |cfg| {
                ms.iter()
                    .find(|m| m.case == c && m.config == cfg)
                    .map(|m| m.median_ns)
            };
            let (none, probes, attr, stack) = (
                get(Config::None)?,
                get(Config::Probes)?,
                get(Config::Attribution)?,
                get(Config::StackAttribution)?,
            );
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            Some(CaseSummary {
                case: c.to_string(),
                probes_added_ns: probes - none,
                attribution_added_ns: attr - probes,
                attribution_ratio: ratio(attr, probes),
                probes_ratio: ratio(probes, none),
                stack_added_ns: stack - probes,
                stack_ratio: ratio(stack, probes),
            })
        })
        .collect()
}

fn measure(
    w: &mut Workload,
    args: &BenchArgs,
    config: Config,
    out: &mut Vec<Measurement>,
) -> Result<()> {
    for case in &args.cases {
        let mut v = Vec::with_capacity(args.runs as usize);
        for _ in 0..args.runs {
            v.push(w.time_case(Family::Tc, case, args.repeat)?);
        }
        let (min_ns, median_ns) = min_median(v);
        out.push(Measurement {
            case: case.clone(),
            config,
            min_ns,
            median_ns,
        });
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let opts = WorkloadOpts {
        count: 1,
        rounds: Some(1),
        rate: None,
        duration: None,
        families: vec![Family::Tc],
    };
    let mut w = Workload::setup(&opts).context("set up the workload to time")?;
    let funcs = KernelFunctions::discover();
    let mut ms = Vec::new();
    measure(&mut w, args, Config::None, &mut ms)?;
    {
        let mut probes = Probes::load(ProbeMode::Fentry, &funcs, &ProbeOptions::default())?;
        measure(&mut w, args, Config::Probes, &mut ms)?;
        {
            let mut attrib = Attributor::new(8, true);
            attrib
                .rescan(probes.shared_maps())
                .context("list the workload's programs")?;
            anyhow::ensure!(
                attrib.programs().any(|p| p.name == "wl_tc_lookup"),
                "the workload's tc program has no JIT image to attribute by stack"
            );
            probes.set_jit_ranges(&attrib.jit_ranges())?;
            measure(&mut w, args, Config::StackAttribution, &mut ms)?;
            probes.set_jit_ranges(&[])?;
        }
        let mut attrib = Attributor::new(8, false);
        attrib
            .rescan(probes.shared_maps())
            .context("trace the workload's programs")?;
        anyhow::ensure!(
            attrib.programs().any(|p| p.name == "wl_tc_lookup"),
            "the workload's tc program could not be traced"
        );
        measure(&mut w, args, Config::Attribution, &mut ms)?;
    }
    let summary = summarize(&ms);
    if args.json {
        let v = serde_json::json!({"repeat": args.repeat, "runs": args.runs,
            "measurements": ms, "summary": summary});
        println!("{v}");
        return Ok(());
    }
    println!(
        "ns per tc program run (one lookup + release), BPF_PROG_TEST_RUN x {}, {} runs each",
        args.repeat, args.runs
    );
    println!(
        "{:<22} {:<12} {:>10} {:>10}",
        "CASE", "CONFIG", "MIN", "MEDIAN"
    );
    for m in &ms {
        let cfg = match m.config {
            Config::None => "none",
            Config::Probes => "probes",
            Config::Attribution => "+attribution",
            Config::StackAttribution => "+stack attr",
        };
        println!(
            "{:<22} {:<12} {:>10.1} {:>10.1}",
            m.case, cfg, m.min_ns, m.median_ns
        );
    }
    println!(
        "\n{:<22} {:>11} {:>9} {:>11} {:>9} {:>11} {:>9}",
        "CASE", "PROBES +ns", "x NONE", "ATTRIB +ns", "x PROBES", "STACK +ns", "x PROBES"
    );
    for s in &summary {
        println!(
            "{:<22} {:>11.1} {:>9.2} {:>11.1} {:>9.2} {:>11.1} {:>9.2}",
            s.case,
            s.probes_added_ns,
            s.probes_ratio,
            s.attribution_added_ns,
            s.attribution_ratio,
            s.stack_added_ns,
            s.stack_ratio
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_median_of_odd_and_even() {
        assert_eq!(min_median(vec![3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(min_median(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5));
        assert_eq!(min_median(vec![]), (0.0, 0.0));
    }

    #[test]
    fn summary_takes_differences_and_ratios_of_medians() {
        let m = |config, median_ns| Measurement {
            case: "tcp/listener".into(),
            config,
            min_ns: 0.0,
            median_ns,
        };
        let s = summarize(&[
            m(Config::None, 100.0),
            m(Config::Probes, 400.0),
            m(Config::Attribution, 600.0),
            m(Config::StackAttribution, 1000.0),
        ]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].probes_added_ns, 300.0);
        assert_eq!(s[0].attribution_added_ns, 200.0);
        assert_eq!(s[0].attribution_ratio, 1.5);
        assert_eq!(s[0].probes_ratio, 4.0);
        assert_eq!(s[0].stack_added_ns, 600.0);
        assert_eq!(s[0].stack_ratio, 2.5);
    }
}
