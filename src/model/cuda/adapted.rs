//! A frozen projection and its LoRA adapter as one autograd node on CUDA: `y = x W^T + b + s (x A^T) B^T`
//! computed outside autograd, with a backward that returns `dx = g W + s (g B) A`, `dA` and `dB` directly.
//! As a composition, each of its ten candle nodes would cost a zero-filled gradient buffer and an add the
//! size of the activations (candle's backward accumulates every edge that way). The rank-r products run
//! in `lowrank`: bf16 activations, f32 adapter weights at close to f32 accuracy; the frozen product is
//! summed into the same output buffer.

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::lowrank::{Base, BaseView, expand, expand_storage, project, reduce};
use crate::model::frozen::{FrozenLinear, FrozenWeight};

/// The adapter's tensors: A `[r, in]`, B `[out, r]` (f32, tracked when they are trained) and the scale.
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// LoRA dropout's mask on the adapter's input (the shape and dtype of `x`), when dropout is on.
    pub dropout: Option<Tensor>,
}

/// `x W^T + b + s (dropout(x) A^T) B^T` for bf16 `x` `[.., in]`: the frozen product in bf16, the adapter's
/// with f32 sums, the result in `x`'s dtype. Differentiable in x, A and B.
pub fn adapted_linear(x: &Tensor, base: &FrozenLinear, adapter: Adapter) -> Result<Tensor> {
    let in_f = adapter.a.dim(1)?;
    let out_f = adapter.b.dim(0)?;
    let x = x.contiguous()?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_f;
    }
    let out_shape = Shape::from(out_dims);
    let x2 = x.detach().reshape(((), in_f))?;
    let mid = project(
        &adapter_input(&x2, in_f, adapter.dropout.as_ref())?,
        &adapter.a.detach(),
        adapter.scale,
    )?;
    let b_t = adapter.b.detach().t()?.contiguous()?;
    let dequantized = base.weight.dequantize_whole(x.device())?;
    let frozen = match (&dequantized, &base.bias) {
        (Some(_), None) => None,
        _ => {
            let (y, _) = base.product(&x2)?;
            Some(match &base.bias {
                Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?)?,
                None => y,
            })
        }
    };
    if !(x.track_op() || adapter.a.track_op() || adapter.b.track_op()) {
        let base = match (&frozen, &dequantized) {
            (Some(f), _) => Base::Add(f),
            (None, Some(w)) => Base::Product {
                x: &x2,
                w,
                out_in: true,
            },
            (None, None) => candle_core::bail!("adapted-linear: no frozen product"),
        };
        return expand(base, &mid, &b_t)?.reshape(out_shape);
    }
    let op = AdaptedGrad {
        frozen: Mutex::new(frozen),
        out_shape,
        weight: base.weight.clone(),
        dequantized,
        mid,
        b_t,
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
    /// `x W^T + b` `[rows, out]` when it was computed beforehand (a bias, or a weight dequantized in
    /// chunks); None: the forward multiplies `x` by `dequantized` into its output. Taken by the forward.
    frozen: Mutex<Option<Tensor>>,
    out_shape: Shape,
    weight: FrozenWeight,
    /// The dequantized weight `[out, in]`, when it was dequantized whole.
    dequantized: Option<Tensor>,
    /// `s dropout(x) A^T` `[rows, r]` (f32): B's gradient is `(mid^T g)^T`.
    mid: Tensor,
    /// `B^T` `[r, out]`
    b_t: Tensor,
    scale: f64,
    dropout: Option<Tensor>,
}

fn on_cuda(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("adapted-linear: operands are not on a CUDA device"),
    }
}

impl CustomOp3 for AdaptedGrad {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    cuda_only!(x y z);

    /// The result `frozen + mid B^T`, written by `lowrank`'s products as the op's own output.
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let frozen = self
            .frozen
            .lock()
            .map_err(|_| candle_core::Error::Msg("adapted-linear: poisoned slot".into()))?
            .take();
        let (ms, ml) = self.mid.storage_and_layout();
        let (bs, bl) = self.b_t.storage_and_layout();
        let (mid, b_t) = ((on_cuda(&ms)?, ml), (on_cuda(&bs)?, bl));
        let (out, _) = match (&frozen, &self.dequantized) {
            (Some(f), _) => {
                let (fs, fl) = f.storage_and_layout();
                expand_storage(BaseView::Add(on_cuda(&fs)?, fl), mid, b_t)?
            }
            (None, Some(w)) => {
                let (ws, wl) = w.storage_and_layout();
                let base = BaseView::Product {
                    x: (x, xl),
                    w: (on_cuda(&ws)?, wl),
                    out_in: true,
                };
                expand_storage(base, mid, b_t)?
            }
            (None, None) => candle_core::bail!("adapted-linear: no frozen product"),
        };
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
        let (x, a, b) = (x.detach(), a.detach().contiguous()?, b.detach());
        let in_f = a.dim(1)?;
        let out_f = b.dim(0)?;
        let g2 = g.reshape(((), out_f))?.contiguous()?;
        let db = reduce(&self.mid, &g2)?.t()?.contiguous()?;
        let gm = project(&g2, &b.t()?.contiguous()?, self.scale)?;
        let da = reduce(&gm, &adapter_input(&x, in_f, self.dropout.as_ref())?)?;
        let dx = match (&self.dropout, &self.dequantized) {
            (None, Some(w)) => expand(
                Base::Product {
                    x: &g2,
                    w,
                    out_in: false,
                },
                &gm,
                &a,
            )?,
            (None, None) => expand(Base::Add(&self.weight.matmul(&g2)?), &gm, &a)?,
            (Some(m), _) => {
                let frozen = match &self.dequantized {
                    Some(w) => g2.matmul(w)?,
                    None => self.weight.matmul(&g2)?,
                };
                (frozen + (expand(Base::Zero, &gm, &a)? * m.reshape(((), in_f))?)?)?
            }
        };
        let dx = dx.reshape(x.shape())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
