//! The terminal: raw mode and the alternate screen while the dashboard runs,
//! and the user's terminal given back however it ends: a normal quit, an
//! error (the guard's `Drop`), a panic (a hook that restores before the
//! message prints), or SIGTERM/SIGINT/SIGHUP (a flag the loop checks, so the
//! guard drops normally).

use std::io::{self, Stdout, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};

use anyhow::{Context, Result};
use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Puts the terminal back as it was. Safe to call more than once and from
/// the panic hook: every step is attempted, errors are ignored (there is no
/// one left to tell).
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    let _ = io::stdout().flush();
}

static HOOK: Once = Once::new();

/// Restores the terminal before the default panic message prints, so the
/// message is readable and the shell usable.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal in dashboard mode; dropping it restores the terminal.
pub struct TermGuard {
    pub terminal: Term,
}

impl TermGuard {
    pub fn enter() -> Result<TermGuard> {
        install_panic_hook();
        enable_raw_mode().context("put the terminal in raw mode (is stdout a terminal?)")?;
        // From here on, any failure must restore what was changed.
        let setup = || -> Result<Term> {
            execute!(io::stdout(), EnterAlternateScreen, Hide)
                .context("switch to the alternate screen")?;
            let mut t = Terminal::new(CrosstermBackend::new(io::stdout()))
                .context("set up the terminal")?;
            t.clear().context("clear the terminal")?;
            Ok(t)
        };
        match setup() {
            Ok(terminal) => Ok(TermGuard { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Sets `flag` on SIGTERM, SIGINT and SIGHUP. In raw mode Ctrl-C is a key,
/// not SIGINT; the signals come from elsewhere (kill, a closed terminal).
pub fn install_signal_flag(flag: &Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGTERM, SIGINT, SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(flag))
            .with_context(|| format!("install handler for signal {sig}"))?;
    }
    Ok(())
}
