//! One training step's maths for the trainer: mean loss over target tokens and the gradient of every LoRA
//! tensor, with per-block activation checkpointing and the vocabulary loss computed in chunks of positions.
//!
//! Checkpointing (CANDLE-NOTES): forward keeps only each block's (detached) input; the head and loss are
//! backpropagated chunk by chunk into the last hidden state; then each block, in reverse, is recomputed from
//! its input as a Var and backpropagated with `(out * g).sum()`, keeping only its LoRA gradients.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor, Var};

use crate::model::autograd::attach::backward_with;
use crate::model::decoder::lora::{DropoutSeed, SavedProducts};
use crate::model::decoder::{Decoder, Positions};
use crate::model::device::timeline;
use crate::model::error::{ModelError, Result};
use crate::model::kernels::cpu::bf16::Precision;
use crate::model::kernels::cpu::bf16::linear::PackedWeight;
use crate::model::kernels::{AttentionHalves, cpu};
use crate::model::load::peft::peft_key;
use crate::model::quant::frozen::FrozenLinear;
use crate::model::target::Target;
use crate::train::keep_blocks::KeepBlocks;

/// A batch of token sequences.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// `[b, s]` u32 token ids.
    pub input_ids: Tensor,
    /// `[b, s]` 0/1: 1 where the token at this position is a target (predicted from the previous position).
    /// Prompt and padding positions are 0; position 0 never counts.
    pub loss_mask: Tensor,
    /// `[b, s]` 0/1: 1 for real tokens, 0 for padding (None: no padding).
    pub attention_mask: Option<Tensor>,
}

/// How to compute a step.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    /// Recompute each block in the backward pass instead of keeping its activations (default on).
    pub checkpointing: bool,
    /// Positions per chunk of the vocabulary loss.
    pub loss_chunk: usize,
    /// Seed of the LoRA dropout masks for this step (None: no dropout, e.g. evaluation).
    pub dropout_seed: Option<u64>,
    /// With checkpointing: keep the frozen projections' outputs of the first pass for the recomputation
    /// (fewer matmuls, more memory: 4 bytes x tokens x the projections' output widths, per block).
    pub save_frozen_products: bool,
    /// With checkpointing on the CPU: how many of the last blocks to keep whole instead (no recomputation).
    pub keep: KeepBlocks,
    /// With checkpointing on a GPU: where the blocks' inputs wait for the backward pass.
    pub checkpoints: CheckpointPlace,
    /// On the CPU: the dtype of the products through the frozen weights (the projections and the head).
    pub precision: Precision,
    /// With checkpointing on a GPU: the first pass leaves each block's attention half (rotated q, k and v,
    /// attention's output, the residual after it) in host memory, up to [`HALVES_HOST_SHARE`] of it, and the
    /// recomputation starts at the feed-forward (`kernels::AttentionHalves`).
    pub attention_on_host: bool,
}

/// Where a checkpointed step keeps each block's input between the forward and the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointPlace {
    /// On the device, unless they would take more than [`HOST_ABOVE`] of its memory: then in host memory.
    #[default]
    Auto,
    /// On the compute device.
    Device,
    /// In host memory: copied out after each block's forward and back before its backward (long sequences
    /// on a GPU: the inputs are half of a long step's memory at 8B dims, the copies a few percent of its time).
    Host,
}

/// Positions per chunk of the vocabulary loss on a GPU: bf16 logits of 512 rows are 125 MiB at a 128k
/// vocabulary. Measured on the H200 at Llama-3.1-8B, 2 x 2048 (bench/results/h200-train-runs-2026-12-04.jsonl):
/// 1024 rows peaked 0.15 GiB higher at the same speed, 256 rows ran 2% slower.
pub const GPU_LOSS_CHUNK: usize = 512;
/// Positions per chunk of the vocabulary loss on the CPU.
pub const CPU_LOSS_CHUNK: usize = 256;

/// The most of the host's memory that a step's attention halves may pin ([`StepOptions::attention_on_host`]);
/// at Llama-3.1-8B dims they take 3.6 GB at batch 2 x 2048 and 14 GB at 1 x 16384.
pub const HALVES_HOST_SHARE: f64 = 0.25;

/// The share of the GPU's memory above which [`CheckpointPlace::Auto`] moves the blocks' inputs to the host.
/// Measured on the H200 at Llama-3.1-8B dims: the inputs are 0.25 of the 0.46 MiB a token holds in a step,
/// so at 40% of the device the rest of the step still fits beside them.
pub const HOST_ABOVE: f64 = 0.4;

impl CheckpointPlace {
    /// Whether the inputs of `blocks` blocks, `input_bytes` each, go to host memory on `device` (never on
    /// the CPU, where they are there already).
    pub fn on_host(self, input_bytes: usize, blocks: usize, device: &Device) -> bool {
        match self {
            Self::Device => false,
            Self::Host => device.is_cuda(),
            Self::Auto => crate::model::device::total_memory(device)
                .is_some_and(|total| (input_bytes * blocks) as f64 > HOST_ABOVE * total as f64),
        }
    }
}

impl StepOptions {
    /// The defaults for `device`: on a GPU the frozen products are recomputed rather than kept (measured on
    /// the H200 at Llama-3.1-8B, batch 2 x 2048: keeping them cost 10 GiB for 3% speed); on the CPU, kept,
    /// and multiplied in bf16 where the CPU does so faster than f32 (QLoRA's compute dtype, as on a GPU).
    pub fn for_device(device: &candle_core::Device) -> Self {
        Self {
            precision: Precision::on(device, true),
            save_frozen_products: !device.is_cuda(),
            loss_chunk: match device.is_cuda() {
                true => GPU_LOSS_CHUNK,
                false => CPU_LOSS_CHUNK,
            },
            ..Self::default()
        }
    }
}

impl Default for StepOptions {
    fn default() -> Self {
        Self {
            checkpointing: true,
            loss_chunk: CPU_LOSS_CHUNK,
            dropout_seed: None,
            save_frozen_products: true,
            checkpoints: CheckpointPlace::Auto,
            keep: KeepBlocks::Auto,
            precision: Precision::F32,
            attention_on_host: true,
        }
    }
}

/// Loss and gradients of one batch.
#[derive(Debug)]
pub struct LossAndGrads {
    /// Mean negative log-likelihood over target tokens.
    pub loss: f32,
    pub target_tokens: usize,
    /// Gradient of every LoRA tensor, in the order of `Decoder::lora_params`.
    pub grads: Vec<(String, Tensor)>,
    /// Blocks whose attention half waited in host memory ([`StepOptions::attention_on_host`]).
    pub halves_on_host: usize,
}

impl Decoder {
    /// Mean loss over the batch's target tokens and the gradient of every LoRA tensor (f32).
    pub fn loss_and_grads(&self, batch: &TrainBatch, opts: &StepOptions) -> Result<LossAndGrads> {
        let (b, s) = batch.input_ids.dims2()?;
        let mut ctx = self.context(b, s, 0, &Positions::From(0), batch.attention_mask.as_ref())?;
        ctx.dropout = opts.dropout_seed.map(DropoutSeed);
        ctx.precision = opts.precision;
        // The checkpointed first pass needs no graph; recomputation and the plain path do.
        ctx.grad = !opts.checkpointing;
        timeline::mark(&self.device, || "start".into());
        let (rows, targets) = target_rows(batch)?;
        if rows.is_empty() {
            return Err(ModelError::Usage(
                "the batch has no target tokens (loss mask is all zero)".into(),
            ));
        }
        // Uploaded while the device's queue is still empty.
        let loss_rows = LossRows::upload(&rows, &targets, b * s, &self.device)?;
        let x0 = self.embed(&batch.input_ids)?;
        timeline::mark(&self.device, || "embedded".into());
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let loss = if opts.checkpointing {
            if opts.save_frozen_products {
                let saved = SavedProducts::default();
                saved.recording.set(true);
                ctx.saved = Some(saved);
            }
            // Blocks from `first_kept` on are kept whole (keep_blocks): their graph waits for the backward.
            let keep = self.kept_blocks(b * s, opts.keep, opts.save_frozen_products);
            let first_kept = self.blocks.len() - keep;
            let mut inputs = Vec::with_capacity(first_kept);
            let input_bytes = x0.elem_count() * x0.dtype().size_in_bytes();
            let host = opts
                .checkpoints
                .on_host(input_bytes, first_kept, &self.device);
            if opts.attention_on_host && self.device.is_cuda() {
                let budget = crate::model::device::host_memory_bytes()
                    .map_or(0, |total| (HALVES_HOST_SHARE * total as f64) as usize);
                ctx.halves = Some(AttentionHalves::new(first_kept, budget));
            }
            let mut x = x0;
            for i in 0..first_kept {
                let out = self.block_forward(i, &x, &ctx, None)?.detach();
                inputs.push(if host { x.to_device(&Device::Cpu)? } else { x });
                x = out;
                timeline::mark(&self.device, || format!("block {i} forward"));
            }
            if let Some(halves) = &ctx.halves {
                halves.finish_forward()?;
            }
            let kept = match keep {
                0 => None,
                _ => {
                    let (xin, out) = self.forward_kept(first_kept, &x, &mut ctx)?;
                    x = out.detach();
                    Some((xin, out))
                }
            };
            let (loss, mut g) = self.head_loss(&x, &loss_rows, opts)?;
            timeline::mark(&self.device, || "head and loss".into());
            ctx.grad = true;
            if let Some(saved) = &ctx.saved {
                saved.recording.set(false);
            }
            if let Some((xin, out)) = kept {
                let store = backward_with(&out, &g)?;
                for i in first_kept..self.blocks.len() {
                    self.collect_block_grads(i, &store, &mut grads);
                }
                if first_kept > 0 {
                    g = input_grad(&store, &xin)?;
                }
            }
            // Each recomputed block's output only receives its gradient (`backward_with`).
            ctx.output_unread = true;
            for i in (0..first_kept).rev() {
                let input = inputs.pop().ok_or_else(|| {
                    ModelError::Usage("a block's checkpointed input is missing".into())
                })?;
                let input = input.to_device(&self.device)?;
                // The fused GPU block recomputes and goes back in one call, outside candle's autograd.
                if let Some((dx, adapters)) = self.block_backward(i, &input, &ctx, &g)? {
                    for (t, da, db) in adapters {
                        grads.insert(peft_key(i, t, 'A'), da);
                        grads.insert(peft_key(i, t, 'B'), db);
                    }
                    g = dx;
                    timeline::mark(&self.device, || format!("block {i} backward"));
                    continue;
                }
                let xin = Var::from_tensor(&input)?;
                let out = self.block_forward(i, xin.as_tensor(), &ctx, None)?;
                let store = backward_with(&out, &g)?;
                self.collect_block_grads(i, &store, &mut grads);
                if i > 0 {
                    g = input_grad(&store, &xin)?;
                }
                timeline::mark(&self.device, || format!("block {i} backward"));
            }
            loss
        } else {
            let x0 = Var::from_tensor(&x0)?;
            let mut x = x0.as_tensor().clone();
            for i in 0..self.blocks.len() {
                x = self.block_forward(i, &x, &ctx, None)?;
            }
            let (loss, g) = self.head_loss(&x.detach(), &loss_rows, opts)?;
            let store = backward_with(&x, &g)?;
            for i in 0..self.blocks.len() {
                self.collect_block_grads(i, &store, &mut grads);
            }
            loss
        };
        let ordered = self
            .lora_params()
            .into_iter()
            .map(|(k, v)| {
                let g = match grads.remove(&k) {
                    Some(g) => g,
                    None => v.as_tensor().zeros_like()?,
                };
                Ok((k, g))
            })
            .collect::<Result<Vec<_>>>()?;
        timeline::mark(&self.device, || "gradients".into());
        // The one read of the step: it waits for the whole backward pass.
        let loss = loss.to_scalar::<f64>()? as f32;
        Ok(LossAndGrads {
            loss,
            target_tokens: rows.len(),
            grads: ordered,
            halves_on_host: ctx.halves.as_ref().map_or(0, AttentionHalves::sent),
        })
    }

    fn collect_block_grads(
        &self,
        i: usize,
        store: &candle_core::backprop::GradStore,
        out: &mut HashMap<String, Tensor>,
    ) {
        for t in Target::ALL {
            if let Some(l) = &self.blocks[i].linear(t).lora {
                if let Some(g) = store.get(l.a.as_tensor()) {
                    out.insert(peft_key(i, t, 'A'), g.detach());
                }
                if let Some(g) = store.get(l.b.as_tensor()) {
                    out.insert(peft_key(i, t, 'B'), g.detach());
                }
            }
        }
    }

    /// Loss over target rows of the last hidden state `h` `[b, s, d]` (a scalar f64 left on the device) and
    /// its gradient, chunk by chunk: the target rows are gathered once, each chunk is backpropagated into
    /// its own rows only, and the chunks' gradients are scattered into `[b, s, d]` once at the end.
    fn head_loss(
        &self,
        h: &Tensor,
        loss: &LossRows,
        opts: &StepOptions,
    ) -> Result<(Tensor, Tensor)> {
        let chunk = opts.loss_chunk.max(1);
        let (b, s, d) = h.dims3()?;
        let h2 = h.reshape((b * s, d))?;
        let gathered = h2.index_select(&loss.rows_on_device, 0)?;
        let n = loss.targets.len() as f64;
        let mut chunk_losses = Vec::new();
        let mut grads = Vec::new();
        let packed = match opts.precision {
            Precision::Bf16 if cpu::applies(h) => self.bf16_head()?,
            _ => None,
        };
        // The head's weight dequantized once for all chunks (None: it needs no dequantization, or too much).
        let dense = match packed.is_none() && loss.targets.len() > chunk {
            true => self.head.dequantized(h.device())?,
            false => None,
        };
        let head = dense.as_ref().unwrap_or(&self.head);
        for (c, t) in loss.targets.chunks(chunk).enumerate() {
            let hc = Var::from_tensor(&gathered.narrow(0, c * chunk, t.len())?)?;
            let tc = loss.targets_on_device.narrow(0, c * chunk, t.len())?;
            let fused = match &packed {
                Some(_) => None,
                None => self.head_nll_fused(head, hc.as_tensor(), t, &tc)?,
            };
            let nll = match fused {
                Some(nll) => nll,
                None => self.chunk_nll(packed.as_ref(), head, hc.as_tensor(), t, &tc)?,
            };
            let chunk_loss = (nll.sum_all()? * (1.0 / n))?;
            let store = chunk_loss.backward()?;
            chunk_losses.push(chunk_loss.detach().to_dtype(DType::F64)?);
            let g = store.get(hc.as_tensor()).ok_or_else(|| {
                ModelError::Usage("the loss did not reach the hidden states".into())
            })?;
            grads.push(g.detach());
        }
        drop(gathered);
        let total = Tensor::stack(&chunk_losses, 0)?.sum_all()?;
        let grad = scatter_rows(grads, &loss.sources)?;
        Ok((total, grad.reshape((b, s, d))?))
    }

    /// A chunk's per-row losses through the head's logits (the path [`Decoder::head_nll_fused`] does not serve):
    /// the CPU's packed bf16 head when given, and the fused loss kernels where they serve the logits.
    fn chunk_nll(
        &self,
        packed: Option<&Arc<PackedWeight>>,
        head: &FrozenLinear,
        h: &Tensor,
        t: &[u32],
        tc: &Tensor,
    ) -> Result<Tensor> {
        let logits = match packed {
            Some(p) => self.head_logits_bf16(p, h)?,
            None => self.head_logits_with(head, h)?,
        };
        Ok(
            match crate::model::kernels::fused_row_nll(&logits, t, tc)? {
                Some(nll) => nll,
                None => {
                    let logits = logits.to_dtype(DType::F32)?;
                    if cpu::applies(&logits) {
                        cpu::cross_entropy::row_nll(&logits, t)?
                    } else {
                        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                        logp.gather(&tc.unsqueeze(1)?, 1)?.neg()?
                    }
                }
            },
        )
    }
}

/// The loss's target rows and ids, and what the device needs of them, uploaded before the forward pass:
/// an upload from host memory waits for the device's queue to drain, which at the head would idle it.
struct LossRows<'a> {
    targets: &'a [u32],
    targets_on_device: Tensor,
    /// The rows to gather from the flattened hidden states (never all of them: a sequence's last position
    /// predicts nothing).
    rows_on_device: Tensor,
    /// For each position, the row of the joined chunk gradients it takes (the zero row appended after
    /// them where the position has no target).
    sources: Tensor,
}

impl<'a> LossRows<'a> {
    fn upload(rows: &[u32], targets: &'a [u32], positions: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            targets,
            targets_on_device: Tensor::new(targets, device)?,
            rows_on_device: Tensor::new(rows, device)?,
            sources: Tensor::new(scatter_sources(rows, positions)?, device)?,
        })
    }
}

/// For each of `positions`, the index of its row in `rows`, or `rows.len()` (a zero row) where it has none.
fn scatter_sources(rows: &[u32], positions: usize) -> Result<Vec<u32>> {
    let mut source = vec![rows.len() as u32; positions];
    for (i, &r) in rows.iter().enumerate() {
        match source.get_mut(r as usize) {
            Some(at) => *at = i as u32,
            None => {
                return Err(ModelError::Usage(format!(
                    "target row {r} is outside the batch's {positions} positions"
                )));
            }
        }
    }
    Ok(source)
}

/// `[positions, d]` from the chunks' gradients `[n, d]` (in order) with a zero row appended, gathered by
/// [`scatter_sources`]' indices (candle's scatter, `index_add`, runs one thread per column over every row).
/// The chunks are released once joined.
fn scatter_rows(mut chunks: Vec<Tensor>, source: &Tensor) -> Result<Tensor> {
    let Some(first) = chunks.first() else {
        return Err(ModelError::Usage("no gradient rows to scatter".into()));
    };
    let zero = Tensor::zeros((1, first.dim(1)?), first.dtype(), first.device())?;
    chunks.push(zero);
    let joined = Tensor::cat(&chunks, 0)?;
    drop(chunks);
    Ok(joined.index_select(source, 0)?)
}

/// The gradient that reached a block input `x` (detached).
fn input_grad(store: &candle_core::backprop::GradStore, x: &Var) -> Result<Tensor> {
    store
        .get(x.as_tensor())
        .map(Tensor::detach)
        .ok_or_else(|| ModelError::Usage("no gradient reached a block input".into()))
}

/// Flat row indices `b * s + t` of the positions that predict a target, and the target ids.
fn target_rows(batch: &TrainBatch) -> Result<(Vec<u32>, Vec<u32>)> {
    let ids = batch.input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mask = batch.loss_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let s = ids.first().map_or(0, Vec::len);
    if mask.len() != ids.len() || mask.iter().any(|m| m.len() != s) {
        return Err(ModelError::Usage(
            "loss_mask must have the shape of input_ids".into(),
        ));
    }
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (bi, (row, m)) in ids.iter().zip(&mask).enumerate() {
        for t in 1..s {
            if m[t] != 0.0 {
                rows.push((bi * s + t - 1) as u32);
                targets.push(row[t]);
            }
        }
    }
    Ok((rows, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_rows_land_at_their_positions_with_zeros_between_and_a_row_past_the_end_is_refused()
    {
        let chunks = vec![
            Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap(),
            Tensor::new(&[[3f32, 4.0]], &Device::Cpu).unwrap(),
        ];
        let source = scatter_sources(&[3, 1], 5).unwrap();
        assert_eq!(source, [2, 1, 2, 0, 2]);
        let source = Tensor::new(source, &Device::Cpu).unwrap();
        let full = scatter_rows(chunks, &source).unwrap();
        assert_eq!(
            full.to_vec2::<f32>().unwrap(),
            [[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]
        );
        let err = scatter_sources(&[1, 5], 5).unwrap_err().to_string();
        assert!(
            err.contains("target row 5") && err.contains("5 positions"),
            "{err}"
        );
    }
}
