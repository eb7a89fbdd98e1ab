//! The bottom line: a notice when there is one, else the key hints of the current context from the keymap.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::tui::app::App;
use crate::tui::keymap::{self, Context};
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: Context, theme: &Theme) {
    if let Some(notice) = &app.notice {
        frame.render_widget(
            Paragraph::new(Line::styled(notice.as_str(), theme.warn())),
            area,
        );
        return;
    }
    let mut spans = Vec::new();
    for b in keymap::bindings(ctx) {
        let Some(hint) = b.hint else { continue };
        let label = if theme.ascii {
            keymap::ascii_key_label(b)
        } else {
            keymap::key_label(b)
        };
        spans.push(Span::styled(format!(" {label}"), theme.key()));
        spans.push(Span::raw(format!(" {hint} ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
