//! A frozen projection and its LoRA adapter as one autograd node on CUDA: `y = x W^T + b + s (x A^T) B^T`
//! computed outside autograd, with a backward that returns `dx = g W + s (g B) A`, `dA` and `dB` directly.
//! As a composition, each of its ten candle nodes would cost a zero-filled gradient buffer and an add the
//! size of the activations (candle's backward accumulates every edge that way). The rank-r products run
//! in the lowrank kernels: bf16 activations, f32 adapter weights and sums.

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::lowrank::{ExpandAdd, expand_add, project, reduce};
use crate::model::frozen::{FrozenLinear, FrozenWeight};

/// The adapter's tensors: A `[r, in]`, B `[out, r]` (f32, tracked when they are trained) and the scale.
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// LoRA dropout's mask on the adapter's input (the shape and dtype of `x`), when dropout is on.
    pub dropout: Option<Tensor>,
}

/// `x W^T + b + s (dropout(x) A^T) B^T` for bf16 `x` `[.., in]`: the frozen product in bf16, the adapter's in
/// f32 sums, the result in `x`'s dtype. Differentiable in x, A and B. Ranks up to `lowrank::MAX_RANK`.
pub fn adapted_linear(x: &Tensor, base: &FrozenLinear, adapter: Adapter) -> Result<Tensor> {
    let in_f = adapter.a.dim(1)?;
    let out_f = adapter.b.dim(0)?;
    let x0 = x.detach();
    let (y, dequantized) = base.product(&x0)?;
    let out_shape = y.shape().clone();
    let mut frozen = y.reshape(((), out_f))?;
    if let Some(bias) = &base.bias {
        frozen = frozen.broadcast_add(&bias.to_dtype(frozen.dtype())?)?;
    }
    let xa = adapter_input(&x0, in_f, adapter.dropout.as_ref())?;
    let mid = project(&xa, &adapter.a.detach(), adapter.scale)?;
    if !(x.track_op() || adapter.a.track_op() || adapter.b.track_op()) {
        return expand_add(&frozen, &mid, &adapter.b.detach())?.reshape(out_shape);
    }
    let op = AdaptedGrad {
        frozen: Mutex::new(Some(frozen.contiguous()?)),
        out_shape,
        weight: base.weight.clone(),
        dequantized,
        mid,
        scale: adapter.scale,
        dropout: adapter.dropout,
    };
    x.apply_op3(adapter.a, adapter.b, op)
}

/// The adapter's input `[rows, in]`: `x`, times the dropout mask when there is one.
fn adapter_input(x: &Tensor, in_f: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    let x2 = x.reshape(((), in_f))?;
    match dropout {
        Some(m) => x2 * m.reshape(((), in_f))?,
        None => Ok(x2),
    }
}

struct AdaptedGrad {
    /// `x W^T + b` `[rows, out]`, until the op's forward adds the adapter's product to it.
    frozen: Mutex<Option<Tensor>>,
    out_shape: Shape,
    weight: FrozenWeight,
    /// The forward's dequantized weight, when it was dequantized whole.
    dequantized: Option<Tensor>,
    /// `s dropout(x) A^T` `[rows, r]` (f32): B's gradient is `(mid^T g)^T`.
    mid: Tensor,
    scale: f64,
    dropout: Option<Tensor>,
}

impl CustomOp3 for AdaptedGrad {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    cuda_only!(x y z);

    /// The result `frozen + mid B^T`, written by the expand-add kernel as the op's own output.
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let frozen = super::take_once(&self.frozen, self.name())?;
        let (fs, fl) = frozen.storage_and_layout();
        let (ms, ml) = self.mid.storage_and_layout();
        let (Storage::Cuda(f), Storage::Cuda(m)) = (&*fs, &*ms) else {
            candle_core::bail!("adapted-linear: operands are not on a CUDA device")
        };
        let (out, _) = ExpandAdd.cuda_fwd(f, fl, m, ml, b, bl)?;
        Ok((out, self.out_shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let in_f = a.dim(1)?;
        let out_f = b.dim(0)?;
        let g2 = g.reshape(((), out_f))?.contiguous()?;
        let frozen = match &self.dequantized {
            Some(w) => g2.matmul(w)?,
            None => self.weight.matmul(&g2)?,
        };
        let db = reduce(&self.mid, &g2)?.t()?.contiguous()?;
        let gm = project(&g2, &b.t()?.contiguous()?, self.scale)?;
        let da = reduce(&gm, &adapter_input(&x, in_f, self.dropout.as_ref())?)?;
        let a_t = a.t()?.contiguous()?;
        let dx = match &self.dropout {
            None => expand_add(&frozen, &gm, &a_t)?,
            Some(m) => {
                let adapter = expand_add(&frozen.zeros_like()?, &gm, &a_t)?;
                (frozen + (adapter * m.reshape(((), in_f))?)?)?
            }
        };
        let dx = dx.reshape(x.shape())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
