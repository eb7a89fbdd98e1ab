//! The dialog shown when quitting while this process trains: stop, hand over to the background, or stay.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::tui::app::{App, Owner};
use crate::tui::keymap::{self, Context};
use crate::tui::theme::Theme;

use super::help::centered;

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let training = app
        .runs
        .iter()
        .find(|r| r.owner == Owner::Us && r.history.is_active())
        .map(|r| r.plan.id.as_str())
        .unwrap_or("the sweep");
    let mut lines = vec![
        Line::from(format!("{training} is training in this process.")),
        Line::from("Quit how?"),
        Line::from(""),
    ];
    for b in keymap::bindings(Context::QuitDialog).filter(|b| b.hint.is_some()) {
        let label = if theme.ascii {
            keymap::ascii_key_label(b)
        } else {
            keymap::key_label(b)
        };
        lines.push(Line::from(vec![
            Span::styled(format!(" {label}  "), theme.key()),
            Span::raw(b.describe),
        ]));
    }
    let area = centered(frame.area(), 64, lines.len() as u16 + 2);
    let block = Block::bordered()
        .border_set(theme.border())
        .title(Line::styled(" quit while training ", theme.title()));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        area,
    );
}
