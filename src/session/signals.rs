//! Stop and rescan requests: SIGTERM/SIGINT end a command cleanly (its BPF
//! links detach as the session drops), SIGHUP asks for a rescan of the
//! loaded programs. A dashboard asks for a stop the same way.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Shared stop and rescan flags (clones share them).
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The stop signal received (SIGTERM or SIGINT), `usize::MAX` for a
    /// stop asked by the program itself, 0 before.
    stop: Arc<AtomicUsize>,
    hup: Arc<AtomicBool>,
}

/// Steps of a wait: a stop is noticed within this. Shorter steps cost
/// wake-ups for nothing: at 20 ms they were a tenth of `top`'s CPU time.
const STEP: Duration = Duration::from_millis(100);

impl Signals {
    /// Flags with no handler: only [`Signals::request_stop`] sets them.
    pub fn new() -> Signals {
        Signals::default()
    }

    /// Installs the handlers: from now on SIGTERM and SIGINT only set a
    /// flag (the command ends cleanly, dropping the BPF links), SIGHUP
    /// another.
    pub fn install() -> Result<Signals> {
        let s = Signals::new();
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_usize(sig, Arc::clone(&s.stop), sig as usize)
                .with_context(|| format!("install handler for signal {sig}"))?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&s.hup))
            .context("install handler for SIGHUP")?;
        Ok(s)
    }

    pub fn request_stop(&self) {
        self.stop.store(usize::MAX, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) != 0
    }

    /// What stopped the command, once something did.
    pub fn stopped(&self) -> Option<&'static str> {
        match self.stop.load(Ordering::Relaxed) {
            0 => None,
            s if s == SIGINT as usize => Some("SIGINT"),
            s if s == SIGTERM as usize => Some("SIGTERM"),
            _ => Some("stop"),
        }
    }

    /// Whether SIGHUP came since the last call.
    pub fn take_hup(&self) -> bool {
        self.hup.swap(false, Ordering::Relaxed)
    }

    /// Sleeps until `deadline`, a stop or SIGHUP; true when the deadline
    /// came.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        loop {
            if self.is_stopped() || self.hup.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep(STEP.min(deadline - now));
        }
    }

    /// Sleeps until `deadline` or a stop (SIGHUP does not cut it short);
    /// true when the deadline came.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        loop {
            if self.is_stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep(STEP.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_cuts_a_wait_short_and_clones_share_it() {
        let s = Signals::new();
        let t = s.clone();
        assert!(s.wait_until(Instant::now() + Duration::from_millis(10)));
        t.request_stop();
        let start = Instant::now();
        assert!(!s.wait_until(Instant::now() + Duration::from_secs(60)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(s.stopped(), Some("stop"));
        assert!(!s.take_hup());
    }
}
