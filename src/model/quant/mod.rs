//! Frozen weight storage at the bottom of the engine: NF4 (on the host and, with the `cuda` feature, on the
//! GPU), ggml blocks and dense tensors behind one `FrozenWeight`; the quantisation a run asks for, and the
//! `TensorSource` trait the loaders implement.

mod dequant;
pub mod frozen;
pub mod nf4;
#[cfg(feature = "cuda")]
pub mod nf4_cuda;
pub mod weights;

pub use frozen::{FrozenLinear, FrozenWeight};
#[cfg(feature = "cuda")]
pub use nf4_cuda::{GemvAdd, GemvKernel, LowRankAdd, Nf4Cuda};
pub use weights::{Quant, TensorSource};
