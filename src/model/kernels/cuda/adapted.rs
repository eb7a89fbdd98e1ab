//! A frozen projection and its LoRA adapter as one autograd node on CUDA: `y = x W^T + b + s (x A^T) B^T`
//! computed outside autograd, with a backward that returns `dx = g W + s (g B) A`, `dA` and `dB` directly.
//! As a composition, each of its ten candle nodes would cost a zero-filled gradient buffer and an add the
//! size of the activations (candle's backward accumulates every edge that way). The rank-r products run
//! in `lowrank`: bf16 activations, f32 adapter weights at close to f32 accuracy; the frozen product is
//! summed into the same output buffer. [`Projection`] serves this node and the fused block (`block.rs`), where
//! projections that read the same input (q, k and v; gate and up) run as one: each of their products reads the
//! input, or the gradients of all their outputs, once and fills the GPU better than several smaller ones.

use std::sync::Mutex;

use candle_core::{CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::lowrank::{
    Base, BaseView, ROWS_PROJECT_MEMBERS, STACK_MOST, expand, expand_storage, project, reduce,
    rows_project, rows_project_members, stacked_parts, stacked_parts_transposed, weight_parts,
};
use crate::model::quant::frozen::{FrozenLinear, FrozenWeight};
use crate::model::quant::{GemvAdd, GemvKernel, LowRankAdd, Nf4Cuda};

/// The adapter's tensors: A `[r, in]`, B `[out, r]` (f32, tracked when they are trained) and the scale.
#[derive(Clone)]
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// LoRA dropout's mask on the adapter's input (the shape and dtype of `x`), when dropout is on.
    pub dropout: Option<Tensor>,
}

/// The forward operands of one projection, or of projections that share their input, kept for the backward.
/// Several members run as one projection: their weights one under the other `[sum of out, in]`, their A's one
/// under the other, their B^T's on a block diagonal (`lowrank::stacked_parts`); its output holds the members'
/// outputs side by side, and its backward takes their gradients the same way.
pub(super) struct Projection {
    /// Each member's frozen weight and output features, in order.
    weights: Vec<FrozenWeight>,
    outs: Vec<usize>,
    /// The dequantized weight `[sum of out, in]`, when it was dequantized whole and not yet released
    /// ([`Self::release_weight`]); or `[sum of out, in + c]`, its rows continued by the low-rank tail, where
    /// [`Self::over_columns`] kept its product's weight for a backward that follows at once.
    dequantized: Option<Tensor>,
    /// `s dropout(x) A^T` `[rows, n r]` as `lowrank::project`'s bf16 parts `[rows, 3, n r]`: B's gradient is
    /// `(mid^T g)^T`.
    mid: Tensor,
    /// A `[n r, in]` and `B^T` `[n r, sum of out]` as `lowrank::stacked_parts` (`[3, n r, in]`,
    /// `[3, n r, sum of out]`): split once for the forward's products and the backward's.
    a: Tensor,
    b_t: Tensor,
    rank: usize,
    scale: f64,
    /// Dropout's mask (one member only).
    dropout: Option<Tensor>,
}

/// One member of a [`Projection`]: a frozen layer and its adapter.
pub(super) type Member<'a> = (&'a FrozenLinear, Adapter<'a>);

/// Whether these members can run as one [`Projection`]: up to `STACK_MOST` layers of one input width, each
/// weight dequantized whole, no bias, no dropout, one rank and one scale.
pub(super) fn share_input(members: &[Member]) -> Result<bool> {
    let Some((_, adapter)) = members.first() else {
        return Ok(false);
    };
    let (rank, in_f) = adapter.a.dims2()?;
    for (b, a) in members {
        let same =
            a.a.dims2()? == (rank, in_f) && a.scale == adapter.scale && b.weight.dims2()?.1 == in_f;
        if !same || a.dropout.is_some() || b.bias.is_some() || b.weight.row_chunks()?.len() != 1 {
            return Ok(false);
        }
    }
    Ok(members.len() <= STACK_MOST)
}

impl Projection {
    /// The operands for one projection of bf16 `x2` `[rows, in]`, and the frozen product `x W^T + b` when it
    /// cannot be summed into the output's buffer (a bias, or a weight dequantized in chunks).
    pub(super) fn new(x2: &Tensor, (base, adapter): Member) -> Result<(Self, Option<Tensor>)> {
        let mut projection = Self::without_output(x2, (base, adapter))?;
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

    /// The operands of one projection of `x2` whose output nobody reads (checkpointing's recomputation of a
    /// block's last projection): what the backward needs, without the frozen product or a dequantized weight.
    pub(super) fn without_output(x2: &Tensor, (base, adapter): Member) -> Result<Self> {
        let (rank, in_f) = adapter.a.dims2()?;
        let a = weight_parts(&adapter.a.detach())?;
        let mid = project(
            &adapter_input(x2, in_f, adapter.dropout.as_ref())?,
            &a,
            adapter.scale,
        )?;
        Ok(Self {
            weights: vec![base.weight.clone()],
            outs: vec![adapter.b.dim(0)?],
            dequantized: None,
            mid,
            a,
            b_t: weight_parts(&adapter.b.detach().t()?)?,
            rank,
            scale: adapter.scale,
            dropout: adapter.dropout,
        })
    }

    /// Projections that [`share_input`] with their low-rank term inside the frozen product: `wide` is
    /// `lowrank::norm_project`'s `[rows, in + 3 n r]` (the normed input, then `s x A^T`'s parts) for `a`, the members'
    /// A's as `lowrank::stacked_parts`. Returns the operands for the backward and the output `[rows, sum of out]`:
    /// one product of `wide` with the stacked weights whose rows continue with B^T's parts. The separate low-rank
    /// product that would write the whole output first, and the frozen product's read of it, are gone. With
    /// `keep`, the projection keeps that weight for its backward's product (checkpointing's recomputation, whose
    /// backward follows at once), which then reads no 4-bit codes.
    pub(super) fn over_columns(
        wide: &Tensor,
        in_f: usize,
        members: Vec<Member>,
        a: Tensor,
        keep: bool,
    ) -> Result<(Self, Tensor)> {
        let b_t_parts = b_transposed(&members)?;
        let tail = stacked_parts_transposed(&b_t_parts, true)?;
        let mut projection = Self::over_columns_operands(wide, in_f, members, a)?;
        let refs: Vec<_> = projection.weights.iter().collect();
        let Some(w) = FrozenWeight::dequantize_stacked(&refs, wide.device(), Some(&tail))? else {
            candle_core::bail!("adapted-linear: projections that share an input need whole weights")
        };
        // bf16 operands, f32 sums (candle's cuBLAS product unless reduced-precision bf16 is switched on).
        let y = wide.matmul(&w.t()?)?;
        if keep {
            projection.dequantized = Some(w);
        }
        Ok((projection, y))
    }

    /// [`Self::over_columns`]'s operands for the backward alone, without the frozen product (its output was
    /// kept from the first pass: `host_halves`).
    pub(super) fn over_columns_operands(
        wide: &Tensor,
        in_f: usize,
        members: Vec<Member>,
        a: Tensor,
    ) -> Result<Self> {
        let Some((_, first)) = members.first() else {
            candle_core::bail!("adapted-linear: a projection without members")
        };
        let (rank, scale) = (first.a.dim(0)?, first.scale);
        if !share_input(&members)? || a.dims() != [3, members.len() * rank, in_f] {
            candle_core::bail!("adapted-linear: these projections cannot share their input")
        }
        Ok(Self {
            weights: members.iter().map(|(b, _)| b.weight.clone()).collect(),
            outs: members
                .iter()
                .map(|(_, a)| a.b.dim(0))
                .collect::<Result<Vec<_>>>()?,
            dequantized: None,
            mid: wide.narrow(1, in_f, 3 * members.len() * rank)?,
            a,
            b_t: stacked_parts(&b_transposed(&members)?, true)?,
            rank,
            scale,
            dropout: None,
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

    /// The output's width: the members' output features summed.
    pub(super) fn width(&self) -> usize {
        self.outs.iter().sum()
    }

    /// Each member's output features, in the order their outputs lie side by side.
    pub(super) fn outs(&self) -> &[usize] {
        &self.outs
    }

    /// Frees the dequantized weight once the forward has used it; the backward dequantizes it again. A block
    /// waiting for its backward then holds its activations but none of its seven dense weights (416 MiB in
    /// bf16 at Llama-3.1-8B dims), for one more read of the 4-bit codes per projection.
    pub(super) fn release_weight(&mut self) {
        self.dequantized = None;
    }

    /// `dx` and each member's `(dA, dB)` for the input `x2` `[rows, in]` and the output's gradient `g2`
    /// `[rows, sum of out]` (the members' side by side), with `add` summed into `dx` when given. The input is
    /// released (where this held the last of it) before the weight is dequantized for `dx`.
    pub(super) fn backward(
        &self,
        x2: Tensor,
        g2: &Tensor,
        add: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let in_f = self.a.dim(2)?;
        let g2 = g2.contiguous()?;
        let db = reduce(&self.mid, &g2, true)?;
        let gm = project(&g2, &self.b_t, self.scale)?;
        let da = reduce(
            &gm,
            &adapter_input(&x2, in_f, self.dropout.as_ref())?,
            false,
        )?;
        drop(x2);
        // Released (or never whole): `dequantize_stacked` decides by the weights' sizes alone, so it gives the
        // weight back exactly when the forward had it whole.
        let dequantized = match &self.dequantized {
            Some(w) => Some(w.clone()),
            None => {
                let weights: Vec<_> = self.weights.iter().collect();
                FrozenWeight::dequantize_stacked(&weights, g2.device(), None)?
            }
        };
        let dx = match (&self.dropout, &dequantized, self.weights.as_slice()) {
            (None, Some(w), _) => {
                let base = Base::Product {
                    x: &g2,
                    w,
                    out_in: false,
                    add,
                };
                expand(base, &gm, &self.a)?
            }
            (None, None, [weight]) => {
                let frozen = weight.matmul(&g2)?;
                let frozen = match add {
                    Some(a) => (frozen + a)?,
                    None => frozen,
                };
                expand(Base::Add(&frozen), &gm, &self.a)?
            }
            (Some(m), _, [weight]) => {
                let frozen = match &dequantized {
                    Some(w) => g2.matmul(w)?,
                    None => weight.matmul(&g2)?,
                };
                let adapter = (expand(Base::Zero, &gm, &self.a)? * m.reshape(((), in_f))?)?;
                let dx = (frozen + adapter)?;
                match add {
                    Some(a) => (dx + a)?,
                    None => dx,
                }
            }
            _ => candle_core::bail!(
                "adapted-linear: projections that share an input need whole weights"
            ),
        };
        Ok((dx, self.member_grads(&da, &db)?))
    }

    /// Each member's `(dA, dB)` from the stacked `dA` `[n r, in]` and the product `[sum of out, n r]` whose
    /// diagonal blocks are the dB's (one member: both whole, as they are).
    fn member_grads(&self, da: &Tensor, db: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let r = self.rank;
        let mut first = 0;
        self.outs
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let db_i = db
                    .narrow(0, first, out)?
                    .narrow(1, i * r, r)?
                    .contiguous()?;
                first += out;
                Ok((da.narrow(0, i * r, r)?, db_i))
            })
            .collect()
    }
}

/// Each member's B^T `[r, out]`.
fn b_transposed(members: &[Member]) -> Result<Vec<Tensor>> {
    members.iter().map(|(_, a)| a.b.detach().t()).collect()
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
    let (projection, frozen) = Projection::new(&x2, (base, adapter))?;
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
    let mid = rank_wide(x2, adapter)?;
    let b_t = weight_parts(&adapter.b.detach().t()?)?;
    expand(Base::Add(&frozen), &mid, &b_t).map(Some)
}

/// [`few_rows`] for projections that read the same `x` `[.., in]` (q, k and v; gate and up), each an NF4 weight
/// with an adapter of one rank and no dropout: their adapters' rank-wide rows in one launch
/// (`lowrank::rows_project_members`), then the frozen products, each with its bias and its adapter's product
/// ([`gemv_members`]: one launch where it serves them). Each output is [`few_rows`]'s for its member alone, to
/// the bit where the frozen products keep their own launches (gate and up), within bf16 rounding where they share
/// one launch shape (q, k and v). None where this does not serve them all (the caller then runs each member as it
/// would alone).
pub fn few_rows_members(x: &Tensor, members: &[Member]) -> Result<Option<Vec<Tensor>>> {
    let Some((_, first)) = members.first() else {
        return Ok(None);
    };
    let (rank, in_f) = first.a.dims2()?;
    if members.len() > ROWS_PROJECT_MEMBERS || x.track_op() {
        return Ok(None);
    }
    let x2 = x.contiguous()?.reshape(((), in_f))?;
    let mut weights = Vec::with_capacity(members.len());
    for (base, adapter) in members {
        let FrozenWeight::Nf4Cuda(w) = &base.weight else {
            return Ok(None);
        };
        let tracked = adapter.a.track_op() || adapter.b.track_op();
        if tracked || adapter.dropout.is_some() || adapter.a.dims2()? != (rank, in_f) {
            return Ok(None);
        }
        if !w.gemv_adds_rank(&x2, rank)? {
            return Ok(None);
        }
        weights.push(w);
    }
    let a: Vec<Tensor> = members.iter().map(|(_, m)| m.a.detach()).collect();
    let Some(parts) = rows_project_members(&x2, &a.iter().collect::<Vec<_>>())? else {
        return Ok(None);
    };
    let mut adds = Vec::with_capacity(members.len());
    for (j, (base, adapter)) in members.iter().enumerate() {
        let mut add = GemvAdd::bias(base.bias.as_ref())?;
        add.low_rank = Some(LowRankAdd {
            parts: parts.get(j)?,
            b: adapter.b.detach().contiguous()?,
            scale: adapter.scale as f32,
        });
        adds.push(add);
    }
    let products: Vec<_> = weights.iter().map(|w| w.as_ref()).zip(&adds).collect();
    gemv_members(x, &x2, &products)
}

/// Generation's frozen products of one input `x` `[.., in]` by NF4 linears (a base model's q, k and v, or gate
/// and up), each with its bias, through [`gemv_members`]; None where one is not an NF4 weight or the few-row
/// kernels do not serve `x`.
pub fn frozen_members(linears: &[&FrozenLinear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
    let mut weights = Vec::with_capacity(linears.len());
    let mut adds = Vec::with_capacity(linears.len());
    for linear in linears {
        let FrozenWeight::Nf4Cuda(w) = &linear.weight else {
            return Ok(None);
        };
        weights.push(w.as_ref());
        adds.push(GemvAdd::bias(linear.bias.as_ref())?);
    }
    let Some(w) = weights.first() else {
        return Ok(None);
    };
    let in_f = w.dims.get(1).copied().unwrap_or(0);
    if in_f == 0 || x.dims().last() != Some(&in_f) {
        return Ok(None);
    }
    let x2 = x.contiguous()?.reshape(((), in_f))?;
    let products: Vec<_> = weights.into_iter().zip(&adds).collect();
    gemv_members(x, &x2, &products)
}

/// The few-row NF4 products `x2 W_j^T` plus what `add_j` names for weights that multiply the same `x2` (q, k and
/// v): in one launch where `Nf4Cuda::gemv_members` serves them, or else one each; each output shaped as `x`'s
/// leading axes by its features. None where the few-row kernels do not serve one of them.
pub fn gemv_members(
    x: &Tensor,
    x2: &Tensor,
    products: &[(&Nf4Cuda, &GemvAdd)],
) -> Result<Option<Vec<Tensor>>> {
    let ys = match Nf4Cuda::gemv_members(x2, products)? {
        Some(ys) => ys,
        None => {
            let mut ys = Vec::with_capacity(products.len());
            for (w, add) in products {
                let Some(y) = w.gemv_with(x2, GemvKernel::Auto, add)? else {
                    return Ok(None);
                };
                ys.push(y);
            }
            ys
        }
    };
    let mut outs = Vec::with_capacity(ys.len());
    for y in ys {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = y.dim(1)?;
        }
        outs.push(y.reshape(dims)?);
    }
    Ok(Some(outs))
}

/// The rank-wide intermediate `s dropout(x2) A^T` `[rows, r]` (as `lowrank::project`'s parts) for bf16 `x2`
/// `[rows, in]`.
fn rank_wide(x2: &Tensor, adapter: &Adapter) -> Result<Tensor> {
    let in_f = adapter.a.dim(1)?;
    let a = weight_parts(&adapter.a.detach())?;
    project(
        &adapter_input(x2, in_f, adapter.dropout.as_ref())?,
        &a,
        adapter.scale,
    )
}

/// The adapter's input `[rows, in]`: `x`, times the dropout mask when there is one.
fn adapter_input(x: &Tensor, in_f: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    // A 2-D input of that width stays as it is (a column range of a wider tensor too: no copy).
    let x2 = match x.dims() {
        [_, w] if *w == in_f => x.clone(),
        _ => x.reshape(((), in_f))?,
    };
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
        let (dx, mut grads) = self.projection.backward(x2, &g2, None)?;
        let Some((da, db)) = grads.pop() else {
            candle_core::bail!("adapted-linear: no adapter gradients")
        };
        Ok((Some(dx.reshape(x.shape())?), Some(da), Some(db)))
    }
}
