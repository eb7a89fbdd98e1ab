//! The rating screen as a self-contained component: state, key handling that returns actions, render.
//!
//! The component never writes: a judgement comes back as [`RatingAction::Record`]; the host appends it
//! to the journal and hands the written line back through [`RatingScreen::saved`], so the screen only
//! shows what is on disk.

pub mod keys;
mod view;

use crossterm::event::{KeyCode, KeyEvent};

use crate::rating::journal::{AnswerKey, Entry, JournalLine};
use crate::rating::math_check::{MathHint, check};
use crate::rating::ratings::Ratings;
use crate::rating::rubric::Rubric;
use crate::rating::session::{ItemSide, RatingItem};
use keys::{Command, command_for};

/// Which answer has the focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// What the host should do after a key.
#[derive(Debug, Clone, PartialEq)]
pub enum RatingAction {
    /// Nothing to do (the key was handled, or ignored).
    None,
    /// Append this judgement to the journal, then call [`RatingScreen::saved`].
    Record(Box<Entry>),
    /// Leave the screen.
    Quit,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Rate,
    Note(String),
}

/// State of the rating screen.
#[derive(Debug, Clone)]
pub struct RatingScreen {
    items: Vec<RatingItem>,
    rubric: Rubric,
    rater: String,
    blind: bool,
    ratings: Ratings,
    index: usize,
    side: Side,
    criterion: usize,
    scroll: [u16; 2],
    mode: Mode,
    status: Option<String>,
}

impl RatingScreen {
    /// A screen over `items`, with the journal's standing `ratings`, opened at the first unrated item.
    pub fn new(
        items: Vec<RatingItem>,
        rubric: Rubric,
        rater: &str,
        blind: bool,
        ratings: Ratings,
    ) -> Self {
        let mut s = RatingScreen {
            items,
            rubric,
            rater: rater.to_owned(),
            blind,
            ratings,
            index: 0,
            side: Side::A,
            criterion: 0,
            scroll: [0, 0],
            mode: Mode::Rate,
            status: None,
        };
        if let Some(i) = s.next_unrated_from(0) {
            s.index = i;
        }
        s
    }

    pub fn rater(&self) -> &str {
        &self.rater
    }

    pub fn current(&self) -> Option<&RatingItem> {
        self.items.get(self.index)
    }

    /// (items with every criterion of both answers scored, all items).
    pub fn progress(&self) -> (usize, usize) {
        (
            self.items.iter().filter(|i| self.is_complete(i)).count(),
            self.items.len(),
        )
    }

    /// A judgement the host has written to the journal: it now shows as saved.
    pub fn saved(&mut self, line: JournalLine) {
        let undo = line.entry == Entry::Undo;
        self.ratings.apply(line);
        self.status = Some(if undo {
            "undone".into()
        } else {
            "saved".into()
        });
    }

    /// The host could not write the last judgement: say so, show nothing as saved.
    pub fn save_failed(&mut self, error: &str) {
        self.status = Some(format!("NOT SAVED: {error}"));
    }

    /// The host refused a judgement (for example while an earlier one is still unsaved): say why.
    pub fn refuse(&mut self, why: &str) {
        self.status = Some(why.to_owned());
    }

    /// The screen's keys for this rubric, as its hint line and a help overlay show them.
    pub fn key_help(&self) -> Vec<(String, &'static str)> {
        keys::key_help(self.rubric.max.floor() as u32, self.rubric.step == 0.5)
    }

    /// Whether a note is being typed (every key is text until Enter or Esc).
    pub fn editing_note(&self) -> bool {
        matches!(self.mode, Mode::Note(_))
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> RatingAction {
        if let Mode::Note(text) = &mut self.mode {
            return match key.code {
                KeyCode::Enter => {
                    let text = text.trim().to_owned();
                    self.mode = Mode::Rate;
                    match self.current() {
                        Some(item) => RatingAction::Record(Box::new(Entry::Note {
                            item: item.question.clone(),
                            model: item.model.clone(),
                            text,
                        })),
                        None => RatingAction::None,
                    }
                }
                KeyCode::Esc => {
                    self.mode = Mode::Rate;
                    RatingAction::None
                }
                KeyCode::Backspace => {
                    text.pop();
                    RatingAction::None
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    RatingAction::None
                }
                _ => RatingAction::None,
            };
        }
        let Some(command) = command_for(&key) else {
            return RatingAction::None;
        };
        self.status = None;
        self.run(command)
    }

    fn run(&mut self, command: Command) -> RatingAction {
        let n_criteria = self.rubric.criteria.len();
        match command {
            Command::Score(d) => match self.rubric.score_for_digit(d, false) {
                Some(v) => return self.score(v),
                None => {
                    self.status = Some(format!(
                        "{d} is not on the scale {}..{}",
                        self.rubric.min, self.rubric.max
                    ))
                }
            },
            Command::Half => {
                let current = self
                    .focused_scores()
                    .and_then(|s| s.get(&self.rubric.criteria[self.criterion]).copied());
                match current
                    .map(|v| v + 0.5)
                    .filter(|v| self.rubric.step == 0.5 && self.rubric.accepts(*v))
                {
                    Some(v) => return self.score(v),
                    None => self.status = Some("no half point here".into()),
                }
            }
            Command::SwitchSide => {
                self.side = if self.side == Side::A {
                    Side::B
                } else {
                    Side::A
                }
            }
            Command::SideA => self.side = Side::A,
            Command::SideB => self.side = Side::B,
            Command::NextCriterion => self.criterion = (self.criterion + 1).min(n_criteria - 1),
            Command::PrevCriterion => self.criterion = self.criterion.saturating_sub(1),
            Command::ScrollDown => {
                self.scroll[self.side_index()] = self.scroll[self.side_index()].saturating_add(3)
            }
            Command::ScrollUp => {
                self.scroll[self.side_index()] = self.scroll[self.side_index()].saturating_sub(3)
            }
            Command::NextItem => self.go(self.index + 1),
            Command::PrevItem => self.go(self.index.saturating_sub(1)),
            Command::NextUnrated => match self
                .next_unrated_from(self.index + 1)
                .or_else(|| self.next_unrated_from(0))
            {
                Some(i) => self.go(i),
                None => self.status = Some("every item is rated".into()),
            },
            Command::Undo => {
                if self.ratings.can_undo(&self.rater) {
                    return RatingAction::Record(Box::new(Entry::Undo));
                }
                self.status = Some("nothing to undo".into());
            }
            Command::ToggleReferenceWrong => {
                if let Some(item) = self.current() {
                    let wrong = !self.ratings.reference_wrong(&self.rater, &item.question);
                    return RatingAction::Record(Box::new(Entry::ReferenceWrong {
                        item: item.question.clone(),
                        wrong,
                    }));
                }
            }
            Command::EditNote => {
                if let Some(item) = self.current() {
                    let text = self
                        .ratings
                        .note(&self.rater, &item.question, &item.model)
                        .unwrap_or_default()
                        .to_owned();
                    self.mode = Mode::Note(text);
                }
            }
            Command::Quit => return RatingAction::Quit,
        }
        RatingAction::None
    }

    fn go(&mut self, index: usize) {
        if index < self.items.len() {
            self.index = index;
            self.scroll = [0, 0];
            self.criterion = 0;
            self.side = Side::A;
        }
    }

    fn side_index(&self) -> usize {
        match self.side {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn score(&self, value: f64) -> RatingAction {
        let Some(item) = self.current() else {
            return RatingAction::None;
        };
        let side = self.side_of(item, self.side);
        let mut scores = self.focused_scores().cloned().unwrap_or_default();
        scores.insert(self.rubric.criteria[self.criterion].clone(), value);
        RatingAction::Record(Box::new(Entry::Score {
            answer: answer_key(item, side),
            run: (side.stage != "base").then(|| item.run.clone()),
            scores,
            blind: self.blind.then(|| item.layout()),
            unparsed: Default::default(),
        }))
    }

    fn side_of<'a>(&self, item: &'a RatingItem, side: Side) -> &'a ItemSide {
        match side {
            Side::A => &item.a,
            Side::B => &item.b,
        }
    }

    fn focused_scores(&self) -> Option<&std::collections::BTreeMap<String, f64>> {
        let item = self.current()?;
        self.scores_of(item, self.side_of(item, self.side))
    }

    fn scores_of(
        &self,
        item: &RatingItem,
        side: &ItemSide,
    ) -> Option<&std::collections::BTreeMap<String, f64>> {
        self.ratings
            .score(&self.rater, &answer_key(item, side))
            .map(|r| &r.scores)
    }

    fn is_complete(&self, item: &RatingItem) -> bool {
        [&item.a, &item.b].iter().all(|side| {
            self.scores_of(item, side)
                .is_some_and(|s| self.rubric.criteria.iter().all(|c| s.contains_key(c)))
        })
    }

    fn next_unrated_from(&self, start: usize) -> Option<usize> {
        (start..self.items.len()).find(|&i| !self.is_complete(&self.items[i]))
    }

    /// Whether stage labels (and the math hint) may be shown for the current item.
    fn revealed(&self, item: &RatingItem) -> bool {
        !self.blind || self.is_complete(item)
    }

    fn math_hint(&self, item: &RatingItem, side: &ItemSide) -> Option<MathHint> {
        (item.numeric && self.revealed(item)).then(|| check(&side.answer, &item.reference))
    }
}

fn answer_key(item: &RatingItem, side: &ItemSide) -> AnswerKey {
    AnswerKey {
        item: item.question.clone(),
        model: item.model.clone(),
        stage: side.stage.clone(),
    }
}

#[cfg(test)]
mod tests;
