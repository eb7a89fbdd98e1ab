//! A whole llama-style decoder block of GPU training (the pass with gradients) as one autograd node. Its
//! forward keeps the intermediates the backward reads; its backward chains the fused kernels' gradients
//! by hand, summing gradients of the same input inside the products that make them (`lowrank`'s
//! [`Base::Product`](super::lowrank::Base)). As a graph of ~15 nodes, candle's backward would zero-fill
//! and sum a layer-wide buffer for every input of every node. The adapters' gradients reach candle through
//! `grad_carrier`. Checkpointing's recomputation, whose output gradient is known before it runs, skips candle
//! altogether ([`block_backward`]): candle would still zero-fill and sum the output's and the input's
//! gradients and each adapter tensor's; where the first pass left the block's attention half in host memory
//! (`host_halves`), the recomputation starts at the feed-forward. The projections that read one input (q, k
//! and v; gate and up) run as one `Projection` where they can ([`adapted::share_input`]): one product each
//! way for all of them.

use std::cell::Cell;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

use super::adapted::{self, Adapter, Member, Projection};
use super::flash::{self, Call};
use super::heads::{Rotary, merge_qkv, split_heads};
use super::host_halves::Half;
use super::lowrank::{norm_project, stacked_parts};
use super::{fused, take_once};
use crate::model::autograd::grad_carrier::{self, GradSlots};
use crate::model::config::Activation;
use crate::model::kernels::{BlockBackward, BlockParts};
use crate::model::target::slot::{COUNT as PROJECTIONS, DOWN, GATE, K, O, Q, UP, V};

const NAME: &str = "decoder-block-cuda";

/// The projections that read one input, in the order their outputs lie side by side.
const QKV: [usize; 3] = [Q, K, V];
const GATE_UP: [usize; 2] = [GATE, UP];

thread_local! {
    /// Groups of projections run as one product over their shared input so far on this thread.
    static SHARED_INPUT_PRODUCTS: Cell<usize> = const { Cell::new(0) };
    /// Gate and up weights that checkpointing's recomputation kept for its backward so far on this thread.
    static KEPT_WEIGHTS: Cell<usize> = const { Cell::new(0) };
}

/// How many groups of projections (q, k and v; gate and up) have run as one product over their shared input
/// on this thread (a training step runs its blocks on its caller's thread): how a test knows that the shared
/// path, not the separate one, served its step, whatever other tests run beside it.
pub fn shared_input_products() -> usize {
    SHARED_INPUT_PRODUCTS.get()
}

/// How many gate and up weights checkpointing's recomputation has kept for its backward's product on this
/// thread, instead of dequantizing them a second time: one per recomputed block whose gate and up share
/// their input.
pub fn kept_weights() -> usize {
    KEPT_WEIGHTS.get()
}

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
    /// `[b, t, ff]` each (column ranges of one output where gate and up share their projection).
    gate: Tensor,
    up: Tensor,
    /// That one output `[b, t, 2 ff]` where they share it: their gradients overwrite it in place.
    gate_up: Option<Tensor>,
    projections: Vec<Slotted>,
}

/// A projection of the block and the slots it serves, its outputs side by side in that order.
struct Slotted {
    slots: Vec<usize>,
    projection: Projection,
}

/// What the backward needs besides the saved intermediates.
struct Chain {
    /// RMSNorm weights and eps before attention and before the feed-forward.
    norms: [(Tensor, f64); 2],
    rotary: Rotary,
    /// Attention's mask, scale and soft-cap.
    attention: Call,
    activation: Activation,
    /// Rows of the block's input and output, b t.
    rows: usize,
}

/// Each projection's `(dA, dB)`, in slot order.
type AdapterGrads = Vec<Option<(Tensor, Tensor)>>;

impl Chain {
    /// The input's gradient for the output's gradient `g`, and the adapters' gradients. Each intermediate is
    /// released after its last use, each projection's weight after its product. `midway` runs between the
    /// feed-forward's backward and attention's, once the feed-forward's intermediates are freed.
    fn backward(
        &self,
        x: &Tensor,
        g: &Tensor,
        st: Saved,
        midway: impl FnOnce() -> Result<()>,
    ) -> Result<(Tensor, AdapterGrads)> {
        let n = self.rows;
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
            gate_up,
            projections,
        } = st;
        let mut projections: Vec<Option<Slotted>> = projections.into_iter().map(Some).collect();
        let mut grads: AdapterGrads = vec![None; PROJECTIONS];
        // The input's gradient through the projections of `slots` (one shared one, or one each, chained), for
        // their outputs' gradient `g` `[n, sum of out]`. The last projection takes the input, so that it is freed
        // before that projection's weight is dequantized.
        let mut back = |slots: &[usize], input: Tensor, g: &Tensor| {
            let mut dx: Option<Tensor> = None;
            let mut at = 0;
            let mut input = Some(input);
            while at < g.dim(1)? {
                let taken = projections
                    .iter_mut()
                    .find(|r| r.as_ref().is_some_and(|r| slots.contains(&r.slots[0])))
                    .and_then(Option::take);
                let Some(Slotted {
                    slots: served,
                    projection,
                }) = taken
                else {
                    candle_core::bail!("{NAME}: no projection left for {slots:?}")
                };
                let width = projection.width();
                let part = match width == g.dim(1)? {
                    true => g.clone(),
                    false => g.narrow(1, at, width)?,
                };
                let x = match at + width >= g.dim(1)? {
                    true => input.take(),
                    false => input.clone(),
                };
                let Some(x) = x else {
                    candle_core::bail!("{NAME}: the input of {slots:?} went missing")
                };
                let (d, pairs) = projection.backward(x, &part, dx.as_ref())?;
                for (slot, pair) in served.into_iter().zip(pairs) {
                    grads[slot] = Some(pair);
                }
                dx = Some(d);
                at += width;
            }
            dx.ok_or_else(|| candle_core::Error::Msg(format!("{NAME}: no gradient for {slots:?}")))
        };
        let dgated = back(&[DOWN], gated, &g2)?.reshape(gate.shape())?;
        let dgate_up = match gate_up {
            Some(both) => {
                drop((gate, up));
                fused::gated_backward_in_place(&both, &dgated, self.activation)?;
                both.reshape((n, ()))?
            }
            None => {
                let both = fused::gated_backward_rows(&gate, &up, &dgated, self.activation)?;
                drop((gate, up));
                both
            }
        };
        drop(dgated);
        let dhn2 = back(&GATE_UP, hn2, &dgate_up)?;
        drop(dgate_up);
        let (w2, eps2) = &self.norms[1];
        let dx1 = fused::rms_norm_backward(&x1, w2, &dhn2, *eps2, Some(&g2))?;
        drop((dhn2, x1, g2));
        midway()?;
        let dattn = back(&[O], attn.clone(), &dx1)?;
        let (dq, dk, dv) = flash::backward((&q, &k, &v), (&attn, &lse), &dattn, &self.attention)?;
        drop((dattn, attn, lse, q, k, v));
        let dqkv = merge_qkv(&dq, &dk, &dv, &self.rotary)?;
        drop((dq, dk, dv));
        let dhn = back(&QKV, hn, &dqkv)?;
        drop(dqkv);
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
        let (dx, grads) = self
            .chain
            .backward(&x.detach(), grad_res, saved, || Ok(()))?;
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
    if !p.recomputing() {
        candle_core::bail!("{NAME}: a direct backward needs gradients and an unread output")
    }
    let x = x.detach();
    let halves = p.halves;
    let Ran::WithGrad(kept) = forward(&x, p)? else {
        candle_core::bail!("{NAME}: the forward kept nothing for a backward")
    };
    let Kept { saved, chain, .. } = *kept;
    // The next block's attention half comes back while this block's attention goes back, and the next
    // block recomputes its feed-forward: not while this block's feed-forward intermediates are alive.
    let prefetch = || match halves {
        Some((halves, i)) => halves.inner.prefetch_below(i),
        None => Ok(()),
    };
    let (dx, grads) = chain.backward(&x, g, saved, prefetch)?;
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
    let mut projector = Projector {
        p: &p,
        shape: (b, t, d),
        projections: Vec::with_capacity(PROJECTIONS),
        adapters: vec![None; PROJECTIONS],
        whole: None,
    };
    let (cos, sin, interleaved) = p.rope;
    let rotary = Rotary {
        cos: cos.clone(),
        sin: sin.clone(),
        interleaved,
    };
    let call = Call::new(p.mask, p.attention)?;
    // Checkpointing's recomputation starts at the feed-forward when the first pass left the attention half
    // in host memory: only what the q/k/v and output projections' backward reads is made again.
    let kept = match (p.recomputing(), p.halves) {
        (true, Some((halves, i))) => halves.inner.take(i)?,
        _ => None,
    };
    let (hn, q, k, v, attn, lse, x1) = match kept {
        Some(half) => {
            let hn = projector.operands(&QKV, Input::Normed(&x2, &norms[0]))?;
            projector.operands(&[O], Input::Plain(&half.attn))?;
            (hn, half.q, half.k, half.v, half.attn, half.lse, half.x1)
        }
        None => {
            let (hn, qkv) = projector.project(&QKV, Input::Normed(&x2, &norms[0]), None)?;
            let [q, k, v] = <[Tensor; 3]>::try_from(qkv)
                .map_err(|_| candle_core::Error::Msg(format!("{NAME}: q, k and v went missing")))?;
            let q = split_heads(&q, h, hd, Some(&rotary))?;
            let k = split_heads(&k, kvh, hd, Some(&rotary))?;
            let v = split_heads(&v, kvh, hd, None)?;
            let (attn, lse) = flash::forward(&q, &k, &v, &call)?;
            let attn = attn.reshape((n, h * hd))?;
            let x1 =
                one(projector.project(&[O], Input::Plain(&attn), Some(&x2))?)?.reshape((n, d))?;
            if let (false, Some((halves, i))) = (p.grad, p.halves) {
                let half = Half {
                    q: q.clone(),
                    k: k.clone(),
                    v: v.clone(),
                    attn: attn.clone(),
                    lse: lse.clone(),
                    x1: x1.clone(),
                };
                halves.inner.put(i, half)?;
            }
            (hn, q, k, v, attn, lse, x1)
        }
    };
    let lse = p.grad.then_some(lse);
    let (hn2, gate_up) = projector.project(&GATE_UP, Input::Normed(&x1, &norms[1]), None)?;
    let [gate, up] = <[Tensor; 2]>::try_from(gate_up)
        .map_err(|_| candle_core::Error::Msg(format!("{NAME}: gate and up went missing")))?;
    let gate_up = projector.whole.take();
    let gated = fused::gated(&gate, &up, p.activation)?.reshape((n, gate.dim(2)?))?;
    let out = one(projector.project(&[DOWN], Input::Plain(&gated), Some(&x1))?)?;
    let Some(lse) = lse else {
        return Ok(Ran::Output(out));
    };
    let Projector {
        projections,
        adapters,
        ..
    } = projector;
    let gate_up = gate_up.filter(|_| p.grad);
    let adapters = adapters
        .into_iter()
        .enumerate()
        .map(|(i, pair)| {
            pair.ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: projection {i} was not made"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
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
            gate_up,
            projections,
        },
        chain: Chain {
            norms,
            rotary,
            attention: call,
            activation: p.activation,
            rows: n,
        },
        adapters,
    })))
}

/// Runs [`forward`]'s projections, group by group, keeping what the backward needs: each group's operands (with
/// gradients) and every projection's adapter `(A, B)`. No projection keeps its dequantized weight past its product:
/// with gradients the backward dequantizes each again (`Projection::release_weight`).
struct Projector<'a, 'p> {
    p: &'a BlockParts<'p>,
    /// The block's batch, sequence and model width.
    shape: (usize, usize, usize),
    projections: Vec<Slotted>,
    adapters: Vec<Option<(Tensor, Tensor)>>,
    /// The whole output `[b, t, sum of out]` of the last projections that shared their input.
    whole: Option<Tensor>,
}

impl Projector<'_, '_> {
    /// The projections of `slots` on their input `[n, in]` (given, or `x` normed), plus `add` (a residual, for a
    /// single projection): that input and their outputs `[b, t, out]`.
    fn project(
        &mut self,
        slots: &[usize],
        input: Input,
        add: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.run(slots, input, add, true)
    }

    /// What the backward of the projections of `slots` needs, without their outputs (the first pass kept
    /// those): their input, which it returns, and their adapters' rank-wide products.
    fn operands(&mut self, slots: &[usize], input: Input) -> Result<Tensor> {
        self.run(slots, input, None, false).map(|(input, _)| input)
    }

    /// [`Self::project`], with the outputs (`outputs`) or without.
    fn run(
        &mut self,
        slots: &[usize],
        input: Input,
        add: Option<&Tensor>,
        outputs: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.whole = None;
        let (Input::Plain(like) | Input::Normed(like, _)) = input;
        let parts = slots
            .iter()
            .map(|&i| (self.p.projection)(i, like))
            .collect::<Result<Vec<_>>>()?;
        let members: Vec<Member> = parts
            .iter()
            .map(|part| {
                let adapter = Adapter {
                    a: &part.a,
                    b: &part.b,
                    scale: part.scale,
                    dropout: part.dropout.clone(),
                };
                (&part.base, adapter)
            })
            .collect();
        for (&slot, part) in slots.iter().zip(&parts) {
            self.adapters[slot] = Some((part.a.clone(), part.b.clone()));
        }
        if let (true, Input::Normed(x, norm)) = (adapted::share_input(&members)?, input) {
            return self.shared(slots, (x, norm), members, outputs);
        }
        let input = match input {
            Input::Plain(x) => x.clone(),
            Input::Normed(x, (w, eps)) => fused::rms_norm(x, w, *eps)?,
        };
        let outputs = self.separate(slots, &input, add, members, outputs)?;
        Ok((input, outputs))
    }

    /// Projections that share a normed input: they take it with their rank-wide parts in the same rows, and
    /// their low-rank term in the frozen product (`Projection::over_columns`). Returns the normed input and
    /// the outputs (none without `outputs`: the operands alone, no frozen product).
    fn shared(
        &mut self,
        slots: &[usize],
        (x, (w, eps)): (&Tensor, &(Tensor, f64)),
        members: Vec<Member>,
        outputs: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t, _) = self.shape;
        let in_f = x.dim(1)?;
        let scale = match members.first() {
            Some((_, adapter)) => adapter.scale,
            None => candle_core::bail!("{NAME}: a shared projection without members"),
        };
        let a_members: Vec<_> = members.iter().map(|(_, a)| a.a.detach()).collect();
        let a = stacked_parts(&a_members, false)?;
        let wide = norm_project(x, w, *eps, &a, scale)?;
        if !outputs {
            let projection = Projection::over_columns_operands(&wide, in_f, members, a)?;
            self.projections.push(Slotted {
                slots: slots.to_vec(),
                projection,
            });
            return Ok((wide.narrow(1, 0, in_f)?, Vec::new()));
        }
        // The recomputation's gate and up weight serves the backward's gate/up product next: kept, it is not
        // dequantized a second time. It is held through the down projection's and the activation's backward
        // (0.11 GiB more at the step's peak at Llama-3.1-8B dims, 2 x 2048; h100-train-ab-2026-12-07-keep.txt).
        let keep = self.p.recomputing() && slots == GATE_UP;
        let (projection, y) = Projection::over_columns(&wide, in_f, members, a, keep)?;
        SHARED_INPUT_PRODUCTS.set(SHARED_INPUT_PRODUCTS.get() + 1);
        KEPT_WEIGHTS.set(KEPT_WEIGHTS.get() + keep as usize);
        let y = y.reshape((b, t, projection.width()))?;
        self.whole = Some(y.clone());
        let mut outputs = Vec::with_capacity(slots.len());
        let mut at = 0;
        for &width in projection.outs() {
            outputs.push(y.narrow(2, at, width)?);
            at += width;
        }
        if self.p.grad {
            self.projections.push(Slotted {
                slots: slots.to_vec(),
                projection,
            });
        }
        Ok((wide.narrow(1, 0, in_f)?, outputs))
    }

    /// Projections each on its own, of `input` `[n, in]`: their outputs (none without `wanted`).
    fn separate(
        &mut self,
        slots: &[usize],
        input: &Tensor,
        add: Option<&Tensor>,
        members: Vec<Member>,
        wanted: bool,
    ) -> Result<Vec<Tensor>> {
        let (b, t, d) = self.shape;
        let mut outputs = Vec::with_capacity(slots.len());
        for (&slot, member) in slots.iter().zip(members) {
            if !wanted {
                let projection = Projection::without_output(input, member)?;
                self.projections.push(Slotted {
                    slots: vec![slot],
                    projection,
                });
                continue;
            }
            // An unread output (checkpointing's recomputation) is the residual plus the down projection, and
            // nothing reads the down projection but that sum: the residual stands in for the output, and the
            // projection keeps only what its backward needs (about 9% of a step's frozen products at 8B dims).
            if let (true, DOWN, Some(residual)) = (self.p.recomputing(), slot, add) {
                let projection = Projection::without_output(input, member)?;
                self.projections.push(Slotted {
                    slots: vec![slot],
                    projection,
                });
                outputs.push(residual.reshape((b, t, d))?);
                continue;
            }
            let (mut projection, frozen) = Projection::new(input, member)?;
            let y = projection.output(input, frozen.as_ref(), add)?;
            outputs.push(y.reshape((b, t, projection.width()))?);
            if self.p.grad {
                projection.release_weight();
                self.projections.push(Slotted {
                    slots: vec![slot],
                    projection,
                });
            }
        }
        Ok(outputs)
    }
}

/// What a group of projections in [`forward`] reads: a given input, or one it norms (RMSNorm weight and eps).
#[derive(Clone, Copy)]
enum Input<'a> {
    Plain(&'a Tensor),
    Normed(&'a Tensor, &'a (Tensor, f64)),
}

/// The one output of a single projection's [`forward`] step.
fn one((_, outputs): (Tensor, Vec<Tensor>)) -> Result<Tensor> {
    match <[Tensor; 1]>::try_from(outputs) {
        Ok([y]) => Ok(y),
        Err(_) => candle_core::bail!("{NAME}: expected one projection's output"),
    }
}
