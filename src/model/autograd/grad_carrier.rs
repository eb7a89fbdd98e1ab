//! Hands the adapter gradients that a fused decoder block computes itself to candle's gradient store.
//!
//! "Carriers" are tiny ops chained between the adapters and the block op, one per projection: the block op
//! takes the chain's end as an input, so candle runs the block's backward first. That backward computes
//! every gradient and leaves each adapter's pair in a shared slot; each carrier then hands its pair to
//! candle as the gradients of its inputs `A` and `B`. Used by the CPU block (`kernels::cpu::block`) and the CUDA
//! one (`kernels::cuda::block`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// One `(dA, dB)` slot per projection, filled by the block's backward, emptied by the carriers.
pub type GradSlots = Arc<Mutex<Vec<Option<(Tensor, Tensor)>>>>;

/// Fills the slots (the block's backward).
pub fn deliver(slots: &GradSlots, grads: Vec<Option<(Tensor, Tensor)>>) -> Result<()> {
    *slots.lock().map_err(poisoned)? = grads;
    Ok(())
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("decoder-block: poisoned gradient slots".into())
}

/// Empty slots, one per adapter `(A, B)`, and the chain of carriers over the adapters in slot order: the
/// tensor (one element, on the adapters' device) the block op takes as an input.
pub fn carry(adapters: &[(&Tensor, &Tensor)]) -> Result<(GradSlots, Tensor)> {
    let device = match adapters.first() {
        Some((a, _)) => a.device().clone(),
        None => candle_core::bail!("decoder-block: no adapters to carry"),
    };
    let slots: GradSlots = Arc::new(Mutex::new(vec![None; adapters.len()]));
    let mut carrier = Tensor::zeros(1, DType::F32, &device)?;
    for (index, (a, b)) in adapters.iter().enumerate() {
        let op = Carrier {
            index,
            slots: slots.clone(),
        };
        carrier = carrier.apply_op3(a, b, op)?;
    }
    Ok((slots, carrier))
}

struct Carrier {
    index: usize,
    slots: GradSlots,
}

impl CustomOp3 for Carrier {
    fn name(&self) -> &'static str {
        "decoder-block-carrier"
    }

    fn cpu_fwd(
        &self,
        _prev: &CpuStorage,
        _pl: &Layout,
        _a: &CpuStorage,
        _al: &Layout,
        _b: &CpuStorage,
        _bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        prev: &candle_core::CudaStorage,
        _pl: &Layout,
        _a: &candle_core::CudaStorage,
        _al: &Layout,
        _b: &candle_core::CudaStorage,
        _bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = prev.device().clone();
        let zero = dev.alloc_zeros::<f32>(1)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(zero, dev),
            Shape::from(1),
        ))
    }

    fn bwd(
        &self,
        prev: &Tensor,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pair = self.slots.lock().map_err(poisoned)?[self.index].take();
        let (da, db) = pair.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "decoder-block: no adapter gradient for projection {}",
                self.index
            ))
        })?;
        Ok((Some(prev.zeros_like()?), Some(da), Some(db)))
    }
}
