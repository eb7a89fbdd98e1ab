//! The vocabulary loss on CUDA: each row's negative log-likelihood straight from bf16 logits in one kernel,
//! and its gradient `softmax - onehot` in one more, each a single pass over the logits. candle's log-softmax
//! composition sweeps the `[rows, vocab]` logits about twenty times in f32 (a third of a step's kernel time at
//! 128k vocabularies). [`head_nll`] joins the loss to the frozen head's product as one autograd edge, so that no
//! logits-sized gradient passes through candle's backward (which adds each gradient into a zero-filled buffer).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use cudarc::driver::PushKernelArg;
use half::bf16;

use super::fused::{MODULE, PTX, rows_config, view};
use crate::model::autograd::attach::{Backward, attach};
use crate::model::quant::frozen::FrozenWeight;

/// `[rows]` f32 negative log-likelihoods of `targets` under bf16 `logits` `[rows, vocab]`; differentiable
/// in the logits. `on_device` is `targets` on the logits' device (checked here on the host copy).
pub fn row_nll(logits: &Tensor, targets: &[u32], on_device: &Tensor) -> Result<Tensor> {
    check_targets(logits, targets, on_device)?;
    logits
        .contiguous()?
        .apply_op2(&on_device.contiguous()?, RowNll)
}

/// [`row_nll`] of `logits = h W^T` (bf16 `h` `[rows, d]`, the logits computed by the caller from `h` and the
/// frozen `weight`, `dequantized` when it was dequantized whole), differentiable in `h` alone: the backward
/// turns the losses' gradient into the logits' in one pass and multiplies it by W straight away.
pub fn head_nll(
    h: &Tensor,
    logits: &Tensor,
    weight: &FrozenWeight,
    dequantized: Option<Tensor>,
    targets: &[u32],
    on_device: &Tensor,
) -> Result<Tensor> {
    check_targets(logits, targets, on_device)?;
    let logits = logits.detach().contiguous()?;
    let on_device = on_device.contiguous()?;
    let nll = logits.apply_op2_no_bwd(&on_device, &RowNll)?;
    let backward = HeadNllBackward {
        logits,
        targets: on_device,
        weight: weight.clone(),
        dequantized,
    };
    attach(h, nll, backward)
}

/// [`head_nll`]'s backward: `dh = dlogits W`.
struct HeadNllBackward {
    logits: Tensor,
    targets: Tensor,
    weight: FrozenWeight,
    dequantized: Option<Tensor>,
}

impl Backward for HeadNllBackward {
    fn name(&self) -> &'static str {
        "head-nll-bf16"
    }

    fn grad(&self, h: &Tensor, nll: &Tensor, g: &Tensor) -> Result<Tensor> {
        let op = RowNllBackward {
            nll: nll.contiguous()?,
        };
        let dl = self
            .logits
            .apply_op3_no_bwd(&self.targets, &g.contiguous()?, &op)?;
        let dh = match &self.dequantized {
            Some(w) => dl.matmul(w)?,
            None => self.weight.matmul(&dl)?,
        };
        dh.reshape(h.shape())
    }
}

/// That `targets` (and their copy `on_device`) name one id of the vocabulary per row of `logits`.
fn check_targets(logits: &Tensor, targets: &[u32], on_device: &Tensor) -> Result<()> {
    let (rows, vocab) = logits.dims2()?;
    if targets.len() != rows || on_device.dims() != [rows] || on_device.dtype() != DType::U32 {
        candle_core::bail!(
            "row-nll: {} targets ({:?} {:?} on the device) for {rows} rows",
            targets.len(),
            on_device.dims(),
            on_device.dtype()
        )
    }
    if let Some(bad) = targets.iter().find(|t| **t as usize >= vocab) {
        candle_core::bail!("row-nll: target id {bad} is outside the vocabulary of {vocab}")
    }
    Ok(())
}

struct RowNll;

impl CustomOp2 for RowNll {
    fn name(&self) -> &'static str {
        "row-nll-bf16"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        l: &CudaStorage,
        ll: &Layout,
        t: &CudaStorage,
        tl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, cols) = ll.shape().dims2()?;
        let dev = l.device().clone();
        let (lv, tv) = (
            view::<bf16>(l, ll, "logits")?,
            view::<u32>(t, tl, "targets")?,
        );
        // SAFETY: the kernel writes every row's value.
        let out = unsafe { dev.alloc::<f32>(rows) }?;
        let func = dev.get_or_load_custom_func("row_nll_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&lv).arg(&tv).arg(&out).arg(&cols);
        // SAFETY: argument types and counts match row_nll_bf16 in fused.cu; targets were checked < cols.
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(rows)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        nll: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RowNllBackward {
            nll: nll.contiguous()?,
        };
        let dl = logits.apply_op3_no_bwd(targets, &g.contiguous()?, &op)?;
        Ok((Some(dl), None))
    }
}

/// The gradient in one pass over the logits: the forward's `nll` gives each row's log-sum-exp back.
struct RowNllBackward {
    /// The forward's `[rows]` f32 output.
    nll: Tensor,
}

impl CustomOp3 for RowNllBackward {
    fn name(&self) -> &'static str {
        "row-nll-bf16-backward"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        l: &CudaStorage,
        ll: &Layout,
        t: &CudaStorage,
        tl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, cols) = ll.shape().dims2()?;
        let dev = l.device().clone();
        let lv = view::<bf16>(l, ll, "logits")?;
        let tv = view::<u32>(t, tl, "targets")?;
        let gv = view::<f32>(g, gl, "grad")?;
        let (ns, nl) = self.nll.storage_and_layout();
        let Storage::Cuda(ns) = &*ns else {
            candle_core::bail!("row-nll-backward: the losses are not on a CUDA device")
        };
        let nv = view::<f32>(ns, nl, "nll")?;
        if nv.len() != rows || gv.len() != rows {
            candle_core::bail!(
                "row-nll-backward: {} losses, {} gradients for {rows} rows",
                nv.len(),
                gv.len()
            )
        }
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
        let func = dev.get_or_load_custom_func("row_nll_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&lv).arg(&tv).arg(&nv).arg(&gv).arg(&out).arg(&cols);
        // SAFETY: argument types and counts match row_nll_backward_bf16 in fused.cu; a loss and a gradient per
        // row (checked above), targets checked < cols by `row_nll`.
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), ll.shape().clone()))
    }
}
