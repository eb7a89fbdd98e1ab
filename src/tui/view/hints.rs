//! The bottom line: a notice when there is one, else the key hints of the current context from the keymap.
//! When they do not fit, the hints close up, then the screen's last ones give way to `? help`, which
//! lists them all.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::tui::app::App;
use crate::tui::keymap::{self, Action, Context};
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: Context, theme: &Theme) {
    if let Some(notice) = &app.notice {
        frame.render_widget(
            Paragraph::new(Line::styled(notice.as_str(), theme.warn())),
            area,
        );
        return;
    }
    let mut hints: Vec<(String, &str, bool)> = keymap::bindings(ctx)
        .filter_map(|b| {
            let (label, hint) = b.hint_entry(theme.ascii)?;
            Some((
                label,
                hint,
                matches!(b.command, Action::Help | Action::Quit),
            ))
        })
        .collect();
    let width = |hints: &[(String, &str, bool)], gap: usize| -> usize {
        hints
            .iter()
            .map(|(label, hint, _)| 2 + label.chars().count() + hint.chars().count() + gap)
            .sum()
    };
    let fits =
        |hints: &[(String, &str, bool)], gap: usize| width(hints, gap) <= area.width as usize;
    let gap = usize::from(fits(&hints, 1));
    while !fits(&hints, gap) {
        let Some(last) = hints.iter().rposition(|h| !h.2) else {
            break;
        };
        hints.remove(last);
    }
    let mut spans = Vec::new();
    for (label, hint, _) in hints {
        spans.push(Span::styled(format!(" {label}"), theme.key()));
        spans.push(Span::raw(format!(" {hint}{}", " ".repeat(gap))));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
