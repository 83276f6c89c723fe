//! The built-in workload, run in a background thread while a session
//! traces it (`--workload`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::Session;
use crate::model::ids::Family;
use crate::workload::{HelperTally, Tally, Workload, WorkloadOpts};

/// What the background workload runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadOptions {
    /// Lookups per case per round.
    pub count: u64,
    /// Rounds, then it ends (default: until the command ends).
    pub rounds: Option<u64>,
    /// Target lookups per second, all cases together.
    pub rate: f64,
    /// Run this long, then end.
    pub duration: Option<Duration>,
    /// Copies of its programs, run one after the other.
    pub copies: u64,
    /// Program families to drive (empty: all).
    pub families: Vec<Family>,
}

/// The built-in workload running in a background thread.
pub struct WorkloadRunner {
    handle: JoinHandle<Result<Tally>>,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl WorkloadRunner {
    /// Sets the workload up (errors surface here, before any reading),
    /// has the session trace its programs, and starts it.
    pub fn start(opts: &WorkloadOptions, session: &mut Session) -> Result<WorkloadRunner> {
        let families = if opts.families.is_empty() {
            vec![Family::Generic, Family::Tc, Family::Xdp, Family::SockAddr]
        } else {
            opts.families.clone()
        };
        let wopts = WorkloadOpts {
            count: opts.count,
            rounds: opts.rounds,
            rate: Some(opts.rate),
            duration: opts.duration,
            families,
        };
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (done2, stop2) = (Arc::clone(&done), Arc::clone(&stop));
        let copies = opts.copies;
        let handle = std::thread::Builder::new()
            .name("skprof-workload".into())
            .spawn(move || {
                let set_up: Result<Vec<Workload>> =
                    (0..copies).map(|_| Workload::setup(&wopts)).collect();
                let result = match set_up {
                    Ok(mut ws) => {
                        let _ = ready_tx.send(Ok(()));
                        // Wait until the session traces the workload's
                        // programs, so every call is attributed.
                        let _ = go_rx.recv();
                        // Copies one after the other: each its own programs
                        // calling the same helpers.
                        let mut total = Tally::default();
                        let mut result = Ok(());
                        for w in &mut ws {
                            match w.run(&stop2) {
                                Ok(t) => total.merge(&t),
                                Err(e) => {
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                        result.map(|()| total)
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        Err(anyhow!(msg))
                    }
                };
                done2.store(true, Ordering::Relaxed);
                result
            })
            .context("start the workload thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the workload thread ended during setup"))?
            .context("set up the built-in workload")?;
        // Its programs are loaded now: trace them before it starts.
        let traced = session.rescan();
        let _ = go_tx.send(());
        traced?;
        Ok(WorkloadRunner { handle, done, stop })
    }

    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the workload and returns what it did.
    pub fn join(self) -> Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("the workload thread panicked"))?
            .context("built-in workload")
    }
}

/// The line a command ends with after the workload: in JSON
/// `{"type":"workload","expected":...}` with its exact counts per helper
/// function, for comparison with the probes' figures.
pub fn workload_line(expected: &HelperTally, json: bool) -> String {
    if json {
        serde_json::json!({"type": "workload", "expected": expected}).to_string()
    } else {
        format!(
            "\nworkload: {} lookups done",
            crate::model::ids::Helper::ALL
                .iter()
                .map(|&h| expected.total_calls(h))
                .sum::<u64>()
        )
    }
}
