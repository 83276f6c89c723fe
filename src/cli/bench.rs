//! `skprof bench`: what tracing costs per lookup. Drives the built-in
//! workload's tc program (one lookup, and a release when it took a
//! reference) through BPF_PROG_TEST_RUN, which times the runs in the kernel,
//! under each tracer configuration:
//!
//! - none: no tracer;
//! - floor: empty fentry/fexit programs on the same functions (the price of
//!   the probe method itself; no fentry/fexit tracer can add less);
//! - skprof with aggregation only (`--no-ledger --no-attribution`), with the
//!   ledger (`--no-attribution`), with the ledger and per-program attribution
//!   by tracing the program (the default), with attribution by kernel stack,
//!   and in kprobe mode (ledger, no attribution).
//!
//! It prints ns per run, the ns each configuration adds over no tracer, and
//! that as a ratio to what the floor adds. Absolute numbers are noisy (and
//! inflated 30-50x under TCG): read the ratios, taken within one run. Where
//! the CPU has a PMU, cycles and instructions per run too.

use std::any::Any;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::attrib::xlated::HelperAddrs;
use crate::attrib::Attributor;
use crate::bpf::floor::Floor;
use crate::bpf::probes::{LatencySample, ProbeMode, ProbeOptions, Probes};
use crate::kernel::KernelFunctions;
use crate::model::ids::Family;
use crate::workload::{Workload, WorkloadOpts};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Program runs per measurement (one BPF_PROG_TEST_RUN).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Measurements per (case, configuration) and pass; min and median are
    /// shown.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Times to go through every configuration, each attached afresh; with
    /// 2 or more, how much each ratio to the floor varied between passes,
    /// and the median over passes (the figure to quote), are shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub passes: u32,
    /// Workload cases to time (tc family).
    #[arg(long, value_delimiter = ',', default_values_t = ["tcp/established".to_string(), "tcp/listener".to_string(), "udp/bound".to_string(), "tcp/no_socket".to_string()])]
    pub cases: Vec<String>,
    /// Configurations to time; no tracer ("none") is always timed first.
    /// `--configs none` times only that: the workload under whatever tracer
    /// is attached from outside (scripts/compare-peers does this for
    /// bpftrace and BCC).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Config::DEFAULT)]
    pub configs: Vec<Config>,
    /// Which calls skprof's configurations time (as the tracing commands'
    /// flag; `time_all` times every call whatever this says).
    #[arg(long, default_value = "auto", value_parser = LatencySample::parse)]
    pub latency_sample: LatencySample,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The tracer configurations, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Config {
    /// No tracer attached.
    None,
    /// Empty fentry/fexit on the helpers, empty fentry on the release.
    Floor,
    /// The floor and an empty fentry/fexit on the calling program: the
    /// floor of attribution by tracing (x FLOOR of +attribution, +sites,
    /// +time all and +places is to this one when it is timed).
    FloorProg,
    /// skprof's fentry/fexit probes, aggregation only (--no-ledger).
    Aggregation,
    /// The probes with the reference ledger (--no-attribution).
    Ledger,
    /// The probes, the ledger and fentry/fexit on the calling program:
    /// `skprof stat`'s default.
    Attribution,
    /// The default with call sites recorded (`--sites`, as `stat --by
    /// site` and `annotate` run): the price of site capture.
    Sites,
    /// The default with every call timed (`--latency-sample all`): the
    /// price of exact latency on a hot path.
    TimeAll,
    /// The default and each call's netns and interface read into its key,
    /// as `stat --by netns|interface`, `top` and `record` run.
    Places,
    /// The probes, the ledger and attribution by kernel stack.
    StackAttribution,
    /// kprobe/kretprobe probes with the ledger (no attribution).
    Kprobe,
}

impl Config {
    /// What --configs times by default: the floor and every tracer.
    pub const DEFAULT: [Config; 10] = [
        Config::Floor,
        Config::FloorProg,
        Config::Aggregation,
        Config::Ledger,
        Config::Attribution,
        Config::Sites,
        Config::TimeAll,
        Config::Places,
        Config::StackAttribution,
        Config::Kprobe,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Floor => "floor",
            Config::FloorProg => "floor+prog",
            Config::Aggregation => "aggregation",
            Config::Ledger => "+ledger",
            Config::Attribution => "+attribution",
            Config::Sites => "+sites",
            Config::TimeAll => "+time all",
            Config::Places => "+places",
            Config::StackAttribution => "+stack attr",
            Config::Kprobe => "kprobe",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub pass: u32,
    pub case: String,
    pub config: Config,
    pub min_ns: f64,
    pub median_ns: f64,
    /// Per run, median over the measurements; absent without a PMU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<f64>,
}

/// One configuration on one case in one pass, against no tracer and the
/// floor of the same pass. From the minimum over the runs: the measurement
/// least disturbed by whatever else the machine was doing (medians are
/// printed too).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub pass: u32,
    pub case: String,
    pub config: Config,
    /// ns per run added over no tracer (minimums).
    pub added_ns: f64,
    /// `added_ns` / what the floor adds: 1.0 is the physical limit.
    pub x_floor: f64,
    /// That floor: `floor`, or for the configurations that trace the
    /// calling program (+attribution, +places) `floor_prog` when timed.
    pub floor: Config,
    /// Run cost / run cost with no tracer.
    pub x_none: f64,
}

/// How much a ratio to the floor moved between passes.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub case: String,
    pub config: Config,
    pub min_x_floor: f64,
    pub max_x_floor: f64,
    /// (max - min) / min, in percent.
    pub spread_pct: f64,
}

/// Per (case, configuration), the median over the passes: the figure to
/// quote. Each pass attaches its tracer afresh, and where the JIT places a
/// program moves a pass's cost by 10-20% under TCG; the median of several
/// passes moves much less between two bench runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub case: String,
    pub config: Config,
    pub floor: Config,
    /// Passes with a ratio.
    pub passes: usize,
    pub added_ns: f64,
    pub x_floor: f64,
    pub x_none: f64,
}

/// The medians over passes of each (case, configuration)'s ratios (pure).
pub fn summarize(rs: &[Ratio]) -> Vec<Summary> {
    let mut keys: Vec<(&str, Config)> = Vec::new();
    for r in rs {
        if !keys.contains(&(r.case.as_str(), r.config)) {
            keys.push((&r.case, r.config));
        }
    }
    keys.into_iter()
        .map(|(case, config)| {
            let of = |f: fn(&Ratio) -> f64| {
                let v: Vec<f64> = rs
                    .iter()
                    .filter(|r| r.case == case && r.config == config)
                    .map(f)
                    .filter(|x| x.is_finite())
                    .collect();
                if v.is_empty() {
                    f64::NAN
                } else {
                    min_median(v).1
                }
            };
            let mine: Vec<&Ratio> = rs
                .iter()
                .filter(|r| r.case == case && r.config == config)
                .collect();
            Summary {
                case: case.to_string(),
                config,
                floor: mine[0].floor,
                passes: mine.len(),
                added_ns: of(|r| r.added_ns),
                x_floor: of(|r| r.x_floor),
                x_none: of(|r| r.x_none),
            }
        })
        .collect()
}

/// What call-site capture adds to the default, per case.
#[derive(Debug, Clone, Serialize)]
pub struct SitePrice {
    pub case: String,
    /// ns (instructions under `--icount`) the default adds over no tracer.
    pub default_added_ns: f64,
    /// The same with sites recorded.
    pub sites_added_ns: f64,
    /// How much more `+sites` adds than `+attribution`, in %.
    pub more_pct: f64,
}

/// Per case, `+sites`' added cost against the default's, from the medians
/// over passes (pure; cases without both are left out).
pub fn site_price(su: &[Summary]) -> Vec<SitePrice> {
    let find = |case: &str, config| {
        su.iter()
            .find(|s| s.case == case && s.config == config)
            .map(|s| s.added_ns)
    };
    su.iter()
        .filter(|s| s.config == Config::Sites)
        .filter_map(|s| {
            let default = find(&s.case, Config::Attribution)?;
            (default > 0.0 && s.added_ns.is_finite()).then(|| SitePrice {
                case: s.case.clone(),
                default_added_ns: default,
                sites_added_ns: s.added_ns,
                more_pct: (s.added_ns / default - 1.0) * 100.0,
            })
        })
        .collect()
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

/// Ratios of every tracer measurement to no tracer and to the floor of the
/// same pass and case (pure).
pub fn ratios(ms: &[Measurement]) -> Vec<Ratio> {
    let get = |pass, case: &str, cfg| {
        ms.iter()
            .find(|m| m.pass == pass && m.case == case && m.config == cfg)
            .map(|m| m.min_ns)
    };
    ms.iter()
        .filter(|m| m.config != Config::None)
        .filter_map(|m| {
            let none = get(m.pass, &m.case, Config::None)?;
            let prog_floor = matches!(
                m.config,
                Config::Attribution | Config::Sites | Config::TimeAll | Config::Places
            )
            .then(|| get(m.pass, &m.case, Config::FloorProg))
            .flatten();
            let (floor_cfg, floor) = match prog_floor {
                Some(f) => (Config::FloorProg, f),
                None => (Config::Floor, get(m.pass, &m.case, Config::Floor)?),
            };
            let added = m.min_ns - none;
            let floor_added = floor - none;
            Some(Ratio {
                pass: m.pass,
                case: m.case.clone(),
                config: m.config,
                added_ns: added,
                x_floor: if floor_added > 0.0 {
                    added / floor_added
                } else {
                    f64::NAN
                },
                floor: floor_cfg,
                x_none: if none > 0.0 {
                    m.min_ns / none
                } else {
                    f64::NAN
                },
            })
        })
        .collect()
}

/// Per (case, configuration), how the ratio to the floor varied over the
/// passes (pure; needs two passes or more).
pub fn spreads(rs: &[Ratio]) -> Vec<Spread> {
    let mut keys: Vec<(&str, Config)> = Vec::new();
    for r in rs {
        if r.config != Config::Floor && !keys.contains(&(r.case.as_str(), r.config)) {
            keys.push((&r.case, r.config));
        }
    }
    keys.into_iter()
        .filter_map(|(case, config)| {
            let xs: Vec<f64> = rs
                .iter()
                .filter(|r| r.case == case && r.config == config && r.x_floor.is_finite())
                .map(|r| r.x_floor)
                .collect();
            if xs.len() < 2 {
                return None;
            }
            let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some(Spread {
                case: case.to_string(),
                config,
                min_x_floor: min,
                max_x_floor: max,
                spread_pct: if min > 0.0 {
                    (max - min) / min * 100.0
                } else {
                    f64::NAN
                },
            })
        })
        .collect()
}

/// Cycles and instructions of this thread, kernel included (where the
/// BPF_PROG_TEST_RUN loop runs), when the CPU has a PMU.
struct Hw {
    group: perf_event::Group,
    cycles: perf_event::Counter,
    instructions: perf_event::Counter,
}

impl Hw {
    fn open() -> std::io::Result<Hw> {
        use perf_event::events::Hardware;
        let mut group = perf_event::Group::new()?;
        let mut counter = |kind| {
            let mut b = perf_event::Builder::new().group(&mut group).kind(kind);
            b.include_kernel();
            b.build()
        };
        let cycles = counter(Hardware::CPU_CYCLES)?;
        let instructions = counter(Hardware::INSTRUCTIONS)?;
        Ok(Hw {
            group,
            cycles,
            instructions,
        })
    }

    /// Runs `f` with the counters on; (cycles, instructions) it took.
    fn count<T>(&mut self, f: impl FnOnce() -> T) -> std::io::Result<(T, u64, u64)> {
        self.group.reset()?;
        self.group.enable()?;
        let out = f();
        self.group.disable()?;
        let counts = self.group.read()?;
        Ok((out, counts[&self.cycles], counts[&self.instructions]))
    }
}

fn measure(
    w: &mut Workload,
    args: &BenchArgs,
    hw: &mut Option<Hw>,
    pass: u32,
    config: Config,
    out: &mut Vec<Measurement>,
) -> Result<()> {
    for case in &args.cases {
        let mut ns = Vec::with_capacity(args.runs as usize);
        let (mut cycles, mut instructions) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            match hw.as_mut() {
                Some(h) => {
                    let (t, c, i) = h
                        .count(|| w.time_case(Family::Tc, case, args.repeat))
                        .context("read the hardware counters")?;
                    ns.push(t?);
                    cycles.push(c as f64 / f64::from(args.repeat));
                    instructions.push(i as f64 / f64::from(args.repeat));
                }
                None => ns.push(w.time_case(Family::Tc, case, args.repeat)?),
            }
        }
        let (min_ns, median_ns) = min_median(ns);
        let med = |v: Vec<f64>| (!v.is_empty()).then(|| min_median(v).1);
        out.push(Measurement {
            pass,
            case: case.clone(),
            config,
            min_ns,
            median_ns,
            cycles: med(cycles),
            instructions: med(instructions),
        });
    }
    Ok(())
}

/// Attaches `config`'s tracer; dropping the result detaches it.
fn attach(
    config: Config,
    funcs: &KernelFunctions,
    w: &Workload,
    sampling: LatencySample,
) -> Result<Box<dyn Any>> {
    // As `stat` runs by default: no place reads, but in +places; call
    // sites in +sites.
    let addrs = HelperAddrs::from_symbols(&funcs.addrs);
    let probes = |mode, ledger, places| -> Result<Probes> {
        let sites = if config == Config::Sites {
            let a = addrs
                .as_ref()
                .map_err(|e| anyhow::anyhow!("call sites need the helpers' addresses: {e:#}"))?;
            Some(a.site_fns())
        } else {
            None
        };
        let opts = ProbeOptions {
            ledger,
            places,
            sites,
            sampling: if config == Config::TimeAll {
                LatencySample::Every(1)
            } else {
                sampling
            },
            ..ProbeOptions::default()
        };
        Probes::load(mode, funcs, &opts)
    };
    Ok(match config {
        Config::None => Box::new(()),
        Config::Floor => Box::new(Floor::attach(funcs, None)?),
        Config::FloorProg => Box::new(Floor::attach(
            funcs,
            Some((w.tc_prog_fd(), "wl_tc_lookup")),
        )?),
        Config::Aggregation => Box::new(probes(ProbeMode::Fentry, false, false)?),
        Config::Ledger => Box::new(probes(ProbeMode::Fentry, true, false)?),
        Config::Kprobe => Box::new(probes(ProbeMode::Kprobe, true, false)?),
        Config::Attribution
        | Config::Sites
        | Config::TimeAll
        | Config::Places
        | Config::StackAttribution => {
            let stack = config == Config::StackAttribution;
            let mut p = probes(ProbeMode::Fentry, true, config == Config::Places)?;
            let mut attrib = Attributor::new(8, stack);
            // The helpers' addresses from the start-up read of kallsyms.
            if let Ok(a) = &addrs {
                attrib.set_helper_addrs(a.clone());
            }
            attrib
                .rescan(p.shared_maps())
                .context("attribute the workload's programs")?;
            anyhow::ensure!(
                attrib.programs().any(|p| p.name == "wl_tc_lookup"),
                "the workload's tc program could not be attributed"
            );
            if stack {
                p.set_jit_ranges(&attrib.jit_ranges())?;
            } else {
                p.set_runs_in_use(true)?;
            }
            // Dropped in this order: the program probes, then the helpers'.
            Box::new((attrib, p))
        }
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let mut w =
        Workload::setup(&WorkloadOpts::tc_round(1)).context("set up the workload to time")?;
    let funcs = KernelFunctions::discover();
    let (mut hw, hw_missing) = match Hw::open() {
        Ok(h) => (Some(h), None),
        Err(e) => (
            None,
            Some(format!(
                "no hardware counters here (perf_event_open cycles: {e}): this CPU exposes \
                 no PMU (as in a TCG VM); cycles and instructions not shown"
            )),
        ),
    };
    let mut configs = vec![Config::None];
    for &c in &args.configs {
        if !configs.contains(&c) {
            configs.push(c);
        }
    }
    let mut ms = Vec::new();
    for pass in 1..=args.passes {
        for &config in &configs {
            let guard = attach(config, &funcs, &w, args.latency_sample)
                .with_context(|| format!("bench {}", config.label()))?;
            measure(&mut w, args, &mut hw, pass, config, &mut ms)?;
            drop(guard);
        }
    }
    let rs = ratios(&ms);
    let sp = spreads(&rs);
    let su = summarize(&rs);
    if args.json {
        let v = serde_json::json!({"repeat": args.repeat, "runs": args.runs,
            "passes": args.passes, "latency_sample": args.latency_sample.to_string(),
            "hardware_counters": hw_missing.is_none(),
            "hardware_counters_note": hw_missing,
            "measurements": ms, "ratios": rs, "spread": sp, "summary": su,
            "site_price": site_price(&su)});
        println!("{v}");
        return Ok(());
    }
    print!(
        "{}",
        format_tables(args, &ms, &rs, &sp, &su, hw_missing.as_deref())
    );
    Ok(())
}

/// The text report (pure).
pub fn format_tables(
    args: &BenchArgs,
    ms: &[Measurement],
    rs: &[Ratio],
    sp: &[Spread],
    su: &[Summary],
    hw_missing: Option<&str>,
) -> String {
    let mut t = format!(
        "ns per tc program run (one lookup, and a release when it took a reference), \
         BPF_PROG_TEST_RUN x {}, {} runs each, {} passes, latency sampling {}\n",
        args.repeat, args.runs, args.passes, args.latency_sample
    );
    if let Some(note) = hw_missing {
        t += note;
        t += "\n";
    }
    let hw = hw_missing.is_none();
    t += &format!(
        "\n{:>4} {:<16} {:<13} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "PASS", "CASE", "CONFIG", "MIN", "MEDIAN", "+ns", "x FLOOR", "x NONE"
    );
    if hw {
        t += &format!(" {:>9} {:>9}", "CYCLES", "INSTR");
    }
    t += "\n";
    for m in ms {
        let r = rs
            .iter()
            .find(|r| r.pass == m.pass && r.case == m.case && r.config == m.config);
        let f = |v: Option<f64>, prec: usize| match v {
            Some(x) if x.is_finite() => format!("{x:.prec$}"),
            _ => "-".to_string(),
        };
        t += &format!(
            "{:>4} {:<16} {:<13} {:>9.1} {:>9.1} {:>9} {:>8} {:>7}",
            m.pass,
            m.case,
            m.config.label(),
            m.min_ns,
            m.median_ns,
            f(r.map(|r| r.added_ns), 1),
            f(r.map(|r| r.x_floor), 2),
            f(r.map(|r| r.x_none), 2),
        );
        if hw {
            t += &format!(" {:>9} {:>9}", f(m.cycles, 0), f(m.instructions, 0));
        }
        t += "\n";
    }
    if rs.iter().any(|r| r.floor == Config::FloorProg) {
        t += "x FLOOR of +attribution, +sites, +time all and +places is to floor+prog: \
              they trace the calling program as well as the helpers\n";
    }
    if !sp.is_empty() {
        t += &format!(
            "\nratio to the floor between passes:\n{:<16} {:<13} {:>8} {:>8} {:>8}\n",
            "CASE", "CONFIG", "MIN", "MAX", "SPREAD"
        );
        for s in sp {
            t += &format!(
                "{:<16} {:<13} {:>8.2} {:>8.2} {:>7.1}%\n",
                s.case,
                s.config.label(),
                s.min_x_floor,
                s.max_x_floor,
                s.spread_pct
            );
        }
    }
    if args.passes > 1 && !su.is_empty() {
        t += &format!(
            "\nmedian over passes:\n{:<16} {:<13} {:>9} {:>8} {:>7}  FLOOR\n",
            "CASE", "CONFIG", "+ns", "x FLOOR", "x NONE"
        );
        for s in su {
            t += &format!(
                "{:<16} {:<13} {:>9.1} {:>8.2} {:>7.2}  {}\n",
                s.case,
                s.config.label(),
                s.added_ns,
                s.x_floor,
                s.x_none,
                s.floor.label()
            );
        }
    }
    let price = site_price(su);
    if !price.is_empty() {
        t +=
            "\ncall-site capture: what +sites adds against what the default (+attribution) adds:\n";
        for p in price {
            t += &format!(
                "{:<16} {:>9.1} vs {:>9.1}  {:+.1}%\n",
                p.case, p.sites_added_ns, p.default_added_ns, p.more_pct
            );
        }
    }
    t
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

    fn m(pass: u32, config: Config, median_ns: f64) -> Measurement {
        Measurement {
            pass,
            case: "tcp/listener".into(),
            config,
            min_ns: median_ns,
            median_ns: median_ns + 1.0,
            cycles: None,
            instructions: None,
        }
    }

    #[test]
    fn ratios_are_to_the_floor_and_none_of_the_same_pass() {
        let ms = [
            m(1, Config::None, 100.0),
            m(1, Config::Floor, 300.0),
            m(1, Config::Aggregation, 360.0),
            m(1, Config::Attribution, 700.0),
            m(2, Config::None, 110.0),
            m(2, Config::Floor, 330.0),
            m(2, Config::Aggregation, 418.0),
        ];
        let rs = ratios(&ms);
        let get = |pass, cfg| {
            rs.iter()
                .find(|r| r.pass == pass && r.config == cfg)
                .unwrap()
                .clone()
        };
        let a = get(1, Config::Aggregation);
        assert_eq!((a.added_ns, a.x_floor, a.x_none), (260.0, 1.3, 3.6));
        assert_eq!(get(1, Config::Attribution).x_floor, 3.0);
        assert_eq!(get(1, Config::Floor).x_floor, 1.0);
        assert_eq!(get(2, Config::Aggregation).x_floor, 308.0 / 220.0);
        assert_eq!(rs.len(), 5, "no ratio for 'none' itself");

        let sp = spreads(&rs);
        // Only aggregation was timed in both passes (the floor is the unit).
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].config, Config::Aggregation);
        let want = (308.0 / 220.0 - 1.3) / 1.3 * 100.0;
        assert!((sp[0].spread_pct - want).abs() < 1e-9, "{sp:?}");

        // The summary: one row per (case, configuration), the median over
        // the passes that timed it.
        let su = summarize(&rs);
        assert_eq!(su.len(), 3, "{su:?}");
        let a = su.iter().find(|s| s.config == Config::Aggregation).unwrap();
        assert_eq!(a.passes, 2);
        assert!((a.x_floor - (1.3 + 308.0 / 220.0) / 2.0).abs() < 1e-9);
        assert_eq!(a.added_ns, (260.0 + 308.0) / 2.0);
        let b = su.iter().find(|s| s.config == Config::Attribution).unwrap();
        assert_eq!((b.passes, b.x_floor), (1, 3.0));
    }

    #[test]
    fn program_tracing_configurations_are_to_the_program_floor() {
        let ms = [
            m(1, Config::None, 100.0),
            m(1, Config::Floor, 300.0),
            m(1, Config::FloorProg, 500.0),
            m(1, Config::Ledger, 400.0),
            m(1, Config::Attribution, 700.0),
            m(1, Config::Places, 900.0),
            m(1, Config::StackAttribution, 1000.0),
        ];
        let rs = ratios(&ms);
        let get = |cfg| rs.iter().find(|r| r.config == cfg).unwrap().clone();
        assert_eq!(
            (
                get(Config::Attribution).x_floor,
                get(Config::Attribution).floor
            ),
            (1.5, Config::FloorProg)
        );
        assert_eq!(get(Config::Places).x_floor, 2.0);
        // The others (stack attribution does not trace the program) keep
        // the helpers' floor, and the program floor is shown against it.
        assert_eq!(
            (get(Config::Ledger).x_floor, get(Config::Ledger).floor),
            (1.5, Config::Floor)
        );
        assert_eq!(get(Config::StackAttribution).x_floor, 4.5);
        assert_eq!(get(Config::FloorProg).x_floor, 2.0);
        // Without the program floor timed, attribution is to the floor.
        let rs = ratios(&[ms[0].clone(), ms[1].clone(), ms[4].clone()]);
        assert_eq!((rs[1].x_floor, rs[1].floor), (3.0, Config::Floor));
    }

    #[test]
    fn site_price_is_against_the_default_of_the_same_case() {
        let ms = [
            m(1, Config::None, 100.0),
            m(1, Config::Floor, 300.0),
            m(1, Config::FloorProg, 500.0),
            m(1, Config::Attribution, 900.0),
            m(1, Config::Sites, 1000.0),
        ];
        let rs = ratios(&ms);
        let sites = rs.iter().find(|r| r.config == Config::Sites).unwrap();
        assert_eq!((sites.x_floor, sites.floor), (2.25, Config::FloorProg));
        let su = summarize(&rs);
        let p = site_price(&su);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].default_added_ns, p[0].sites_added_ns), (800.0, 900.0));
        assert!((p[0].more_pct - 12.5).abs() < 1e-9);
        let args = BenchArgs {
            repeat: 10,
            runs: 1,
            passes: 1,
            cases: vec!["tcp/listener".into()],
            configs: vec![Config::Attribution, Config::Sites],
            latency_sample: LatencySample::AUTO,
            json: false,
        };
        let t = format_tables(&args, &ms, &rs, &[], &su, None);
        assert!(
            t.lines()
                .any(|l| l.starts_with("tcp/listener") && l.ends_with("+12.5%")),
            "{t}"
        );
        // Without the default timed there is nothing to compare with.
        assert!(site_price(&summarize(&ratios(&[
            ms[0].clone(),
            ms[1].clone(),
            ms[4].clone()
        ])))
        .is_empty());
    }

    #[test]
    fn a_floor_that_adds_nothing_gives_no_ratio() {
        let rs = ratios(&[
            m(1, Config::None, 100.0),
            m(1, Config::Floor, 100.0),
            m(1, Config::Ledger, 150.0),
        ]);
        assert!(rs.iter().all(|r| r.x_floor.is_nan()));
        let args = BenchArgs {
            repeat: 10,
            runs: 1,
            passes: 1,
            cases: vec!["tcp/listener".into()],
            configs: vec![Config::Ledger],
            latency_sample: LatencySample::AUTO,
            json: false,
        };
        let t = format_tables(
            &args,
            &[m(1, Config::Ledger, 150.0)],
            &rs,
            &[],
            &summarize(&rs),
            Some("no PMU"),
        );
        assert!(t.contains("no PMU"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.contains("+ledger") && l.contains(" - ")),
            "{t}"
        );
    }

    #[test]
    fn a_pass_without_a_ratio_gives_no_spread() {
        // Pass 2's floor timed no dearer than no tracer (a noisy host):
        // its ratio is null, one pass is left to compare, so no spread, and
        // the summary is pass 1's alone.
        let rs = ratios(&[
            m(1, Config::None, 100.0),
            m(1, Config::Floor, 300.0),
            m(1, Config::Aggregation, 360.0),
            m(2, Config::None, 100.0),
            m(2, Config::Floor, 90.0),
            m(2, Config::Aggregation, 360.0),
        ]);
        assert!(spreads(&rs).is_empty(), "{rs:?}");
        let su = summarize(&rs);
        let a = su.iter().find(|s| s.config == Config::Aggregation).unwrap();
        assert_eq!((a.passes, a.x_floor), (2, 1.3));
    }
}
