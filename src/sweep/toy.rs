//! A toy model behind the runner's interfaces, for the runner's and the dashboard's tests (and anyone
//! trying the runner without model files): a loader, a CSV of instruction/output rows and a job to train on it.

use std::path::{Path, PathBuf};

use super::job::{LoadError, LoadedModel, ModelLoader, RunJob};
use crate::config::DeviceSpec;
use crate::train::settings::{DatasetSpec, OnBadRow, ScheduleKind, TrainOn, TrainSettings, Warmup};
use crate::train::toy::{ByteEncoder, ToyConfig, ToyModel};

/// Loads a byte-level toy model (vocabulary 257, rank-4 LoRA) for every job.
pub struct ToyLoader {
    pub hidden: usize,
    pub seed: u64,
}

impl ModelLoader for ToyLoader {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError> {
        let model = ToyModel::new(ToyConfig {
            vocab: 257,
            hidden: self.hidden,
            rank: 4,
            seed: self.seed,
        })
        .map_err(|source| LoadError::Build {
            model: job.model.clone(),
            source: Box::new(source),
        })?;
        Ok(LoadedModel {
            model: Box::new(model),
            encoder: Box::new(ByteEncoder),
            pad_id: 0,
        })
    }
}

/// Writes `dir/d.csv`: `rows` rows of `instruction,output` ("name the number i", "it is 3i").
pub fn write_toy_csv(dir: &Path, rows: usize) -> std::io::Result<PathBuf> {
    let path = dir.join("d.csv");
    let body: String = (0..rows)
        .map(|i| format!("name the number {i},it is {}\n", i * 3))
        .collect();
    std::fs::write(&path, format!("instruction,output\n{body}"))?;
    Ok(path)
}

/// A job training on a CSV written by [`write_toy_csv`]: batch 1, lr 0.01, linear schedule, a checkpoint every
/// 5 steps, the last one kept.
pub fn toy_job(id: &str, data: &Path, epochs: u32) -> RunJob {
    RunJob {
        run_id: id.into(),
        model: "toy".into(),
        device: DeviceSpec::Cpu,
        data: DatasetSpec {
            path: data.to_owned(),
            format: None,
            limit: None,
            template: "### Instruction:\n{instruction}\n### Response:\n{output}".into(),
            completion_marker: Some("### Response:\n".into()),
            fields: Default::default(),
            train_on: TrainOn::Completion,
            on_bad_row: OnBadRow::Error,
        },
        train: TrainSettings {
            epochs,
            batch_size: 1,
            grad_accum: 1,
            lr: 0.01,
            weight_decay: 0.0,
            max_grad_norm: None,
            schedule: ScheduleKind::Linear,
            warmup: Warmup::Steps(2),
            max_seq_len: 64,
            packing: false,
            seed: 1,
            checkpoint_every: 5,
            keep_checkpoints: 1,
            eval_at_epochs: vec![],
        },
    }
}
