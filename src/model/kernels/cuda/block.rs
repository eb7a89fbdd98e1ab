//! A whole llama-style decoder block of GPU training (the pass with gradients) as one autograd node. Its
//! forward keeps the intermediates the backward reads; its backward chains the fused kernels' gradients
//! by hand, summing gradients of the same input inside the products that make them (`lowrank`'s
//! [`Base::Product`](super::lowrank::Base)). As a graph of ~15 nodes, candle's backward would zero-fill
//! and sum a layer-wide buffer for every input of every node. The adapters' gradients reach candle through
//! `grad_carrier`. Checkpointing's recomputation, whose output gradient is known before it runs, skips candle
//! altogether ([`block_backward`]): candle would still zero-fill and sum the output's and the input's
//! gradients and each adapter tensor's.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

use super::adapted::{Adapter, Projection};
use super::flash::{self, Call};
use super::heads::{Rotary, merge_heads, split_heads};
use super::{fused, take_once};
use crate::model::autograd::grad_carrier::{self, GradSlots};
use crate::model::config::Activation;
use crate::model::kernels::{BlockBackward, BlockParts};
use crate::model::target::slot::{COUNT as PROJECTIONS, DOWN, GATE, K, O, Q, UP, V};

const NAME: &str = "decoder-block-cuda";

/// The forward's intermediates that the backward reads, all bf16.
struct Saved {
    /// The projections' inputs: normed input `[n, d]`, merged attention output `[n, h hd]`, normed residual
    /// `[n, d]`, gated product `[n, ff]`.
    hn: Tensor,
    attn: Tensor,
    hn2: Tensor,
    gated: Tensor,
    /// Rotated queries and keys, values `[b, heads, t, hd]`, and attention's log-sum-exp per query row.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lse: Tensor,
    /// The residual stream after attention `[n, d]`.
    x1: Tensor,
    gate: Tensor,
    up: Tensor,
    projections: Vec<Projection>,
}

/// What the backward needs besides the saved intermediates.
struct Chain {
    /// RMSNorm weights and eps before attention and before the feed-forward.
    norms: [(Tensor, f64); 2],
    rotary: Rotary,
    /// Attention's mask, scale and soft-cap.
    attention: Call,
    activation: Activation,
    /// b, t, heads, key-value heads, head size.
    shape: (usize, usize, usize, usize, usize),
}

/// Each projection's `(dA, dB)`, in slot order.
type AdapterGrads = Vec<Option<(Tensor, Tensor)>>;

impl Chain {
    /// The input's gradient for the output's gradient `g`, and the adapters' gradients. Each intermediate is
    /// released after its last use, each projection's weight after its product.
    fn backward(&self, x: &Tensor, g: &Tensor, st: Saved) -> Result<(Tensor, AdapterGrads)> {
        let (b, t, h, kvh, hd) = self.shape;
        let n = b * t;
        let d = x.elem_count() / n.max(1);
        let g2 = g.reshape((n, d))?.contiguous()?;
        let Saved {
            hn,
            attn,
            hn2,
            gated,
            q,
            k,
            v,
            lse,
            x1,
            gate,
            up,
            projections,
        } = st;
        let mut projections: Vec<Option<Projection>> = projections.into_iter().map(Some).collect();
        let mut grads: AdapterGrads = vec![None; PROJECTIONS];
        let mut back = |i: usize, input: &Tensor, g: &Tensor, add: Option<&Tensor>| {
            let projection = projections[i].take().ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: projection {i} went back twice"))
            })?;
            let (dx, da, db) = projection.backward(input, g, add)?;
            grads[i] = Some((da, db));
            Ok::<_, candle_core::Error>(dx)
        };
        let dgated = back(DOWN, &gated, &g2, None)?;
        drop(gated);
        let (dgate, dup) = fused::gated_backward(&gate, &up, &dgated, self.activation)?;
        drop((dgated, gate, up));
        let dhn2 = back(GATE, &hn2, &dgate, None)?;
        drop(dgate);
        let dhn2 = back(UP, &hn2, &dup, Some(&dhn2))?;
        drop((dup, hn2));
        let (w2, eps2) = &self.norms[1];
        let dx1 = fused::rms_norm_backward(&x1, w2, &dhn2, *eps2, Some(&g2))?;
        drop((dhn2, x1, g2));
        let dattn = back(O, &attn, &dx1, None)?;
        let (dq, dk, dv) = flash::backward((&q, &k, &v), (&attn, &lse), &dattn, &self.attention)?;
        drop((dattn, attn, lse, q, k, v));
        let dq = merge_heads(&dq, Some(&self.rotary))?.reshape((n, h * hd))?;
        let dk = merge_heads(&dk, Some(&self.rotary))?.reshape((n, kvh * hd))?;
        let dv = merge_heads(&dv, None)?.reshape((n, kvh * hd))?;
        let dhn = back(Q, &hn, &dq, None)?;
        let dhn = back(K, &hn, &dk, Some(&dhn))?;
        let dhn = back(V, &hn, &dv, Some(&dhn))?;
        drop(hn);
        let (w1, eps1) = &self.norms[0];
        let x2 = x.reshape((n, d))?;
        let dx = fused::rms_norm_backward(&x2, w1, &dhn, *eps1, Some(&dx1))?;
        Ok((dx.reshape(x.shape())?, grads))
    }
}

struct BlockOp {
    /// The output, taken by the op's forward.
    out: Mutex<Option<Tensor>>,
    /// Taken (and freed) by the backward.
    saved: Mutex<Option<Saved>>,
    chain: Chain,
    grads: GradSlots,
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        NAME
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        _x: &CudaStorage,
        xl: &Layout,
        _carrier: &CudaStorage,
        _cl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let out = take_once(&self.out, NAME)?;
        let (storage, layout) = out.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("{NAME}: the output is not on a CUDA device")
        };
        Ok((s.try_clone(layout)?, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        carrier: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = take_once(&self.saved, NAME)?;
        let (dx, grads) = self.chain.backward(&x.detach(), grad_res, saved)?;
        grad_carrier::deliver(&self.grads, grads)?;
        Ok((Some(dx), Some(carrier.zeros_like()?)))
    }
}

/// The block's output `[b, t, d]` for bf16 `x` on a CUDA device; with `p.grad`, differentiable in `x` and
/// in every adapter tensor. With `p.output_unread` too, the value returned is a stand-in of that shape
/// whose gradient is the output's.
pub fn block(x: &Tensor, p: BlockParts) -> Result<Tensor> {
    match forward(x, p)? {
        Ran::Output(out) => Ok(out),
        Ran::WithGrad(kept) => {
            let Kept {
                out,
                saved,
                chain,
                adapters,
            } = *kept;
            let carried: Vec<_> = adapters.iter().map(|(a, b)| (a, b)).collect();
            let (grads, carrier) = grad_carrier::carry(&carried)?;
            let op = BlockOp {
                out: Mutex::new(Some(out)),
                saved: Mutex::new(Some(saved)),
                chain,
                grads,
            };
            x.contiguous()?.apply_op2(&carrier, op)
        }
    }
}

/// Checkpointing's recomputation of a block and its backward in one call, outside candle's autograd: the
/// gradient of bf16 `x` `[b, t, d]` for the output's gradient `g`, and each projection's adapter gradients
/// `(dA, dB)` in slot order. `p.grad` and `p.output_unread` must be set.
pub fn block_backward(x: &Tensor, p: BlockParts, g: &Tensor) -> Result<BlockBackward> {
    if !(p.grad && p.output_unread) {
        candle_core::bail!("{NAME}: a direct backward needs gradients and an unread output")
    }
    let x = x.detach();
    let Ran::WithGrad(kept) = forward(&x, p)? else {
        candle_core::bail!("{NAME}: the forward kept nothing for a backward")
    };
    let Kept { saved, chain, .. } = *kept;
    let (dx, grads) = chain.backward(&x, g, saved)?;
    let grads = grads
        .into_iter()
        .enumerate()
        .map(|(i, pair)| {
            pair.ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: projection {i} has no gradient"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((dx, grads))
}

/// What [`forward`] made: the output alone (no gradients wanted), or with what the backward needs.
enum Ran {
    Output(Tensor),
    WithGrad(Box<Kept>),
}

struct Kept {
    out: Tensor,
    saved: Saved,
    chain: Chain,
    /// Each projection's adapter `(A, B)`, in slot order.
    adapters: Vec<(Tensor, Tensor)>,
}

/// The block's forward on bf16 `x`, keeping what the backward needs when `p.grad`.
fn forward(x: &Tensor, p: BlockParts) -> Result<Ran> {
    let x = x.contiguous()?;
    let (b, t, d) = x.dims3()?;
    let (h, kvh, hd) = p.heads;
    let n = b * t;
    let x2 = x.detach().reshape((n, d))?;
    let norms = p.norms.map(|(w, eps)| (w.clone(), eps));
    let hn = fused::rms_norm(&x2, &norms[0].0, norms[0].1)?;
    let mut projections = Vec::with_capacity(PROJECTIONS);
    let mut adapters = Vec::with_capacity(PROJECTIONS);
    let unread = p.grad && p.output_unread;
    // No projection keeps its dequantized weight past its product: with gradients the backward dequantizes
    // each again (`Projection::release_weight`).
    let mut project = |i: usize, input: &Tensor, add: Option<&Tensor>| -> Result<Tensor> {
        let parts = (p.projection)(i, input)?;
        let adapter = Adapter {
            a: &parts.a,
            b: &parts.b,
            scale: parts.scale,
            dropout: parts.dropout,
        };
        // An unread output (checkpointing's recomputation) is the residual plus the down projection, and
        // nothing reads the down projection but that sum: the residual stands in for the output, and the
        // projection keeps only what its backward needs (about 9% of a step's frozen products at 8B dims).
        if let (true, DOWN, Some(residual)) = (unread, i, add) {
            projections.push(Projection::without_output(input, &parts.base, adapter)?);
            adapters.push((parts.a, parts.b));
            return Ok(residual.clone());
        }
        let (mut projection, frozen) = Projection::new(input, &parts.base, adapter)?;
        let y = projection.output(input, frozen.as_ref(), add)?;
        if p.grad {
            projection.release_weight();
            projections.push(projection);
            adapters.push((parts.a, parts.b));
        }
        Ok(y)
    };
    let (q, k, v) = (
        project(Q, &hn, None)?,
        project(K, &hn, None)?,
        project(V, &hn, None)?,
    );
    let (cos, sin, interleaved) = p.rope;
    let rotary = Rotary {
        cos: cos.clone(),
        sin: sin.clone(),
        interleaved,
    };
    let q = split_heads(&q.reshape((b, t, h * hd))?, h, hd, Some(&rotary))?;
    let k = split_heads(&k.reshape((b, t, kvh * hd))?, kvh, hd, Some(&rotary))?;
    let v = split_heads(&v.reshape((b, t, kvh * hd))?, kvh, hd, None)?;
    let call = Call::new(p.mask, p.attention)?;
    let (attn, lse) = flash::forward(&q, &k, &v, &call)?;
    let lse = p.grad.then_some(lse);
    let attn = attn.reshape((n, h * hd))?;
    let x1 = project(O, &attn, Some(&x2))?;
    let hn2 = fused::rms_norm(&x1, &norms[1].0, norms[1].1)?;
    let (gate, up) = (project(GATE, &hn2, None)?, project(UP, &hn2, None)?);
    let gated = fused::gated(&gate, &up, p.activation)?;
    let out = project(DOWN, &gated, Some(&x1))?;
    let Some(lse) = lse else {
        return Ok(Ran::Output(out.reshape((b, t, d))?));
    };
    Ok(Ran::WithGrad(Box::new(Kept {
        out,
        saved: Saved {
            hn,
            attn,
            hn2,
            gated,
            q,
            k,
            v,
            lse,
            x1,
            gate,
            up,
            projections,
        },
        chain: Chain {
            norms,
            rotary,
            attention: call,
            activation: p.activation,
            shape: (b, t, h, kvh, hd),
        },
        adapters,
    })))
}
