//! `skprof annotate`: one program's source with every call site's figures.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::model::annotate::{Annotation, Line};
use crate::model::window::Window;
use crate::model::words;
use crate::session::{LiveSource, Signals};

#[derive(Debug, clap::Args)]
pub struct AnnotateArgs {
    /// The program: its id, or its name (the kernel's, or its main
    /// function's in BTF). It must be loaded and call a lookup helper or
    /// bpf_sk_release.
    pub program: String,
    /// How long to collect (e.g. 10s, 2m); default: until Ctrl-C.
    #[arg(long, value_parser = crate::duration::positive)]
    pub duration: Option<Duration>,
    /// One JSON object (the program, its lines and their sites) instead of
    /// the annotated source.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

pub fn run(args: &AnnotateArgs) -> Result<()> {
    let signals = Signals::install()?;
    let mut opts = args.session.options();
    opts.sites = true;
    let mut live = LiveSource::start(&opts, Duration::from_secs(1))?;
    let code = live.program_code(&args.program)?;
    eprintln!(
        "Annotating {}[{}]: {} source lines, {} call sites of the traced functions. {}",
        code.name,
        code.id,
        code.source().len(),
        code.calls.len(),
        match args.duration {
            Some(d) => format!("{} s.", d.as_secs_f64()),
            None => "Ctrl-C to end.".into(),
        }
    );
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut window = Window::default();
    let mut last;
    loop {
        if let Some(t) = deadline {
            live.end_at(t);
        }
        // Stopped (Ctrl-C): one more reading, so nothing since the last
        // one is lost.
        let (mut r, end) = match live.next(&signals)? {
            Some(r) => (r, false),
            None => (live.read_now()?, true),
        };
        for e in &r.errors {
            eprintln!("skprof: {e}");
        }
        window.push(std::mem::take(&mut r.snapshot), &r.freed_slots);
        last = Some(r);
        if end || deadline.is_some_and(|t| Instant::now() >= t) {
            break;
        }
    }
    let (Some(r), Some(step)) = (last, window.since_first()) else {
        return Ok(());
    };
    let a = Annotation::build(&code, &step.delta, &r.sites, r.ledger.as_ref(), step.secs);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&a).context("annotation as JSON")?;
        v["type"] = "annotate".into();
        writeln!(out, "{v}").context("write to stdout")?;
    } else {
        write!(out, "{}", render(&a)).context("write to stdout")?;
    }
    Ok(())
}

/// The annotated source as text: each line with its number, and under a
/// line with sites one line per site (pure: tested below).
pub fn render(a: &Annotation) -> String {
    let mut s = format!(
        "{} over {:.1} s\n",
        words::program_label(&a.program),
        a.interval_s
    );
    let mut file = "";
    for l in &a.lines {
        if l.file != file {
            file = &l.file;
            s += &format!("\n{file}\n");
        }
        s += &format!("{:>6}  {}\n", l.line, l.text.trim_end());
        s += &sites_of(l);
    }
    for w in &a.sites_without_line {
        s += &format!("  (no line info) {w}\n");
    }
    s
}

fn us(ns: u64) -> String {
    super::stat::fmt_lat(ns, super::stat::Units::Us)
}

fn sites_of(l: &Line) -> String {
    let mut s = String::new();
    let insn = |i: Option<u32>| i.map_or(String::new(), |i| format!(" insn {i}"));
    for k in &l.lookups {
        s += &format!(
            "        \u{25b6} {}{}: {} calls, {:.1}% hit",
            k.helper,
            insn(k.insn),
            k.calls,
            k.hit_pct
        );
        let o = &k.outcomes;
        let misses: Vec<String> = [
            ("no socket", o.no_socket),
            ("bad len", o.bad_len),
            ("bad netns", o.bad_netns),
            ("bad flags", o.bad_flags),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(w, n)| format!("{n} {w}"))
        .collect();
        if !misses.is_empty() {
            s += &format!(" (misses: {})", misses.join(", "));
        }
        if k.timed > 0 {
            s += &format!(
                ", p50 {} p99 {} us",
                us(k.latency_ns.p50),
                us(k.latency_ns.p99)
            );
        }
        s += &format!(", {} acquired", k.acquired);
        if !k.released_at.is_empty() {
            let r: Vec<String> = k
                .released_at
                .iter()
                .map(|p| format!("{} ({})", p.site, p.releases))
                .collect();
            s += &format!("; released at {}", r.join(", "));
        }
        if k.outstanding > 0 {
            s += &format!("; {} outstanding now", k.outstanding);
        }
        s += "\n";
    }
    for r in &l.releases {
        s += &format!(
            "        \u{25c0} bpf_sk_release{}: {} calls, {} dropped, {} no-op, {} NULL",
            insn(r.insn),
            r.calls,
            r.dropped,
            r.noop,
            r.null
        );
        if r.unmatched > 0 {
            s += &format!(", {} of references no traced lookup took", r.unmatched);
        }
        s += "\n";
    }
    s
}
