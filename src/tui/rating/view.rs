//! Drawing the rating screen: question and reference on top, answers A and B side by side, scores below.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use super::keys::hint_line;
use super::{Mode, RatingScreen, Side};
use crate::rating::session::{ItemSide, RatingItem};

impl RatingScreen {
    /// Draw the screen into `area`.
    pub fn render(&self, frame: &mut Frame, area: Rect) {
        let [top, answers, footer] = Layout::vertical([
            Constraint::Percentage(30),
            Constraint::Min(8),
            Constraint::Length(4),
        ])
        .areas(area);
        let Some(item) = self.current() else {
            let p = Paragraph::new(vec![
                Line::from("Nothing to rate: no question has answers at both stages of this pair yet."),
                Line::from(
                    "Run `qlab eval` to write the answers, or let the sweep finish: each run answers \
                     its question set after training (datasets need a `questions` file).",
                ),
            ])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Rate "));
            frame.render_widget(p, area);
            return;
        };
        self.render_question(frame, top, item);
        let [a, b] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(answers);
        self.render_side(frame, a, item, Side::A);
        self.render_side(frame, b, item, Side::B);
        self.render_footer(frame, footer, item);
    }

    fn render_question(&self, frame: &mut Frame, area: Rect, item: &RatingItem) {
        let [q, r] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(area);
        let title = format!(
            " Question {} · {} · {} ",
            item.question.question, item.question.questions, item.model
        );
        let question = Paragraph::new(item.text.as_str())
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title));
        frame.render_widget(question, q);
        let flagged = self.ratings.reference_wrong(&self.rater, &item.question);
        let title = if flagged {
            " Reference  [flagged: reference is wrong] "
        } else {
            " Reference "
        };
        let style = if flagged {
            Style::new().red()
        } else {
            Style::new()
        };
        let reference = Paragraph::new(item.reference.as_str())
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title).border_style(style));
        frame.render_widget(reference, r);
    }

    fn render_side(&self, frame: &mut Frame, area: Rect, item: &RatingItem, side: Side) {
        let focused = side == self.side;
        let data: &ItemSide = self.side_of(item, side);
        let letter = if side == Side::A { "A" } else { "B" };
        let title = if self.revealed(item) {
            format!(" {letter} = {} ", data.stage)
        } else {
            format!(" {letter} ")
        };
        let border = if focused {
            Style::new().add_modifier(Modifier::BOLD).cyan()
        } else {
            Style::new()
        };
        let block = Block::bordered().title(title).border_style(border);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let rows = self.rubric.criteria.len() as u16 + 1 + u16::from(item.numeric);
        let [text, scores] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(rows)]).areas(inner);
        let answer = Paragraph::new(data.answer.as_str())
            .wrap(Wrap { trim: false })
            .scroll((self.scroll[if side == Side::A { 0 } else { 1 }], 0));
        frame.render_widget(answer, text);
        let given = self.scores_of(item, data);
        let width = self
            .rubric
            .criteria
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let mut lines: Vec<Line> = vec![Line::from("─".repeat(scores.width as usize)).dim()];
        for (i, c) in self.rubric.criteria.iter().enumerate() {
            let value = given
                .and_then(|g| g.get(c))
                .map_or("-".to_owned(), |v| format_score(*v));
            let marker = if focused && i == self.criterion {
                "> "
            } else {
                "  "
            };
            let style = if focused && i == self.criterion {
                Style::new().bold()
            } else {
                Style::new()
            };
            lines.push(Line::from(vec![
                Span::raw(marker),
                Span::styled(format!("{c:<width$}  {value}"), style),
            ]));
        }
        if let Some(hint) = self.math_hint(item, data) {
            lines.push(Line::from(format!("  check: {}", hint.label())).italic());
        } else if item.numeric {
            lines.push(Line::from("  check: shown after scoring").dim());
        }
        frame.render_widget(Paragraph::new(lines), scores);
    }

    fn render_footer(&self, frame: &mut Frame, area: Rect, item: &RatingItem) {
        let (rated, total) = self.progress();
        let (x, y) = (item.a.stage.as_str(), item.b.stage.as_str());
        let mut pair = format!("{} vs {}", x.min(y), x.max(y));
        if !self.revealed(item) {
            pair.push_str(" (blind)");
        }
        let mut status = format!(
            "item {}/{} · rated {rated}/{total} · rater {} · {pair}",
            self.index + 1,
            self.items.len(),
            self.rater
        );
        if let Some(s) = &self.status {
            status.push_str(" · ");
            status.push_str(s);
        }
        let note = match &self.mode {
            Mode::Note(text) => format!("note (Enter saves, Esc cancels): {text}_"),
            Mode::Rate => match self.ratings.note(&self.rater, &item.question, &item.model) {
                Some(n) => format!("note: {n}"),
                None => "note: -".to_owned(),
            },
        };
        let hints = hint_line(self.rubric.max.floor() as u32, self.rubric.step == 0.5);
        let lines = vec![
            Line::from(note),
            Line::from(status).bold(),
            Line::from(hints).dim(),
        ];
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: true })
                .block(Block::new().borders(Borders::NONE)),
            area,
        );
    }
}

fn format_score(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
