//! Attention on CUDA bf16 as one autograd node: cuBLAS products for the scores and the output, the masked
//! softmax as one kernel, and a backward that reuses the forward's probabilities (one `[b, h, t, T]` tensor
//! kept per call, none of the composition's intermediates) with one kernel for the softmax's gradient.
//! Grouped-query heads fold into the rows of their key head, so keys and values are never repeated.

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::fused::{masked_softmax, softmax_backward};
use super::heads::{Heads, merge_heads};

/// `softmax(softcap(scale * q k^T) + mask) v` for q `[b, h, t, d]`, k and v `[b, kvh, T, d]`, additive
/// mask `[b, 1, t, T]`, all bf16 on one CUDA device, with the heads merged: `[b, t, h * d]`.
/// Differentiable in q, k and v.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale_softcap: (f64, Option<f64>),
) -> Result<Tensor> {
    let (heads_out, probs) = forward(q, k, v, mask, scale_softcap)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        let (b, h, t, d) = heads_out.dims4()?;
        return merge_heads(&heads_out, None)?.reshape((b, t, h * d));
    }
    let op = AttentionGrad {
        heads_out: Mutex::new(Some(heads_out)),
        probs,
        scale_softcap,
    };
    q.apply_op3(k, v, op)
}

/// The heads' outputs `[b, h, t, d]` and the probabilities `[b, kvh, h / kvh * t, T]` that
/// [`backward`] reads; no autograd.
pub(super) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    (scale, softcap): (f64, Option<f64>),
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!("attention: {h} query heads do not group over {kvh} key heads")
    }
    let grouped = (b, kvh, h / kvh * t, d);
    let qs = (q.detach() * scale)?.reshape(grouped)?;
    let (k0, v0) = (k.detach(), v.detach());
    let scores = capped(&qs.matmul(&k0.t()?)?, softcap)?;
    let probs = masked_softmax(scores, mask, t)?;
    let heads_out = probs.matmul(&v0)?.reshape((b, h, t, d))?;
    Ok((heads_out, probs))
}

/// The gradients of q, k and v for the gradient `dout` of the merged output (`[b, t, h * d]`'s elements),
/// from [`forward`]'s probabilities (released as soon as they are used).
pub(super) fn backward(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    probs: Tensor,
    dout: &Tensor,
    (scale, softcap): (f64, Option<f64>),
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, k, v) = (q.detach(), k.detach(), v.detach());
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let grouped = (b, kvh, h / kvh * t, d);
    let dog = dout
        .reshape((b, t, h, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(grouped)?;
    let dv = probs.t()?.matmul(&dog)?;
    let dp = dog.matmul(&v.t()?)?;
    let mut ds = softmax_backward(&probs, dp)?;
    drop(probs);
    let qs = (&q * scale)?.reshape(grouped)?;
    if let Some(c) = softcap {
        let th = (qs.matmul(&k.t()?)? / c)?.tanh()?;
        ds = (ds * (1.0 - th.sqr()?)?)?;
    }
    let dq = (ds.matmul(&k)? * scale)?.reshape((b, h, t, d))?;
    let dk = ds.t()?.matmul(&qs)?;
    Ok((dq, dk, dv))
}

/// `cap * tanh(s / cap)` (Gemma 2), or `s`.
fn capped(s: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => (s / c)?.tanh()? * c,
        None => Ok(s.clone()),
    }
}

/// The node attention leaves in the graph: its forward hands over the output computed above, its backward
/// uses the kept probabilities.
struct AttentionGrad {
    /// `probs v` `[b, h, t, d]`, until the op's forward merges its heads into the op's own output.
    heads_out: Mutex<Option<Tensor>>,
    /// `[b, kvh, rep * t, T]`
    probs: Tensor,
    scale_softcap: (f64, Option<f64>),
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention-bf16"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let heads_out = super::take_once(&self.heads_out, self.name())?;
        let (b, h, t, d) = heads_out.dims4()?;
        let (storage, layout) = heads_out.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("attention: the output is not on a CUDA device")
        };
        Heads::merge(b, t, h, d).cuda_fwd(s, layout)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = backward((q, k, v), self.probs.clone(), dout, self.scale_softcap)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
