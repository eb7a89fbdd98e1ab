//! The CUDA backend behind the kernel seam (`model::kernels`): the training step's fused bf16 kernels
//! (flash attention, RMSNorm, gated product, vocabulary loss, LoRA products on cuBLAS, AdamW, the optimizer's multi-tensor passes, host rows staged
//! for the device) and the whole decoder
//! block as one node (`block.rs`). The PTX beside each `.cu` file is built by scripts/build-cuda.sh.

/// The `cpu_fwd` of a custom op that runs on CUDA only, with one token per operand (`cuda_only!(x y)` for
/// a `CustomOp2`): it refuses, naming the op.
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
fn take_once<T>(slot: &std::sync::Mutex<Option<T>>, op: &str) -> candle_core::Result<T> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned slot")))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the forward ran twice")))
}

pub(super) mod adamw;
pub(super) mod adapted;
pub(super) mod attention;
pub(super) mod block;
pub(super) mod cross_entropy;
pub(super) mod flash;
pub(super) mod fused;
pub(super) mod heads;
pub(super) mod host_halves;
pub(super) mod lowrank;
pub mod multi_tensor;
pub(super) mod staged;

pub use adamw::{moments as adamw_moments, step as adamw_step};
pub use block::{kept_weights, shared_input_products};
