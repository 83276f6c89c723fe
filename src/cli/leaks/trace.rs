//! `leaks --trace FILE`: every ledger step written as JSON lines and
//! replayed through the model of the ledger, then compared with the
//! kernel's ledger.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::ids::Helper;
use crate::model::ledger_model::{Finding, LedgerEvent, LedgerModel, ModelTally};
use crate::model::reading::{Reading, SourceInfo};

/// `--trace`: writes the ledger's steps as JSON lines and replays them
/// through the model.
pub(super) struct Tracer {
    path: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    model: LedgerModel,
    disagreements: Vec<String>,
    dropped_at_start: u64,
}

#[derive(Serialize)]
struct TraceCheck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    file: String,
    /// Records the ring buffer could not take: the stream is incomplete.
    lost: u64,
    /// Whether the final comparison of outstanding references was made
    /// (ledger steps still arriving make it meaningless).
    quiescent: bool,
    agrees: bool,
    tally: &'a ModelTally,
    disagreements: &'a [String],
}

/// Disagreements shown (all are counted).
const DISAGREEMENTS_SHOWN: usize = 20;

impl Tracer {
    pub(super) fn create(
        path: &std::path::Path,
        info: &SourceInfo,
        ledger_size: u32,
        base: &Reading,
    ) -> Result<Tracer> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create trace file {}", path.display()))?;
        let mut file = std::io::BufWriter::new(file);
        writeln!(
            file,
            "# skprof ledger trace v2: kernel {}, {} probes, ledger_size {ledger_size}",
            info.kernel, info.probe_mode
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(Tracer {
            path: path.to_path_buf(),
            file,
            model: LedgerModel::new(ledger_size as usize),
            disagreements: Vec::new(),
            dropped_at_start: base.snapshot.counters.events_dropped,
        })
    }

    pub(super) fn feed(&mut self, events: &[LedgerEvent]) -> Result<()> {
        for ev in events {
            serde_json::to_writer(&mut self.file, ev).context("encode a trace record")?;
            writeln!(self.file).with_context(|| format!("write {}", self.path.display()))?;
            for f in self.model.apply(ev) {
                if let Finding::Disagree(d) = f {
                    self.disagreements.push(d);
                }
            }
        }
        Ok(())
    }

    /// Drains the ring buffer, compares the model's outstanding references
    /// with the kernel's ledger, and reports.
    pub(super) fn finish(
        mut self,
        last: &Reading,
        late: &Reading,
        json: bool,
        out: &mut impl Write,
    ) -> Result<()> {
        self.feed(&last.trace)?;
        let kernel = last
            .ledger
            .as_ref()
            .map(|l| l.refs.clone())
            .unwrap_or_default();
        let quiescent = late.trace.is_empty();
        self.feed(&late.trace)?;
        self.file
            .flush()
            .with_context(|| format!("write {}", self.path.display()))?;
        let lost = late
            .snapshot
            .counters
            .events_dropped
            .saturating_sub(self.dropped_at_start);
        if quiescent && lost == 0 {
            let mut k: Vec<(u64, Helper, u32, u64)> = kernel
                .iter()
                .map(|r| (r.sk, r.helper, r.count, r.acquired_ns))
                .collect();
            let mut m: Vec<(u64, Helper, u32, u64)> = self
                .model
                .outstanding()
                .iter()
                .map(|r| (r.sk, r.holder.helper, r.holder.count, r.holder.acquired_ns))
                .collect();
            k.sort_unstable();
            m.sort_unstable();
            if k != m {
                self.disagreements.push(format!(
                    "outstanding references: kernel ledger has {} holders, model {} \
                     (first differing: kernel {:x?}, model {:x?})",
                    k.len(),
                    m.len(),
                    k.iter().find(|x| !m.contains(x)),
                    m.iter().find(|x| !k.contains(x)),
                ));
            }
        }
        let agrees = self.disagreements.is_empty() && lost == 0;
        let shown = &self.disagreements[..self.disagreements.len().min(DISAGREEMENTS_SHOWN)];
        if json {
            let check = TraceCheck {
                kind: "trace_check",
                file: self.path.display().to_string(),
                lost,
                quiescent,
                agrees,
                tally: &self.model.tally,
                disagreements: shown,
            };
            serde_json::to_writer(&mut *out, &check).context("write JSON")?;
            writeln!(out).context("write to stdout")?;
        } else {
            let t = &self.model.tally;
            writeln!(
                out,
                "ledger trace: {} records in {}; model: {} acquired, {} closed, {} not \
                 refcounted, {} no-op, {} NULL, {} unmatched, {} ledger full, {} runs, {} run \
                 leaks",
                t.events,
                self.path.display(),
                t.acquired,
                t.closed,
                t.not_refcounted,
                t.noop,
                t.null,
                t.unmatched,
                t.ledger_full,
                t.runs,
                t.run_leaks
            )
            .context("write to stdout")?;
            for d in shown {
                writeln!(out, "DISAGREES: {d}").context("write to stdout")?;
            }
            if lost > 0 {
                writeln!(
                    out,
                    "trace incomplete: {lost} records lost to a full ring buffer"
                )
                .context("write to stdout")?;
            } else if !quiescent {
                writeln!(
                    out,
                    "ledger still changing at exit: outstanding references not compared"
                )
                .context("write to stdout")?;
            } else if agrees {
                writeln!(out, "the kernel's ledger agrees with the model")
                    .context("write to stdout")?;
            }
        }
        if !agrees {
            anyhow::bail!(
                "ledger trace {}: {} disagreements with the model, {lost} records lost",
                self.path.display(),
                self.disagreements.len()
            );
        }
        Ok(())
    }
}
