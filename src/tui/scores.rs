//! The scores a matrix cell shows: once rated, the study's mean over every rubric value of the run's latest
//! rated fine-tuned stage (the base model's score is not the run's); from its first answers on, the
//! automatic check of each stage answered.

use crate::plan::Plan;
use crate::rating::auto::{AutoCheck, AutoChecks, Tally};
use crate::rating::results::{TaskResults, stage_order};

/// The automatic check of one run, as its matrix cell shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCheck {
    /// The run's model on its task, stage by stage in reading order (base first), where answers were
    /// checked.
    Stages(Vec<(String, Tally)>),
    /// The task has no check: why, in a few words.
    None(String),
}

impl RunCheck {
    /// `auto 0→2→7/10` (every stage, when each checked as many answers), else `auto e2 7/10` (the
    /// latest stage); `None` for a task without a check (the cell stays quiet; the detail line says it).
    pub fn cell_text(&self, arrow: &str, every_stage: bool) -> Option<String> {
        let RunCheck::Stages(stages) = self else {
            return None;
        };
        let (stage, last) = stages.last()?;
        let same_n = stages.iter().all(|(_, t)| t.n == last.n);
        if every_stage && same_n && stages.len() > 1 {
            let counts: Vec<String> = stages.iter().map(|(_, t)| t.correct.to_string()).collect();
            return Some(format!("auto {}/{}", counts.join(arrow), last.n));
        }
        Some(format!("auto {stage} {}", last.text()))
    }

    /// `auto base 0/10 e1 2/10 e2 7/10`, or `auto: no automatic check for this task`.
    pub fn detail_text(&self) -> String {
        match self {
            RunCheck::Stages(stages) => {
                let parts: Vec<String> = stages
                    .iter()
                    .map(|(s, t)| format!("{s} {}", t.text()))
                    .collect();
                format!("auto {}", parts.join(" "))
            }
            RunCheck::None(why) => format!("auto: {why}"),
        }
    }
}

/// `(run id, check)` for each run of the plan whose task has a check with answers of its model, or has
/// no check at all.
pub fn run_checks(plan: &Plan, checks: &AutoChecks) -> Vec<(String, RunCheck)> {
    plan.runs
        .iter()
        .filter_map(|run| {
            let check = match checks.get(&run.task)? {
                AutoCheck::Checked(cells) => {
                    let mut stages: Vec<(String, Tally)> = cells
                        .iter()
                        .filter(|c| c.model == run.model)
                        .map(|c| (c.stage.clone(), c.tally))
                        .collect();
                    if stages.is_empty() {
                        return None;
                    }
                    stages.sort_by_key(|(s, _)| stage_order(s));
                    RunCheck::Stages(stages)
                }
                AutoCheck::Unchecked(why) => RunCheck::None(why.to_string()),
            };
            Some((run.id.clone(), check))
        })
        .collect()
}

/// `(run id, score)` for each run of the plan that has ratings of a fine-tuned stage.
pub fn run_scores(plan: &Plan, tasks: &[TaskResults]) -> Vec<(String, f64)> {
    plan.runs
        .iter()
        .filter_map(|run| {
            let task = tasks.iter().find(|t| t.task == run.task)?;
            let latest = task
                .cells
                .iter()
                .filter(|c| c.model == run.model && c.stage != "base" && c.n > 0)
                .max_by_key(|c| stage_order(&c.stage))?;
            Some((run.id.clone(), latest.mean))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::rating::results::Cell;

    fn cell(model: &str, stage: &str, mean: f64, n: usize) -> Cell {
        Cell {
            task: "math".into(),
            model: model.into(),
            stage: stage.into(),
            mean,
            n,
            criteria: BTreeMap::new(),
            ci95: None,
            change_from_base: None,
            falls_after_e1: false,
        }
    }

    fn plan() -> Plan {
        let config = Config::from_source(
            Path::new("experiments.toml"),
            r#"
[[model]]
id = "m"
path = "m.gguf"
[[dataset]]
id = "d"
task = "math"
path = "d.jsonl"
template = "{q}\n### Response:\n{a}"
[matrix]
models = ["m"]
datasets = ["d"]
"#
            .into(),
        )
        .unwrap();
        Plan::from_config(&config)
    }

    #[test]
    fn a_cell_shows_its_latest_rated_fine_tuned_stage() {
        let plan = plan();
        let tasks = vec![TaskResults {
            task: "math".into(),
            models: vec!["m".into()],
            stages: vec!["base".into(), "e1".into(), "e2".into(), "e10".into()],
            cells: vec![
                cell("m", "base", 4.5, 3),
                cell("m", "e1", 2.0, 3),
                cell("m", "e2", 3.5, 3),
                cell("m", "e10", 1.0, 0),
            ],
            agreement: None,
            auto: AutoCheck::not_gathered(),
        }];
        assert_eq!(
            run_scores(&plan, &tasks),
            vec![(plan.runs[0].id.clone(), 3.5)]
        );
        assert!(run_scores(&plan, &[]).is_empty(), "no ratings, no score");
    }

    #[test]
    fn a_cell_shows_its_check_stage_by_stage_before_any_rating() {
        use crate::rating::auto::{AutoCell, NoCheck};
        let plan = plan();
        let cell = |model: &str, stage: &str, correct, n| AutoCell {
            model: model.into(),
            stage: stage.into(),
            tally: Tally { correct, n },
        };
        let checks = AutoChecks::from([(
            "math".to_string(),
            AutoCheck::Checked(vec![
                cell("m", "e10", 7, 10),
                cell("m", "base", 0, 10),
                cell("m", "e2", 2, 10),
                cell("other", "e1", 9, 10),
            ]),
        )]);
        let got = run_checks(&plan, &checks);
        assert_eq!(got.len(), 1);
        let check = &got[0].1;
        assert_eq!(check.cell_text("→", true).unwrap(), "auto 0→2→7/10");
        assert_eq!(check.cell_text("→", false).unwrap(), "auto e10 7/10");
        assert_eq!(check.detail_text(), "auto base 0/10 e2 2/10 e10 7/10");
        let uneven = RunCheck::Stages(vec![
            ("base".into(), Tally { correct: 1, n: 10 }),
            ("e1".into(), Tally { correct: 3, n: 4 }),
        ]);
        assert_eq!(uneven.cell_text(">", true).unwrap(), "auto e1 3/4");

        let no_answers_yet =
            AutoChecks::from([("math".to_string(), AutoCheck::Checked(Vec::new()))]);
        assert!(run_checks(&plan, &no_answers_yet).is_empty());
        let bio = AutoChecks::from([(
            "math".to_string(),
            AutoCheck::Unchecked(NoCheck::NotNumeric),
        )]);
        let none = &run_checks(&plan, &bio)[0].1;
        assert_eq!(none.cell_text("→", true), None);
        assert_eq!(none.detail_text(), "auto: no automatic check for this task");
    }
}
