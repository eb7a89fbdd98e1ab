//! Key bindings of the rating screen, as data: the hint bar is generated from the same table.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::tui::keymap::ScreenBinding;

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

/// One binding of this screen (see [`ScreenBinding`]).
pub type Binding = ScreenBinding<Command>;

/// Every binding except the digits (which score) in the order the hint bar shows them.
pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: &[KeyCode::Char('.')],
        label: ".",
        help: "+half",
        command: Command::Half,
    },
    Binding {
        keys: &[KeyCode::Tab, KeyCode::BackTab],
        label: "Tab",
        help: "side",
        command: Command::SwitchSide,
    },
    Binding {
        keys: &[KeyCode::Char('h'), KeyCode::Left],
        label: "h/l",
        help: "A/B",
        command: Command::SideA,
    },
    Binding {
        keys: &[KeyCode::Char('l'), KeyCode::Right],
        label: "",
        help: "",
        command: Command::SideB,
    },
    Binding {
        keys: &[KeyCode::Char('j'), KeyCode::Down],
        label: "j/k",
        help: "criterion",
        command: Command::NextCriterion,
    },
    Binding {
        keys: &[KeyCode::Char('k'), KeyCode::Up],
        label: "",
        help: "",
        command: Command::PrevCriterion,
    },
    Binding {
        keys: &[KeyCode::Char('J'), KeyCode::PageDown],
        label: "J/K",
        help: "scroll",
        command: Command::ScrollDown,
    },
    Binding {
        keys: &[KeyCode::Char('K'), KeyCode::PageUp],
        label: "",
        help: "",
        command: Command::ScrollUp,
    },
    Binding {
        keys: &[KeyCode::Enter],
        label: "Enter",
        help: "next unrated",
        command: Command::NextUnrated,
    },
    Binding {
        keys: &[KeyCode::Char('n')],
        label: "n/p",
        help: "item",
        command: Command::NextItem,
    },
    Binding {
        keys: &[KeyCode::Char('p')],
        label: "",
        help: "",
        command: Command::PrevItem,
    },
    Binding {
        keys: &[KeyCode::Char('u')],
        label: "u",
        help: "undo",
        command: Command::Undo,
    },
    Binding {
        keys: &[KeyCode::Char('r')],
        label: "r",
        help: "ref wrong",
        command: Command::ToggleReferenceWrong,
    },
    Binding {
        keys: &[KeyCode::Char('c')],
        label: "c",
        help: "note",
        command: Command::EditNote,
    },
    Binding {
        keys: &[KeyCode::Char('q'), KeyCode::Esc],
        label: "q",
        help: "quit",
        command: Command::Quit,
    },
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
    BINDINGS
        .iter()
        .find(|b| b.keys.contains(&key.code))
        .map(|b| b.command)
}

/// `(keys, what they do)` for the digits and every labelled binding, in hint-bar order.
pub fn key_help(max_digit: u32, half: bool) -> Vec<(String, &'static str)> {
    let mut rows = vec![(format!("0-{max_digit}"), "score")];
    rows.extend(
        BINDINGS
            .iter()
            .filter(|b| !b.label.is_empty() && (half || b.command != Command::Half))
            .map(|b| (b.label.to_owned(), b.help)),
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
