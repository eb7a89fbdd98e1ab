//! The hosted Rating screen: a title line naming the pair and the rater, then the rating component, or
//! what stands in for it while loading or when the answers could not be read.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use crate::tui::app::{App, Pane};
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let pair = &app.rating.pair;
    let sep = theme.sep();
    let mut spans = vec![
        Span::styled(" Rating ", theme.title()),
        Span::raw(format!(
            "{sep} {} vs {} {sep} rater {} ",
            pair.first, pair.second, app.rating.rater
        )),
    ];
    if app.rating.pending.is_some() {
        spans.push(Span::styled(
            format!("{sep} a judgement is NOT SAVED "),
            theme.error(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), title);
    let (text, style) = match &app.rating.screen {
        Pane::Ready(screen) => {
            screen.render(frame, body);
            return;
        }
        Pane::NotLoaded | Pane::Loading => ("reading the answers...".to_owned(), theme.dim()),
        Pane::Failed(e) => (format!("The answers could not be read: {e}"), theme.error()),
    };
    let block = Block::bordered().border_set(theme.border()).title(" Rate ");
    frame.render_widget(
        Paragraph::new(Line::styled(text, style))
            .wrap(Wrap { trim: true })
            .block(block),
        body,
    );
}
