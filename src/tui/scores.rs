//! The score a matrix cell shows once rated: the study's mean over every rubric value of the run's latest
//! rated fine-tuned stage (the base model's score is not the run's).

use crate::plan::Plan;
use crate::rating::results::{TaskResults, stage_order};

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

    #[test]
    fn a_cell_shows_its_latest_rated_fine_tuned_stage() {
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
        let plan = Plan::from_config(&config);
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
        }];
        assert_eq!(
            run_scores(&plan, &tasks),
            vec![(plan.runs[0].id.clone(), 3.5)]
        );
        assert!(run_scores(&plan, &[]).is_empty(), "no ratings, no score");
    }
}
