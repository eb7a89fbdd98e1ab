//! The scores a run shows once rated: the study's mean over every rubric value of each of the run's rated
//! fine-tuned stages (the base model's score is not the run's). The Sweep screen shows the latest, the
//! Run screen each one beside its stage's marker.

use crate::plan::Plan;
use crate::rating::results::{TaskResults, stage_order};

/// A rated run's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScores {
    pub run: String,
    /// `(stage, score)` of each rated fine-tuned stage, in stage order (never empty).
    pub stages: Vec<(String, f64)>,
}

/// The scores of each run of the plan that has ratings of a fine-tuned stage.
pub fn run_scores(plan: &Plan, tasks: &[TaskResults]) -> Vec<RunScores> {
    plan.runs
        .iter()
        .filter_map(|run| {
            let task = tasks.iter().find(|t| t.task == run.task)?;
            let mut rated: Vec<_> = task
                .cells
                .iter()
                .filter(|c| c.model == run.model && c.stage != "base" && c.n > 0)
                .collect();
            rated.sort_by_key(|c| stage_order(&c.stage));
            let stages: Vec<(String, f64)> = rated
                .into_iter()
                .map(|c| (c.stage.clone(), c.mean))
                .collect();
            (!stages.is_empty()).then(|| RunScores {
                run: run.id.clone(),
                stages,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// One model on one math dataset: a plan of one run.
    pub(crate) fn one_run_plan() -> Plan {
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
    fn a_run_scores_each_rated_fine_tuned_stage_in_stage_order() {
        let plan = one_run_plan();
        let tasks = vec![TaskResults {
            task: "math".into(),
            models: vec!["m".into()],
            stages: vec!["base".into(), "e1".into(), "e2".into(), "e10".into()],
            cells: vec![
                cell("m", "base", 4.5, 3),
                cell("m", "e2", 3.5, 3),
                cell("m", "e1", 2.0, 3),
                cell("m", "e10", 1.0, 0),
            ],
            agreement: None,
            auto: crate::rating::auto::AutoCheck::not_gathered(),
        }];
        let scores = run_scores(&plan, &tasks);
        assert_eq!(
            scores,
            vec![RunScores {
                run: plan.runs[0].id.clone(),
                stages: vec![("e1".into(), 2.0), ("e2".into(), 3.5)],
            }]
        );
        assert!(run_scores(&plan, &[]).is_empty(), "no ratings, no score");
    }
}
