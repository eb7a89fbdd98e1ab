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

/// One row of a key table: the keys, the command they give, the help overlay's words and, for the rows the
/// hint bar shows, how it writes them. The dashboard's tables hold `Binding<Action>`; each hosted screen
/// (rating, results) holds `Binding`s of its own command type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<C: 'static> {
    pub keys: &'static [KeyCode],
    /// Bound with Ctrl held (and only then).
    pub ctrl: bool,
    pub command: C,
    /// Shown in the help overlay and in dialogs.
    pub help: &'static str,
    /// Shown in the hint bar; None keeps the row off it.
    pub hint: Option<Hint>,
}

/// A row's entry in the hint bar: its keys as written there (None: the row's first key) and its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub keys: Option<&'static str>,
    pub text: &'static str,
}

/// A row binding `keys` to `command`, described by `help`, off the hint bar.
pub const fn bind<C: Copy>(keys: &'static [KeyCode], command: C, help: &'static str) -> Binding<C> {
    Binding {
        keys,
        ctrl: false,
        command,
        help,
        hint: None,
    }
}

impl<C: Copy> Binding<C> {
    /// On the hint bar as its first key and `text`.
    pub const fn hint(mut self, text: &'static str) -> Self {
        self.hint = Some(Hint { keys: None, text });
        self
    }

    /// On the hint bar as `keys` (for rows that fold several keys or rows into one entry) and `text`.
    pub const fn hint_as(mut self, keys: &'static str, text: &'static str) -> Self {
        self.hint = Some(Hint {
            keys: Some(keys),
            text,
        });
        self
    }

    /// Bound with Ctrl held.
    pub const fn ctrl(mut self) -> Self {
        self.ctrl = true;
        self
    }

    /// Whether a key press is this row's (Alt never is; Ctrl only on Ctrl rows).
    pub fn matches(&self, ev: &KeyEvent) -> bool {
        ev.kind != KeyEventKind::Release
            && !ev.modifiers.contains(KeyModifiers::ALT)
            && ev.modifiers.contains(KeyModifiers::CONTROL) == self.ctrl
            && self.keys.contains(&ev.code)
    }

    /// The hint bar's entry: (keys, word), or None for rows off the bar.
    pub fn hint_entry(&self, ascii: bool) -> Option<(String, &'static str)> {
        let hint = self.hint?;
        let keys = match (hint.keys, self.keys.first()) {
            (Some(k), _) => k.to_owned(),
            (None, Some(&code)) => key_label(code, self.ctrl, ascii),
            (None, None) => String::new(),
        };
        Some((keys, hint.text))
    }

    /// Every key of the row as the help overlay writes them.
    pub fn key_labels(&self, ascii: bool) -> String {
        self.keys
            .iter()
            .map(|&k| key_label(k, self.ctrl, ascii))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The command of the first row of `table` that a key press matches.
pub fn command_in<C: Copy>(table: &[Binding<C>], ev: &KeyEvent) -> Option<C> {
    table.iter().find(|b| b.matches(ev)).map(|b| b.command)
}

const fn chr(c: char) -> KeyCode {
    KeyCode::Char(c)
}

#[rustfmt::skip]
const GLOBAL: &[Binding<Action>] = &[
    bind(&[chr('?')], Action::Help, "show the keys of this screen").hint("help"),
    bind(&[chr('q')], Action::Quit, "quit (asks first while training)").hint("quit"),
    bind(&[chr('c')], Action::Quit, "quit").ctrl(),
];

#[rustfmt::skip]
const SWEEP: &[Binding<Action>] = &[
    bind(&[KeyCode::Up, chr('k')], Action::Up, "previous model"),
    bind(&[KeyCode::Down, chr('j')], Action::Down, "next model"),
    bind(&[KeyCode::Left, chr('h')], Action::Left, "previous dataset"),
    bind(&[KeyCode::Right, chr('l')], Action::Right, "next dataset"),
    bind(&[KeyCode::Enter], Action::OpenRun, "open the selected run").hint("open"),
    bind(&[chr('s')], Action::StartSweep, "start (or continue) the sweep").hint("start"),
];

#[rustfmt::skip]
const RUN: &[Binding<Action>] = &[
    bind(&[KeyCode::Esc, KeyCode::Backspace, chr('h'), KeyCode::Left], Action::Back, "back to the sweep").hint("back"),
    bind(&[chr(']'), KeyCode::Tab], Action::NextRun, "next run").hint("next"),
    bind(&[chr('['), KeyCode::BackTab], Action::PrevRun, "previous run").hint("prev"),
];

/// Training control, the same on the Sweep and Run screens (the selected run is the open one on Run).
#[rustfmt::skip]
const TRAINING: &[Binding<Action>] = &[
    bind(&[chr('p')], Action::TogglePause, "pause / resume training").hint("pause"),
    bind(&[chr('x')], Action::StopSweep, "stop after the next checkpoint").hint("stop"),
    bind(&[chr('r')], Action::Retry, "retry the selected failed or interrupted run").hint("retry"),
];

/// Ways to the other screens and to the cluster, the same on the Sweep and Run screens.
#[rustfmt::skip]
const ELSEWHERE: &[Binding<Action>] = &[
    bind(&[chr('a')], Action::OpenRating, "rate answers blind").hint("rate"),
    bind(&[chr('t')], Action::OpenResults, "results table").hint("results"),
    bind(&[chr('C')], Action::CancelJob, "cancel the selected run's SLURM job (asks first)"),
    bind(&[chr('R')], Action::ResubmitJob, "resubmit the selected failed or timed-out run to SLURM (asks first)"),
];

/// The dashboard's keys on the Rating screen; every other key goes to the screen itself (its own
/// table: [`crate::tui::rating::keys::BINDINGS`]), so none of these may be one of its keys.
#[rustfmt::skip]
const RATING: &[Binding<Action>] = &[
    bind(&[KeyCode::Esc], Action::Back, "back").hint("back"),
    bind(&[chr('v')], Action::NextPair, "compare the next pair: base-e1, base-e3, e1-e3").hint("pair"),
    bind(&[chr('w')], Action::SaveAgain, "save again the judgement that was NOT SAVED").hint("save again"),
    bind(&[chr('t')], Action::OpenResults, "results table").hint("results"),
];

/// The dashboard's keys on the Results screen; the others go to the screen
/// ([`crate::tui::results::BINDINGS`]).
#[rustfmt::skip]
const RESULTS: &[Binding<Action>] = &[
    bind(&[KeyCode::Esc], Action::Back, "back").hint("back"),
    bind(&[chr('a')], Action::OpenRating, "rate answers blind").hint("rate"),
];

#[rustfmt::skip]
const HELP: &[Binding<Action>] = &[
    bind(&[KeyCode::Esc, chr('?'), chr('q')], Action::CloseOverlay, "close help").hint("close"),
];

#[rustfmt::skip]
const QUIT_DIALOG: &[Binding<Action>] = &[
    bind(&[chr('s')], Action::QuitStopAfterCheckpoint, "stop after the next checkpoint, then quit").hint("stop & quit"),
    bind(&[chr('b')], Action::QuitDetach, "keep training in the background (detached qlab run)").hint("background"),
    bind(&[chr('c'), KeyCode::Esc], Action::CloseOverlay, "cancel: stay here, keep training").hint("cancel"),
];

#[rustfmt::skip]
const CONFIRM: &[Binding<Action>] = &[
    bind(&[chr('y')], Action::Confirm, "yes, do it").hint("yes"),
    bind(&[chr('n'), KeyCode::Esc], Action::CloseOverlay, "no, leave it").hint("no"),
];

/// The tables of a context, the context's own first, then the shared ones, then the global ones (screens only).
fn tables(ctx: Context) -> &'static [&'static [Binding<Action>]] {
    match ctx {
        Context::Sweep => &[SWEEP, TRAINING, ELSEWHERE, GLOBAL],
        Context::Run => &[RUN, TRAINING, ELSEWHERE, GLOBAL],
        Context::Rating => &[RATING, GLOBAL],
        Context::RatingNote => &[],
        Context::Results => &[RESULTS, GLOBAL],
        Context::Help => &[HELP],
        Context::QuitDialog => &[QUIT_DIALOG],
        Context::Confirm => &[CONFIRM],
    }
}

/// The bindings of a context, in the order the hint bar and the help overlay show them.
pub fn bindings(ctx: Context) -> impl Iterator<Item = &'static Binding<Action>> {
    tables(ctx).iter().flat_map(|t| t.iter())
}

/// The action bound to a key press in a context.
pub fn action_for(ctx: Context, ev: &KeyEvent) -> Option<Action> {
    bindings(ctx).find(|b| b.matches(ev)).map(|b| b.command)
}

/// How a key is written in the help and hint bar; `ascii` spells the arrows out.
pub fn key_label(code: KeyCode, ctrl: bool, ascii: bool) -> String {
    let name = match code {
        KeyCode::Up if ascii => "Up".to_string(),
        KeyCode::Down if ascii => "Down".to_string(),
        KeyCode::Left if ascii => "Left".to_string(),
        KeyCode::Right if ascii => "Right".to_string(),
        KeyCode::Up => "↑".to_string(),
        KeyCode::Down => "↓".to_string(),
        KeyCode::Left => "←".to_string(),
        KeyCode::Right => "→".to_string(),
        KeyCode::Enter => "Enter".to_string(),
        KeyCode::Esc => "Esc".to_string(),
        KeyCode::Tab => "Tab".to_string(),
        KeyCode::BackTab => "S-Tab".to_string(),
        KeyCode::Backspace => "Bksp".to_string(),
        KeyCode::PageUp => "PgUp".to_string(),
        KeyCode::PageDown => "PgDn".to_string(),
        KeyCode::Char(c) => c.to_string(),
        other => format!("{other:?}"),
    };
    if ctrl { format!("Ctrl-{name}") } else { name }
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
            let all: Vec<_> = bindings(ctx)
                .flat_map(|b| b.keys.iter().map(|&k| (k, b.ctrl)))
                .collect();
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
        let keys = |ctx| {
            bindings(ctx)
                .filter(|b| !b.ctrl && !leaves(b.command))
                .flat_map(|b| b.keys.iter().copied())
        };
        for code in keys(Context::Rating) {
            assert_eq!(
                crate::tui::rating::keys::command_for(&press(code)),
                None,
                "{code:?} is the rating screen's"
            );
        }
        for code in keys(Context::Results) {
            assert_eq!(
                crate::tui::results::command_for(&press(code)),
                None,
                "{code:?} is the results screen's"
            );
        }
        assert_eq!(bindings(Context::RatingNote).count(), 0);
    }
}
