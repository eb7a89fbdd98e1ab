//! What a rater rates: the items of one stage pair, built from question sets and answer files.

use std::collections::BTreeMap;

use super::RatingError;
use super::answers::{AnswerRecord, find_answers_file, read_answers};
use super::blind::{StagePair, blind_layout};
use super::journal::{BlindShown, QuestionRef};
use super::results::stage_order;
use crate::store::SweepPaths;

/// The text of one question: what was asked and the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionText {
    pub id: String,
    pub text: String,
    pub reference: String,
}

/// A question set as the rating screen needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionSetText {
    pub id: String,
    pub task: String,
    /// Whether answers end in a number to compare with the reference's (math).
    pub numeric: bool,
    pub questions: Vec<QuestionText>,
}

/// A run whose stages can be rated: its id, model and the question set it is evaluated on.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedRun {
    pub run: String,
    pub model: String,
    pub questions: String,
    /// The eval hash of the run's current settings: its answer files are preferred over older ones.
    pub eval_hash: Option<String>,
}

/// One side of an item: which stage wrote it (hidden while blind) and the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSide {
    pub stage: String,
    pub answer: String,
}

/// One thing to rate: a question, its reference, and two answers of one model shown as A and B.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingItem {
    pub question: QuestionRef,
    pub model: String,
    pub run: String,
    pub text: String,
    pub reference: String,
    pub numeric: bool,
    pub a: ItemSide,
    pub b: ItemSide,
}

impl RatingItem {
    pub fn layout(&self) -> BlindShown {
        BlindShown {
            a: self.a.stage.clone(),
            b: self.b.stage.clone(),
        }
    }
}

/// How the items are laid out: the rater (part of the blind draw), the pair, the sweep's seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    pub rater: String,
    pub pair: StagePair,
    pub seed: u64,
}

/// Where a stage's answers of a run are stored (`base` answers belong to the model).
pub fn answers_dir(sweep: &SweepPaths, run: &RatedRun, stage: &str) -> std::path::PathBuf {
    let probe = if stage == "base" {
        sweep.base_answers(&run.model, &run.questions, "x")
    } else {
        sweep.run(&run.run).answers(stage, &run.questions, "x")
    };
    probe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The answers of one stage of `run` by question id, from its current eval hash's file, else the newest
/// file of its question set; none when the stage has no such file.
pub fn load_stage(
    sweep: &SweepPaths,
    run: &RatedRun,
    stage: &str,
) -> Result<BTreeMap<String, AnswerRecord>, RatingError> {
    let dir = answers_dir(sweep, run, stage);
    let exact = run
        .eval_hash
        .as_deref()
        .and_then(|h| find_answers_file(&dir, &run.questions, Some(h)));
    let Some(path) = exact.or_else(|| find_answers_file(&dir, &run.questions, None)) else {
        return Ok(BTreeMap::new());
    };
    Ok(read_answers(&path)?
        .into_iter()
        .map(|r| (r.question_id.clone(), r))
        .collect())
}

/// The stages `run` may have answers at: `base` (the model's), then each directory under the run's
/// answers (`e1`, `e3`, ... whether planned now or written by an earlier plan or the study import), in
/// reading order. A missing directory has no stages; [`load_stage`] finds whether a file is there.
pub fn answered_stages(sweep: &SweepPaths, run: &RatedRun) -> std::io::Result<Vec<String>> {
    let mut stages = vec!["base".to_owned()];
    let stage_dir = answers_dir(sweep, run, "e1");
    let Some(root) = stage_dir.parent() else {
        return Ok(stages);
    };
    let located =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", root.display()));
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stages),
        Err(e) => return Err(located(e)),
    };
    for entry in entries {
        let entry = entry.map_err(located)?;
        if entry.file_type().map_err(located)?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
            && name != "base"
        {
            stages.push(name);
        }
    }
    stages.sort_by_key(|s| stage_order(s));
    Ok(stages)
}

/// Build the items of `spec.pair` for every run: one per question answered at both stages, ordered by
/// question set, question (in the set's order), then run. A and B are drawn by [`blind_layout`].
pub fn build_items(
    sweep: &SweepPaths,
    runs: &[RatedRun],
    sets: &[QuestionSetText],
    spec: &SessionSpec,
) -> Result<Vec<RatingItem>, RatingError> {
    let mut items = Vec::new();
    for (run_index, run) in runs.iter().enumerate() {
        let Some(set) = sets.iter().find(|s| s.id == run.questions) else {
            continue;
        };
        let first = load_stage(sweep, run, &spec.pair.first)?;
        let second = load_stage(sweep, run, &spec.pair.second)?;
        for (q_index, q) in set.questions.iter().enumerate() {
            let (Some(x), Some(y)) = (first.get(&q.id), second.get(&q.id)) else {
                continue;
            };
            let question = QuestionRef {
                task: set.task.clone(),
                questions: set.id.clone(),
                question: q.id.clone(),
            };
            let shown = blind_layout(spec.seed, &spec.rater, &run.model, &question, &spec.pair);
            let side = |stage: &str| ItemSide {
                stage: stage.to_owned(),
                answer: if stage == spec.pair.first {
                    x.answer.clone()
                } else {
                    y.answer.clone()
                },
            };
            let item = RatingItem {
                question,
                model: run.model.clone(),
                run: run.run.clone(),
                text: q.text.clone(),
                reference: q.reference.clone(),
                numeric: set.numeric,
                a: side(&shown.a),
                b: side(&shown.b),
            };
            items.push((set.id.clone(), q_index, run_index, item));
        }
    }
    items.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    Ok(items.into_iter().map(|(_, _, _, item)| item).collect())
}
