//! The hosted Results screen: the results component, or what stands in for it while loading or when the
//! journal could not be read.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};

use crate::tui::app::{App, Pane};
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let (text, style) = match &app.results {
        Pane::Ready(screen) => {
            screen.render(frame, area, theme);
            return;
        }
        Pane::NotLoaded | Pane::Loading => ("computing the results...".to_owned(), theme.dim()),
        Pane::Failed(e) => (
            format!("The results could not be computed: {e}"),
            theme.error(),
        ),
    };
    let block = Block::bordered()
        .border_set(theme.border())
        .title(" Results ");
    frame.render_widget(
        Paragraph::new(Line::styled(text, style))
            .wrap(Wrap { trim: true })
            .block(block),
        area,
    );
}
