//! `--calibrate`: what skprof's probes cost per lookup on this machine, now.
//! Before the probes attach, the built-in workload's tc program (a TCP
//! listener hit and its release, through BPF_PROG_TEST_RUN, which times the
//! runs in the kernel) is timed with no tracer; after, with the probes. The
//! difference of the minimums is the ns a traced lookup costs (the same
//! measure as `skprof bench`, on one case, in about a second). Attribution
//! is not yet attached then: its cost (about one more floor per program run)
//! is not in the figure.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::ids::Family;
use crate::workload::{Workload, WorkloadOpts};

const CASE: &str = "tcp/listener";
const REPEAT: u32 = 20_000;
const RUNS: usize = 3;

/// The calibrated cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Overhead {
    /// ns added per traced lookup (with its release).
    pub ns_per_lookup: f64,
    /// ns per run with no tracer, for scale.
    pub untraced_ns: f64,
}

/// The first half: the untraced timing, and the workload kept for the
/// second.
pub struct Calibration {
    workload: Workload,
    untraced_ns: f64,
}

fn time(w: &mut Workload) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        best = best.min(w.time_case(Family::Tc, CASE, REPEAT)?);
    }
    Ok(best)
}

impl Calibration {
    /// Times the workload with no tracer (call before the probes attach).
    pub fn untraced() -> Result<Calibration> {
        let mut workload = Workload::setup(&WorkloadOpts::tc_round(1))
            .context("calibrate: set up the workload")?;
        let untraced_ns = time(&mut workload).context("calibrate: time with no tracer")?;
        Ok(Calibration {
            workload,
            untraced_ns,
        })
    }

    /// Times it again with the probes attached; the workload goes away.
    pub fn traced(mut self) -> Result<Overhead> {
        let traced = time(&mut self.workload).context("calibrate: time with the probes")?;
        Ok(Overhead {
            ns_per_lookup: (traced - self.untraced_ns).max(0.0),
            untraced_ns: self.untraced_ns,
        })
    }
}
