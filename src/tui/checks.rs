//! The automatic check a matrix cell shows from a run's first answers on, before any rating: the exact-answer
//! tally of each stage answered, or why the task has none.

use crate::plan::Plan;
use crate::rating::auto::{AutoCheck, AutoChecks, Tally};
use crate::rating::results::stage_order;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::scores::tests::one_run_plan;

    #[test]
    fn a_cell_shows_its_check_stage_by_stage_before_any_rating() {
        use crate::rating::auto::{AutoCell, NoCheck};
        let plan = one_run_plan();
        let cell = AutoCell::new;
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
