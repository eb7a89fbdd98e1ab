//! The QLoRA decoder (frozen quantized base + LoRA adapters) as a [`TrainableModel`]: loss and gradients with
//! per-block activation checkpointing, adapters saved and loaded in PEFT layout.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::TrainError;
use super::model::{Batch, TrainableModel};
use crate::model::kernels::cpu::bf16::{Precision, Support};
use crate::model::{Decoder, LoraSpec, ModelError};
use crate::train::step::{StepOptions, TrainBatch};

fn model_err(e: ModelError) -> TrainError {
    TrainError::Model(e.to_string())
}

/// A decoder with LoRA adapters on the spec's targets, ready to train.
pub struct DecoderModel {
    decoder: Decoder,
    spec: LoraSpec,
    base_model: Option<String>,
    choices: StepChoices,
}

/// The run's choices of how a step is computed (`[train]` in experiments.toml).
#[derive(Debug, Clone, Copy)]
pub struct StepChoices {
    /// Recompute each block in the backward pass to save memory.
    pub checkpointing: bool,
    /// Multiply through the frozen base in bf16 on a CPU that does so natively.
    pub cpu_bf16: bool,
}

impl StepChoices {
    /// The dtype of the products through the frozen base on `device`: bf16 on a GPU, and on a CPU where
    /// `cpu_bf16` allows it and bf16 is faster than f32 there ([`Support::pays`]).
    pub fn precision(&self, device: &Device) -> Precision {
        Precision::on(device, self.cpu_bf16)
    }

    /// What the run log says of those products on `device`, with the reason for f32 on a CPU.
    pub fn describe(&self, device: &Device) -> String {
        let why = match (device.is_cpu(), self.cpu_bf16) {
            (false, _) => "on the GPU",
            (true, true) => Support::detect().reason(),
            (true, false) => "[train] cpu_bf16 = false",
        };
        format!(
            "products through the frozen base in {} ({why})",
            self.precision(device).name()
        )
    }
}

impl DecoderModel {
    /// Add fresh adapters (A from `spec.seed`, B zero) to `decoder`. `base_model` is recorded in the PEFT
    /// adapter_config.json.
    pub fn new(
        mut decoder: Decoder,
        spec: LoraSpec,
        base_model: Option<String>,
        choices: StepChoices,
    ) -> Result<Self, TrainError> {
        decoder.add_lora(&spec).map_err(model_err)?;
        Ok(DecoderModel {
            decoder,
            spec,
            base_model,
            choices,
        })
    }
}

impl TrainableModel for DecoderModel {
    fn trainable(&self) -> Vec<(String, Var)> {
        self.decoder.lora_params()
    }

    fn loss_and_grads(&self, batch: &Batch) -> Result<(f32, Vec<Tensor>), TrainError> {
        let tb = TrainBatch {
            input_ids: batch.input_ids.clone(),
            loss_mask: batch.loss_mask.clone(),
            attention_mask: Some(batch.attention_mask.clone()),
        };
        let opts = StepOptions {
            checkpointing: self.choices.checkpointing,
            dropout_seed: (self.spec.dropout > 0.0).then_some(batch.dropout_seed),
            precision: self.choices.precision(&self.decoder.device),
            ..StepOptions::for_device(&self.decoder.device)
        };
        let out = self.decoder.loss_and_grads(&tb, &opts).map_err(model_err)?;
        Ok((out.loss, out.grads.into_iter().map(|(_, g)| g).collect()))
    }

    fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        self.decoder
            .save_peft(dir, &self.spec, self.base_model.as_deref())
            .map_err(model_err)
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.decoder.load_peft(dir).map(|_| ()).map_err(model_err)
    }

    fn device(&self) -> Device {
        self.decoder.device.clone()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::model::load::builder::build_decoder;
    use crate::model::load::presets::{RandomWeights, preset};
    use crate::model::{Quant, Target};
    use crate::train::checkpoint::{self, FsWriter};
    use crate::train::data::examples::Example;
    use crate::train::session::Session;
    use crate::train::settings::TrainSettings;

    #[test]
    fn the_run_log_names_the_products_dtype_and_why() {
        let cpu = Device::Cpu;
        let off = StepChoices {
            checkpointing: true,
            cpu_bf16: false,
        };
        assert_eq!(off.precision(&cpu), Precision::F32);
        assert!(
            off.describe(&cpu)
                .ends_with("in f32 ([train] cpu_bf16 = false)")
        );
        let on = StepChoices {
            cpu_bf16: true,
            ..off
        };
        let support = Support::detect();
        let want = match support {
            Support::Amx => {
                "in bf16 (with f32 sums, on AMX tiles: this CPU has AMX-BF16)".to_string()
            }
            Support::Dot => "in bf16 (with f32 sums: this CPU has AVX512_BF16)".to_string(),
            Support::Missing | Support::SlowDot => format!("in f32 ({})", support.reason()),
        };
        assert!(on.describe(&cpu).ends_with(&want), "{}", on.describe(&cpu));
    }

    fn tiny() -> DecoderModel {
        let (mut config, _) = preset("smollm2-135m").unwrap();
        (
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
        ) = (96, 64, 128);
        (
            config.num_layers,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        ) = (2, 4, 2, 16);
        let quant = Quant::Ggml(GgmlDType::Q4_1);
        let src = RandomWeights {
            config: config.clone(),
            seed: 1,
            embed_q8_0: true,
        };
        let decoder = build_decoder(config, &src, quant, &Device::Cpu).unwrap();
        let spec = LoraSpec {
            targets: Target::ALL.to_vec(),
            rank: 4,
            alpha: 8.0,
            rslora: false,
            dropout: 0.0,
            seed: 2,
        };
        let choices = StepChoices {
            checkpointing: true,
            cpu_bf16: false,
        };
        DecoderModel::new(decoder, spec, Some("tiny".into()), choices).unwrap()
    }

    fn data() -> Vec<Example> {
        (0..6)
            .map(|i| {
                let ids: Vec<u32> = (0..8 + i)
                    .map(|t| ((i * 11 + t * 5) % 95) as u32 + 1)
                    .collect();
                let trained = (0..ids.len()).map(|t| t >= 3).collect();
                Example {
                    ids,
                    trained,
                    row: i + 1,
                }
            })
            .collect()
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            epochs: 2,
            batch_size: 2,
            grad_accum: 1,
            lr: 1e-2,
            eval_at_epochs: vec![],
            ..TrainSettings::study_defaults()
        }
    }

    fn adapter_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
    }

    #[test]
    fn the_decoder_trains_and_resumes_bitwise_from_a_peft_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut whole = Session::new(Box::new(tiny()), data(), settings(), 0).unwrap();
        let first = whole.train_step().unwrap();
        let mut last = first.clone();
        while !whole.is_done() {
            last = whole.train_step().unwrap();
        }
        assert!(last.loss < first.loss, "{} -> {}", first.loss, last.loss);
        whole.save_adapter(&dir.path().join("whole")).unwrap();

        let mut part = Session::new(Box::new(tiny()), data(), settings(), 0).unwrap();
        for _ in 0..2 {
            part.train_step().unwrap();
        }
        part.save_checkpoint(&dir.path().join("ck"), &FsWriter)
            .unwrap();
        assert!(dir.path().join("ck/adapter/adapter_config.json").exists());
        let mut resumed = Session::new(Box::new(tiny()), data(), settings(), 0).unwrap();
        resumed
            .restore(&checkpoint::read(&dir.path().join("ck")).unwrap())
            .unwrap();
        while !resumed.is_done() {
            resumed.train_step().unwrap();
        }
        resumed.save_adapter(&dir.path().join("resumed")).unwrap();
        assert_eq!(
            adapter_bytes(&dir.path().join("whole")),
            adapter_bytes(&dir.path().join("resumed"))
        );
    }
}
