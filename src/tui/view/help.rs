//! The `?` overlay: every binding of the current screen, generated from the keymap that drives input.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::tui::app::{App, Screen};
use crate::tui::keymap::{self, Action, Context};
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let ctx = match app.screen {
        Screen::Sweep => Context::Sweep,
        Screen::Run(_) => Context::Run,
    };
    let mut rows: Vec<(Action, Vec<String>, &str)> = Vec::new();
    for b in keymap::bindings(ctx) {
        let label = if theme.ascii {
            keymap::ascii_key_label(b)
        } else {
            keymap::key_label(b)
        };
        match rows.iter_mut().find(|r| r.0 == b.action) {
            Some(row) => row.1.push(label),
            None => rows.push((b.action, vec![label], b.describe)),
        }
    }
    let keys: Vec<String> = rows.iter().map(|r| r.1.join(" ")).collect();
    let key_w = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    let lines: Vec<Line> = rows
        .iter()
        .zip(&keys)
        .map(|(row, k)| {
            Line::from(vec![
                Span::styled(format!(" {k:<key_w$}  "), theme.key()),
                Span::raw(row.2),
            ])
        })
        .collect();
    let width = lines.iter().map(|l| l.width()).max().unwrap_or(20) as u16 + 3;
    let area = centered(frame.area(), width, lines.len() as u16 + 2);
    let title = match ctx {
        Context::Run => " keys: run ",
        _ => " keys: sweep ",
    };
    let block = Block::bordered()
        .border_set(theme.border())
        .title(Line::styled(title, theme.title()));
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// A rectangle of at most `w` x `h` in the middle of `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(v);
    r
}
