//! Key bindings as data: for each context, which key does what. Input handling, the help overlay and the
//! hint bar all read this one table, so they cannot disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    Left,
    Right,
    OpenRun,
    Back,
    NextRun,
    PrevRun,
    StartSweep,
    TogglePause,
    StopSweep,
    Retry,
    Help,
    CloseOverlay,
    Quit,
    QuitStopAfterCheckpoint,
    QuitDetach,
    OpenRating,
    OpenResults,
    NextPair,
    SaveAgain,
    /// Cancel the selected cell's cluster job (asks first).
    CancelJob,
    /// Submit the selected failed, timed-out or cancelled cell again (asks first).
    ResubmitJob,
    /// Yes to the question of the confirmation dialog.
    Confirm,
}

impl Action {
    /// Keys that only mean something on a cluster sweep (left out of a local sweep's help).
    pub fn is_cluster_only(self) -> bool {
        matches!(self, Action::CancelJob | Action::ResubmitJob)
    }
}

/// One binding of a hosted screen (rating, results): the keys, how the hint bar names them, the help
/// text, and the screen's command.
pub struct ScreenBinding<C: 'static> {
    pub keys: &'static [KeyCode],
    pub label: &'static str,
    pub help: &'static str,
    pub command: C,
}

/// Where keys are read: a screen or an overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Sweep,
    Run,
    Rating,
    /// The rating screen while a note is typed: every key is text, none is bound here.
    RatingNote,
    Results,
    Help,
    QuitDialog,
    /// The y/n dialog before a cluster job is cancelled or resubmitted.
    Confirm,
}

/// One key and what it does in a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub code: KeyCode,
    pub ctrl: bool,
    pub action: Action,
    /// Shown in the help overlay.
    pub describe: &'static str,
    /// Shown in the hint bar (only the first binding of an action is).
    pub hint: Option<&'static str>,
}

const fn key(
    code: KeyCode,
    action: Action,
    describe: &'static str,
    hint: Option<&'static str>,
) -> Binding {
    Binding {
        code,
        ctrl: false,
        action,
        describe,
        hint,
    }
}

const fn ch(
    c: char,
    action: Action,
    describe: &'static str,
    hint: Option<&'static str>,
) -> Binding {
    key(KeyCode::Char(c), action, describe, hint)
}

const GLOBAL: &[Binding] = &[
    ch(
        '?',
        Action::Help,
        "show the keys of this screen",
        Some("help"),
    ),
    ch(
        'q',
        Action::Quit,
        "quit (asks first while training)",
        Some("quit"),
    ),
    Binding {
        code: KeyCode::Char('c'),
        ctrl: true,
        action: Action::Quit,
        describe: "quit",
        hint: None,
    },
];

const SWEEP: &[Binding] = &[
    key(KeyCode::Up, Action::Up, "previous model", None),
    ch('k', Action::Up, "previous model", None),
    key(KeyCode::Down, Action::Down, "next model", None),
    ch('j', Action::Down, "next model", None),
    key(KeyCode::Left, Action::Left, "previous dataset", None),
    ch('h', Action::Left, "previous dataset", None),
    key(KeyCode::Right, Action::Right, "next dataset", None),
    ch('l', Action::Right, "next dataset", None),
    key(
        KeyCode::Enter,
        Action::OpenRun,
        "open the selected run",
        Some("open"),
    ),
    ch(
        's',
        Action::StartSweep,
        "start (or continue) the sweep",
        Some("start"),
    ),
    ch(
        'p',
        Action::TogglePause,
        "pause / resume training",
        Some("pause"),
    ),
    ch(
        'x',
        Action::StopSweep,
        "stop after the next checkpoint",
        Some("stop"),
    ),
    ch(
        'r',
        Action::Retry,
        "retry the selected failed or interrupted run",
        Some("retry"),
    ),
    ch('a', Action::OpenRating, "rate answers blind", Some("rate")),
    ch('t', Action::OpenResults, "results table", Some("results")),
    ch(
        'C',
        Action::CancelJob,
        "cancel the selected cell's SLURM job (asks first)",
        None,
    ),
    ch(
        'R',
        Action::ResubmitJob,
        "resubmit the selected failed or timed-out cell to SLURM (asks first)",
        None,
    ),
];

const RUN: &[Binding] = &[
    key(
        KeyCode::Esc,
        Action::Back,
        "back to the sweep",
        Some("back"),
    ),
    key(KeyCode::Backspace, Action::Back, "back to the sweep", None),
    ch('h', Action::Back, "back to the sweep", None),
    key(KeyCode::Left, Action::Back, "back to the sweep", None),
    ch(']', Action::NextRun, "next run", Some("next")),
    key(KeyCode::Tab, Action::NextRun, "next run", None),
    ch('[', Action::PrevRun, "previous run", Some("prev")),
    key(KeyCode::BackTab, Action::PrevRun, "previous run", None),
    ch(
        'p',
        Action::TogglePause,
        "pause / resume training",
        Some("pause"),
    ),
    ch(
        'x',
        Action::StopSweep,
        "stop after the next checkpoint",
        Some("stop"),
    ),
    ch(
        'r',
        Action::Retry,
        "retry this run if it failed or was interrupted",
        Some("retry"),
    ),
    ch('a', Action::OpenRating, "rate answers blind", Some("rate")),
    ch('t', Action::OpenResults, "results table", Some("results")),
    ch(
        'C',
        Action::CancelJob,
        "cancel this run's SLURM job (asks first)",
        None,
    ),
    ch(
        'R',
        Action::ResubmitJob,
        "resubmit this run to SLURM if its job failed or timed out (asks first)",
        None,
    ),
];

/// The dashboard's keys on the Rating screen; every other key goes to the screen itself (its own
/// table: [`crate::tui::rating::keys::BINDINGS`]), so none of these may be one of its keys.
const RATING: &[Binding] = &[
    key(KeyCode::Esc, Action::Back, "back", Some("back")),
    ch(
        'v',
        Action::NextPair,
        "compare the next pair: base-e1, base-e3, e1-e3",
        Some("pair"),
    ),
    ch(
        'w',
        Action::SaveAgain,
        "save again the judgement that was NOT SAVED",
        Some("save again"),
    ),
    ch('t', Action::OpenResults, "results table", Some("results")),
];

/// The dashboard's keys on the Results screen; the others go to the screen
/// ([`crate::tui::results::BINDINGS`]).
const RESULTS: &[Binding] = &[
    key(KeyCode::Esc, Action::Back, "back", Some("back")),
    ch('a', Action::OpenRating, "rate answers blind", Some("rate")),
];

const HELP: &[Binding] = &[
    key(
        KeyCode::Esc,
        Action::CloseOverlay,
        "close help",
        Some("close"),
    ),
    ch('?', Action::CloseOverlay, "close help", None),
    ch('q', Action::CloseOverlay, "close help", None),
];

const QUIT_DIALOG: &[Binding] = &[
    ch(
        's',
        Action::QuitStopAfterCheckpoint,
        "stop after the next checkpoint, then quit",
        Some("stop & quit"),
    ),
    ch(
        'b',
        Action::QuitDetach,
        "keep training in the background (detached qlab run)",
        Some("background"),
    ),
    ch(
        'c',
        Action::CloseOverlay,
        "cancel: stay here, keep training",
        Some("cancel"),
    ),
    key(KeyCode::Esc, Action::CloseOverlay, "cancel", None),
];

const CONFIRM: &[Binding] = &[
    ch('y', Action::Confirm, "yes, do it", Some("yes")),
    ch('n', Action::CloseOverlay, "no, leave it", Some("no")),
    key(KeyCode::Esc, Action::CloseOverlay, "no, leave it", None),
];

/// The bindings of a context, the context's own first, then the global ones (screens only).
pub fn bindings(ctx: Context) -> impl Iterator<Item = &'static Binding> {
    let (own, global): (&[Binding], &[Binding]) = match ctx {
        Context::Sweep => (SWEEP, GLOBAL),
        Context::Run => (RUN, GLOBAL),
        Context::Rating => (RATING, GLOBAL),
        Context::RatingNote => (&[], &[]),
        Context::Results => (RESULTS, GLOBAL),
        Context::Help => (HELP, &[]),
        Context::QuitDialog => (QUIT_DIALOG, &[]),
        Context::Confirm => (CONFIRM, &[]),
    };
    own.iter().chain(global.iter())
}

/// The action bound to a key press in a context.
pub fn action_for(ctx: Context, ev: &KeyEvent) -> Option<Action> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
    bindings(ctx)
        .find(|b| b.code == ev.code && b.ctrl == ctrl)
        .map(|b| b.action)
}

/// How a key is written in the help and hint bar.
pub fn key_label(b: &Binding) -> String {
    let name = match b.code {
        KeyCode::Up => "↑".to_string(),
        KeyCode::Down => "↓".to_string(),
        KeyCode::Left => "←".to_string(),
        KeyCode::Right => "→".to_string(),
        KeyCode::Enter => "Enter".to_string(),
        KeyCode::Esc => "Esc".to_string(),
        KeyCode::Tab => "Tab".to_string(),
        KeyCode::BackTab => "S-Tab".to_string(),
        KeyCode::Backspace => "Bksp".to_string(),
        KeyCode::Char(c) => c.to_string(),
        other => format!("{other:?}"),
    };
    if b.ctrl { format!("Ctrl-{name}") } else { name }
}

/// ASCII form of a key label, for terminals without Unicode arrows.
pub fn ascii_key_label(b: &Binding) -> String {
    match b.code {
        KeyCode::Up => "Up".into(),
        KeyCode::Down => "Down".into(),
        KeyCode::Left => "Left".into(),
        KeyCode::Right => "Right".into(),
        _ => key_label(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn arrows_and_vim_keys_move_the_same_way() {
        assert_eq!(
            action_for(Context::Sweep, &press(KeyCode::Down)),
            Some(Action::Down)
        );
        assert_eq!(
            action_for(Context::Sweep, &press(KeyCode::Char('j'))),
            Some(Action::Down)
        );
        assert_eq!(
            action_for(Context::Sweep, &press(KeyCode::Char('l'))),
            Some(Action::Right)
        );
        assert_eq!(
            action_for(Context::Run, &press(KeyCode::Char('h'))),
            Some(Action::Back)
        );
    }

    #[test]
    fn ctrl_c_quits_but_plain_c_does_not() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action_for(Context::Sweep, &ctrl_c), Some(Action::Quit));
        assert_eq!(action_for(Context::Sweep, &press(KeyCode::Char('c'))), None);
        assert_eq!(
            action_for(Context::QuitDialog, &press(KeyCode::Char('c'))),
            Some(Action::CloseOverlay)
        );
    }

    #[test]
    fn no_key_is_bound_twice_in_a_context() {
        for ctx in [
            Context::Sweep,
            Context::Run,
            Context::Rating,
            Context::Results,
            Context::Help,
            Context::QuitDialog,
            Context::Confirm,
        ] {
            let all: Vec<_> = bindings(ctx).map(|b| (b.code, b.ctrl)).collect();
            for (i, k) in all.iter().enumerate() {
                assert!(!all[i + 1..].contains(k), "{ctx:?}: {k:?} bound twice");
            }
        }
    }

    /// Quit and back are the only dashboard keys that the hosted screens also bind (to leave): any other
    /// dashboard key would silently take a key away from the screen.
    #[test]
    fn dashboard_keys_on_hosted_screens_leave_the_screens_own_keys_alone() {
        let leaves = |a: Action| matches!(a, Action::Back | Action::Quit);
        for b in bindings(Context::Rating).filter(|b| !b.ctrl && !leaves(b.action)) {
            let ev = press(b.code);
            assert_eq!(
                crate::tui::rating::keys::command_for(&ev),
                None,
                "{:?} is the rating screen's",
                b.code
            );
        }
        for b in bindings(Context::Results).filter(|b| !b.ctrl && !leaves(b.action)) {
            assert_eq!(
                crate::tui::results::command_for(&press(b.code)),
                None,
                "{:?} is the results screen's",
                b.code
            );
        }
        assert_eq!(bindings(Context::RatingNote).count(), 0);
    }
}
