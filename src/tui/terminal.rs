//! Taking over the terminal and giving it back on every way out: normal exit, panic (ratatui's hook),
//! SIGTERM and SIGHUP (forwarded to the event loop, which checkpoints first and then restores).

use std::io;

use ratatui::DefaultTerminal;
use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc::UnboundedSender;

/// Raw mode + alternate screen, restored by a panic hook if the program panics. Mouse capture stays off
/// so the terminal's own text selection keeps working.
/// A panic caught in a run (see `sweep::panic_guard`) goes to the log and leaves the dashboard up.
pub fn enter() -> DefaultTerminal {
    let terminal = ratatui::init();
    crate::sweep::panic_guard::install_hook();
    terminal
}

/// Give the terminal back (raw mode off, main screen, cursor shown). Safe to call more than once.
pub fn leave() {
    ratatui::restore();
}

/// Forward SIGTERM and SIGHUP to `tx`, from a named thread that ends when the receiver is gone.
pub fn forward_signals(tx: UnboundedSender<i32>) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("qlab-tui-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}
