//! GPU support for the model engine: device names (`cpu`, `cuda`, `cuda:N`), the compute dtype a device
//! runs in (bf16 on CUDA, f32 on the CPU; LoRA weights and optimizer state stay f32 everywhere), and, with
//! the `cuda` feature, NF4 kept on the GPU with its quantize / dequantize kernels and the training step's
//! fused bf16 kernels (attention, RMSNorm, gated product, vocabulary loss, LoRA products on cuBLAS) and
//! the whole decoder block as one node (`block.rs`).

/// The `cpu_fwd` of a custom op that runs on CUDA only, with one token per operand (`cuda_only!(x y)` for
/// a `CustomOp2`): it refuses, naming the op.
#[cfg(feature = "cuda")]
macro_rules! cuda_only {
    (@storage $operand:tt) => {
        &candle_core::CpuStorage
    };
    ($($operand:tt)+) => {
        fn cpu_fwd(
            &self,
            $(_: cuda_only!(@storage $operand), _: &candle_core::Layout,)+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
}

/// Takes the value an op's forward consumes (it runs once per op).
#[cfg(feature = "cuda")]
fn take_once<T>(slot: &std::sync::Mutex<Option<T>>, op: &str) -> candle_core::Result<T> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned slot")))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the forward ran twice")))
}

#[cfg(feature = "cuda")]
mod adamw;
#[cfg(feature = "cuda")]
mod adapted;
#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod block;
#[cfg(feature = "cuda")]
mod cross_entropy;
#[cfg(feature = "cuda")]
mod fused;
#[cfg(feature = "cuda")]
mod heads;
#[cfg(feature = "cuda")]
mod lowrank;
#[cfg(feature = "cuda")]
mod nf4_gpu;
#[cfg(feature = "cuda")]
mod pool;
#[cfg(feature = "cuda")]
mod vram;
#[cfg(feature = "cuda")]
pub use adamw::{moments as adamw_moments, step as adamw_step};
#[cfg(feature = "cuda")]
pub use nf4_gpu::{Nf4Cuda, clone_cuda_storage, place_on_device};
#[cfg(feature = "cuda")]
pub use pool::{allocated_peak, reset_allocated_peak};
#[cfg(feature = "cuda")]
pub use vram::VramPeak;

use candle_core::{DType, Device, Tensor};

use super::config::Activation;
use super::error::{ModelError, Result};
use super::frozen::FrozenLinear;

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
    if fused::applies(x) {
        let rotary = rotary.map(|(cos, sin, interleaved)| heads::Rotary {
            cos: cos.clone(),
            sin: sin.clone(),
            interleaved,
        });
        return heads::split_heads(x, heads, head_dim, rotary.as_ref()).map(Some);
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
    mask: &Tensor,
    scale_softcap: (f64, Option<f64>),
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if fused::applies(q) {
        return attention::attention(q, k, v, mask, scale_softcap).map(Some);
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
    if fused::applies(x) {
        let adapter = adapted::Adapter {
            a,
            b,
            scale,
            dropout,
        };
        return adapted::adapted_linear(x, base, adapter).map(Some);
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
    /// Additive attention mask `[b, 1, t, t]`.
    pub mask: &'a Tensor,
    /// Attention scale and logit soft-cap.
    pub attention: (f64, Option<f64>),
    pub activation: Activation,
    /// Whether gradients are wanted: false runs the forward alone (evaluation, checkpointing's first pass).
    pub grad: bool,
}

/// cuda hook: a whole block, with gradients as one node with a hand-chained backward (see `block.rs`),
/// when it serves `x` (bf16 on a CUDA device); None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_block(x: &Tensor, parts: BlockParts) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if fused::applies(x) {
        return block::block(x, parts).map(Some);
    }
    Ok(None)
}

/// cuda hook: per-row negative log-likelihoods `[rows]` (f32) of `targets` under `logits` `[rows, vocab]`
/// through the fused CUDA kernels when they serve the logits; None otherwise.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn fused_row_nll(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if fused::applies(logits) {
        return cross_entropy::row_nll(logits, targets).map(Some);
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
    if fused::applies(x) {
        return fused::rms_norm(x, weight, eps).map(Some);
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
    if fused::applies(gate) {
        return fused::gated(gate, up, activation).map(Some);
    }
    Ok(None)
}

/// The dtype activations and dequantized frozen weights use on `device`.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Opens a device by name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.to_ascii_lowercase().as_str() {
        "cuda" | "gpu" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ModelError::Usage(format!(
                    "unknown device `{name}`; expected `cpu`, `cuda` or `cuda:N` (N = 0, 1, ...)"
                ))
            })?,
    };
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Usage(format!(
            "device `{name}` needs a qlab built with the `cuda` feature (cargo build --release --features cuda; see the README's CUDA section)"
        )));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        ModelError::Usage(format!("cannot open CUDA device {ordinal} (`{name}`): {e}"))
    })?;
    #[cfg(feature = "cuda")]
    pool::keep_freed_memory(&device)?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_refused_with_the_expected_forms() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(compute_dtype(&Device::Cpu), DType::F32);
        let err = parse_device("tpu:0").unwrap_err().to_string();
        assert!(err.contains("`cpu`, `cuda` or `cuda:N`"), "{err}");
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
