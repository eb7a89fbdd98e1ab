//! The runner's last line of defence: a panic in model code (a kernel's shape assertion, an index out of
//! range) becomes an error of that one run, with the panic's message, instead of taking the sweep, the
//! dashboard or the terminal down with it.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

thread_local! {
    /// True while this thread runs inside [`guarded`]: its panics are caught and reported as run errors.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Run `f`, turning a panic into `Err` with the panic's message. The state `f` touched may be half-updated:
/// callers use this only where they throw that state away (a run's model, its session).
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.map_err(|payload| format!("panicked: {}", payload_message(payload.as_ref())))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn payload_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Wrap the process's panic hook once: a panic inside [`guarded`] goes to the log (with its place) and
/// skips the hooks installed before, which would print over the dashboard or give the terminal back while
/// the dashboard still runs. Install it after the terminal's own hook (ratatui's), so that a panic anywhere
/// else still restores the terminal first.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if GUARDED.with(Cell::get) {
                let place = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let thread = std::thread::current();
                tracing::error!(
                    thread = thread.name().unwrap_or("unnamed"),
                    place,
                    "run panicked: {}",
                    payload_message(info.payload())
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// Fault injection for the end-to-end tests of this guard: a run whose id `QLAB_TEST_PANIC_IN_RUN` names
/// panics where its model would be loaded, as a bug in model code would.
pub fn inject_test_panic(run_id: &str) {
    if std::env::var("QLAB_TEST_PANIC_IN_RUN").is_ok_and(|r| r == run_id) {
        panic!("injected by QLAB_TEST_PANIC_IN_RUN for run {run_id}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        install_hook();
        let r: Result<(), String> = guarded(|| panic!("shape mismatch {}", 3));
        assert_eq!(r.unwrap_err(), "panicked: shape mismatch 3");
        let s: Result<(), String> = guarded(|| std::panic::panic_any(7_u8));
        assert_eq!(s.unwrap_err(), "panicked: a panic without a message");
        assert_eq!(guarded(|| 5), Ok(5));
    }

    #[test]
    fn the_guard_is_off_again_after_the_call() {
        let _ = guarded(|| panic!("inside"));
        assert!(!GUARDED.with(Cell::get));
        let nested = guarded(|| guarded(|| panic!("inner")).is_err() && GUARDED.with(Cell::get));
        assert_eq!(nested, Ok(true));
    }
}
