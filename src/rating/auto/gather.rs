//! Reading what the automatic check needs from a sweep: each planned run's answers at every stage found on
//! disk (run answers, base answers, and the study import's, which lie in the same places) checked against
//! the references of its question set.

use std::collections::BTreeMap;

use super::{AutoCheck, AutoChecks, Checked, NoCheck, tally};
use crate::rating::math_check::{MathHint, check};
use crate::rating::session::{QuestionSetText, RatedRun, answered_stages, load_stage};
use crate::store::SweepPaths;

/// A planned run as the check reads it: its task, where its answers lie, and its question set (or why
/// that could not be read).
#[derive(Debug, Clone, PartialEq)]
pub struct RunToCheck {
    pub task: String,
    pub run: RatedRun,
    pub set: Result<QuestionSetText, String>,
}

/// The check of every task the runs name. A task is checked only when every one of its runs' question
/// sets is numeric ([`references_are_numeric`](crate::rating::math_check::references_are_numeric), the
/// decision the Rating screen's hint uses) and everything could be read; otherwise it says why not.
/// An answer whose question is not in the set is left out; one with no number counts as not correct.
pub fn gather(sweep: &SweepPaths, runs: &[RunToCheck]) -> AutoChecks {
    let mut per_task: BTreeMap<&str, Result<Vec<Checked>, NoCheck>> = BTreeMap::new();
    for r in runs {
        let slot = per_task.entry(&r.task).or_insert_with(|| Ok(Vec::new()));
        if slot.is_err() {
            continue;
        }
        match checked_answers(sweep, r) {
            Ok(found) => {
                if let Ok(all) = slot {
                    all.extend(found);
                }
            }
            Err(why) => *slot = Err(why),
        }
    }
    per_task
        .into_iter()
        .map(|(task, answers)| {
            let check = match answers {
                Ok(answers) => AutoCheck::Checked(tally(answers)),
                Err(why) => AutoCheck::Unchecked(why),
            };
            (task.to_owned(), check)
        })
        .collect()
}

fn checked_answers(sweep: &SweepPaths, r: &RunToCheck) -> Result<Vec<Checked>, NoCheck> {
    let set = r
        .set
        .as_ref()
        .map_err(|why| NoCheck::Unavailable(why.clone()))?;
    if !set.numeric {
        return Err(NoCheck::NotNumeric);
    }
    let references: BTreeMap<&str, &str> = set
        .questions
        .iter()
        .map(|q| (q.id.as_str(), q.reference.as_str()))
        .collect();
    let unreadable = |e: &dyn std::fmt::Display| NoCheck::Unavailable(e.to_string());
    let mut out = Vec::new();
    for stage in answered_stages(sweep, &r.run).map_err(|e| unreadable(&e))? {
        let answers = load_stage(sweep, &r.run, &stage).map_err(|e| unreadable(&e))?;
        for (question, a) in answers {
            let Some(reference) = references.get(question.as_str()) else {
                continue;
            };
            out.push(Checked {
                model: r.run.model.clone(),
                stage: stage.clone(),
                questions: set.id.clone(),
                question,
                correct: check(&a.answer, reference) == MathHint::Matches,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::answers::{AnswerRecord, write_answers};
    use crate::rating::auto::Tally;
    use crate::rating::session::QuestionText;

    fn set(id: &str, numeric: bool) -> QuestionSetText {
        let q = |id: &str, reference: &str| QuestionText {
            id: id.into(),
            text: String::new(),
            reference: reference.into(),
        };
        QuestionSetText {
            id: id.into(),
            task: id.into(),
            numeric,
            questions: vec![q("1", "2 + 3 = 5"), q("2", "The answer is 8.")],
        }
    }

    fn run(id: &str, questions: &str) -> RatedRun {
        RatedRun {
            run: id.into(),
            model: "tiny".into(),
            questions: questions.into(),
            eval_hash: Some("ab12".into()),
        }
    }

    fn answers(path: &std::path::Path, texts: &[(&str, &str)]) {
        let records: Vec<AnswerRecord> = texts
            .iter()
            .map(|(q, a)| AnswerRecord {
                question_id: (*q).into(),
                stage: String::new(),
                model: "tiny".into(),
                prompt: String::new(),
                answer: (*a).into(),
                new_tokens: None,
                secs: None,
            })
            .collect();
        write_answers(path, &records).unwrap();
    }

    #[test]
    fn every_stage_on_disk_is_checked_and_free_text_tasks_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = SweepPaths::new(dir.path(), "s");
        answers(
            &sweep.base_answers("tiny", "sums", "ab12"),
            &[("1", "It is 6."), ("2", "8"), ("9", "not in the set")],
        );
        answers(
            &sweep.run("r1").answers("e1", "sums", "ab12"),
            &[("1", "2 + 3 = 5"), ("2", "I do not know")],
        );
        // An older eval hash at a stage the current one has not reached: still read.
        answers(
            &sweep.run("r1").answers("e10", "sums", "0ld"),
            &[("1", "5"), ("2", "8.0")],
        );
        answers(
            &sweep.run("r2").answers("e1", "notes", "ab12"),
            &[("1", "5")],
        );
        let runs = [
            RunToCheck {
                task: "math".into(),
                run: run("r1", "sums"),
                set: Ok(set("sums", true)),
            },
            RunToCheck {
                task: "bio".into(),
                run: run("r2", "notes"),
                set: Ok(set("notes", false)),
            },
            RunToCheck {
                task: "chem".into(),
                run: run("r3", "chem"),
                set: Err("chem.toml is missing".into()),
            },
        ];
        let checks = gather(&sweep, &runs);
        let math = &checks["math"];
        let stages: Vec<(&str, Tally)> = math
            .cells()
            .iter()
            .map(|c| (c.stage.as_str(), c.tally))
            .collect();
        assert_eq!(
            stages,
            [
                ("base", Tally { correct: 1, n: 2 }),
                ("e1", Tally { correct: 1, n: 2 }),
                ("e10", Tally { correct: 2, n: 2 }),
            ]
        );
        assert_eq!(checks["bio"], AutoCheck::Unchecked(NoCheck::NotNumeric));
        assert_eq!(
            checks["chem"].clone(),
            AutoCheck::Unchecked(NoCheck::Unavailable("chem.toml is missing".into()))
        );
    }

    #[test]
    fn an_unreadable_answers_file_turns_the_check_off_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = SweepPaths::new(dir.path(), "s");
        let path = sweep.run("r1").answers("e1", "sums", "ab12");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"question_id\": 1}\n").unwrap();
        let runs = [RunToCheck {
            task: "math".into(),
            run: run("r1", "sums"),
            set: Ok(set("sums", true)),
        }];
        let AutoCheck::Unchecked(NoCheck::Unavailable(why)) = &gather(&sweep, &runs)["math"] else {
            panic!("expected the check to be off");
        };
        assert!(why.contains("sums-ab12.jsonl:1"), "{why}");
    }
}
