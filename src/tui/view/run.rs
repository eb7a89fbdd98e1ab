//! The Run screen: live charts (loss raw + smoothed, learning rate, tokens/s, memory) against steps, with
//! each epoch's end marked on the loss plot beside its stage's score once rated, a progress line with an
//! honest ETA, checkpoints, the tail of run.log and the failure reason.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use crate::tui::app::{App, Owner, RunEntry};
use crate::tui::theme::Theme;
use crate::watch::format_duration;

use super::plot::{Curve, Plot};
use super::stage_marks::StageMark;
use super::widgets::{self, fit};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, i: usize, theme: &Theme) {
    let run = &app.runs[i];
    let bottom_h = if area.height >= 36 { 10 } else { 6 };
    let [title, progress, charts, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(bottom_h),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(app, run, theme)), title);
    frame.render_widget(
        Paragraph::new(progress_line(run, theme, progress.width as usize)),
        progress,
    );
    draw_charts(frame, charts, run, theme);
    draw_bottom(frame, bottom, run, theme);
}

fn title_line<'a>(app: &App, run: &RunEntry, theme: &Theme) -> Line<'a> {
    let h = &run.history;
    let mut spans = vec![
        Span::styled(
            format!(
                " {} {}",
                theme.state_icon(h.state),
                widgets::run_state_label(run)
            ),
            theme.state_style(h.state),
        ),
        Span::styled(format!("{}{}", theme.sep(), run.plan.id), theme.title()),
    ];
    if let Some(device) = &h.device {
        spans.push(Span::raw(format!("{}{device}", theme.sep())));
    }
    if let Some(job) = widgets::job_label(app, run) {
        spans.push(Span::raw(format!("{}{job}", theme.sep())));
    }
    if let Owner::Other(pid) = run.owner {
        let mut text = format!("{}read-only, pid {pid}", theme.sep());
        if let Some(ts) = h.last_ts.filter(|_| h.is_active()) {
            text.push_str(&format!(
                ", last event {} ago",
                format_duration((app.now - ts).max(0.0))
            ));
        }
        spans.push(Span::styled(text, theme.warn()));
    }
    Line::from(spans)
}

fn progress_line<'a>(run: &RunEntry, theme: &Theme, width: usize) -> Line<'a> {
    let h = &run.history;
    let left = format!(" step {}/{}  epoch {:.2} ", h.step, h.total_steps, h.epoch);
    let mut right = format!(" {}", widgets::percent(h.progress()));
    if let Some(eta) = widgets::eta(run) {
        right.push_str(&format!("  ETA {eta}"));
    }
    if let Some(rate) = h.eta.steps_per_sec().filter(|_| h.is_active()) {
        right.push_str(&format!("  {rate:.2} steps/s"));
    }
    if let Some(ev) = &h.eval {
        right.push_str(&format!(
            "  eval {} {}/{}",
            ev.stage, ev.answered, ev.questions
        ));
    }
    let bar_w = width.saturating_sub(left.len() + right.len()).max(4);
    Line::from(vec![
        Span::raw(left),
        Span::styled(
            widgets::progress_bar(theme, h.progress(), bar_w),
            theme.state_style(h.state),
        ),
        Span::raw(right),
    ])
}

fn draw_charts(frame: &mut Frame, area: Rect, run: &RunEntry, theme: &Theme) {
    let [top, lower] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let [lr_area, tps_area, mem_area] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(lower);
    let g = &run.history.graphs;
    let (raw, smooth) = (g.loss.points(), g.loss_smoothed.points());
    let loss_title = match (g.loss.last(), g.loss_smoothed.last()) {
        (Some(l), Some(s)) => format!(
            " loss {} (smoothed {}) ",
            widgets::loss(l.1),
            widgets::loss(s.1)
        ),
        _ => " loss ".into(),
    };
    let loss_title = Line::from(vec![
        Span::styled(loss_title, theme.title()),
        Span::styled(
            if theme.ascii { ". raw " } else { "raw " },
            Style::new().fg(Color::DarkGray),
        ),
        Span::styled(
            if theme.ascii {
                "* smoothed "
            } else {
                "smoothed "
            },
            Style::new().fg(Color::Cyan),
        ),
    ]);
    let marks = stage_marks(run);
    frame.render_widget(
        Plot {
            title: loss_title,
            curves: vec![
                Curve {
                    points: &raw,
                    style: Style::new().fg(Color::DarkGray),
                    ascii: '.',
                },
                Curve {
                    points: &smooth,
                    style: Style::new().fg(Color::Cyan),
                    ascii: '*',
                },
            ],
            theme: *theme,
            y_label: widgets::loss,
            marks: &marks,
        },
        top,
    );
    let lr = g.lr.points();
    let lr_title =
        g.lr.last()
            .map_or(" lr ".into(), |p| format!(" lr {:.2e} ", p.1));
    frame.render_widget(
        single(lr_title, &lr, Color::Yellow, theme, |v| format!("{v:.0e}")),
        lr_area,
    );
    let tps = g.tokens_per_s.points();
    let tps_title = g
        .tokens_per_s
        .last()
        .map_or(" tokens/s ".into(), |p| format!(" tokens/s {:.0} ", p.1));
    frame.render_widget(
        single(tps_title, &tps, Color::Green, theme, |v| format!("{v:.0}")),
        tps_area,
    );
    let (rss, vram) = (g.rss_mib.points(), g.vram_used_mib.points());
    let mut mem_title = g.rss_mib.last().map_or(" memory ".into(), |p| {
        format!(" rss {} ", widgets::mib(p.1))
    });
    if let Some(used) = g.vram_used_mib.last() {
        let total = run
            .history
            .vram_total_mib
            .map(|t| format!("/{}", widgets::mib(t)))
            .unwrap_or_default();
        mem_title.push_str(&format!("vram {}{total} ", widgets::mib(used.1)));
    }
    frame.render_widget(
        Plot {
            title: Line::styled(mem_title, theme.title()),
            curves: vec![
                Curve {
                    points: &rss,
                    style: Style::new().fg(Color::Magenta),
                    ascii: '*',
                },
                Curve {
                    points: &vram,
                    style: Style::new().fg(Color::Blue),
                    ascii: 'o',
                },
            ],
            theme: *theme,
            y_label: widgets::mib,
            marks: &[],
        },
        mem_area,
    );
}

fn single<'a>(
    title: String,
    points: &'a [(f64, f64)],
    color: Color,
    theme: &Theme,
    y_label: fn(f64) -> String,
) -> Plot<'a> {
    Plot {
        title: Line::styled(title, theme.title()),
        curves: vec![Curve {
            points,
            style: Style::new().fg(color),
            ascii: '*',
        }],
        theme: *theme,
        y_label,
        marks: &[],
    }
}

/// Where each finished epoch ended (stage e1, e2, ...), with the stage's score once its answers are rated.
fn stage_marks(run: &RunEntry) -> Vec<StageMark> {
    run.history
        .epoch_ends
        .iter()
        .map(|&(epoch, step)| {
            let stage = format!("e{epoch}");
            let score = run
                .scores
                .iter()
                .find(|(s, _)| *s == stage)
                .map(|(_, v)| *v);
            StageMark {
                step: step as f64,
                stage,
                score,
            }
        })
        .collect()
}

fn draw_bottom(frame: &mut Frame, area: Rect, run: &RunEntry, theme: &Theme) {
    let [ckpt_area, log_area] =
        Layout::horizontal([Constraint::Length(30), Constraint::Min(10)]).areas(area);
    let rows = ckpt_area.height.saturating_sub(2) as usize;
    let ckpts = &run.history.checkpoints;
    let lines: Vec<Line> = if ckpts.is_empty() {
        vec![Line::styled("none yet", theme.dim())]
    } else {
        ckpts
            .iter()
            .rev()
            .take(rows)
            .map(|c| {
                let stage = c
                    .stage
                    .as_deref()
                    .map(|s| format!(" [{s}]"))
                    .unwrap_or_default();
                Line::raw(format!(
                    "step {}{stage} {}",
                    c.step,
                    widgets::mib(c.bytes as f64 / 1_048_576.0)
                ))
            })
            .collect()
    };
    let block = Block::bordered()
        .border_set(theme.border())
        .title(format!(" checkpoints ({}) ", ckpts.len()));
    frame.render_widget(Paragraph::new(lines).block(block), ckpt_area);

    let width = log_area.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    let mut used = 0;
    if let Some(reason) = &run.history.reason {
        let label = if run.history.state == crate::store::RunState::Failed {
            "failed"
        } else {
            "stopped"
        };
        let text = format!("{label}: {reason}");
        used = text.chars().count().div_ceil(width.max(1));
        lines.push(Line::styled(text, theme.error()));
    }
    let room = (log_area.height.saturating_sub(2) as usize).saturating_sub(used);
    let from = run.log_tail.len().saturating_sub(room);
    lines.extend(
        run.log_tail[from..]
            .iter()
            .map(|l| Line::raw(fit(l, width))),
    );
    let block = Block::bordered()
        .border_set(theme.border())
        .title(" run.log ");
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        log_area,
    );
}
