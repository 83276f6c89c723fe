//! `skprof-dev bench-report` (`scripts/bench-report`): how long `skprof
//! report` takes on a large recording, as a ratio to merely reading it.
//!
//! It writes a synthetic recording (`record::synth`: 10 million calls by
//! default), then times, as child processes, `skprof-dev bench-report
//! --read-only FILE` (open the file and decode every frame) and `skprof
//! report FILE -o DIR --format F` for every format `report` has, and prints
//! the minimum of `--runs` of each and its ratio to the read.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;

use skprof::record::render::Format;
use skprof::record::synth::{self, Spec};
use skprof::record::{Frame, Reader};

#[derive(Debug, clap::Args)]
pub struct BenchReportArgs {
    /// Calls (latency samples) in the synthetic recording.
    #[arg(long, default_value_t = 10_000_000)]
    pub samples: u64,
    /// Intervals (readings after the baseline).
    #[arg(long, default_value_t = 600)]
    pub intervals: u64,
    /// Traced programs calling the helpers.
    #[arg(long, default_value_t = 6)]
    pub programs: u32,
    /// Seed of the synthetic recording.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Timed runs of each command (the minimum is shown).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Formats to time (default: every one `skprof report` writes).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub format: Vec<Format>,
    /// Write the recording here and keep it (default: a temporary file).
    #[arg(long, value_name = "FILE")]
    pub keep: Option<PathBuf>,
    /// Only read FILE (every frame decoded), print its calls, and exit:
    /// the baseline the report is timed against.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["keep", "format"])]
    pub read_only: Option<PathBuf>,
    /// The skprof binary to time (default: `skprof` beside this one).
    #[arg(long, value_name = "PATH")]
    pub skprof: Option<PathBuf>,
}

/// Reads every frame; returns (readings, calls: the last reading's minus
/// the first's, summed over every histogram).
pub fn read_all(path: &Path) -> Result<(u64, u64)> {
    let mut r = Reader::open(path)?;
    let (mut readings, mut first, mut last) = (0u64, None, 0u64);
    for frame in r.frames() {
        if let Frame::Interval(i) = frame? {
            let calls: u64 = i.snapshot.cells.values().map(|c| c.calls).sum();
            readings += 1;
            first.get_or_insert(calls);
            last = calls;
        }
    }
    Ok((readings, last.saturating_sub(first.unwrap_or(0))))
}

/// A temporary path of this process, removed (file or directory) on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `EXE ARGS` `runs` times; the fastest wall-clock time, seconds.
fn time_min(exe: &Path, args: &[&str], runs: u32) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("run {} {}", exe.display(), args.join(" ")))?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "{} {} failed: {}",
                exe.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        best = best.min(secs);
    }
    Ok(best)
}

pub fn run(args: &BenchReportArgs) -> Result<()> {
    if let Some(path) = &args.read_only {
        let (readings, calls) = read_all(path)?;
        println!("{readings} readings, {calls} calls");
        return Ok(());
    }
    let me = std::env::current_exe().context("find skprof-dev's own executable")?;
    let skprof = match &args.skprof {
        Some(p) => p.clone(),
        None => me.with_file_name("skprof"),
    };
    if !skprof.is_file() {
        bail!(
            "{}: no skprof binary there (build it: cargo build --release --bin skprof; \
             or pass --skprof PATH)",
            skprof.display()
        );
    }
    let scratch =
        Scratch(std::env::temp_dir().join(format!("skprof-bench-report-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("create {}", scratch.0.display()))?;
    let file = args
        .keep
        .clone()
        .unwrap_or_else(|| scratch.0.join("synthetic.skrec"));
    let spec = Spec {
        samples: args.samples,
        intervals: args.intervals,
        programs: args.programs,
        seed: args.seed,
        ..Spec::default()
    };
    let t = Instant::now();
    let bytes = synth::write(&file, &spec)?;
    let gen_s = t.elapsed().as_secs_f64();
    let (readings, calls) = read_all(&file)?;
    if calls != args.samples {
        return Err(anyhow!(
            "the synthetic recording holds {calls} calls, not {}",
            args.samples
        ));
    }
    let file_s = file.to_str().context("a UTF-8 temporary path")?;
    let out_dir = scratch.0.join("out");
    let out_s = out_dir.to_str().context("a UTF-8 temporary path")?;
    let formats = if args.format.is_empty() {
        Format::value_variants().to_vec()
    } else {
        args.format.clone()
    };
    println!(
        "skprof report on a synthetic recording: {calls} calls in {readings} readings \
         ({} intervals of {} ms, {} programs), {:.1} MB (written in {gen_s:.1} s)",
        args.intervals,
        spec.interval_ms,
        args.programs,
        bytes as f64 / 1e6
    );
    println!(
        "fastest of {} runs, each a process     seconds   x read",
        args.runs
    );
    let read = time_min(&me, &["bench-report", "--read-only", file_s], args.runs)?;
    println!(
        "  {:<36} {read:>7.3}   {:>6.2}",
        "read (decode every frame)", 1.0
    );
    let mut failed = Vec::new();
    for f in formats {
        let ext = f.extension();
        let label = format!("report --format {ext}");
        match time_min(
            &skprof,
            &["report", file_s, "-o", out_s, "--format", ext],
            args.runs,
        ) {
            Ok(s) => println!("  {label:<36} {s:>7.3}   {:>6.2}", s / read),
            Err(e) => {
                println!("  {label:<36}  failed");
                failed.push(format!("{e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
