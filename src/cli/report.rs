//! `skprof report`: summaries of a recording (JSON, CSV, Markdown, one
//! self-contained HTML page), its figures (SVG, PNG), and `--compare BASE
//! NEW` with a p99 regression gate (exit code 6).
//!
//! Output: without `-o`, one document on stdout (Markdown unless
//! `--format` says otherwise; figures need a directory); with `-o DIR`,
//! every format asked for (all by default) as `DIR/report.<ext>`
//! (`DIR/compare.<ext>` with `--compare`, which has no figures) and the
//! figures as `DIR/<figure>.svg|png`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::error::SkprofError;
use crate::record::compare::compare;
use crate::record::render::{self, Format, OutFile};
use crate::record::summary::{Summary, SummaryBuilder};
use crate::record::{Frame, Reader};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "compare"])))]
pub struct ReportArgs {
    /// A recording written by `skprof record`.
    pub file: Option<PathBuf>,
    /// Compare two recordings, NEW against BASE: calls/s, p50 and p99
    /// changes per helper function and per program (matched by name).
    #[arg(long, num_args = 2, value_names = ["BASE", "NEW"])]
    pub compare: Option<Vec<PathBuf>>,
    /// Write into this directory (created if needed), as report.<format>
    /// (compare.<format> with --compare) and one <figure>.svg / .png per
    /// figure (latency-<helper>, percentiles-over-time, rate-over-time,
    /// hold-time, programs). Default: the one document on stdout.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Output formats, comma-separated: json, csv, md, html (one page with
    /// the tables and every figure inline), svg, png (a file per figure,
    /// need -o). Default: md on stdout; with -o every format (json, csv
    /// and md for --compare).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub format: Vec<Format>,
    /// With --compare: exit with code 6 when the p99 latency of a helper
    /// function (or of a program's calls to one) grew by more than PCT
    /// percent.
    #[arg(long, value_name = "PCT", conflicts_with = "file", value_parser = parse_pct)]
    pub max_regression: Option<f64>,
    /// With --compare: the gate skips rows with fewer calls than this on
    /// either side (their p99 is noise).
    #[arg(long, default_value_t = 100, conflicts_with = "file")]
    pub min_calls: u64,
}

fn parse_pct(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a percentage (e.g. 10 or 2.5)")),
    }
}

/// Reads a recording frame by frame into its summary; prints the warning
/// of a cut-off file.
pub fn load_summary(path: &Path) -> Result<Summary> {
    let mut reader = Reader::open(path)?;
    let mut b = SummaryBuilder::new(reader.format_version(), reader.meta().clone());
    let mut readings = 0u64;
    for frame in reader.frames() {
        match frame? {
            Frame::Interval(i) => {
                readings += 1;
                b.push_interval(*i);
            }
            Frame::Leaks(l) => b.push_leaks(l),
            Frame::Workload(t) => b.set_workload(*t),
            Frame::Meta(_) | Frame::End => {}
        }
    }
    let summary = b.finish(reader.truncated()).ok_or_else(|| {
        anyhow!(
            "{}: no complete interval to report: the recording holds {readings} reading(s) and \
             a report needs two (skprof record stopped within its first interval?)",
            path.display()
        )
    })?;
    // Only with a report: an error says enough on its own.
    if let Some(w) = reader.warning() {
        eprintln!("skprof: warning: {w}");
    }
    Ok(summary)
}

/// The formats to write: as asked, or the defaults.
fn formats(args: &ReportArgs) -> Result<Vec<Format>> {
    let usage = |m: String| -> anyhow::Error { SkprofError::Usage(m).into() };
    let compare = args.compare.is_some();
    let mut f = args.format.clone();
    f.sort_unstable();
    f.dedup();
    if f.is_empty() {
        f = match (&args.output, compare) {
            (Some(_), false) => Format::ALL.to_vec(),
            (Some(_), true) => Format::TEXT.to_vec(),
            (None, _) => vec![Format::Md],
        };
    }
    if compare {
        if let Some(bad) = f.iter().find(|f| !Format::TEXT.contains(f)) {
            return Err(usage(format!(
                "--compare writes json, csv or md, not {}",
                bad.extension()
            )));
        }
    }
    if args.output.is_none() {
        if let Some(fig) = f.iter().find(|f| f.is_figures()) {
            return Err(usage(format!(
                "--format {} writes one file per figure: add -o DIR",
                fig.extension()
            )));
        }
        if f.len() > 1 {
            return Err(usage(format!(
                "--format lists {} formats but only one can go to stdout: add -o DIR",
                f.len()
            )));
        }
    }
    Ok(f)
}

/// Writes each file into `dir`, or the one file's content to stdout.
fn emit(dir: Option<&Path>, outputs: &[(Format, Vec<OutFile>)]) -> Result<()> {
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        for file in outputs.iter().flat_map(|o| &o.1) {
            out.write_all(&file.bytes).context("write to stdout")?;
        }
        return out.flush().context("write to stdout");
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    for (f, files) in outputs {
        for file in files {
            let path = dir.join(&file.name);
            std::fs::write(&path, &file.bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // One line per format: a report can have a few dozen figures.
        match files.as_slice() {
            [one] if !f.is_figures() => eprintln!("wrote {}", dir.join(&one.name).display()),
            _ => eprintln!(
                "wrote {} {} figures in {}",
                files.len(),
                f.extension(),
                dir.display()
            ),
        }
    }
    Ok(())
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let formats = formats(args)?;
    let dir = args.output.as_deref();
    if let Some(paths) = &args.compare {
        let [base_path, new_path] = paths.as_slice() else {
            return Err(
                SkprofError::Usage("--compare takes two recordings: BASE NEW".into()).into(),
            );
        };
        let base = load_summary(base_path)?;
        let new = load_summary(new_path)?;
        let c = compare(
            &base_path.display().to_string(),
            &base,
            &new_path.display().to_string(),
            &new,
            args.max_regression,
            args.min_calls,
        );
        let outputs = formats
            .iter()
            .map(|&f| {
                let text = render::comparison(&c, f)?;
                let name = format!("compare.{}", f.extension());
                Ok((
                    f,
                    vec![OutFile {
                        name,
                        bytes: text.into_bytes(),
                    }],
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        emit(dir, &outputs)?;
        if !c.regressions.is_empty() {
            return Err(SkprofError::Regression(format!(
                "p99 grew by more than {}%: {}",
                args.max_regression.unwrap_or_default(),
                c.regressions.join("; ")
            ))
            .into());
        }
        return Ok(());
    }
    let Some(file) = &args.file else {
        return Err(SkprofError::Usage("name a recording, or --compare BASE NEW".into()).into());
    };
    let s = load_summary(file)?;
    // Everything is drawn before anything is written: a failure leaves no
    // half-written report.
    let outputs = formats
        .iter()
        .map(|&f| Ok((f, render::summary_files(&s, f, "report")?)))
        .collect::<Result<Vec<_>>>()?;
    emit(dir, &outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ReportArgs, clap::Error> {
        let mut v = vec!["skprof", "report"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Report(a) => a,
            _ => unreachable!("parsed as report"),
        })
    }

    #[test]
    fn a_file_or_a_comparison_is_required_but_not_both() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["a.skrec", "--compare", "b", "c"]).is_err());
        assert!(parse(&["--compare", "b"]).is_err());
        let a = parse(&["--compare", "b", "c", "--max-regression", "10%"]).unwrap();
        assert_eq!(a.compare.unwrap().len(), 2);
        assert_eq!(a.max_regression, Some(10.0));
        // The gate only makes sense for a comparison.
        assert!(parse(&["a.skrec", "--max-regression", "10"]).is_err());
        assert!(parse(&["--compare", "b", "c", "--max-regression", "-1"]).is_err());
    }

    #[test]
    fn stdout_takes_one_format_and_a_directory_all() {
        let a = parse(&["a.skrec"]).unwrap();
        assert_eq!(formats(&a).unwrap(), [Format::Md]);
        let a = parse(&["a.skrec", "--format", "json"]).unwrap();
        assert_eq!(formats(&a).unwrap(), [Format::Json]);
        let a = parse(&["a.skrec", "--format", "json,csv"]).unwrap();
        let e = formats(&a).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_USAGE);
        let a = parse(&["a.skrec", "-o", "d"]).unwrap();
        assert_eq!(formats(&a).unwrap(), Format::ALL);
        let a = parse(&["a.skrec", "-o", "d", "--format", "md,json,md"]).unwrap();
        assert_eq!(formats(&a).unwrap(), [Format::Json, Format::Md]);
        // HTML is one document; figures are one file each.
        let a = parse(&["a.skrec", "--format", "html"]).unwrap();
        assert_eq!(formats(&a).unwrap(), [Format::Html]);
        for f in ["svg", "png", "html,svg"] {
            let a = parse(&["a.skrec", "--format", f]).unwrap();
            let e = formats(&a).unwrap_err();
            assert!(
                e.to_string().contains("one file per figure: add -o DIR"),
                "{e}"
            );
        }
        let a = parse(&["a.skrec", "-o", "d", "--format", "png,html"]).unwrap();
        assert_eq!(formats(&a).unwrap(), [Format::Html, Format::Png]);
    }

    #[test]
    fn a_comparison_has_no_figures() {
        let a = parse(&["--compare", "b", "c", "-o", "d"]).unwrap();
        assert_eq!(formats(&a).unwrap(), Format::TEXT);
        let a = parse(&["--compare", "b", "c", "-o", "d", "--format", "md,svg"]).unwrap();
        let e = formats(&a).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_USAGE);
        assert!(e.to_string().contains("not svg"), "{e}");
    }
}
