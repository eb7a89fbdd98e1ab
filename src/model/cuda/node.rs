//! A value computed outside autograd (cuBLAS products, kernels) entering candle's graph as the output of a
//! custom op whose backward is written by hand: the op's forward only hands the value over.

use std::sync::Mutex;

use candle_core::{CudaStorage, Result, Shape, Storage, Tensor};

/// The value waiting to be handed over; taken once, by the op's forward.
pub(super) struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub(super) fn new(value: Tensor) -> Self {
        Self(Mutex::new(Some(value)))
    }

    /// A copy of the value's storage (contiguous, from offset 0) as the op's output.
    pub(super) fn hand_over(&self, op: &str) -> Result<(CudaStorage, Shape)> {
        let value = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned output slot")))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: output already taken")))?
            .contiguous()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => super::clone_cuda_storage(s, layout),
            _ => candle_core::bail!("{op}: the output is not on a CUDA device"),
        }
    }
}
