//! The `?` overlay: every binding of the current screen, generated from the keymap that drives input.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::tui::app::{App, Pane, Screen};
use crate::tui::keymap::{self, Action, Context};
use crate::tui::results;
use crate::tui::theme::Theme;

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let ctx = match app.screen {
        Screen::Sweep => Context::Sweep,
        Screen::Run(_) => Context::Run,
        Screen::Rating => Context::Rating,
        Screen::Results => Context::Results,
    };
    let mut rows: Vec<(Action, Vec<String>, &str)> = Vec::new();
    for b in keymap::bindings(ctx).filter(|b| app.cluster.is_some() || !b.action.is_cluster_only())
    {
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
    let mut keys: Vec<String> = rows.iter().map(|r| r.1.join(" ")).collect();
    let mut describe: Vec<&str> = rows.iter().map(|r| r.2).collect();
    // The hosted screen's own keys, from the table that drives it.
    let (screen_title, screen_keys) = hosted_keys(app);
    let first_screen_key = keys.len();
    for (k, d) in screen_keys {
        keys.push(k);
        describe.push(d);
    }
    let key_w = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    let mut lines: Vec<Line> = Vec::new();
    for (i, (k, d)) in keys.iter().zip(&describe).enumerate() {
        if i == first_screen_key {
            lines.push(Line::styled(screen_title, theme.title()));
        }
        lines.push(Line::from(vec![
            Span::styled(format!(" {k:<key_w$}  "), theme.key()),
            Span::raw(*d),
        ]));
    }
    let width = lines.iter().map(|l| l.width()).max().unwrap_or(20) as u16 + 3;
    let area = centered(frame.area(), width, lines.len() as u16 + 2);
    let title = match ctx {
        Context::Run => " keys: run ",
        Context::Rating => " keys: rating ",
        Context::Results => " keys: results ",
        _ => " keys: sweep ",
    };
    let block = Block::bordered()
        .border_set(theme.border())
        .title(Line::styled(title, theme.title()));
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The keys a hosted screen handles itself (those the dashboard does not bind), with a heading.
fn hosted_keys(app: &App) -> (&'static str, Vec<(String, &'static str)>) {
    match (app.screen, &app.rating.screen) {
        (Screen::Rating, Pane::Ready(screen)) => (" on the rating screen", screen.key_help()),
        (Screen::Results, _) => (
            " on the results screen",
            results::key_help()
                .into_iter()
                .map(|(k, d)| (k.to_owned(), d))
                .collect(),
        ),
        _ => ("", Vec::new()),
    }
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
