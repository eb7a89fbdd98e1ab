//! The ratings as they stand: the journal replayed, undo applied, last write wins.

use std::collections::{BTreeMap, BTreeSet};

use super::journal::{AnswerKey, BlindShown, Entry, JournalLine, QuestionRef};

/// The standing score record of one answer by one rater.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRecord {
    pub scores: BTreeMap<String, f64>,
    pub blind: Option<BlindShown>,
    pub run: Option<String>,
    pub time: String,
}

/// Every rater's standing judgements, rebuilt from journal lines.
#[derive(Debug, Clone, Default)]
pub struct Ratings {
    /// Per rater, the judgements still standing, oldest first (an undo pops the last).
    stacks: BTreeMap<String, Vec<JournalLine>>,
    scores: BTreeMap<(String, AnswerKey), ScoreRecord>,
    notes: BTreeMap<(String, QuestionRef, String), String>,
    reference_wrong: BTreeMap<(String, QuestionRef), bool>,
}

impl Ratings {
    /// Replay journal lines in order.
    pub fn replay<'a>(lines: impl IntoIterator<Item = &'a JournalLine>) -> Self {
        let mut r = Ratings::default();
        for l in lines {
            r.apply(l.clone());
        }
        r
    }

    /// Apply one more journal line (already written to the journal).
    pub fn apply(&mut self, line: JournalLine) {
        if line.entry == Entry::Undo {
            let popped = self.stacks.get_mut(&line.rater).and_then(|s| s.pop());
            if popped.is_some() {
                self.rebuild_views();
            }
            return;
        }
        self.fold(&line);
        self.stacks
            .entry(line.rater.clone())
            .or_default()
            .push(line);
    }

    fn rebuild_views(&mut self) {
        self.scores.clear();
        self.notes.clear();
        self.reference_wrong.clear();
        let lines: Vec<JournalLine> = self.stacks.values().flatten().cloned().collect();
        for l in &lines {
            self.fold(l);
        }
    }

    fn fold(&mut self, line: &JournalLine) {
        let rater = line.rater.clone();
        match &line.entry {
            Entry::Score {
                answer,
                run,
                scores,
                blind,
                ..
            } => {
                let rec = ScoreRecord {
                    scores: scores.clone(),
                    blind: blind.clone(),
                    run: run.clone(),
                    time: line.time.clone(),
                };
                self.scores.insert((rater, answer.clone()), rec);
            }
            Entry::Note { item, model, text } => {
                if text.is_empty() {
                    self.notes.remove(&(rater, item.clone(), model.clone()));
                } else {
                    self.notes
                        .insert((rater, item.clone(), model.clone()), text.clone());
                }
            }
            Entry::ReferenceWrong { item, wrong } => {
                self.reference_wrong.insert((rater, item.clone()), *wrong);
            }
            Entry::Undo => {}
        }
    }

    /// The standing scores of one answer by one rater.
    pub fn score(&self, rater: &str, answer: &AnswerKey) -> Option<&ScoreRecord> {
        self.scores.get(&(rater.to_owned(), answer.clone()))
    }

    /// Every standing score record: ((rater, answer), record).
    pub fn all_scores(&self) -> impl Iterator<Item = (&(String, AnswerKey), &ScoreRecord)> {
        self.scores.iter()
    }

    pub fn note(&self, rater: &str, item: &QuestionRef, model: &str) -> Option<&str> {
        self.notes
            .get(&(rater.to_owned(), item.clone(), model.to_owned()))
            .map(String::as_str)
    }

    pub fn reference_wrong(&self, rater: &str, item: &QuestionRef) -> bool {
        self.reference_wrong
            .get(&(rater.to_owned(), item.clone()))
            .copied()
            .unwrap_or(false)
    }

    /// Questions that at least one rater has flagged as having a wrong reference answer.
    pub fn flagged_references(&self) -> BTreeSet<&QuestionRef> {
        self.reference_wrong
            .iter()
            .filter(|(_, w)| **w)
            .map(|((_, q), _)| q)
            .collect()
    }

    /// Raters with at least one standing score, sorted.
    pub fn raters(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self.scores.keys().map(|(r, _)| r.as_str()).collect();
        set.into_iter().collect()
    }

    /// Whether the rater has a standing judgement to undo.
    pub fn can_undo(&self, rater: &str) -> bool {
        self.stacks.get(rater).is_some_and(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str) -> QuestionRef {
        QuestionRef {
            task: "math".into(),
            questions: "math".into(),
            question: id.into(),
        }
    }
    fn key(id: &str, stage: &str) -> AnswerKey {
        AnswerKey {
            item: q(id),
            model: "m".into(),
            stage: stage.into(),
        }
    }
    fn score(rater: &str, id: &str, stage: &str, v: f64) -> JournalLine {
        let scores = BTreeMap::from([("Helpfulness".to_string(), v)]);
        JournalLine::new(
            rater,
            "t".into(),
            Entry::Score {
                answer: key(id, stage),
                run: None,
                scores,
                blind: None,
                unparsed: BTreeMap::new(),
            },
        )
    }
    fn undo(rater: &str) -> JournalLine {
        JournalLine::new(rater, "t".into(), Entry::Undo)
    }
    fn helpfulness(r: &Ratings, rater: &str, id: &str) -> Option<f64> {
        r.score(rater, &key(id, "e1"))
            .map(|s| s.scores["Helpfulness"])
    }

    #[test]
    fn last_write_wins_and_undo_restores_the_previous_value() {
        let lines = [score("ann", "1", "e1", 2.0), score("ann", "1", "e1", 4.0)];
        let r = Ratings::replay(&lines);
        assert_eq!(helpfulness(&r, "ann", "1"), Some(4.0));
        let mut r = r;
        r.apply(undo("ann"));
        assert_eq!(helpfulness(&r, "ann", "1"), Some(2.0));
        r.apply(undo("ann"));
        assert_eq!(helpfulness(&r, "ann", "1"), None);
        assert!(!r.can_undo("ann"));
        r.apply(undo("ann"));
        assert_eq!(helpfulness(&r, "ann", "1"), None);
    }

    #[test]
    fn undo_touches_only_the_raters_own_latest_judgement() {
        let lines = [
            score("ann", "1", "e1", 3.0),
            score("bob", "1", "e1", 1.0),
            undo("ann"),
        ];
        let r = Ratings::replay(&lines);
        assert_eq!(helpfulness(&r, "ann", "1"), None);
        assert_eq!(helpfulness(&r, "bob", "1"), Some(1.0));
        assert_eq!(r.raters(), ["bob"]);
    }

    #[test]
    fn notes_and_reference_flags_replay_and_undo() {
        let note = |t: &str| {
            JournalLine::new(
                "ann",
                "t".into(),
                Entry::Note {
                    item: q("10"),
                    model: "m".into(),
                    text: t.into(),
                },
            )
        };
        let flag = |w| {
            JournalLine::new(
                "ann",
                "t".into(),
                Entry::ReferenceWrong {
                    item: q("10"),
                    wrong: w,
                },
            )
        };
        let mut r = Ratings::replay(&[note("388 not 252"), flag(true)]);
        assert_eq!(r.note("ann", &q("10"), "m"), Some("388 not 252"));
        assert!(r.reference_wrong("ann", &q("10")));
        assert_eq!(r.flagged_references().len(), 1);
        r.apply(undo("ann"));
        assert!(!r.reference_wrong("ann", &q("10")));
        r.apply(note(""));
        assert_eq!(r.note("ann", &q("10"), "m"), None);
    }
}
