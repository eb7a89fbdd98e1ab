//! A frozen projection and its LoRA adapter as one autograd node on CUDA: `y = x W^T + b + s (x A^T) B^T`
//! computed outside autograd, with a backward that returns `dx = g W + s (g B) A`, `dA` and `dB` directly.
//! As a composition, each of its ten candle nodes would cost a zero-filled gradient buffer and an add the
//! size of the activations (candle's backward accumulates every edge that way).

use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::node::Precomputed;
use crate::model::frozen::{FrozenLinear, FrozenWeight};

/// The adapter's tensors: A `[r, in]`, B `[out, r]` (f32, tracked when they are trained) and the scale.
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// LoRA dropout's mask on the adapter's input (the shape and dtype of `x`), when dropout is on.
    pub dropout: Option<Tensor>,
}

/// `x W^T + b + s (dropout(x) A^T) B^T` for bf16 `x` `[.., in]`: the products in bf16 (frozen) and f32
/// (adapter), the result in `x`'s dtype. Differentiable in x, A and B.
pub fn adapted_linear(x: &Tensor, base: &FrozenLinear, adapter: Adapter) -> Result<Tensor> {
    let in_f = adapter.a.dim(1)?;
    let x0 = x.detach();
    let (y, dequantized) = base.product(&x0)?;
    let xf = adapter_input(&x0, in_f, adapter.dropout.as_ref())?;
    let mid = (xf.matmul(&adapter.a.detach().t()?)? * adapter.scale)?;
    let delta = mid.matmul(&adapter.b.detach().t()?)?.to_dtype(y.dtype())?;
    let mut y = (&y + delta.reshape(y.shape())?)?;
    if let Some(bias) = &base.bias {
        y = y.broadcast_add(&bias.to_dtype(y.dtype())?)?;
    }
    if !(x.track_op() || adapter.a.track_op() || adapter.b.track_op()) {
        return Ok(y);
    }
    let op = AdaptedGrad {
        out: Precomputed::new(y),
        weight: base.weight.clone(),
        dequantized,
        mid,
        scale: adapter.scale,
        dropout: adapter.dropout,
    };
    x.apply_op3(adapter.a, adapter.b, op)
}

/// The adapter's input `[rows, in]` in f32: `x`, times the dropout mask when there is one.
fn adapter_input(x: &Tensor, in_f: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    let x2 = x.reshape(((), in_f))?;
    let x2 = match dropout {
        Some(m) => (x2 * m.reshape(((), in_f))?)?,
        None => x2,
    };
    x2.to_dtype(DType::F32)
}

struct AdaptedGrad {
    out: Precomputed,
    weight: FrozenWeight,
    /// The forward's dequantized weight, when it was dequantized whole.
    dequantized: Option<Tensor>,
    /// `s dropout(x) A^T` `[rows, r]` (f32): B's gradient is `g^T mid`.
    mid: Tensor,
    scale: f64,
    dropout: Option<Tensor>,
}

impl CustomOp3 for AdaptedGrad {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("adapted-linear runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.out.hand_over(self.name())
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
        // f32 for the adapter's own gradients: B's sums over every row cancel heavily.
        let gf = g2.to_dtype(DType::F32)?;
        let db = gf.t()?.matmul(&self.mid)?;
        let gm = (gf.matmul(&b)? * self.scale)?;
        let da = gm
            .t()?
            .matmul(&adapter_input(&x, in_f, self.dropout.as_ref())?)?;
        let mut dx_adapter = gm
            .to_dtype(frozen.dtype())?
            .matmul(&a.to_dtype(frozen.dtype())?)?;
        if let Some(m) = &self.dropout {
            dx_adapter = (dx_adapter * m.reshape(((), in_f))?)?;
        }
        let dx = (frozen + dx_adapter)?.reshape(x.shape())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
