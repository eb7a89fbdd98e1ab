//! One run's training in progress: model, optimizer, schedule and data cursor; takes one optimizer step at a
//! time (with gradient accumulation and clipping) and saves or restores checkpoints. No threads, no events:
//! the sweep runner drives it.

use std::path::Path;
use std::time::Instant;

use candle_core::{Tensor, Var};

use super::TrainError;
use super::checkpoint::{self, CheckpointParts, FileWriter, Found, TrainerState};
use super::data::batches::{epoch_order, make_batch, micro_batches_per_epoch};
use super::data::examples::Example;
use super::model::TrainableModel;
use super::optim::{AdamW, AdamWConfig, accumulate};
use super::schedule::Schedule;
use super::settings::TrainSettings;

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub step: u64,
    /// Fractional epoch reached (1.5 = half-way through the second epoch).
    pub epoch_progress: f64,
    /// Mean loss of the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: usize,
    pub secs: f64,
    /// Set when this step completed an epoch (1-based).
    pub finished_epoch: Option<u32>,
}

/// A training run in memory.
pub struct Session {
    model: Box<dyn TrainableModel>,
    params: Vec<(String, Var)>,
    opt: AdamW,
    opt_config: AdamWConfig,
    settings: TrainSettings,
    data: Vec<Example>,
    pad_id: u32,
    state: TrainerState,
    order: Vec<usize>,
}

impl Session {
    /// A fresh run at step 0. `pad_id` fills the padding positions (they carry no loss).
    pub fn new(
        model: Box<dyn TrainableModel>,
        data: Vec<Example>,
        settings: TrainSettings,
        pad_id: u32,
    ) -> Result<Self, TrainError> {
        if data.is_empty()
            || settings.batch_size == 0
            || settings.grad_accum == 0
            || settings.epochs == 0
        {
            return Err(TrainError::State(
                "nothing to train: need data, batch_size >= 1, grad_accum >= 1 and epochs >= 1"
                    .to_string(),
            ));
        }
        let params = model.trainable();
        let opt_config = AdamWConfig::with_weight_decay(settings.weight_decay);
        let opt = AdamW::new(&params, opt_config)?;
        let steps_per_epoch = micro_batches_per_epoch(data.len(), settings.batch_size)
            .div_ceil(settings.grad_accum) as u64;
        let total_steps = steps_per_epoch * u64::from(settings.epochs);
        let state = TrainerState {
            step: 0,
            epoch: 0,
            position: 0,
            seed: settings.seed,
            total_steps,
            schedule: Schedule::new(settings.schedule, settings.lr, settings.warmup, total_steps),
        };
        let order = epoch_order(data.len(), settings.seed, 0);
        Ok(Session {
            model,
            params,
            opt,
            opt_config,
            settings,
            data,
            pad_id,
            state,
            order,
        })
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// Continue from a checkpoint of this same run.
    pub fn restore(&mut self, found: &Found) -> Result<(), TrainError> {
        let s = &found.state;
        if s.seed != self.state.seed
            || s.total_steps != self.state.total_steps
            || s.schedule != self.state.schedule
        {
            return Err(TrainError::State(format!(
                "{}: checkpoint was written with other settings (seed {}, {} steps) than this run (seed {}, {} steps)",
                found.dir.display(),
                s.seed,
                s.total_steps,
                self.state.seed,
                self.state.total_steps
            )));
        }
        self.model.load_adapter(&found.adapter_dir())?;
        self.params = self.model.trainable();
        let bytes = found.optimizer_bytes()?;
        self.opt =
            AdamW::from_safetensors(&bytes, &self.params, self.opt_config, &self.model.device())?;
        self.state = s.clone();
        self.order = epoch_order(self.data.len(), self.state.seed, self.state.epoch);
        Ok(())
    }

    /// One optimizer step over the next `grad_accum` micro-batches of the shuffled order.
    pub fn train_step(&mut self) -> Result<StepOutcome, TrainError> {
        let started = Instant::now();
        let bs = self.settings.batch_size;
        let per_epoch = micro_batches_per_epoch(self.data.len(), bs);
        let first = self.state.position;
        let end = (first + self.settings.grad_accum).min(per_epoch);
        let step = self.state.step + 1;
        let device = self.model.device();
        let mut sum: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        for k in first..end {
            let idx = &self.order[k * bs..((k + 1) * bs).min(self.data.len())];
            let examples: Vec<&Example> = idx.iter().map(|&i| &self.data[i]).collect();
            let dropout_seed = self.state.seed ^ (step << 24) ^ k as u64;
            let batch = make_batch(&examples, self.pad_id, dropout_seed, &device)?;
            let (loss, grads) = self.model.loss_and_grads(&batch)?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    what: format!("loss {loss}"),
                    step,
                    epoch: self.state.epoch + 1,
                    batch: k + 1,
                    rows: batch.rows,
                });
            }
            loss_sum += f64::from(loss);
            tokens += batch.tokens;
            sum = Some(match sum {
                None => grads,
                Some(acc) => accumulate(acc, grads)?,
            });
        }
        let micro = (end - first) as f64;
        let lr = self.state.schedule.lr(step);
        // Nothing is updated when the norm is not finite.
        let grad_norm = self.opt.step_summed(
            &self.params,
            sum.unwrap_or_default(),
            end - first,
            self.settings.max_grad_norm,
            lr,
        )?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: format!("gradient norm {grad_norm}"),
                step,
                epoch: self.state.epoch + 1,
                batch: first + 1,
                rows: Vec::new(),
            });
        }
        self.state.step = step;
        self.state.position = end;
        let mut finished_epoch = None;
        if end == per_epoch {
            self.state.epoch += 1;
            self.state.position = 0;
            finished_epoch = Some(self.state.epoch);
            self.order = epoch_order(self.data.len(), self.state.seed, self.state.epoch);
        }
        Ok(StepOutcome {
            step,
            epoch_progress: f64::from(self.state.epoch)
                + self.state.position as f64 / per_epoch as f64,
            loss: loss_sum / micro,
            lr,
            grad_norm,
            tokens,
            secs: started.elapsed().as_secs_f64(),
            finished_epoch,
        })
    }

    /// Write a checkpoint of the current state to `dest` (atomically); returns its size in bytes.
    pub fn save_checkpoint(&self, dest: &Path, writer: &dyn FileWriter) -> Result<u64, TrainError> {
        let save_adapter = |dir: &Path| self.model.save_adapter(dir);
        let parts = CheckpointParts {
            save_adapter: &save_adapter,
            optimizer: self.opt.to_safetensors()?,
            state: &self.state,
        };
        checkpoint::save(dest, parts, writer)
    }

    /// Write only the adapter (the run's final result) into `dir`.
    pub fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        self.model.save_adapter(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::FsWriter;
    use crate::train::settings::{ScheduleKind, Warmup};
    use crate::train::toy::{ToyConfig, ToyModel};

    pub(crate) fn toy_data(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let ids: Vec<u32> = (0..5 + i % 4)
                    .map(|t| ((i * 7 + t * 3) % 31) as u32 + 1)
                    .collect();
                Example {
                    trained: vec![true; ids.len()],
                    ids,
                    row: i + 1,
                }
            })
            .collect()
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            epochs: 2,
            batch_size: 2,
            grad_accum: 2,
            lr: 0.05,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            schedule: ScheduleKind::Cosine,
            warmup: Warmup::Steps(1),
            max_seq_len: 16,
            packing: false,
            seed: 7,
            checkpoint_every: 2,
            keep_checkpoints: 2,
            eval_at_epochs: vec![1],
        }
    }

    fn session() -> Session {
        let model = ToyModel::new(ToyConfig {
            vocab: 32,
            hidden: 8,
            rank: 2,
            seed: 3,
        })
        .unwrap();
        Session::new(Box::new(model), toy_data(9), settings(), 0).unwrap()
    }

    fn adapter(s: &Session) -> Vec<Vec<f32>> {
        s.params
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn steps_cover_epochs_and_the_loss_falls() {
        let mut s = session();
        assert_eq!(
            s.state().total_steps,
            6,
            "5 micro-batches per epoch, 3 steps per epoch, 2 epochs"
        );
        let mut outs = Vec::new();
        while !s.is_done() {
            outs.push(s.train_step().unwrap());
        }
        assert_eq!(outs[2].finished_epoch, Some(1));
        assert_eq!(outs[5].finished_epoch, Some(2));
        assert_eq!(outs[2].epoch_progress, 1.0);
        assert!(outs[5].loss < outs[0].loss, "{outs:?}");
    }

    #[test]
    fn restoring_a_checkpoint_reproduces_the_uninterrupted_run_bitwise() {
        let mut whole = session();
        while !whole.is_done() {
            whole.train_step().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut first = session();
        for _ in 0..4 {
            first.train_step().unwrap();
        }
        first
            .save_checkpoint(&dir.path().join("ck"), &FsWriter)
            .unwrap();
        drop(first);
        let mut resumed = session();
        resumed
            .restore(&checkpoint::read(&dir.path().join("ck")).unwrap())
            .unwrap();
        assert_eq!(resumed.state().step, 4);
        while !resumed.is_done() {
            resumed.train_step().unwrap();
        }
        assert_eq!(adapter(&whole), adapter(&resumed));
    }
}
