//! `skprof top`: the interactive dashboard.
//!
//! Shape (as bottom and gitui): a collector thread owns the source (the
//! live session or a replay) and sends owned readings over a channel; an
//! input thread sends key and resize events over the same channel; the UI
//! thread owns the `App`, changes it only through `App::update`, and draws
//! it with `view::draw`, a pure function of the state. ratatui diffs frames,
//! so only changed cells reach the terminal (no flicker).

pub mod app;
pub mod term;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use crossterm::event::{self, Event};

use crate::model::snapshot::Grouping;
use crate::session::{Collector, Msg, Source};
use app::{Action, App};

/// What the UI thread waits for.
enum Input {
    Source(Msg),
    Term(Event),
    /// The terminal cannot be read any more.
    TermGone(String),
}

fn action_of(msg: Msg) -> Action {
    match msg {
        Msg::Reading(b) => Action::Tick(b),
        Msg::Ended(why) => Action::Ended(why),
        Msg::Failed(why) => Action::Failed(why),
        Msg::Done => Action::Quit,
    }
}

/// Runs the dashboard until the user quits or a signal asks it to stop.
/// `make` builds the source on the collector thread.
pub fn run<F>(make: F, grouping: Grouping) -> Result<()>
where
    F: FnOnce() -> Result<Box<dyn Source>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    term::install_signal_flag(&stop)?;
    let (tx, rx) = mpsc::channel::<Input>();
    // Set up before the terminal is touched: a setup error prints as a
    // normal one-line message.
    let (collector, info) = Collector::start(make, tx.clone(), Input::Source)?;
    let mut app = App::new(info, grouping);
    let result = ui_loop(&mut app, &rx, tx, &stop);
    // The terminal is restored by now; the collector's closing errors (a
    // failed workload) are worth reporting too, after the UI's own.
    let closed = collector.stop();
    result.and(closed)
}

fn ui_loop(
    app: &mut App,
    rx: &mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut guard = term::TermGuard::enter()?;
    let size = guard.terminal.size().context("read the terminal size")?;
    app.update(Action::Resize(size.width, size.height));
    std::thread::Builder::new()
        .name("skprof-input".into())
        .spawn(move || loop {
            let m = match event::read() {
                Ok(e) => Input::Term(e),
                Err(e) => Input::TermGone(e.to_string()),
            };
            let gone = matches!(m, Input::TermGone(_));
            if tx.send(m).is_err() || gone {
                break;
            }
        })
        .context("start the input thread")?;
    // Fault injection for the end-to-end test that a panic gives the
    // terminal back (tests/tui_e2e.rs): a panic after the first reading is
    // drawn. Not documented for users; nothing else reads it.
    let panic_after_first = std::env::var_os("SKPROF_TEST_PANIC_IN_TOP").is_some();
    let mut dirty = true;
    while !app.quit && !stop.load(Ordering::Relaxed) {
        if panic_after_first && app.current().is_some() && !dirty {
            panic!("SKPROF_TEST_PANIC_IN_TOP: injected panic after the first reading");
        }
        if dirty {
            guard
                .terminal
                .draw(|f| view::draw(f, app))
                .context("draw the dashboard")?;
            dirty = false;
        }
        // The timeout only bounds how late a signal is noticed.
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Everything already queued is handled before the next draw, so a
        // burst of keys or batches costs one frame.
        for input in std::iter::once(first).chain(rx.try_iter()) {
            match input {
                Input::Source(m) => app.update(action_of(m)),
                Input::Term(Event::Key(k)) => {
                    if let Some(a) = app.key_action(k) {
                        app.update(a);
                    }
                }
                Input::Term(Event::Resize(w, h)) => {
                    app.update(Action::Resize(w, h));
                    // A resize invalidates what is on screen: redraw all.
                    guard.terminal.autoresize().context("resize")?;
                }
                Input::Term(_) => continue,
                Input::TermGone(e) => {
                    return Err(anyhow::anyhow!("read the terminal: {e}"));
                }
            }
            dirty = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod tests;
