//! The plan: the runs a config asks for, each with a stable RunId (readable slug + hash of resolved settings).
//!
//! The plan is a pure function of the config. A run's id hashes exactly the settings that change what
//! training produces, so the same settings map to the same run directory (which is what makes resume work)
//! and a changed setting maps to a new one. Settings that only change answers (the `[eval]` section, the
//! eval template, the question set) are hashed apart into an eval hash that names answer files instead.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, DatasetSection, EvalSection, LoraSection, ModelSection, TrainSection};

/// Everything that determines a run's training, resolved (overrides applied, seed filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub sweep: String,
    pub model: ModelSection,
    pub dataset: DatasetSection,
    pub lora: LoraSection,
    pub train: TrainSection,
    pub eval: EvalSection,
}

/// One matrix cell to train and evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// `<model>-<dataset>-<8 hex digits>`: names the run directory.
    pub id: String,
    pub model: String,
    pub dataset: String,
    /// Task label for results (the dataset's `task`, else its id).
    pub task: String,
    /// `base`, then `e<N>` for each epoch in `eval_at_epochs`.
    pub stages: Vec<String>,
    /// Hash of the settings that shape answers (eval section, prompt, question set).
    pub eval_hash: String,
    pub spec: RunSpec,
}

/// The runs of a sweep, in matrix order (models outer, datasets inner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub sweep: String,
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    pub fn from_config(config: &Config) -> Plan {
        let runs = config
            .cells()
            .into_iter()
            .map(|(model, dataset)| {
                let s = config.cell_settings(&model.id, &dataset.id);
                let mut train = s.train;
                train.seed = Some(train.seed.unwrap_or(config.sweep.seed));
                let spec = RunSpec {
                    sweep: config.sweep.name.clone(),
                    model: model.clone(),
                    dataset: dataset.clone(),
                    lora: s.lora,
                    train,
                    eval: s.eval,
                };
                PlannedRun {
                    id: format!("{}-{}-{}", model.id, dataset.id, training_hash(&spec)),
                    model: model.id.clone(),
                    dataset: dataset.id.clone(),
                    task: dataset.task.clone().unwrap_or_else(|| dataset.id.clone()),
                    stages: stages(&spec.train),
                    eval_hash: eval_hash(&spec),
                    spec,
                }
            })
            .collect();
        Plan {
            sweep: config.sweep.name.clone(),
            runs,
        }
    }

    pub fn run(&self, id: &str) -> Option<&PlannedRun> {
        self.runs.iter().find(|r| r.id == id)
    }
}

/// Evaluation stages of a run: `base` and one per epoch in `eval_at_epochs`.
pub fn stages(train: &TrainSection) -> Vec<String> {
    std::iter::once("base".to_owned())
        .chain(train.eval_at_epochs.iter().map(|e| format!("e{e}")))
        .collect()
}

/// Hash of what shapes the trained adapter: model and weights, data and template, LoRA and optimisation.
/// Bookkeeping (checkpoint interval, kept checkpoints) and eval-only dataset keys are left out.
fn training_hash(spec: &RunSpec) -> String {
    let mut dataset = spec.dataset.clone();
    dataset.task = None;
    dataset.eval_template = None;
    dataset.questions = None;
    let mut model = spec.model.clone();
    model.chat_template = None;
    let mut train = spec.train.clone();
    train.checkpoint_every = 0;
    train.keep_checkpoints = 0;
    short_hash(&(&model, &dataset, &spec.lora, &train))
}

fn eval_hash(spec: &RunSpec) -> String {
    let d = &spec.dataset;
    short_hash(&(
        &spec.eval,
        &d.eval_template,
        &d.template,
        &d.completion_marker,
        &d.questions,
        &spec.model.chat_template,
    ))
}

/// First 8 hex digits of the SHA-256 of the value's canonical JSON.
fn short_hash<T: Serialize>(value: &T) -> String {
    // Serializing plain data structs to JSON cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..4])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TWO_BY_TWO: &str = r#"
[sweep]
name = "t"
[[model]]
id = "a"
path = "a.gguf"
[[model]]
id = "b"
path = "b.gguf"
[[dataset]]
id = "x"
path = "x.jsonl"
template = "{q}### Response:\n{a}"
[[dataset]]
id = "y"
path = "y.jsonl"
template = "{q}### Response:\n{a}"
[matrix]
models = ["a", "b"]
datasets = ["x", "y"]
"#;

    fn plan(src: &str) -> Plan {
        Plan::from_config(&Config::from_source(Path::new("t.toml"), src.to_owned()).unwrap())
    }

    #[test]
    fn same_config_same_ids() {
        let (p1, p2) = (plan(TWO_BY_TWO), plan(TWO_BY_TWO));
        assert_eq!(p1, p2);
        let ids: Vec<_> = p1.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 4);
        assert!(
            ids[0].starts_with("a-x-") && ids[3].starts_with("b-y-"),
            "{ids:?}"
        );
        assert_eq!(p1.runs[0].stages, ["base", "e1", "e3"]);
    }

    #[test]
    fn one_changed_setting_changes_only_that_cells_id() {
        let changed = format!(
            "{TWO_BY_TWO}[[override]]\nmodel = \"b\"\ndataset = \"x\"\ntrain = {{ lr = 1e-4 }}\n"
        );
        let (before, after) = (plan(TWO_BY_TWO), plan(&changed));
        let differs: Vec<bool> = before
            .runs
            .iter()
            .zip(&after.runs)
            .map(|(a, b)| a.id != b.id)
            .collect();
        assert_eq!(differs, [false, false, true, false]);
    }

    #[test]
    fn bookkeeping_and_eval_settings_keep_the_run_id() {
        let changed = TWO_BY_TWO.replace(
            "[matrix]",
            "[train]\ncheckpoint_every = 7\n[eval]\nmax_new_tokens = 9\n[matrix]",
        );
        let (before, after) = (plan(TWO_BY_TWO), plan(&changed));
        for (a, b) in before.runs.iter().zip(&after.runs) {
            assert_eq!(a.id, b.id);
            assert_ne!(a.eval_hash, b.eval_hash);
        }
    }

    /// `cpu_bf16` came after run ids: its default keeps the ids configs without it had (a sweep started
    /// before resumes under the same runs), and turning it off names other runs (other numbers).
    #[test]
    fn cpu_bf16_at_its_default_keeps_the_run_ids_of_configs_without_it() {
        let with =
            |v: &str| TWO_BY_TWO.replace("[matrix]", &format!("[train]\ncpu_bf16 = {v}\n[matrix]"));
        let ids = |p: Plan| p.runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let before = ids(plan(TWO_BY_TWO));
        assert_eq!(ids(plan(&with("true"))), before);
        let off = ids(plan(&with("false")));
        assert!(off.iter().zip(&before).all(|(a, b)| a != b), "{off:?}");
    }
}
