//! The Sweep screen: the matrix of models x datasets, one cell per run with its state, progress, last
//! loss, ETA, score and automatic check; a detail line for the selected run.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

use crate::store::RunState;
use crate::tui::app::{App, RunEntry};
use crate::tui::theme::Theme;

use super::widgets::{self, fit};

/// Narrowest a dataset column may get before columns scroll instead.
const MIN_CELL_W: u16 = 24;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let [title, matrix, detail] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(app, theme)), title);
    draw_matrix(frame, matrix, app, theme);
    frame.render_widget(
        Paragraph::new(detail_lines(app, theme, detail.width as usize)),
        detail,
    );
}

fn title_line<'a>(app: &'a App, theme: &Theme) -> Line<'a> {
    let done = app
        .runs
        .iter()
        .filter(|r| r.history.state == RunState::Done)
        .count();
    Line::from(vec![
        Span::styled(
            format!(" qlab{}{}", theme.sep(), app.sweep.name),
            theme.title(),
        ),
        Span::raw(format!(
            "{}{}/{} runs done",
            theme.sep(),
            done,
            app.runs.len()
        )),
        match &app.cluster {
            None => Span::raw(format!(
                "{}runner: {}",
                theme.sep(),
                widgets::control_label(app.control)
            )),
            Some(c) => match &c.stale {
                Some(e) => Span::styled(format!("{}SLURM: stale, {e}", theme.sep()), theme.warn()),
                None if !c.polled => Span::raw(format!("{}SLURM: asking squeue...", theme.sep())),
                None => Span::raw(format!("{}SLURM", theme.sep())),
            },
        },
    ])
}

fn draw_matrix(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let block = Block::bordered()
        .border_set(theme.border())
        .title(" models x datasets ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let model_w = app
        .sweep
        .models
        .iter()
        .map(|m| m.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 24) as u16
        + 1;
    let n = app.sweep.datasets.len().max(1);
    let fits = ((inner.width.saturating_sub(model_w)) / MIN_CELL_W).max(1) as usize;
    let shown = fits.min(n);
    let first = app.cursor.1.saturating_sub(shown - 1).min(n - shown);
    let cell_w = (inner.width.saturating_sub(model_w) / shown as u16)
        .saturating_sub(1)
        .max(8);
    let datasets = &app.sweep.datasets
        [first.min(app.sweep.datasets.len())..(first + shown).min(app.sweep.datasets.len())];

    let mut header = vec![Cell::from("")];
    header.extend(
        datasets
            .iter()
            .map(|d| Cell::from(fit(d, cell_w as usize)).style(theme.title())),
    );
    let rows_h = 3u16;
    let visible_rows = (inner.height.saturating_sub(1) / rows_h).max(1) as usize;
    let first_row = app.cursor.0.saturating_sub(visible_rows - 1);
    let rows = app
        .sweep
        .models
        .iter()
        .enumerate()
        .skip(first_row)
        .take(visible_rows)
        .map(|(mi, model)| {
            let mut cells = vec![Cell::from(fit(model, model_w as usize - 1)).style(theme.title())];
            for (k, _) in datasets.iter().enumerate() {
                let di = first + k;
                let selected = app.cursor == (mi, di);
                let text = match app.run_at(mi, di) {
                    Some(i) => cell_text(app, &app.runs[i], theme, cell_w as usize),
                    None => Text::styled("(not in plan)", theme.dim()),
                };
                let style = if selected {
                    theme.selected()
                } else {
                    Style::new()
                };
                cells.push(Cell::from(text).style(style));
            }
            Row::new(cells).height(rows_h)
        });
    let mut widths = vec![Constraint::Length(model_w)];
    widths.extend(std::iter::repeat_n(
        Constraint::Length(cell_w),
        datasets.len(),
    ));
    let table = Table::new(rows, widths)
        .header(Row::new(header))
        .column_spacing(1);
    frame.render_widget(table, inner);
    if shown < n {
        let more = format!(" {}-{} of {} datasets ", first + 1, first + shown, n);
        let x = area.x + area.width.saturating_sub(more.len() as u16 + 2);
        frame.buffer_mut().set_string(x, area.y, more, theme.dim());
    }
}

fn cell_text<'a>(app: &App, run: &RunEntry, theme: &Theme, w: usize) -> Text<'a> {
    let h = &run.history;
    let state = format!(
        "{} {}",
        theme.state_icon(h.state),
        widgets::run_state_label(run)
    );
    let pct = if h.total_steps > 0 {
        widgets::percent(h.progress())
    } else {
        String::new()
    };
    let first = format!(
        "{:<width$}{pct}",
        fit(&state, w.saturating_sub(pct.len() + 1)),
        width = w - pct.len().min(w)
    );
    let bar = widgets::progress_bar(theme, h.progress(), w);
    let job = widgets::job_short(app, run);
    let mut third: Vec<String> = job.iter().cloned().collect();
    if let Some(loss) = h.last_loss {
        third.push(format!("loss {}", widgets::loss(loss)));
    }
    if let Some(eta) = widgets::eta(run) {
        third.push(format!("ETA {eta}"));
    }
    if let crate::tui::app::Owner::Other(pid) = run.owner {
        third.push(format!("pid {pid}"));
    }
    if let Some(score) = run.score() {
        third.push(format!("score {score:.2}"));
    }
    if let Some(check) = &run.check {
        // Every stage's count when the line has room for it, else the latest stage's.
        let arrow = if theme.ascii { ">" } else { "→" };
        let every = check.cell_text(arrow, true);
        let fits = |text: &str| {
            let mut parts = third.clone();
            parts.push(text.to_owned());
            parts.join(theme.sep()).chars().count() <= w
        };
        if let Some(text) = every
            .filter(|t| fits(t))
            .or_else(|| check.cell_text(arrow, false))
        {
            third.push(text);
        }
    }
    if run.history.state == RunState::Failed {
        third = job.into_iter().collect();
        third.push(
            run.history
                .reason
                .clone()
                .unwrap_or_else(|| "failed".into()),
        );
    }
    let third = fit(&third.join(theme.sep()), w);
    Text::from(vec![
        Line::styled(first, theme.state_style(h.state)),
        Line::styled(bar, theme.state_style(h.state)),
        Line::raw(third),
    ])
}

fn detail_lines<'a>(app: &App, theme: &Theme, width: usize) -> Vec<Line<'a>> {
    let Some(i) = app.selected_run() else {
        return vec![Line::raw("")];
    };
    let run = &app.runs[i];
    let h = &run.history;
    let mut parts = vec![
        run.plan.id.clone(),
        format!("step {}/{}", h.step, h.total_steps),
    ];
    if let Some(owner) = widgets::owner_label(run.owner) {
        parts.push(owner);
    }
    if let Some(job) = widgets::job_label(app, run) {
        parts.push(job);
    }
    if let Some(check) = &run.check {
        parts.push(check.detail_text());
    }
    let mut lines = vec![Line::raw(fit(
        &format!(" {}", parts.join(theme.sep())),
        width,
    ))];
    let hint = run.job.as_ref().and_then(|j| j.marker_hint());
    if let Some(reason) = hint.as_ref().or(h.reason.as_ref()) {
        lines.push(Line::styled(
            fit(&format!(" {reason}"), width),
            theme.error(),
        ));
    }
    lines
}
