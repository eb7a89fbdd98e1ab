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
    // One line per action: its rows' keys together (q and Ctrl-c both quit), the first row's words.
    let mut rows: Vec<(Action, String, &str)> = Vec::new();
    for b in keymap::bindings(ctx).filter(|b| app.cluster.is_some() || !b.command.is_cluster_only())
    {
        let labels = b.key_labels(theme.ascii);
        match rows.iter_mut().find(|r| r.0 == b.command) {
            Some(row) => row.1 = format!("{} {labels}", row.1),
            None => rows.push((b.command, labels, b.help)),
        }
    }
    let (mut keys, mut describe): (Vec<String>, Vec<&str>) =
        rows.into_iter().map(|(_, k, d)| (k, d)).unzip();
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
        (Screen::Results, _) => (" on the results screen", results::key_help()),
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
