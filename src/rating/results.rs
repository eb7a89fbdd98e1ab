//! The study's results table: per task, models x stages, each cell the mean over all rubric values, and
//! beside it (never mixed in) the automatic check of the task's answers.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::agreement::{Metric, krippendorff_alpha};
use super::auto::{AutoCheck, AutoChecks, Tally};
use super::journal::AnswerKey;
use super::ratings::Ratings;
use super::rubric::Rubric;
use super::stats::{bootstrap_ci, mean};

/// One standing score record: (rater, answer, criterion -> value).
type ScoreRow<'a> = (&'a str, &'a AnswerKey, &'a BTreeMap<String, f64>);
/// Per (model, stage), each answer's (rater's criterion, value) pairs.
type CellUnits<'a> = BTreeMap<(String, String), BTreeMap<&'a AnswerKey, Vec<(&'a str, f64)>>>;

/// One cell: one model at one stage on one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub task: String,
    pub model: String,
    pub stage: String,
    /// Mean over every rubric value given (all criteria, all answers, all raters): the study's score.
    pub mean: f64,
    /// Answers with at least one score.
    pub n: usize,
    /// Mean per criterion (criteria nobody scored are absent).
    pub criteria: BTreeMap<String, f64>,
    #[serde(skip)]
    pub ci95: Option<(f64, f64)>,
    #[serde(skip)]
    pub change_from_base: Option<f64>,
    /// The score is below the same model's e1 score at a later stage: the study's overfitting signal.
    #[serde(skip)]
    pub falls_after_e1: bool,
}

/// Agreement between raters on one task (only with two or more raters).
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Krippendorff's alpha (ordinal) per criterion, in rubric order.
    pub criteria: Vec<(String, Option<f64>)>,
    /// Alpha over all criteria pooled (each answer x criterion is a unit).
    pub overall: Option<f64>,
    /// Each rater's mean over all values they gave, and how many values.
    pub raters: Vec<(String, f64, usize)>,
}

/// The table of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResults {
    pub task: String,
    /// Every model with a rated or a checked answer (config order, then the others sorted).
    pub models: Vec<String>,
    /// Every stage with a rated or a checked answer, in reading order.
    pub stages: Vec<String>,
    /// The human scores: only where answers were rated.
    pub cells: Vec<Cell>,
    pub agreement: Option<Agreement>,
    /// The automatic check of the task's answers, or why it has none.
    pub auto: AutoCheck,
}

impl TaskResults {
    pub fn cell(&self, model: &str, stage: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.model == model && c.stage == stage)
    }

    /// The automatic check of one model at one stage, where its answers were checked.
    pub fn auto_cell(&self, model: &str, stage: &str) -> Option<Tally> {
        self.auto.cell(model, stage)
    }

    /// Every (model, stage) with a human cell or checked answers: models outer, stages inner.
    pub fn cells_in_order(&self) -> impl Iterator<Item = (&String, &String)> {
        self.models.iter().flat_map(move |m| {
            self.stages
                .iter()
                .filter(move |s| self.cell(m, s).is_some() || self.auto_cell(m, s).is_some())
                .map(move |s| (m, s))
        })
    }
}

/// Stages in reading order: base, then e1, e2, ... by number, then anything else by name.
pub fn stage_order(stage: &str) -> (u8, u64, String) {
    if stage == "base" {
        return (0, 0, String::new());
    }
    match stage.strip_prefix('e').and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => (1, n, String::new()),
        None => (2, 0, stage.to_owned()),
    }
}

/// Build the results of every rated task from the standing ratings alone (no automatic check gathered).
/// `model_order` lists models in the order the config names them; models not in it follow, sorted.
pub fn build(ratings: &Ratings, rubric: &Rubric, model_order: &[String]) -> Vec<TaskResults> {
    build_with_checks(ratings, rubric, model_order, &AutoChecks::new())
}

/// Build the results of every task that has ratings or checked answers: the human cells from the
/// ratings, the automatic check from `checks` (a task absent from it says it has none).
pub fn build_with_checks(
    ratings: &Ratings,
    rubric: &Rubric,
    model_order: &[String],
    checks: &AutoChecks,
) -> Vec<TaskResults> {
    let mut by_task: BTreeMap<String, Vec<ScoreRow<'_>>> = BTreeMap::new();
    for ((rater, key), rec) in ratings.all_scores() {
        by_task
            .entry(key.item.task.clone())
            .or_default()
            .push((rater.as_str(), key, &rec.scores));
    }
    for (task, check) in checks {
        if !check.cells().is_empty() {
            by_task.entry(task.clone()).or_default();
        }
    }
    by_task
        .into_iter()
        .map(|(task, rows)| {
            let auto = checks
                .get(&task)
                .cloned()
                .unwrap_or_else(AutoCheck::not_gathered);
            task_results(task, &rows, rubric, model_order, auto)
        })
        .collect()
}

fn task_results(
    task: String,
    rows: &[ScoreRow<'_>],
    rubric: &Rubric,
    model_order: &[String],
    auto: AutoCheck,
) -> TaskResults {
    let mut cells_units: CellUnits<'_> = BTreeMap::new();
    for &(_, key, scores) in rows {
        let unit = cells_units
            .entry((key.model.clone(), key.stage.clone()))
            .or_default()
            .entry(key)
            .or_default();
        unit.extend(
            scores
                .iter()
                .filter(|(c, _)| rubric.index_of(c).is_some())
                .map(|(c, v)| (c.as_str(), *v)),
        );
    }
    let mut cells: Vec<Cell> = cells_units
        .iter()
        .filter_map(|((model, stage), units)| {
            let values: Vec<f64> = units.values().flatten().map(|(_, v)| *v).collect();
            let criteria = rubric
                .criteria
                .iter()
                .filter_map(|c| {
                    let vs: Vec<f64> = units
                        .values()
                        .flatten()
                        .filter(|(n, _)| n == c)
                        .map(|(_, v)| *v)
                        .collect();
                    mean(&vs).map(|m| (c.clone(), m))
                })
                .collect();
            let unit_values: Vec<Vec<f64>> = units
                .values()
                .map(|u| u.iter().map(|(_, v)| *v).collect())
                .collect();
            Some(Cell {
                task: task.clone(),
                model: model.clone(),
                stage: stage.clone(),
                mean: mean(&values)?,
                n: units.values().filter(|u| !u.is_empty()).count(),
                criteria,
                ci95: bootstrap_ci(&unit_values),
                change_from_base: None,
                falls_after_e1: false,
            })
        })
        .collect();
    let lookup: BTreeMap<(String, String), f64> = cells
        .iter()
        .map(|c| ((c.model.clone(), c.stage.clone()), c.mean))
        .collect();
    for c in &mut cells {
        if c.stage != "base" {
            c.change_from_base = lookup
                .get(&(c.model.clone(), "base".to_owned()))
                .map(|b| c.mean - b);
        }
        let after_e1 = stage_order(&c.stage) > stage_order("e1");
        if let Some(e1) = lookup.get(&(c.model.clone(), "e1".to_owned())) {
            c.falls_after_e1 = after_e1 && c.mean < *e1 - 1e-9;
        }
    }
    let present: BTreeSet<&String> = cells
        .iter()
        .map(|c| &c.model)
        .chain(auto.cells().iter().map(|c| &c.model))
        .collect();
    let mut models: Vec<String> = model_order
        .iter()
        .filter(|m| present.contains(m))
        .cloned()
        .collect();
    models.extend(
        present
            .iter()
            .filter(|m| !model_order.contains(m))
            .map(|m| (*m).clone()),
    );
    let mut stages: Vec<String> = cells
        .iter()
        .map(|c| c.stage.clone())
        .chain(auto.cells().iter().map(|c| c.stage.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    stages.sort_by_key(|s| stage_order(s));
    let agreement = agreement(rows, rubric);
    TaskResults {
        task,
        models,
        stages,
        cells,
        agreement,
        auto,
    }
}

fn agreement(rows: &[ScoreRow<'_>], rubric: &Rubric) -> Option<Agreement> {
    let raters: BTreeSet<&str> = rows.iter().map(|(r, _, _)| *r).collect();
    if raters.len() < 2 {
        return None;
    }
    let mut units: BTreeMap<(&AnswerKey, &str), Vec<f64>> = BTreeMap::new();
    for &(_, key, scores) in rows {
        for c in &rubric.criteria {
            if let Some(v) = scores.get(c) {
                units.entry((key, c.as_str())).or_default().push(*v);
            }
        }
    }
    let alpha_of = |filter: &dyn Fn(&str) -> bool| {
        let us: Vec<Vec<f64>> = units
            .iter()
            .filter(|((_, c), _)| filter(c))
            .map(|(_, v)| v.clone())
            .collect();
        krippendorff_alpha(&us, Metric::Ordinal)
    };
    let criteria = rubric
        .criteria
        .iter()
        .map(|c| (c.clone(), alpha_of(&|x| x == c)))
        .collect();
    let overall = alpha_of(&|_| true);
    let raters = raters
        .into_iter()
        .filter_map(|r| {
            let vs: Vec<f64> = rows
                .iter()
                .filter(|(who, _, _)| *who == r)
                .flat_map(|(_, _, s)| {
                    s.iter()
                        .filter(|(c, _)| rubric.index_of(c).is_some())
                        .map(|(_, v)| *v)
                })
                .collect();
            mean(&vs).map(|m| (r.to_owned(), m, vs.len()))
        })
        .collect();
    Some(Agreement {
        criteria,
        overall,
        raters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::journal::{JournalLine, test_score_line};

    fn line(rater: &str, model: &str, stage: &str, q: &str, vals: [f64; 3]) -> JournalLine {
        test_score_line(rater, "bio", model, stage, q, vals)
    }

    #[test]
    fn cells_are_means_over_all_values_with_change_and_overfitting_flag() {
        let lines = [
            line("s", "qwen", "base", "1", [5., 5., 5.]),
            line("s", "qwen", "base", "2", [5., 4., 5.]),
            line("s", "qwen", "e1", "1", [5., 4., 4.]),
            line("s", "qwen", "e1", "2", [4., 4., 4.]),
            line("s", "qwen", "e3", "1", [3., 3., 3.]),
            line("s", "qwen", "e3", "2", [4., 4., 3.]),
        ];
        let r = Ratings::replay(&lines);
        let t = &build(&r, &Rubric::default(), &[])[0];
        assert_eq!(t.stages, ["base", "e1", "e3"]);
        let base = t.cell("qwen", "base").unwrap();
        assert!((base.mean - 29.0 / 6.0).abs() < 1e-12);
        assert_eq!(base.n, 2);
        assert_eq!(base.criteria["Correct Reasoning"], 4.5);
        let e1 = t.cell("qwen", "e1").unwrap();
        assert!((e1.change_from_base.unwrap() - (25.0 - 29.0) / 6.0).abs() < 1e-12);
        assert!(!e1.falls_after_e1);
        assert!(t.cell("qwen", "e3").unwrap().falls_after_e1);
        assert!(t.agreement.is_none());
    }

    #[test]
    fn two_raters_give_agreement_and_rater_means() {
        let mut lines = Vec::new();
        for q in 0..6 {
            let v = f64::from(q % 6);
            lines.push(line("ann", "m", "e1", &q.to_string(), [v, v, 5. - v]));
            lines.push(line("bob", "m", "e1", &q.to_string(), [v, v, 5. - v]));
        }
        let t = &build(&Ratings::replay(&lines), &Rubric::default(), &[])[0];
        let a = t.agreement.as_ref().unwrap();
        assert_eq!(a.overall, Some(1.0));
        assert!(a.criteria.iter().all(|(_, x)| *x == Some(1.0)));
        assert_eq!(a.raters.len(), 2);
        assert_eq!(a.raters[0], ("ann".to_string(), 2.5, 18));
    }

    #[test]
    fn checked_answers_add_their_models_and_stages_without_touching_the_human_cells() {
        use crate::rating::auto::{AutoCell, NoCheck};
        let lines = [test_score_line("s", "arith", "qwen", "e1", "1", [4.; 3])];
        let cell = |model, stage, correct| AutoCell::new(model, stage, correct, 10);
        let checks = AutoChecks::from([
            (
                "arith".to_string(),
                AutoCheck::Checked(vec![cell("qwen", "base", 2), cell("qwen", "e3", 7)]),
            ),
            (
                "math".to_string(),
                AutoCheck::Checked(vec![cell("llama", "e1", 3)]),
            ),
            (
                "chem".to_string(),
                AutoCheck::Unchecked(NoCheck::NotNumeric),
            ),
        ]);
        let tasks = build_with_checks(
            &Ratings::replay(&lines),
            &Rubric::default(),
            &["llama".into(), "qwen".into()],
            &checks,
        );
        let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(
            names,
            ["arith", "math"],
            "a task with neither ratings nor checked answers is left out"
        );
        let arith = &tasks[0];
        assert_eq!(arith.stages, ["base", "e1", "e3"]);
        assert_eq!(arith.cells.len(), 1, "the check adds no human cell");
        assert_eq!(arith.cell("qwen", "e1").unwrap().mean, 4.0);
        assert_eq!(
            arith.auto_cell("qwen", "e3"),
            Some(Tally { correct: 7, n: 10 })
        );
        assert_eq!(arith.auto_cell("qwen", "e1"), None);
        assert_eq!(tasks[1].models, ["llama"]);
        let rated_only = build(&Ratings::replay(&lines), &Rubric::default(), &[]);
        assert_eq!(rated_only[0].auto, AutoCheck::not_gathered());
    }

    #[test]
    fn stage_order_puts_base_first_and_epochs_by_number() {
        let mut s = vec!["e10", "zz", "e3", "base", "e1"];
        s.sort_by_key(|x| stage_order(x));
        assert_eq!(s, ["base", "e1", "e3", "e10", "zz"]);
    }
}
