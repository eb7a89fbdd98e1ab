//! The results screen as a self-contained component: per task, models x stages, with the selected
//! model's per-criterion means, counts, intervals and, with two or more raters, their agreement; below
//! the human scores, the automatic check of the same cells (or why the task has none); or the human scores
//! as a grouped bar chart.

mod chart;

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell as TableCell, Paragraph, Row, Table, Tabs, Wrap};

use crate::rating::auto::{AutoCheck, LABEL, Tally};
use crate::rating::results::TaskResults;
use crate::rating::results_format::{auto_ci_text, auto_text, cell_text};
use crate::tui::keymap::{Binding as KeyBinding, bind};
use crate::tui::theme::Theme;

/// What the host should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultsAction {
    None,
    Quit,
}

/// What a key asks the results screen to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    NextTask,
    PrevTask,
    NextModel,
    PrevModel,
    ToggleChart,
    Quit,
}

/// One binding of this screen (see [`KeyBinding`]).
pub type Binding = KeyBinding<Command>;

/// The screen's keys, in the order the hint line shows them (a row without a hint is named by the row above).
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    bind(&[KeyCode::Tab, KeyCode::Char('l'), KeyCode::Right], Command::NextTask, "next task").hint_as("Tab/h/l", "task"),
    bind(&[KeyCode::BackTab, KeyCode::Char('h'), KeyCode::Left], Command::PrevTask, "previous task"),
    bind(&[KeyCode::Char('j'), KeyCode::Down], Command::NextModel, "next model").hint_as("j/k", "model"),
    bind(&[KeyCode::Char('k'), KeyCode::Up], Command::PrevModel, "previous model"),
    bind(&[KeyCode::Char('c')], Command::ToggleChart, "switch between the table and the chart").hint("chart"),
    bind(&[KeyCode::Char('q'), KeyCode::Esc], Command::Quit, "quit").hint("quit"),
];

/// The command of a key press, if it has one.
pub fn command_for(key: &KeyEvent) -> Option<Command> {
    crate::tui::keymap::command_in(BINDINGS, key)
}

/// `(keys, what they do)` for every labelled binding, as the hint line and a help overlay show them.
pub fn key_help() -> Vec<(String, &'static str)> {
    BINDINGS
        .iter()
        .filter_map(|b| b.hint_entry(false))
        .collect()
}

/// What the table's marks mean, shown after the keys.
const LEGEND: &[&str] = &["mean (vs base)", "! falls after e1"];

/// State of the results screen.
#[derive(Debug, Clone)]
pub struct ResultsScreen {
    tasks: Vec<TaskResults>,
    /// Final training loss per (task, model), shown beside the scores when the host knows it.
    losses: BTreeMap<(String, String), f64>,
    task: usize,
    row: usize,
    /// Bars instead of the table.
    chart: bool,
}

impl ResultsScreen {
    pub fn new(tasks: Vec<TaskResults>) -> Self {
        ResultsScreen {
            tasks,
            losses: BTreeMap::new(),
            task: 0,
            row: 0,
            chart: false,
        }
    }

    /// Show each run's final loss beside its scores (keyed by task and model).
    pub fn with_losses(mut self, losses: BTreeMap<(String, String), f64>) -> Self {
        self.losses = losses;
        self
    }

    /// Replace the figures (after new ratings or finished runs), keeping the selection where possible.
    pub fn update(&mut self, tasks: Vec<TaskResults>, losses: BTreeMap<(String, String), f64>) {
        self.tasks = tasks;
        self.losses = losses;
        self.task = self.task.min(self.tasks.len().saturating_sub(1));
        self.row = self.row.min(self.rows().saturating_sub(1));
    }

    fn rows(&self) -> usize {
        self.tasks.get(self.task).map_or(0, |t| t.models.len())
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> ResultsAction {
        let n = self.tasks.len();
        match command_for(&key) {
            Some(Command::NextTask) if n > 0 => {
                self.task = (self.task + 1) % n;
                self.row = 0;
            }
            Some(Command::PrevTask) if n > 0 => {
                self.task = (self.task + n - 1) % n;
                self.row = 0;
            }
            Some(Command::NextModel) => {
                self.row = (self.row + 1).min(self.rows().saturating_sub(1))
            }
            Some(Command::PrevModel) => self.row = self.row.saturating_sub(1),
            Some(Command::ToggleChart) => self.chart = !self.chart,
            Some(Command::Quit) => return ResultsAction::Quit,
            _ => {}
        }
        ResultsAction::None
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let Some(task) = self.tasks.get(self.task) else {
            let p = Paragraph::new(vec![
                Line::from("No ratings yet."),
                Line::from(
                    "Rate answers on the Rating screen or with `qlab rate`; the answers come from \
                     `qlab eval`, or from the sweep once its runs finish.",
                ),
            ])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Results "));
            frame.render_widget(p, area);
            return;
        };
        if self.chart {
            self.render_chart(frame, area, task, theme);
            return;
        }
        let detail_rows = task.stages.len() as u16
            + task
                .agreement
                .as_ref()
                .map_or(0, |a| 1 + a.criteria.len() as u16 + a.raters.len() as u16);
        let [tabs, table, detail, hints] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(detail_rows + 2),
            Constraint::Length(1),
        ])
        .areas(area);
        self.render_tabs(frame, tabs, theme);
        self.render_table(frame, table, task);
        self.render_detail(frame, detail, task);
        render_hints(frame, hints, LEGEND, theme);
    }

    fn render_tabs(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let titles: Vec<String> = self.tasks.iter().map(|t| t.task.clone()).collect();
        frame.render_widget(
            Tabs::new(titles)
                .select(self.task)
                .divider(if theme.ascii { "|" } else { "│" })
                .highlight_style(Style::new().bold().reversed()),
            area,
        );
    }

    /// The chart view: the task tabs with the bars' scale (and which models show when not all fit),
    /// the bars, the keys.
    fn render_chart(&self, frame: &mut Frame, area: Rect, task: &TaskResults, theme: &Theme) {
        let [tabs, bars, hints] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(area);
        self.render_tabs(frame, tabs, theme);
        let shown = chart::render(frame, bars, task, self.row, theme);
        let mut about = format!("bars 0-{}", chart::scale_max(task));
        if let Some((first, last)) = shown {
            about.push_str(&format!(
                "{}models {}-{} of {} (j/k)",
                theme.sep(),
                first + 1,
                last + 1,
                task.models.len()
            ));
        }
        frame.render_widget(Line::from(about).dim().right_aligned(), tabs);
        render_hints(frame, hints, chart::LEGEND, theme);
    }

    fn render_table(&self, frame: &mut Frame, area: Rect, task: &TaskResults) {
        let block = Block::bordered().title(format!(" Results · {} ", task.task));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let has_loss = task
            .models
            .iter()
            .any(|m| self.losses.contains_key(&(task.task.clone(), m.clone())));
        let checked = matches!(task.auto, AutoCheck::Checked(_));
        let models = task.models.len() as u16;
        let [human, heading, auto] = Layout::vertical([
            Constraint::Length(1 + models),
            Constraint::Length(1),
            Constraint::Length(if checked { models } else { 0 }),
        ])
        .areas(inner);
        let mut header: Vec<String> = vec!["model".into()];
        header.extend(task.stages.iter().cloned());
        if has_loss {
            header.push("loss".into());
        }
        let rows = task.models.iter().enumerate().map(|(i, m)| {
            let mut cells: Vec<TableCell> = vec![TableCell::from(m.clone())];
            for s in &task.stages {
                let c = task.cell(m, s);
                let style = if c.is_some_and(|c| c.falls_after_e1) {
                    Style::new().red()
                } else {
                    Style::new()
                };
                cells.push(TableCell::from(cell_text(c)).style(style));
            }
            if has_loss {
                let loss = self.losses.get(&(task.task.clone(), m.clone()));
                cells.push(TableCell::from(
                    loss.map_or("-".into(), |l| format!("{l:.3}")),
                ));
            }
            self.highlight(i, Row::new(cells))
        });
        // Both tables get the same columns (the loss one left empty below), so the stages line up.
        let mut widths = vec![Constraint::Length(18)];
        widths.extend(task.stages.iter().map(|_| Constraint::Length(16)));
        if has_loss {
            widths.push(Constraint::Length(8));
        }
        let table = Table::new(rows, widths.clone()).header(Row::new(header).bold());
        frame.render_widget(table, human);
        frame.render_widget(Line::from(auto_heading(&task.auto)).bold(), heading);
        if checked {
            let rows = task.models.iter().enumerate().map(|(i, m)| {
                let mut cells = vec![TableCell::from(m.clone())];
                cells.extend(task.stages.iter().map(|s| {
                    let tally = task.auto_cell(m, s);
                    TableCell::from(match tally.and_then(Tally::ci95) {
                        Some(_) => format!("{} {}", auto_text(tally), auto_ci_text(tally)),
                        None => auto_text(tally),
                    })
                }));
                self.highlight(i, Row::new(cells))
            });
            frame.render_widget(Table::new(rows, widths), auto);
        }
    }

    fn highlight<'a>(&self, i: usize, row: Row<'a>) -> Row<'a> {
        if i == self.row {
            row.style(Style::new().reversed())
        } else {
            row
        }
    }

    fn render_detail(&self, frame: &mut Frame, area: Rect, task: &TaskResults) {
        let mut lines: Vec<Line> = Vec::new();
        if let Some(model) = task.models.get(self.row) {
            for s in &task.stages {
                let Some(c) = task.cell(model, s) else {
                    continue;
                };
                let ci = c
                    .ci95
                    .map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"));
                let criteria: Vec<String> = c
                    .criteria
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect();
                lines.push(Line::from(format!(
                    "{s}: mean {:.2} · n {} · 95% CI {ci} · {}",
                    c.mean,
                    c.n,
                    criteria.join(" · ")
                )));
            }
        }
        if let Some(a) = &task.agreement {
            let f = |x: Option<f64>| x.map_or("undefined".into(), |v| format!("{v:.3}"));
            lines.push(
                Line::from(format!(
                    "Krippendorff's alpha (ordinal), overall {}",
                    f(a.overall)
                ))
                .bold(),
            );
            lines.extend(
                a.criteria
                    .iter()
                    .map(|(c, x)| Line::from(format!("  {c}: {}", f(*x)))),
            );
            lines.extend(
                a.raters.iter().map(|(r, m, n)| {
                    Line::from(format!("  rater {r}: mean {m:.2} over {n} values"))
                }),
            );
        }
        let title = task
            .models
            .get(self.row)
            .map_or(" Detail ".to_owned(), |m| format!(" {m} "));
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(title)),
            area,
        );
    }
}

/// The line over the automatic check's rows (or in their place): short, to fit at 80 columns.
fn auto_heading(check: &AutoCheck) -> String {
    match check {
        AutoCheck::Checked(_) => format!("{LABEL} · correct/checked · Wilson 95% CI"),
        AutoCheck::Unchecked(why) => format!("auto: {why}"),
    }
}

/// The keys, then what the view's marks mean.
fn render_hints(frame: &mut Frame, area: Rect, legend: &[&str], theme: &Theme) {
    let mut hint: Vec<String> = key_help()
        .into_iter()
        .map(|(keys, what)| format!("{keys} {what}"))
        .collect();
    hint.extend(legend.iter().map(|s| s.to_string()));
    frame.render_widget(Line::from(hint.join(theme.sep())).dim(), area);
}

#[cfg(test)]
mod chart_tests;
#[cfg(test)]
mod tests;
