//! A frozen projection and its LoRA adapter as one autograd node on CUDA: `y = x W^T + b + s (x A^T) B^T`
//! computed outside autograd, with a backward that returns `dx = g W + s (g B) A`, `dA` and `dB` directly.
//! As a composition, each of its ten candle nodes would cost a zero-filled gradient buffer and an add the
//! size of the activations (candle's backward accumulates every edge that way). The rank-r products run
//! in `lowrank`: bf16 activations, f32 adapter weights at close to f32 accuracy; the frozen product is
//! summed into the same output buffer. [`Projection`] serves this node and the fused block (`block.rs`).

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::lowrank::{
    Base, BaseView, expand, expand_storage, project, reduce, rows_project, weight_parts,
};
use crate::model::quant::frozen::{FrozenLinear, FrozenWeight};
use crate::model::quant::{GemvAdd, GemvKernel, LowRankAdd};

/// The adapter's tensors: A `[r, in]`, B `[out, r]` (f32, tracked when they are trained) and the scale.
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// LoRA dropout's mask on the adapter's input (the shape and dtype of `x`), when dropout is on.
    pub dropout: Option<Tensor>,
}

/// One projection's forward operands, kept for its backward.
pub(super) struct Projection {
    weight: FrozenWeight,
    /// The dequantized weight `[out, in]`, when it was dequantized whole and not yet released
    /// ([`Self::release_weight`]).
    dequantized: Option<Tensor>,
    /// `s dropout(x) A^T` `[rows, r]` as `lowrank::project`'s bf16 parts `[rows, 3, r]`: B's gradient is
    /// `(mid^T g)^T`.
    mid: Tensor,
    /// A `[r, in]` and `B^T` `[r, out]` as `lowrank::weight_parts` (`[3, r, in]`, `[3, r, out]`): split once
    /// for the forward's products and the backward's.
    a: Tensor,
    b_t: Tensor,
    scale: f64,
    dropout: Option<Tensor>,
}

impl Projection {
    /// The operands for the projection of bf16 `x2` `[rows, in]`, and the frozen product `x W^T + b` when it
    /// cannot be summed into the output's buffer (a bias, or a weight dequantized in chunks).
    pub(super) fn new(
        x2: &Tensor,
        base: &FrozenLinear,
        adapter: Adapter,
    ) -> Result<(Self, Option<Tensor>)> {
        let mut projection = Self::without_output(x2, base, adapter)?;
        projection.dequantized = base.weight.dequantize_whole(x2.device())?;
        let frozen = match (&projection.dequantized, &base.bias) {
            (Some(_), None) => None,
            _ => {
                let (y, _) = base.product(x2)?;
                Some(match &base.bias {
                    Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?)?,
                    None => y,
                })
            }
        };
        Ok((projection, frozen))
    }

    /// The operands of a projection of `x2` whose output nobody reads (checkpointing's recomputation of a
    /// block's last projection): what the backward needs, without the frozen product or a dequantized weight.
    pub(super) fn without_output(
        x2: &Tensor,
        base: &FrozenLinear,
        adapter: Adapter,
    ) -> Result<Self> {
        let (a, mid) = rank_wide(x2, &adapter)?;
        Ok(Self {
            weight: base.weight.clone(),
            dequantized: None,
            mid,
            a,
            b_t: weight_parts(&adapter.b.detach().t()?)?,
            scale: adapter.scale,
            dropout: adapter.dropout,
        })
    }

    /// The output `[rows, out]` for the input `x2` it was made for, plus `add` when given; `frozen` is
    /// what [`Self::new`] returned.
    pub(super) fn output(
        &self,
        x2: &Tensor,
        frozen: Option<&Tensor>,
        add: Option<&Tensor>,
    ) -> Result<Tensor> {
        let y = match (frozen, &self.dequantized) {
            (Some(f), _) => {
                let y = expand(Base::Add(f), &self.mid, &self.b_t)?;
                return match add {
                    Some(a) => y + a,
                    None => Ok(y),
                };
            }
            (None, Some(w)) => Base::Product {
                x: x2,
                w,
                out_in: true,
                add,
            },
            (None, None) => candle_core::bail!("adapted-linear: no frozen product"),
        };
        expand(y, &self.mid, &self.b_t)
    }

    /// The output on storages (an op's forward): [`Self::output`] without `add`.
    fn output_storage(
        &self,
        x: (&CudaStorage, &Layout),
        frozen: Option<&Tensor>,
    ) -> Result<(CudaStorage, Shape)> {
        let (ms, ml) = self.mid.storage_and_layout();
        let (bs, bl) = self.b_t.storage_and_layout();
        let (mid, b_t) = ((on_cuda(&ms)?, ml), (on_cuda(&bs)?, bl));
        match (frozen, &self.dequantized) {
            (Some(f), _) => {
                let (fs, fl) = f.storage_and_layout();
                expand_storage(BaseView::Add(on_cuda(&fs)?, fl), mid, b_t)
            }
            (None, Some(w)) => {
                let (ws, wl) = w.storage_and_layout();
                let base = BaseView::Product {
                    x,
                    w: (on_cuda(&ws)?, wl),
                    out_in: true,
                    add: None,
                };
                expand_storage(base, mid, b_t)
            }
            (None, None) => candle_core::bail!("adapted-linear: no frozen product"),
        }
    }

    /// Frees the dequantized weight once the forward has used it; the backward dequantizes it again. A block
    /// waiting for its backward then holds its activations but none of its seven dense weights (416 MiB in
    /// bf16 at Llama-3.1-8B dims), for one more read of the 4-bit codes per projection.
    pub(super) fn release_weight(&mut self) {
        self.dequantized = None;
    }

    /// `(dx, dA, dB)` for the input `x2` `[rows, in]` and the output's gradient `g2` `[rows, out]`, with
    /// `add` summed into `dx` when given.
    pub(super) fn backward(
        &self,
        x2: &Tensor,
        g2: &Tensor,
        add: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let in_f = self.a.dim(2)?;
        let g2 = g2.contiguous()?;
        let db = reduce(&self.mid, &g2, true)?;
        let gm = project(&g2, &self.b_t, self.scale)?;
        let da = reduce(&gm, &adapter_input(x2, in_f, self.dropout.as_ref())?, false)?;
        // Released (or never whole): `dequantize_whole` decides by the weight's size alone, so it gives the
        // weight back exactly when the forward had it whole.
        let dequantized = match &self.dequantized {
            Some(w) => Some(w.clone()),
            None => self.weight.dequantize_whole(g2.device())?,
        };
        let dx = match (&self.dropout, &dequantized) {
            (None, Some(w)) => {
                let base = Base::Product {
                    x: &g2,
                    w,
                    out_in: false,
                    add,
                };
                expand(base, &gm, &self.a)?
            }
            (None, None) => {
                let frozen = self.weight.matmul(&g2)?;
                let frozen = match add {
                    Some(a) => (frozen + a)?,
                    None => frozen,
                };
                expand(Base::Add(&frozen), &gm, &self.a)?
            }
            (Some(m), _) => {
                let frozen = match &dequantized {
                    Some(w) => g2.matmul(w)?,
                    None => self.weight.matmul(&g2)?,
                };
                let adapter = (expand(Base::Zero, &gm, &self.a)? * m.reshape(((), in_f))?)?;
                let dx = (frozen + adapter)?;
                match add {
                    Some(a) => (dx + a)?,
                    None => dx,
                }
            }
        };
        Ok((dx, da, db))
    }
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
    let tracked = x.track_op() || adapter.a.track_op() || adapter.b.track_op();
    if !tracked && let Some(y) = few_rows(&x2, base, &adapter)? {
        return y.reshape(out_shape);
    }
    let (a, b) = (adapter.a.clone(), adapter.b.clone());
    let (projection, frozen) = Projection::new(&x2, base, adapter)?;
    if !tracked {
        return projection
            .output(&x2, frozen.as_ref(), None)?
            .reshape(out_shape);
    }
    let op = AdaptedGrad {
        frozen: Mutex::new(frozen),
        out_shape,
        projection,
    };
    x.apply_op3(&a, &b, op)
}

/// Answering's few rows (decoding, no gradient) over an NF4 weight: the frozen product straight from the
/// 4-bit codes (`Nf4Cuda::gemv_with`, the weight never dequantized into memory) with the bias and the adapter's
/// product added in the same kernel, after one launch for the adapter's rank-wide rows
/// (`lowrank::rows_project`). With dropout, or a rank too large for that kernel's shared memory, the adapter's
/// product is the tensor-core path's, added to the frozen product after. None where the GEMV kernel does not
/// serve `x2` `[rows, in]`.
fn few_rows(x2: &Tensor, base: &FrozenLinear, adapter: &Adapter) -> Result<Option<Tensor>> {
    let FrozenWeight::Nf4Cuda(w) = &base.weight else {
        return Ok(None);
    };
    let mut add = GemvAdd::bias(base.bias.as_ref())?;
    let rank = adapter.a.dim(0)?;
    if adapter.dropout.is_none()
        && w.gemv_adds_rank(x2, rank)?
        && let Some(parts) = rows_project(x2, &adapter.a.detach())?
    {
        add.low_rank = Some(LowRankAdd {
            parts,
            b: adapter.b.detach().contiguous()?,
            scale: adapter.scale as f32,
        });
        return w.gemv_with(x2, GemvKernel::Auto, &add);
    }
    let Some(frozen) = w.gemv_with(x2, GemvKernel::Auto, &add)? else {
        return Ok(None);
    };
    let (_, mid) = rank_wide(x2, adapter)?;
    let b_t = weight_parts(&adapter.b.detach().t()?)?;
    expand(Base::Add(&frozen), &mid, &b_t).map(Some)
}

/// The adapter's A `[r, in]` as `lowrank::weight_parts` and the rank-wide intermediate `s dropout(x2) A^T`
/// `[rows, r]` (as `lowrank::project`'s parts) for bf16 `x2` `[rows, in]`.
fn rank_wide(x2: &Tensor, adapter: &Adapter) -> Result<(Tensor, Tensor)> {
    let in_f = adapter.a.dim(1)?;
    let a = weight_parts(&adapter.a.detach())?;
    let mid = project(
        &adapter_input(x2, in_f, adapter.dropout.as_ref())?,
        &a,
        adapter.scale,
    )?;
    Ok((a, mid))
}

/// The adapter's input `[rows, in]`: `x`, times the dropout mask when there is one.
fn adapter_input(x: &Tensor, in_f: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    let x2 = x.reshape(((), in_f))?;
    match dropout {
        Some(m) => x2 * m.reshape(((), in_f))?,
        None => Ok(x2),
    }
}

fn on_cuda(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("adapted-linear: operands are not on a CUDA device"),
    }
}

struct AdaptedGrad {
    /// The frozen product when it was computed beforehand (see [`Projection::new`]); taken by the forward.
    frozen: Mutex<Option<Tensor>>,
    out_shape: Shape,
    projection: Projection,
}

impl CustomOp3 for AdaptedGrad {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    cuda_only!(x y z);

    /// The result, written by `lowrank`'s products as the op's own output.
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
        let (out, _) = self.projection.output_storage((x, xl), frozen.as_ref())?;
        Ok((out, self.out_shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _a: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let in_f = self.projection.a.dim(2)?;
        let out_f = self.projection.b_t.dim(2)?;
        let x2 = x.detach().reshape(((), in_f))?;
        let g2 = g.reshape(((), out_f))?;
        let (dx, da, db) = self.projection.backward(&x2, &g2, None)?;
        Ok((Some(dx.reshape(x.shape())?), Some(da), Some(db)))
    }
}
