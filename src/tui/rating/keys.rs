//! Key bindings of the rating screen, as data: the hint bar is generated from the same table.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::tui::keymap::{Binding as KeyBinding, bind};

/// What a key asks the rating screen to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Score(u32),
    Half,
    SwitchSide,
    SideA,
    SideB,
    NextCriterion,
    PrevCriterion,
    ScrollDown,
    ScrollUp,
    NextItem,
    PrevItem,
    NextUnrated,
    Undo,
    ToggleReferenceWrong,
    EditNote,
    Quit,
}

/// One binding of this screen (see [`KeyBinding`]).
pub type Binding = KeyBinding<Command>;

/// Every binding except the digits (which score) in the order the hint bar shows them.
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    bind(&[KeyCode::Char('.')], Command::Half, "add a half point to the score").hint("+half"),
    bind(&[KeyCode::Tab, KeyCode::BackTab], Command::SwitchSide, "switch side (A / B)").hint("side"),
    bind(&[KeyCode::Char('h'), KeyCode::Left], Command::SideA, "side A").hint_as("h/l", "A/B"),
    bind(&[KeyCode::Char('l'), KeyCode::Right], Command::SideB, "side B"),
    bind(&[KeyCode::Char('j'), KeyCode::Down], Command::NextCriterion, "next criterion").hint_as("j/k", "criterion"),
    bind(&[KeyCode::Char('k'), KeyCode::Up], Command::PrevCriterion, "previous criterion"),
    bind(&[KeyCode::Char('J'), KeyCode::PageDown], Command::ScrollDown, "scroll down").hint_as("J/K", "scroll"),
    bind(&[KeyCode::Char('K'), KeyCode::PageUp], Command::ScrollUp, "scroll up"),
    bind(&[KeyCode::Enter], Command::NextUnrated, "next unrated item").hint("next unrated"),
    bind(&[KeyCode::Char('n')], Command::NextItem, "next item").hint_as("n/p", "item"),
    bind(&[KeyCode::Char('p')], Command::PrevItem, "previous item"),
    bind(&[KeyCode::Char('u')], Command::Undo, "undo the last score").hint("undo"),
    bind(&[KeyCode::Char('r')], Command::ToggleReferenceWrong, "mark the reference answer wrong").hint("ref wrong"),
    bind(&[KeyCode::Char('c')], Command::EditNote, "write a note").hint("note"),
    bind(&[KeyCode::Char('q'), KeyCode::Esc], Command::Quit, "quit").hint("quit"),
];

/// The command of a key press in rating mode, if it has one.
pub fn command_for(key: &KeyEvent) -> Option<Command> {
    if key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
    {
        return None;
    }
    if let KeyCode::Char(c) = key.code
        && let Some(d) = c.to_digit(10)
    {
        return Some(Command::Score(d));
    }
    crate::tui::keymap::command_in(BINDINGS, key)
}

/// `(keys, what they do)` for the digits and every labelled binding, in hint-bar order.
pub fn key_help(max_digit: u32, half: bool) -> Vec<(String, &'static str)> {
    let mut rows = vec![(format!("0-{max_digit}"), "score")];
    rows.extend(
        BINDINGS
            .iter()
            .filter(|b| half || b.command != Command::Half)
            .filter_map(|b| b.hint_entry(false)),
    );
    rows
}

/// The hint bar: `0-5 score · . +half · Tab side · ...` (the score range comes from the rubric).
pub fn hint_line(max_digit: u32, half: bool) -> String {
    key_help(max_digit, half)
        .into_iter()
        .map(|(keys, what)| format!("{keys} {what}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_commands_and_hints_come_from_the_table() {
        let k = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(command_for(&k(KeyCode::Char('4'))), Some(Command::Score(4)));
        assert_eq!(command_for(&k(KeyCode::Char('l'))), Some(Command::SideB));
        assert_eq!(command_for(&k(KeyCode::Tab)), Some(Command::SwitchSide));
        assert_eq!(command_for(&k(KeyCode::Char('z'))), None);
        assert_eq!(
            command_for(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            None
        );
        let hints = hint_line(5, false);
        assert!(
            hints.starts_with("0-5 score · Tab side · h/l A/B"),
            "{hints}"
        );
        assert!(!hints.contains("half"));
        assert!(hint_line(5, true).contains(". +half"));
    }
}
