//! Attention on CUDA bf16 as one autograd node over the flash kernels (`flash.rs`): the forward keeps the
//! merged output and each query row's log-sum-exp, the backward recomputes the probabilities tile by tile;
//! no `[b, h, t, T]` tensor exists at any point. Grouped-query heads read their key head in place.

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::flash::{self, Call};
use crate::model::kernels::mask::AttentionMask;

/// `softmax(softcap(scale * q k^T) + mask) v` for q `[b, h, t, d]`, k and v `[b, kvh, T, d]`, all bf16 on
/// one CUDA device, with the heads merged: `[b, t, h * d]`. Differentiable in q, k and v.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    scale_softcap: (f64, Option<f64>),
) -> Result<Tensor> {
    let (q, k, v) = (flash::ready(q)?, flash::ready(k)?, flash::ready(v)?);
    let op = Flash {
        call: Call::new(mask, scale_softcap)?,
        lse: Mutex::new(None),
    };
    q.apply_op3(&k, &v, op)
}

/// The node attention leaves in the graph: its forward runs the flash forward and keeps the log-sum-exp
/// for its backward.
struct Flash {
    call: Call,
    /// `[b, h, t]` f32, set by the forward.
    lse: Mutex<Option<Tensor>>,
}

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "flash-attention-bf16"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (out, shape, lse) = flash::forward_storages((q, ql), (k, kl), (v, vl), &self.call)?;
        *self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned slot", self.name())))? =
            Some(lse);
        Ok((out, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = super::take_once(&self.lse, self.name())?;
        let (dq, dk, dv) = flash::backward((q, k, v), (out, &lse), dout, &self.call)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
