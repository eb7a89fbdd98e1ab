//! Colours and symbols. Only the 16 ANSI colours are used, so every terminal (and every SSH hop) shows the
//! same thing; ASCII mode replaces every box, block, arrow and braille glyph with plain ASCII.

use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::border;

use crate::store::RunState;

/// How the dashboard draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub ascii: bool,
}

const ASCII_BORDER: border::Set = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

impl Theme {
    pub fn new(ascii: bool) -> Self {
        Theme { ascii }
    }

    /// ASCII symbols are chosen for `--ascii` and for terminals that cannot show more (TERM=dumb or linux).
    pub fn detect(ascii_flag: bool, term: Option<&str>) -> Self {
        Theme {
            ascii: ascii_flag || matches!(term, Some("dumb" | "linux")),
        }
    }

    pub fn border(&self) -> border::Set {
        if self.ascii {
            ASCII_BORDER
        } else {
            border::ROUNDED
        }
    }

    pub fn state_style(&self, state: RunState) -> Style {
        let c = match state {
            RunState::Queued => Color::Gray,
            RunState::Training => Color::Cyan,
            RunState::Evaluating => Color::Magenta,
            RunState::Done => Color::Green,
            RunState::Failed => Color::Red,
            RunState::Interrupted => Color::Yellow,
        };
        Style::new().fg(c)
    }

    pub fn state_icon(&self, state: RunState) -> &'static str {
        match (self.ascii, state) {
            (true, RunState::Queued) => ".",
            (true, RunState::Training) => ">",
            (true, RunState::Evaluating) => "?",
            (true, RunState::Done) => "+",
            (true, RunState::Failed) => "x",
            (true, RunState::Interrupted) => "=",
            (false, RunState::Queued) => "·",
            (false, RunState::Training) => "▸",
            (false, RunState::Evaluating) => "◆",
            (false, RunState::Done) => "✓",
            (false, RunState::Failed) => "✗",
            (false, RunState::Interrupted) => "‖",
        }
    }

    pub fn title(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn dim(&self) -> Style {
        Style::new().fg(Color::DarkGray)
    }

    pub fn key(&self) -> Style {
        Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    pub fn warn(&self) -> Style {
        Style::new().fg(Color::Yellow)
    }

    pub fn error(&self) -> Style {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Filled and empty cells of a progress bar.
    pub fn bar_glyphs(&self) -> (&'static str, &'static str) {
        if self.ascii {
            ("#", "-")
        } else {
            ("█", "░")
        }
    }

    /// A separator between items of a status line.
    pub fn sep(&self) -> &'static str {
        if self.ascii { " | " } else { " · " }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumb_and_linux_terminals_get_ascii() {
        assert!(Theme::detect(false, Some("dumb")).ascii);
        assert!(Theme::detect(false, Some("linux")).ascii);
        assert!(!Theme::detect(false, Some("xterm-256color")).ascii);
        assert!(Theme::detect(true, Some("xterm-256color")).ascii);
    }
}
