//! The dialog shown when quitting while this process trains: stop, hand over to the background, or stay.

use ratatui::Frame;
use ratatui::text::Line;

use crate::tui::app::{App, Owner};
use crate::tui::keymap::Context;
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let training = app
        .runs
        .iter()
        .find(|r| r.owner == Owner::Us && r.history.is_active())
        .map(|r| r.plan.id.as_str())
        .unwrap_or("the sweep");
    let question = vec![
        Line::from(format!("{training} is training in this process.")),
        Line::from("Quit how?"),
    ];
    super::dialog::draw(
        frame,
        "quit while training",
        question,
        Context::QuitDialog,
        theme,
    );
}
