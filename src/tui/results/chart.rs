//! The results screen's chart view: per task, one group of bars per model and in it one bar per stage
//! (base, e1, e3, ...), each bar labelled with its mean and 95% interval, a bar that falls after e1 red and
//! flagged `!`. Horizontal bars, one row each, so that the study's 7 models x 3 stages fit 80x24; with more
//! models than rows the window follows the selected model.

use ratatui::Frame;
use ratatui::layout::{Direction, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::bar;
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, BarGroup};

use crate::rating::results::{Cell, TaskResults};
use crate::tui::theme::Theme;

/// What the chart's bars and marks mean, shown after the keys.
pub const LEGEND: &[&str] = &["mean [95% CI]", "! falls after e1"];

/// Bars of the stages in order: base, e1, e2 or e3, ... (then round again).
const STAGE_COLORS: [Color; 5] = [
    Color::Gray,
    Color::Cyan,
    Color::Blue,
    Color::Magenta,
    Color::Green,
];

/// Longest model name shown; longer ones are cut.
const MODEL_WIDTH: usize = 20;

/// Bars drawn with `#` in ASCII mode (a horizontal bar uses only the full and the empty cell).
const ASCII_BARS: bar::Set = bar::Set {
    full: "#",
    seven_eighths: "#",
    three_quarters: "#",
    five_eighths: "#",
    half: "#",
    three_eighths: "#",
    one_quarter: "#",
    one_eighth: "#",
    empty: " ",
};

/// The chart of one task in `area`, with the selected model's name highlighted. Returns the first and last
/// model shown (0-based) when not all fit.
pub fn render(
    frame: &mut Frame,
    area: Rect,
    task: &TaskResults,
    selected: usize,
    theme: &Theme,
) -> Option<(usize, usize)> {
    let stages = task.stages.len().max(1);
    let rows = usize::from(area.height);
    let (gap, fit) = if task.models.len() * (stages + 1) <= rows + 1 {
        (1, task.models.len())
    } else {
        (0, (rows / stages).max(1))
    };
    let first = selected.saturating_sub(fit.saturating_sub(1));
    let shown = first..(first + fit).min(task.models.len());
    let model_w = task
        .models
        .iter()
        .map(|m| m.chars().count().min(MODEL_WIDTH))
        .max()
        .unwrap_or(0);
    let stage_w = task.stages.iter().map(|s| s.len()).max().unwrap_or(0);
    let scale = scale_max(task);
    let mut chart = BarChart::default()
        .direction(Direction::Horizontal)
        .bar_width(1)
        .bar_gap(0)
        .group_gap(gap)
        .max(hundredths(scale))
        .bar_set(if theme.ascii {
            ASCII_BARS
        } else {
            bar::NINE_LEVELS
        });
    for (i, model) in task.models.iter().enumerate() {
        if !shown.contains(&i) {
            continue;
        }
        let bars: Vec<Bar> = task
            .stages
            .iter()
            .enumerate()
            .map(|(j, stage)| {
                let name = if j == 0 {
                    model.chars().take(MODEL_WIDTH).collect()
                } else {
                    String::new()
                };
                let label = Line::from(format!("{name:<model_w$} {stage:>stage_w$}"));
                let label = if i == selected && j == 0 {
                    label.style(theme.selected())
                } else {
                    label
                };
                stage_bar(
                    task.cell(model, stage),
                    STAGE_COLORS[j % STAGE_COLORS.len()],
                )
                .label(label)
            })
            .collect();
        chart = chart.data(BarGroup::default().bars(&bars));
    }
    frame.render_widget(chart, area);
    let all = shown.start == 0 && shown.end == task.models.len();
    (!all).then(|| (shown.start, shown.end - 1))
}

/// One stage's bar: its length the mean, its text the mean and interval (ASCII only: the widget cuts the
/// text at a byte offset), red and flagged where the score falls after e1.
fn stage_bar<'a>(cell: Option<&Cell>, color: Color) -> Bar<'a> {
    let Some(c) = cell else {
        return Bar::default()
            .value(0)
            .text_value("not rated".into())
            .value_style(Style::new().dim());
    };
    let mut text = match c.ci95 {
        Some((lo, hi)) => format!("{:.2} [{lo:.2}-{hi:.2}]", c.mean),
        None => format!("{:.2}", c.mean),
    };
    let color = if c.falls_after_e1 {
        text.push_str(" !");
        Color::Red
    } else {
        color
    };
    Bar::default()
        .value(hundredths(c.mean.max(0.0)))
        .text_value(text)
        .style(Style::new().fg(color))
        .value_style(Style::new().fg(Color::Black).bg(color))
}

/// The end of the bars' scale: the highest mean or interval bound of the task, rounded up to a whole point
/// (5 for the study's 0-5 rubric), so that bars compare against the scale and not against each other.
pub fn scale_max(task: &TaskResults) -> f64 {
    task.cells
        .iter()
        .map(|c| c.ci95.map_or(c.mean, |(_, hi)| hi.max(c.mean)))
        .fold(1.0, f64::max)
        .ceil()
}

fn hundredths(v: f64) -> u64 {
    (v * 100.0).round() as u64
}
