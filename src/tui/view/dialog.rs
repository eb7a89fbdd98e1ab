//! The dashboard's small dialogs (quit while training, confirm a cluster action): a question, then the
//! context's keys with what each does, from the keymap that handles them.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::tui::keymap::{self, Context};
use crate::tui::theme::Theme;

use super::help::centered;

/// Draw a dialog titled `title`: the `question` lines, a blank line, then one line per hinted key of `ctx`.
pub fn draw(frame: &mut Frame, title: &str, question: Vec<Line>, ctx: Context, theme: &Theme) {
    let mut lines = question;
    lines.push(Line::from(""));
    for b in keymap::bindings(ctx) {
        if let Some((keys, _)) = b.hint_entry(theme.ascii) {
            lines.push(Line::from(vec![
                Span::styled(format!(" {keys}  "), theme.key()),
                Span::raw(b.help),
            ]));
        }
    }
    const WIDTH: u16 = 64;
    let inner = usize::from(WIDTH - 2);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let area = centered(frame.area(), WIDTH, rows as u16 + 2);
    let block = Block::bordered()
        .border_set(theme.border())
        .title(Line::styled(format!(" {title} "), theme.title()));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        area,
    );
}
