//! What the trainer needs from a model: named trainable tensors, loss and gradients for a batch, and
//! adapter save/load. Implemented by the QLoRA decoder and by the toy model.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::TrainError;

/// One micro-batch, already on the model's device. Each row is a right-padded token sequence; position `t`
/// counts in the loss when `loss_mask[b, t] = 1`, meaning token `t` is predicted from tokens `..t`
/// (position 0 never counts).
#[derive(Debug, Clone)]
pub struct Batch {
    /// (batch, time) u32 token ids, right-padded.
    pub input_ids: Tensor,
    /// (batch, time) f32, 1 where the token at this position is a trained target.
    pub loss_mask: Tensor,
    /// (batch, time) f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// Real (non-padding) tokens in `input_ids`.
    pub tokens: usize,
    /// Dataset row numbers of the sequences, for error reports.
    pub rows: Vec<usize>,
}

/// A model with frozen base weights and trainable adapter tensors.
pub trait TrainableModel {
    /// The trainable tensors with stable names, always in the same order.
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Mean loss over the batch's counted targets, and its gradient for each tensor of [`Self::trainable`],
    /// in that order (a zero tensor where a tensor got no gradient).
    fn loss_and_grads(&self, batch: &Batch) -> Result<(f32, Vec<Tensor>), TrainError>;
    /// Write the adapter (PEFT layout: adapter_model.safetensors + adapter_config.json) into `dir`.
    fn save_adapter(&self, dir: &Path) -> Result<(), TrainError>;
    /// Replace the trainable tensors with those saved by [`Self::save_adapter`] in `dir`.
    fn load_adapter(&mut self, dir: &Path) -> Result<(), TrainError>;
    fn device(&self) -> Device;
}
