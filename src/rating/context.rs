//! What the rating commands need from a sweep's config: paths, rubric, runs, question sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::RatingError;
use super::auto::AutoChecks;
use super::auto::gather::{RunToCheck, gather};
use super::blind::StagePair;
use super::journal;
use super::math_check::references_are_numeric;
use super::ratings::Ratings;
use super::results::{TaskResults, build_with_checks};
use super::rubric::Rubric;
use super::session::{
    QuestionSetText, QuestionText, RatedRun, RatingItem, SessionSpec, build_items,
};
use super::study::store::StudyTarget;
use crate::config::{Config, ConfigErrors, RubricSection};
use crate::eval::QuestionSet;
use crate::plan::Plan;
use crate::store::atomic::read_json;
use crate::store::{RunStatus, SweepPaths};

/// Errors while gathering a sweep's rating context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(
        "{path}: question set of dataset {dataset:?} is missing (convert the study's list with `qlab import-questions`)"
    )]
    MissingQuestions { path: PathBuf, dataset: String },
    #[error(transparent)]
    Rating(#[from] RatingError),
}

impl From<&RubricSection> for Rubric {
    fn from(r: &RubricSection) -> Rubric {
        Rubric {
            criteria: r.criteria.clone(),
            min: r.min,
            max: r.max,
            step: r.step,
        }
    }
}

/// A loaded config with everything rating derives from it.
pub struct RatingContext {
    pub config: Config,
    pub plan: Plan,
    pub sweep: SweepPaths,
    pub rubric: Rubric,
    /// Models in the order the matrix names them (the rows of the results).
    pub model_order: Vec<String>,
}

impl RatingContext {
    pub fn from_config(config: Config) -> Result<Self, RatingError> {
        let rubric = Rubric::from(&config.rubric);
        rubric.validate()?;
        let plan = Plan::from_config(&config);
        let sweep = SweepPaths::new(&config.runs_dir(), &config.sweep.name);
        let model_order = config.matrix.models.clone();
        Ok(RatingContext {
            config,
            plan,
            sweep,
            rubric,
            model_order,
        })
    }

    /// The journal replayed.
    pub fn ratings(&self) -> Result<Ratings, RatingError> {
        Ok(Ratings::replay(&journal::read(
            &self.sweep.ratings_journal(),
            &self.rubric,
        )?))
    }

    /// The results table of every task: the human scores and, beside them, the automatic check.
    pub fn results(&self) -> Result<Vec<TaskResults>, RatingError> {
        Ok(self.results_and_checks()?.0)
    }

    /// The results table and the automatic check it was built with (the Sweep screen shows the check
    /// per run, before any rating).
    pub fn results_and_checks(&self) -> Result<(Vec<TaskResults>, AutoChecks), RatingError> {
        let checks = self.auto_checks();
        let tasks = build_with_checks(&self.ratings()?, &self.rubric, &self.model_order, &checks);
        Ok((tasks, checks))
    }

    /// The automatic check of every task of the plan whose dataset has a question set. It never fails:
    /// a question set or answers file that cannot be read turns that task's check off and says why.
    pub fn auto_checks(&self) -> AutoChecks {
        let mut sets: BTreeMap<PathBuf, Result<QuestionSetText, String>> = BTreeMap::new();
        let runs: Vec<RunToCheck> = self
            .plan
            .runs
            .iter()
            .filter_map(|r| {
                let path = self.config.resolve_path(r.spec.dataset.questions.as_ref()?);
                let set = sets
                    .entry(path.clone())
                    .or_insert_with(|| load_set_text(&path))
                    .clone();
                let questions = match &set {
                    Ok(s) => s.id.clone(),
                    Err(_) => String::new(),
                };
                Some(RunToCheck {
                    task: r.task.clone(),
                    run: RatedRun {
                        run: r.id.clone(),
                        model: r.model.clone(),
                        questions,
                        eval_hash: Some(r.eval_hash.clone()),
                    },
                    set,
                })
            })
            .collect();
        gather(&self.sweep, &runs)
    }

    /// Each run's last logged training loss, keyed by (task, model), for the results screen.
    pub fn losses(&self) -> Result<BTreeMap<(String, String), f64>, RatingError> {
        let mut out = BTreeMap::new();
        for r in &self.plan.runs {
            let status: Option<RunStatus> = read_json(&self.sweep.run(&r.id).status())?;
            if let Some(loss) = status.and_then(|s| s.last_loss) {
                out.insert((r.task.clone(), r.model.clone()), loss);
            }
        }
        Ok(out)
    }

    /// The run that trains `model` on a dataset of `task`.
    pub fn run_for(&self, model: &str, task: &str) -> Option<String> {
        self.plan
            .runs
            .iter()
            .find(|r| r.model == model && r.task == task)
            .map(|r| r.id.clone())
    }

    /// The id of the question set benchmarking `task`: the set's own id when its file exists, else
    /// the file's stem (the id a set takes by default), else the task itself.
    pub fn questions_for(&self, task: &str) -> String {
        let Some(run) = self.plan.runs.iter().find(|r| r.task == task) else {
            return task.to_owned();
        };
        let Some(file) = &run.spec.dataset.questions else {
            return task.to_owned();
        };
        let path = self.config.resolve_path(file);
        match QuestionSet::load(&path) {
            Ok(set) => set.id,
            Err(_) => path
                .file_stem()
                .map_or(task.to_owned(), |s| s.to_string_lossy().into_owned()),
        }
    }

    /// Where the study import writes, given the lookups it needs.
    pub fn study_target<'a>(
        &'a self,
        run_for: &'a dyn Fn(&str, &str) -> Option<String>,
        questions_for: &'a dyn Fn(&str) -> String,
    ) -> StudyTarget<'a> {
        StudyTarget {
            sweep: &self.sweep,
            rubric: &self.rubric,
            run_for,
            questions_for,
        }
    }

    /// The question sets of the sweep's datasets (each loaded once).
    pub fn question_sets(&self) -> Result<Vec<QuestionSetText>, ContextError> {
        let mut sets: Vec<QuestionSetText> = Vec::new();
        for d in &self.config.datasets {
            let Some(file) = &d.questions else { continue };
            let path = self.config.resolve_path(file);
            if !path.is_file() {
                return Err(ContextError::MissingQuestions {
                    path,
                    dataset: d.id.clone(),
                });
            }
            let set = QuestionSet::load(&path).map_err(ContextError::Config)?;
            if sets.iter().any(|s| s.id == set.id) {
                continue;
            }
            sets.push(question_set_text(set));
        }
        Ok(sets)
    }

    /// The items `rater` rates for `pair`, over every planned run.
    pub fn items(&self, rater: &str, pair: &StagePair) -> Result<Vec<RatingItem>, ContextError> {
        let sets = self.question_sets()?;
        let runs: Vec<RatedRun> = self
            .plan
            .runs
            .iter()
            .filter_map(|r| {
                let file = r.spec.dataset.questions.as_ref()?;
                let set = QuestionSet::load(&self.config.resolve_path(file)).ok()?;
                Some(RatedRun {
                    run: r.id.clone(),
                    model: r.model.clone(),
                    questions: set.id,
                    eval_hash: Some(r.eval_hash.clone()),
                })
            })
            .collect();
        let spec = SessionSpec {
            rater: rater.to_owned(),
            pair: pair.clone(),
            seed: self.config.sweep.seed,
        };
        Ok(build_items(&self.sweep, &runs, &sets, &spec)?)
    }
}

/// A question set's text for the automatic check, or why it cannot be read.
fn load_set_text(path: &Path) -> Result<QuestionSetText, String> {
    if !path.is_file() {
        return Err(format!(
            "{} is missing (convert the study's list with `qlab import-questions`)",
            path.display()
        ));
    }
    QuestionSet::load(path)
        .map(question_set_text)
        .map_err(|e| e.to_string())
}

fn question_set_text(set: QuestionSet) -> QuestionSetText {
    let questions: Vec<QuestionText> = set
        .questions
        .into_iter()
        .map(|q| {
            let text = match (&q.question, &q.instruction, &q.input) {
                (Some(question), _, _) => question.clone(),
                (None, Some(instruction), Some(input)) if !input.trim().is_empty() => {
                    format!("{instruction}\n\nInput: {input}")
                }
                (None, Some(instruction), _) => instruction.clone(),
                (None, None, input) => input.clone().unwrap_or_default(),
            };
            QuestionText {
                id: q.id,
                text,
                reference: q.reference,
            }
        })
        .collect();
    QuestionSetText {
        numeric: references_are_numeric(questions.iter().map(|q| q.reference.as_str())),
        id: set.id,
        task: set.task,
        questions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::answers::{AnswerRecord, write_answers};
    use crate::store::atomic::write_json_atomic;

    const CONFIG: &str = r####"
[sweep]
name = "ctx"

[[model]]
id = "tiny"
path = "tiny.gguf"

[[dataset]]
id = "sums"
task = "math"
path = "sums.jsonl"
template = "### Input:\n{question}\n\n### Response:\n{answer}"
questions = "sums.toml"

[train]
epochs = 1
eval_at_epochs = [1]

[rubric]
criteria = ["Overall"]
step = 0.5

[matrix]
models = ["tiny"]
datasets = ["sums"]
"####;

    const QUESTIONS: &str = "id = \"sums-v1\"\ntask = \"math\"\n\n[[question]]\nid = \"1\"\nquestion = \"Add 2 and 3.\"\nreference = \"5\"\n";

    #[test]
    fn context_maps_config_plan_and_stores_to_what_rating_needs() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_source(&dir.path().join("ctx.toml"), CONFIG.into()).unwrap();
        let ctx = RatingContext::from_config(config).unwrap();
        assert_eq!(
            ctx.rubric,
            Rubric {
                criteria: vec!["Overall".into()],
                min: 0.0,
                max: 5.0,
                step: 0.5
            }
        );
        let run = ctx.run_for("tiny", "math").unwrap();
        assert!(run.starts_with("tiny-sums-"), "{run}");
        assert_eq!(ctx.run_for("tiny", "bio"), None);
        assert_eq!(ctx.questions_for("math"), "sums");
        let missing = ctx
            .items("ann", &StagePair::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains("sums.toml") && missing.contains("import-questions"),
            "{missing}"
        );

        std::fs::write(dir.path().join("sums.toml"), QUESTIONS).unwrap();
        assert_eq!(ctx.questions_for("math"), "sums-v1");
        let answer = |stage: &str| AnswerRecord {
            question_id: "1".into(),
            stage: stage.into(),
            model: "tiny".into(),
            prompt: String::new(),
            answer: format!("{stage} says 5"),
            new_tokens: None,
            secs: None,
        };
        write_answers(
            &ctx.sweep.base_answers("tiny", "sums-v1", "study"),
            &[answer("base")],
        )
        .unwrap();
        write_answers(
            &ctx.sweep.run(&run).answers("e1", "sums-v1", "study"),
            &[answer("e1")],
        )
        .unwrap();
        let items = ctx.items("ann", &StagePair::default()).unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0].numeric);
        assert_eq!(items[0].text, "Add 2 and 3.");
        assert_eq!(format!("{} says 5", items[0].a.stage), items[0].a.answer);

        assert!(ctx.losses().unwrap().is_empty());
        let mut status = RunStatus::queued(10);
        status.last_loss = Some(0.25);
        write_json_atomic(&ctx.sweep.run(&run).status(), &status).unwrap();
        assert_eq!(
            ctx.losses().unwrap()[&("math".to_string(), "tiny".to_string())],
            0.25
        );
    }
}
