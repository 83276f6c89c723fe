//! What the daemons (`skprof export`, `skprof leaks --watch`) share:
//! signals (SIGTERM/SIGINT end the run, SIGHUP asks for a rescan), the
//! wait between collections, and rescanning the BPF programs with a log
//! line when the attributed set changes or SIGHUP asked.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::Session;
use crate::export::log::Logger;

/// The daemons' signal flags.
pub struct Signals {
    /// The stop signal received (SIGTERM or SIGINT), 0 before.
    stop: Arc<AtomicUsize>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers: from now on SIGTERM and SIGINT only set a
    /// flag (the main loop ends cleanly, dropping the BPF links), SIGHUP
    /// another.
    pub fn install() -> Result<Signals> {
        let stop = Arc::new(AtomicUsize::new(0));
        let hup = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_usize(sig, Arc::clone(&stop), sig as usize)
                .with_context(|| format!("install handler for signal {sig}"))?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&hup))
            .context("install handler for SIGHUP")?;
        Ok(Signals { stop, hup })
    }

    /// The stop signal's name, once one came.
    pub fn stopped(&self) -> Option<&'static str> {
        match self.stop.load(Ordering::Relaxed) {
            0 => None,
            s if s == SIGINT as usize => Some("SIGINT"),
            _ => Some("SIGTERM"),
        }
    }

    /// Whether SIGHUP came since the last call.
    pub fn take_hup(&self) -> bool {
        self.hup.swap(false, Ordering::Relaxed)
    }

    /// Sleeps until `deadline`, a stop signal or SIGHUP.
    pub fn wait_until(&self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline
                || self.stop.load(Ordering::Relaxed) != 0
                || self.hup.load(Ordering::Relaxed)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(deadline - now));
        }
    }
}

/// The attributed programs as last logged.
pub struct Programs {
    traced: BTreeSet<(u32, String)>,
}

impl Programs {
    pub fn new(session: &Session) -> Programs {
        Programs {
            traced: traced_ids(session),
        }
    }

    /// Programs attributed now.
    pub fn len(&self) -> usize {
        self.traced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traced.is_empty()
    }

    /// Program ids attributed now.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.traced.iter().map(|p| p.0)
    }

    /// Rescans the loaded BPF programs (attaches to new callers, lets go
    /// of those that went away; a failure is logged) and logs the
    /// attributed set when it changed, or always after SIGHUP (`hup`).
    /// Returns the freed program slots.
    pub fn rescan(&mut self, session: &mut Session, hup: bool, log: &Logger) -> Vec<u32> {
        let freed = match session.refresh_programs() {
            Ok(f) => f,
            Err(e) => {
                log.error(
                    "rescan of the BPF programs failed",
                    &[("error", crate::error::one_line(&e))],
                );
                Vec::new()
            }
        };
        let now = traced_ids(session);
        if now != self.traced || hup {
            let fmt = |s: &BTreeSet<(u32, String)>| {
                s.iter()
                    .map(|(id, n)| format!("{n}[{id}]"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            log.info(
                if hup {
                    "SIGHUP: programs rescanned"
                } else {
                    "attributed programs changed"
                },
                &[
                    (
                        "attached",
                        fmt(&now.difference(&self.traced).cloned().collect()),
                    ),
                    (
                        "detached",
                        fmt(&self.traced.difference(&now).cloned().collect()),
                    ),
                    ("programs", fmt(&now)),
                ],
            );
            self.traced = now;
        }
        freed
    }
}

/// (id, name) of the programs attributed now.
fn traced_ids(session: &Session) -> BTreeSet<(u32, String)> {
    session
        .attrib
        .as_ref()
        .map(|a| a.programs().map(|p| (p.id, p.name.clone())).collect())
        .unwrap_or_default()
}
