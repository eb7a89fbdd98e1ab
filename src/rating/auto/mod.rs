//! The automatic check beside the human scores ("auto: exact answer"): per task, model and stage, how many
//! answers' final number equals the reference's ([`math_check`](super::math_check), the Rating screen's
//! hint). It is counted from the answer files alone, so it is there before anyone rates, and it is kept
//! apart from the human mean wherever it is shown.

pub mod gather;

use std::collections::BTreeMap;
use std::fmt;

use super::stats::wilson_ci;

/// The name of the column family, as every output labels it.
pub const LABEL: &str = "auto: exact answer";

/// Answers checked (`n`) and how many had the reference's final number (`correct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub correct: usize,
    pub n: usize,
}

impl Tally {
    /// The fraction correct, 0-1; `None` with nothing checked.
    pub fn fraction(self) -> Option<f64> {
        (self.n > 0).then(|| self.correct as f64 / self.n as f64)
    }

    /// The Wilson score 95% interval of the fraction correct.
    pub fn ci95(self) -> Option<(f64, f64)> {
        wilson_ci(self.correct, self.n)
    }

    /// `7/10`.
    pub fn text(self) -> String {
        format!("{}/{}", self.correct, self.n)
    }
}

/// One cell of the check: a model at a stage on one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoCell {
    pub model: String,
    pub stage: String,
    pub tally: Tally,
}

impl AutoCell {
    /// `correct` of `n` answers of `model` at `stage`.
    pub fn new(model: &str, stage: &str, correct: usize, n: usize) -> Self {
        AutoCell {
            model: model.into(),
            stage: stage.into(),
            tally: Tally { correct, n },
        }
    }
}

/// Why a task has no automatic check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCheck {
    /// Some reference answer has no number to compare (free-text tasks such as bio): nothing is invented.
    NotNumeric,
    /// The references or the answers could not be read (the message says which file and why).
    Unavailable(String),
}

impl NoCheck {
    /// Why, in a few words, after the short form [`Display`](fmt::Display) gives.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            NoCheck::NotNumeric => Some("some reference answers have no number to compare"),
            NoCheck::Unavailable(_) => None,
        }
    }
}

impl fmt::Display for NoCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoCheck::NotNumeric => write!(f, "no automatic check for this task"),
            NoCheck::Unavailable(why) => write!(f, "no automatic check: {why}"),
        }
    }
}

/// The automatic check of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoCheck {
    /// Every reference has a final number: the answers found, counted per model and stage.
    Checked(Vec<AutoCell>),
    Unchecked(NoCheck),
}

impl AutoCheck {
    /// What a task gets when nothing was gathered for it (no planned run names its question set).
    pub fn not_gathered() -> AutoCheck {
        AutoCheck::Unchecked(NoCheck::Unavailable(
            "no question set of this task in the sweep's config".into(),
        ))
    }

    pub fn cells(&self) -> &[AutoCell] {
        match self {
            AutoCheck::Checked(cells) => cells,
            AutoCheck::Unchecked(_) => &[],
        }
    }

    pub fn cell(&self, model: &str, stage: &str) -> Option<Tally> {
        self.cells()
            .iter()
            .find(|c| c.model == model && c.stage == stage)
            .map(|c| c.tally)
    }
}

/// The automatic check of every task of a sweep, by task.
pub type AutoChecks = BTreeMap<String, AutoCheck>;

/// One answer checked against its reference. `questions` and `question` identify it: the same question
/// answered twice at one stage (a model's base answers, shared by its runs of one task) counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub model: String,
    pub stage: String,
    pub questions: String,
    pub question: String,
    pub correct: bool,
}

/// Count checked answers per (model, stage), each question once (the last one given wins).
pub fn tally(answers: impl IntoIterator<Item = Checked>) -> Vec<AutoCell> {
    let mut per_cell: BTreeMap<(String, String), BTreeMap<(String, String), bool>> =
        BTreeMap::new();
    for a in answers {
        per_cell
            .entry((a.model, a.stage))
            .or_default()
            .insert((a.questions, a.question), a.correct);
    }
    per_cell
        .into_iter()
        .map(|((model, stage), answers)| AutoCell {
            model,
            stage,
            tally: Tally {
                correct: answers.values().filter(|c| **c).count(),
                n: answers.len(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(model: &str, stage: &str, q: &str, correct: bool) -> Checked {
        Checked {
            model: model.into(),
            stage: stage.into(),
            questions: "math".into(),
            question: q.into(),
            correct,
        }
    }

    #[test]
    fn cells_count_each_question_once_per_model_and_stage() {
        let cells = tally([
            checked("m", "base", "1", false),
            checked("m", "base", "2", true),
            // The same base answer again (a second run of the model): counted once.
            checked("m", "base", "2", true),
            checked("m", "e1", "1", true),
            checked("m", "e1", "2", true),
            checked("m", "e1", "3", false),
            checked("other", "e1", "1", false),
        ]);
        let got: Vec<(&str, &str, usize, usize)> = cells
            .iter()
            .map(|c| {
                (
                    c.model.as_str(),
                    c.stage.as_str(),
                    c.tally.correct,
                    c.tally.n,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m", "base", 1, 2),
                ("m", "e1", 2, 3),
                ("other", "e1", 0, 1)
            ]
        );
        let check = AutoCheck::Checked(cells);
        assert_eq!(check.cell("m", "e1"), Some(Tally { correct: 2, n: 3 }));
        assert_eq!(check.cell("m", "e3"), None);
    }

    #[test]
    fn a_tally_gives_its_fraction_interval_and_text() {
        let t = Tally { correct: 7, n: 10 };
        assert_eq!(t.fraction(), Some(0.7));
        assert_eq!(t.text(), "7/10");
        let (lo, hi) = t.ci95().unwrap();
        assert!(lo < 0.7 && 0.7 < hi);
        assert_eq!(Tally::default().fraction(), None);
        assert_eq!(Tally::default().ci95(), None);
    }

    #[test]
    fn an_unchecked_task_has_no_cells_and_says_why() {
        let bio = AutoCheck::Unchecked(NoCheck::NotNumeric);
        assert!(bio.cells().is_empty());
        assert!(
            NoCheck::NotNumeric
                .to_string()
                .starts_with("no automatic check for this task")
        );
    }
}
