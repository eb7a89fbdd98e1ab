//! The kernel seam: fused ops with hand-written backward passes, a CPU f32 backend (`cpu`) and, with the
//! `cuda` feature, a CUDA bf16 backend (`cuda`). Each hook here answers None when no fused kernel serves its
//! tensors, and the caller keeps candle's composition.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod mask;

use candle_core::Tensor;

use crate::model::config::Activation;
use crate::model::quant::FrozenLinear;

/// Generation's frozen product `linear(x)`: GGUF weights multiply in quantized form when answering on the
/// CPU, prompts and decoding alike (`cpu::decode`), NF4 weights straight from their codes when decoding on a
/// GPU (`Nf4Cuda::gemv_with`, the bias added in its kernel); anything else is the linear layer's own forward.
pub fn generation_product(linear: &FrozenLinear, x: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(y) = cpu::decode::product(linear, x)? {
        return Ok(y);
    }
    #[cfg(feature = "cuda")]
    if let crate::model::quant::FrozenWeight::Nf4Cuda(w) = &linear.weight
        && !x.track_op()
    {
        let (_, inp) = linear.weight.dims2()?;
        let x2 = x.reshape(((), inp))?;
        // The bias is added in the product's kernel; nothing to attach for autograd (x is not tracked).
        let add = crate::model::quant::GemvAdd::bias(linear.bias.as_ref())?;
        if let Some(y) = w.gemv_with(&x2, crate::model::quant::GemvKernel::Auto, &add)? {
            let mut dims = x.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = linear.out_features();
            }
            return y.reshape(dims);
        }
    }
    linear.forward(x)
}

/// Greedy generation's next tokens straight from the head `linear` and the last positions' hidden states `x`
/// (`[b, 1, d]`): each row's first largest logit, found without every logit in full where the CPU kernels can
/// (`cpu::decode::greedy`); None otherwise, and the logits are then computed.
pub fn generation_greedy(
    linear: &FrozenLinear,
    x: &Tensor,
) -> candle_core::Result<Option<Vec<u32>>> {
    cpu::decode::greedy(linear, x)
}

/// Generation's frozen products of one input by several linears (a block's q, k and v; its gate and up): in
/// one parallel loop on the CPU (`cpu::decode::products`), from their NF4 codes on a GPU, q, k and v in one
/// launch (`cuda::adapted::frozen_members`); None when that does not serve them, and each is then a
/// [`generation_product`].
pub fn generation_products(
    linears: &[&FrozenLinear],
    x: &Tensor,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) && !x.track_op() {
        return cuda::adapted::frozen_members(linears, x);
    }
    cpu::decode::products(linears, x)
}

/// cuda hook: a projection `[b, t, heads * head_dim]` split into heads `[b, heads, t, head_dim]`, rotated by
/// the rotary tables `(cos, sin, interleaved)` when given, as one fused node (see `heads.rs`) when it serves
/// `x` (bf16 on a CUDA device); None otherwise, and always without the `cuda` feature.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_split_heads(
    x: &Tensor,
    heads: usize,
    head_dim: usize,
    rotary: Option<(&Tensor, &Tensor, bool)>,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        let rotary = rotary.map(|(cos, sin, interleaved)| cuda::heads::Rotary {
            cos: cos.clone(),
            sin: sin.clone(),
            interleaved,
        });
        return cuda::heads::split_heads(x, heads, head_dim, rotary.as_ref()).map(Some);
    }
    Ok(None)
}

/// cuda hook: attention through the fused CUDA op (see `attention.rs`) when it serves these tensors (bf16
/// on a CUDA device), heads merged `[b, t, h * d]`; None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &mask::AttentionMask,
    scale_softcap: (f64, Option<f64>),
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(q) {
        return cuda::attention::attention(q, k, v, mask, scale_softcap).map(Some);
    }
    Ok(None)
}

/// cuda hook: a frozen projection plus its LoRA adapter (A, B, scale, dropout mask on the adapter's input)
/// as one fused autograd node (see `adapted.rs`) when it serves `x`; None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_adapted(
    x: &Tensor,
    base: &FrozenLinear,
    (a, b, scale): (&Tensor, &Tensor, f64),
    dropout: Option<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        let adapter = cuda::adapted::Adapter {
            a,
            b,
            scale,
            dropout,
        };
        return cuda::adapted::adapted_linear(x, base, adapter).map(Some);
    }
    Ok(None)
}

/// cuda hook: generation's adapted projections of one input `x` (q, k and v; gate and up), each a frozen linear
/// with its adapter's A `[r, in]`, B `[out, r]` and scale, finished together where the few-row NF4 kernels serve
/// them all (see `cuda::adapted::few_rows_members`: one launch for the adapters' rank-wide rows); None otherwise,
/// and always without the `cuda` feature.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_adapted_members(
    x: &Tensor,
    members: &[(&FrozenLinear, (&Tensor, &Tensor, f64))],
) -> candle_core::Result<Option<Vec<Tensor>>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        let members: Vec<_> = members
            .iter()
            .map(|&(base, (a, b, scale))| {
                let adapter = cuda::adapted::Adapter {
                    a,
                    b,
                    scale,
                    dropout: None,
                };
                (base, adapter)
            })
            .collect();
        return cuda::adapted::few_rows_members(x, &members);
    }
    Ok(None)
}

/// One projection of a fused block: the frozen linear, the adapter's A `[r, in]` and B `[out, r]` (tracked
/// when trained), its scale and the dropout mask on its input.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct BlockProjection {
    pub base: FrozenLinear,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: Option<Tensor>,
}

/// What a fused block needs besides its input: a llama-style block (pre-norms only, every projection
/// adapted, no biases).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct BlockParts<'a> {
    /// RMSNorm weight and eps before attention, and before the feed-forward.
    pub norms: [(&'a Tensor, f64); 2],
    /// Projection `i` (q, k, v, o, gate, up, down) for its input `[n, in]`.
    pub projection: &'a dyn Fn(usize, &Tensor) -> candle_core::Result<BlockProjection>,
    /// Query heads, key-value heads, head size.
    pub heads: (usize, usize, usize),
    /// Rope tables `[b, 1, t, hd / 2]` and whether rotated pairs are interleaved.
    pub rope: (&'a Tensor, &'a Tensor, bool),
    /// The keys each query sees.
    pub mask: &'a mask::AttentionMask,
    /// Attention scale and logit soft-cap.
    pub attention: (f64, Option<f64>),
    pub activation: Activation,
    /// Whether gradients are wanted: false runs the forward alone (evaluation, checkpointing's first pass).
    pub grad: bool,
    /// With `grad`: the output's value is never read, only its gradient handed to it (checkpointing's
    /// recomputation), so work that only the output needs may be skipped.
    pub output_unread: bool,
    /// Checkpointing: the step's [`AttentionHalves`] and this block's index. The first pass (without `grad`)
    /// leaves the block's attention half there; the recomputation takes it back instead of recomputing it.
    pub halves: Option<(&'a AttentionHalves, usize)>,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl BlockParts<'_> {
    /// Checkpointing's recomputation: gradients are wanted and the output's value is never read.
    pub fn recomputing(&self) -> bool {
        self.grad && self.output_unread
    }
}

/// The attention half of each block's checkpointed first pass (rotated q, k and v, attention's output and
/// log-sum-exp, the residual after attention), kept in host memory for the block's recomputation
/// (`cuda::host_halves`); with the `cuda` feature only, and then only for the fused CUDA block.
pub struct AttentionHalves {
    #[cfg(feature = "cuda")]
    inner: cuda::host_halves::HostHalves,
}

impl AttentionHalves {
    /// For a step of `blocks` checkpointed blocks, pinning at most `budget` bytes of host memory.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn new(blocks: usize, budget: usize) -> Self {
        Self {
            #[cfg(feature = "cuda")]
            inner: cuda::host_halves::HostHalves::new(blocks, budget),
        }
    }

    /// The first pass is over: device memory still being copied out is freed as soon as its copy is done.
    pub fn finish_forward(&self) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        self.inner.finish_forward()?;
        Ok(())
    }

    /// How many blocks' halves went to host memory this step.
    pub fn sent(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.inner.sent();
        #[cfg(not(feature = "cuda"))]
        0
    }
}

/// How many of a step's `blocks` attention halves, `need` bytes each, fit in host memory when all GPUs' halves may
/// pin `budget` bytes and the other GPUs' already hold `elsewhere`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn halves_room(blocks: usize, need: usize, budget: usize, elsewhere: usize) -> usize {
    blocks.min(budget.saturating_sub(elsewhere) / need.max(1))
}

/// cuda hook: a whole block, with gradients as one node with a hand-chained backward (see `block.rs`),
/// when it serves `x` (bf16 on a CUDA device); None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_block(x: &Tensor, parts: BlockParts) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        return cuda::block::block(x, parts).map(Some);
    }
    Ok(None)
}

/// A block's input gradient and each projection's adapter gradients `(dA, dB)` ([`fused_block_backward`]).
pub type BlockBackward = (Tensor, Vec<(Tensor, Tensor)>);

/// cuda hook: checkpointing's recomputation of a whole block and its backward in one call, outside candle's
/// autograd (see `block.rs`), when it serves `x`: the input's gradient for the output's gradient `g`, and each
/// projection's adapter gradients `(dA, dB)` in `Target::ALL`'s order; None otherwise. `parts.grad` and
/// `parts.output_unread` must be set.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_block_backward(
    x: &Tensor,
    parts: BlockParts,
    g: &Tensor,
) -> candle_core::Result<Option<BlockBackward>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        return cuda::block::block_backward(x, parts, g).map(Some);
    }
    Ok(None)
}

/// cuda hook: per-row negative log-likelihoods `[rows]` (f32) of `targets` under `logits` `[rows, vocab]`
/// through the fused CUDA kernels when they serve the logits; None otherwise. `on_device` holds the same
/// targets (u32) on the logits' device, uploaded by the caller.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_row_nll(
    logits: &Tensor,
    targets: &[u32],
    on_device: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(logits) {
        return cuda::cross_entropy::row_nll(logits, targets, on_device).map(Some);
    }
    Ok(None)
}

/// cuda hook: the vocabulary loss `[rows]` (f32) of `targets` under `logits = h W^T` (computed by the caller
/// from bf16 `h` `[rows, d]` and the frozen `weight`, `dequantized` when it was dequantized whole) as one
/// autograd edge from `h`, when the fused CUDA kernels serve the logits; None otherwise. See
/// `cuda::cross_entropy::head_nll`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_head_nll(
    h: &Tensor,
    logits: &Tensor,
    weight: &crate::model::quant::frozen::FrozenWeight,
    dequantized: Option<Tensor>,
    targets: &[u32],
    on_device: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(logits) {
        return cuda::cross_entropy::head_nll(h, logits, weight, dequantized, targets, on_device)
            .map(Some);
    }
    Ok(None)
}

/// cuda hook: rows `ids` of `table` (in host memory) on `device`, through page-locked staging when `device`
/// is a GPU and the table a contiguous float table; None otherwise (the caller gathers and copies).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn host_rows_to_device(
    table: &Tensor,
    ids: &[u32],
    device: &candle_core::Device,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        return cuda::staged::rows_to_device(table, ids, dev);
    }
    Ok(None)
}

/// cuda hook: RMSNorm through the fused CUDA kernels when they serve `x`; None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(x) {
        return cuda::fused::rms_norm(x, weight, eps).map(Some);
    }
    Ok(None)
}

/// cuda hook: the gated MLP product `act(gate) * up` through the fused CUDA kernels when they serve it.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_gated(
    gate: &Tensor,
    up: &Tensor,
    activation: Activation,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::fused::applies(gate) {
        return cuda::fused::gated(gate, up, activation).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::halves_room;

    #[test]
    fn halves_fit_what_the_other_gpus_left_of_the_budget() {
        let gb = 1usize << 30;
        // One GPU, 2 x 2048 at 8B dims: 32 blocks of 112 MiB in a 32 GiB budget.
        assert_eq!(halves_room(32, 112 << 20, 32 * gb, 0), 32);
        // Three other GPUs already hold 14 GiB each: 1 x 16384's 450 MiB blocks find none.
        assert_eq!(halves_room(32, 450 << 20, 32 * gb, 42 * gb), 0);
        // One other GPU holds 14 GiB: 18 GiB left, 40 blocks of 450 MiB.
        assert_eq!(halves_room(32, 450 << 20, 32 * gb, 14 * gb), 32);
        assert_eq!(halves_room(64, 450 << 20, 32 * gb, 14 * gb), 40);
        // No budget (host memory unreadable), or nothing to keep.
        assert_eq!(halves_room(32, 1, 0, 0), 0);
        assert_eq!(halves_room(32, 0, gb, 0), 32);
    }
}
