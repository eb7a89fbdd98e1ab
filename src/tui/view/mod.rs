//! Drawing: one function per screen and overlay, all reading `App` and never changing it.

mod confirm;
mod dialog;
mod help;
mod hints;
mod plot;
mod quit;
mod rating;
mod results;
mod run;
mod stage_marks;
mod sweep;
mod widgets;

pub use plot::{Curve, Plot};
pub use stage_marks::StageMark;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};

use super::app::{App, Overlay, Screen};
use super::theme::Theme;
use super::update::context;

/// Draw the whole dashboard for the current state.
pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let [body, footer] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(frame.area());
    match app.screen {
        Screen::Sweep => sweep::draw(frame, body, app, theme),
        Screen::Run(i) => run::draw(frame, body, app, i, theme),
        Screen::Rating => rating::draw(frame, body, app, theme),
        Screen::Results => results::draw(frame, body, app, theme),
    }
    hints::draw(frame, footer, app, context(app), theme);
    match app.overlay {
        Some(Overlay::Help) => help::draw(frame, app, theme),
        Some(Overlay::QuitWhileTraining) => quit::draw(frame, app, theme),
        Some(Overlay::Confirm) => confirm::draw(frame, app, theme),
        None => {}
    }
}
