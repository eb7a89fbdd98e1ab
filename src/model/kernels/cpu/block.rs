//! A whole decoder block of CPU training (the pass with gradients) as one op. Its forward keeps the
//! intermediates in plain buffers; its backward chains the fused kernels' closed-form gradients by hand.
//! candle's graph of the same block has ~30 nodes, and candle's backward zero-fills and sums a layer-wide
//! gradient for every input of every node. The adapters' gradients reach candle through `grad_carrier`.

use std::mem::MaybeUninit;

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};

use super::adapted_linear::{AdaptedProduct, AdapterCall, Dims as LinearDims};
use super::attention::{Dims as AttentionDims, FusedAttention, Groups};
use super::gated::GatedProduct;
use super::rms_norm::FusedRmsNorm;
use super::rope::FusedRope;
use super::{storage_slice, to_f32_vec};
use crate::model::autograd::grad_carrier::{self, GradSlots};
use crate::model::config::Activation;
use crate::model::device::written_in_parallel;
use crate::model::target::slot::{COUNT as PROJECTIONS, DOWN, GATE, K, O, Q, UP, V};

const NAME: &str = "decoder-block";

/// What a block needs besides its input `x` `[b, t, d]`: a llama-style block (pre-norms only, every
/// projection adapted, no biases).
pub struct BlockParts<'a> {
    /// RMSNorm weight and eps before attention, and before the feed-forward.
    pub input_norm: (&'a Tensor, f64),
    pub pre_ff_norm: (&'a Tensor, f64),
    /// The operands of projection `i` (q, k, v, o, gate, up, down) for its input `[n, in]`.
    pub linear: &'a dyn Fn(usize, &Tensor) -> Result<AdapterCall>,
    /// Query heads, key-value heads, head size.
    pub heads: (usize, usize, usize),
    /// Rope tables `[b, 1, t, hd / 2]` and whether rotated pairs are interleaved.
    pub rope: (&'a Tensor, &'a Tensor, bool),
    /// Additive attention mask `[b, 1, t, t]`.
    pub mask: &'a Tensor,
    /// Attention scale and logit soft-cap.
    pub attention: (f64, Option<f64>),
    /// The attention output `[b, h, t, hd]` of an identical earlier pass (checkpointing).
    pub known_attention: Option<Tensor>,
    /// Whether gradients are wanted: false runs the forward alone (inference, checkpointing's first pass).
    pub grad: bool,
    /// Return the attention output `[b, h, t, hd]` too (for a later pass's `known_attention`).
    pub keep_attention: bool,
    pub activation: Activation,
}

/// One projection's op, adapter tensors and sizes.
struct Linear {
    op: AdaptedProduct,
    a: Tensor,
    b: Tensor,
    dm: LinearDims,
}

impl Linear {
    /// The projection of `x` `[n, in]` with `call`'s operands (the op computes the frozen product unless
    /// the call replays one). The op keeps no dequantized weight: a block kept for a later backward would
    /// hold every projection's in f32.
    fn run(call: AdapterCall, x: &Tensor) -> Result<(Self, Vec<f32>)> {
        let (a, b) = (call.a.contiguous()?, call.b.contiguous()?);
        let dm = LinearDims::of(x.shape(), a.shape(), b.shape())?;
        let (op, product) = AdaptedProduct::new(call, false);
        let product = product.map(|p| p.contiguous()).transpose()?;
        if let Some(p) = &product
            && p.elem_count() != dm.n * dm.out
        {
            candle_core::bail!("{NAME}: frozen product {:?} for x {:?}", p.dims(), x.dims())
        }
        let y = {
            let (xs, xl) = x.storage_and_layout();
            let (as_, al) = a.storage_and_layout();
            let (bs, bl) = b.storage_and_layout();
            let inputs = (
                storage_slice(&xs, xl, NAME)?,
                storage_slice(&as_, al, NAME)?,
                storage_slice(&bs, bl, NAME)?,
            );
            match &product {
                Some(p) => {
                    let (ps, pl) = p.storage_and_layout();
                    op.forward(dm, inputs, Some(storage_slice(&ps, pl, NAME)?))?
                }
                None => op.forward(dm, inputs, None)?,
            }
        };
        Ok((Self { op, a, b, dm }, y))
    }

    /// `dx` for the input `x` and the gradient `g` of the output, and `(dA, dB)`.
    fn backward(&self, x: &[f32], g: &[f32]) -> Result<(Vec<f32>, (Tensor, Tensor))> {
        let [dx, da, db] = {
            let (as_, al) = self.a.storage_and_layout();
            let (bs, bl) = self.b.storage_and_layout();
            self.op.backward(
                self.dm,
                (
                    x,
                    storage_slice(&as_, al, NAME)?,
                    storage_slice(&bs, bl, NAME)?,
                ),
                g,
                [true; 3],
            )?
        };
        match (dx, da, db) {
            (Some(dx), Some(da), Some(db)) => Ok((
                dx,
                (
                    Tensor::from_vec(da, self.a.shape(), &Device::Cpu)?,
                    Tensor::from_vec(db, self.b.shape(), &Device::Cpu)?,
                ),
            )),
            _ => candle_core::bail!("{NAME}: a projection's backward left a gradient out"),
        }
    }
}

/// The forward's intermediates that the backward reads. The projections' inputs that cost one sweep to
/// recompute (the two normed residuals and the gated product) are not kept: a block kept whole until the
/// backward (no checkpointing) then holds about what checkpointing with saved frozen products holds.
struct Saved {
    /// The attention output `[n, h hd]` (the output projection's input).
    attn: Tensor,
    /// Rotated queries and keys, values, all head-major `[b, heads, t, hd]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// The residual stream after attention `[n, d]`.
    x1: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    linears: Vec<Linear>,
}

struct BlockOp {
    /// The output, taken by the forward.
    out: Mutex<Option<Vec<f32>>>,
    /// Taken (and freed) by the backward.
    saved: Mutex<Option<Saved>>,
    norms: [FusedRmsNorm; 2],
    rope_inverse: FusedRope,
    attention: FusedAttention,
    attention_dims: AttentionDims,
    gated: GatedProduct,
    /// b, t, heads, key-value heads, head size.
    shape: (usize, usize, usize, usize, usize),
    grads: GradSlots,
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg(format!("{NAME}: poisoned lock"))
}

/// `[b, m, n, d]` -> `[b, n, m, d]`, into a new vector without zero-filling it first.
fn swap_axes(src: &[f32], (b, m, n, d): (usize, usize, usize, usize)) -> Vec<f32> {
    let len = b * m * n * d;
    assert_eq!(
        src.len(),
        len,
        "[{b}, {m}, {n}, {d}] from {} values",
        src.len()
    );
    let write = |bj: usize, chunk: &mut [MaybeUninit<f32>]| {
        let (bi, j) = (bj / n, bj % n);
        for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
            let at = ((bi * m + i) * n + j) * d;
            for (o, v) in row.iter_mut().zip(&src[at..at + d]) {
                o.write(*v);
            }
        }
    };
    // SAFETY: chunk bj is the m rows of d of output (bi, j), each row copied whole from its source.
    unsafe { written_in_parallel(len, m * d, write) }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

impl BlockOp {
    fn backward(&self, x: &[f32], g: &[f32], st: &Saved) -> Result<Vec<f32>> {
        let (b, t, h, kvh, hd) = self.shape;
        let mut grads: Vec<Option<(Tensor, Tensor)>> = vec![None; PROJECTIONS];
        let mut project_back = |i: usize, input: &[f32], g: &[f32]| -> Result<Vec<f32>> {
            let (dx, pair) = st.linears[i].backward(input, g)?;
            grads[i] = Some(pair);
            Ok(dx)
        };
        let dgated = project_back(DOWN, &self.gated.forward(&st.gate, &st.up), g)?;
        let (dgate, dup) = self.gated.backward(&st.gate, &st.up, &dgated);
        let hn2 = self.norms[1].forward(&st.x1);
        let mut dhn2 = project_back(GATE, &hn2, &dgate)?;
        add_into(&mut dhn2, &project_back(UP, &hn2, &dup)?);
        let mut dx1 = self.norms[1].backward(&st.x1, &dhn2);
        add_into(&mut dx1, g);
        let dattn = {
            let (s, l) = st.attn.storage_and_layout();
            project_back(O, storage_slice(&s, l, NAME)?, &dx1)?
        };
        let dattn = swap_axes(&dattn, (b, t, h, hd));
        let (dq, dk, dv) =
            self.attention
                .backward(self.attention_dims, (&st.q, &st.k, &st.v), &dattn);
        let dq = self.rope_inverse.rotate(&dq, (b, h, t, hd))?;
        let dk = self.rope_inverse.rotate(&dk, (b, kvh, t, hd))?;
        let hn = self.norms[0].forward(x);
        let mut dhn = project_back(Q, &hn, &swap_axes(&dq, (b, h, t, hd)))?;
        add_into(
            &mut dhn,
            &project_back(K, &hn, &swap_axes(&dk, (b, kvh, t, hd)))?,
        );
        add_into(
            &mut dhn,
            &project_back(V, &hn, &swap_axes(&dv, (b, kvh, t, hd)))?,
        );
        let mut dx = self.norms[0].backward(x, &dhn);
        add_into(&mut dx, &dx1);
        grad_carrier::deliver(&self.grads, grads)?;
        Ok(dx)
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        xl: &Layout,
        _carrier: &CpuStorage,
        _cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = (self.out.lock().map_err(poisoned)?.take())
            .ok_or_else(|| candle_core::Error::Msg(format!("{NAME}: the forward ran twice")))?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        carrier: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = (self.saved.lock().map_err(poisoned)?.take())
            .ok_or_else(|| candle_core::Error::Msg(format!("{NAME}: the backward ran twice")))?;
        let g = grad_res.contiguous()?;
        let dx = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            self.backward(
                storage_slice(&xs, xl, NAME)?,
                storage_slice(&gs, gl, NAME)?,
                &saved,
            )?
        };
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(carrier.zeros_like()?),
        ))
    }
}

/// The block's output `[b, t, d]` (with `grad`: differentiable in `x` and in every adapter tensor), and the
/// attention output when `keep_attention`. CPU f32 only (see [`super::applies`]).
pub fn block(x: &Tensor, p: BlockParts) -> Result<(Tensor, Option<Tensor>)> {
    let dev = Device::Cpu;
    let x = x.contiguous()?;
    let (b, t, d) = x.dims3()?;
    let (h, kvh, hd) = p.heads;
    let n = b * t;
    let norms = [
        FusedRmsNorm {
            weight: to_f32_vec(p.input_norm.0)?,
            eps: p.input_norm.1 as f32,
        },
        FusedRmsNorm {
            weight: to_f32_vec(p.pre_ff_norm.0)?,
            eps: p.pre_ff_norm.1 as f32,
        },
    ];
    let xv = {
        let (xs, xl) = x.storage_and_layout();
        storage_slice(&xs, xl, NAME)?.to_vec()
    };
    let hn = Tensor::from_vec(norms[0].forward(&xv), (n, d), &dev)?;
    let mut linears = Vec::with_capacity(PROJECTIONS);
    let mut project = |i: usize, input: &Tensor| -> Result<Vec<f32>> {
        debug_assert_eq!(linears.len(), i);
        let (lin, y) = Linear::run((p.linear)(i, input)?, input)?;
        linears.push(lin);
        Ok(y)
    };
    let (q, k, v) = (project(Q, &hn)?, project(K, &hn)?, project(V, &hn)?);
    let (cos, sin, interleaved) = p.rope;
    let rope = FusedRope {
        cos: to_f32_vec(cos)?,
        sin: to_f32_vec(sin)?,
        interleaved,
        inverse: false,
    };
    let q = rope.rotate(&swap_axes(&q, (b, t, h, hd)), (b, h, t, hd))?;
    let k = rope.rotate(&swap_axes(&k, (b, t, kvh, hd)), (b, kvh, t, hd))?;
    let v = swap_axes(&v, (b, t, kvh, hd));
    let attention = FusedAttention {
        mask: to_f32_vec(p.mask)?,
        scale: p.attention.0 as f32,
        softcap: p.attention.1.map(|c| c as f32),
        known_output: None,
    };
    let kv_shape = Shape::from((b, kvh, t, hd));
    let attention_dims = AttentionDims::of(
        &Shape::from((b, h, t, hd)),
        &kv_shape,
        &kv_shape,
        attention.mask.len(),
    )?;
    let (attn, kept) = match &p.known_attention {
        Some(known) if known.dims() == [b, h, t, hd] => {
            let known = known.contiguous()?;
            let (s, l) = known.storage_and_layout();
            (swap_axes(storage_slice(&s, l, NAME)?, (b, h, t, hd)), None)
        }
        Some(known) => candle_core::bail!("{NAME}: saved attention output {:?}", known.dims()),
        None => {
            let (k, v) = (
                Groups::contiguous(&k, attention_dims),
                Groups::contiguous(&v, attention_dims),
            );
            let heads = attention.forward(attention_dims, &q, k, v);
            let attn = swap_axes(&heads, (b, h, t, hd));
            let kept = (p.keep_attention)
                .then(|| Tensor::from_vec(heads, (b, h, t, hd), &dev))
                .transpose()?;
            (attn, kept)
        }
    };
    let attn = Tensor::from_vec(attn, (n, h * hd), &dev)?;
    let mut x1 = project(O, &attn)?;
    add_into(&mut x1, &xv);
    let hn2 = Tensor::from_vec(norms[1].forward(&x1), (n, d), &dev)?;
    let (gate, up) = (project(GATE, &hn2)?, project(UP, &hn2)?);
    let gated_op = GatedProduct(p.activation);
    let ff = gate.len() / n.max(1);
    let gated = Tensor::from_vec(gated_op.forward(&gate, &up), (n, ff), &dev)?;
    let mut out = project(DOWN, &gated)?;
    add_into(&mut out, &x1);
    if !p.grad {
        return Ok((Tensor::from_vec(out, x.shape(), &dev)?, kept));
    }
    let adapters: Vec<_> = linears.iter().map(|l| (&l.a, &l.b)).collect();
    let (grads, carrier) = grad_carrier::carry(&adapters)?;
    let op = BlockOp {
        out: Mutex::new(Some(out)),
        saved: Mutex::new(Some(Saved {
            attn,
            q,
            k,
            v,
            x1,
            gate,
            up,
            linears,
        })),
        norms,
        rope_inverse: FusedRope {
            inverse: true,
            ..rope
        },
        attention,
        attention_dims,
        gated: gated_op,
        shape: (b, t, h, kvh, hd),
        grads,
    };
    Ok((x.apply_op2(&carrier, op)?, kept))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::decoder::lora::{DropoutSeed, SavedProducts};
    use crate::model::decoder::{Decoder, Positions};
    use crate::model::load::presets::preset;
    use crate::model::test_support::nf4_decoder_with_lora;

    /// One small llama block, NF4 base, adapters on every projection with non-zero B and dropout.
    fn decoder() -> Decoder {
        let (mut cfg, _) = preset("smollm2-135m").unwrap();
        (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) = (32, 48, 64);
        (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) = (4, 2, 8);
        cfg.num_layers = 1;
        cfg.layer_windows = vec![None];
        let dec = nf4_decoder_with_lora(cfg, 3, (4, 8.0, 0.25));
        for (i, (_, v)) in dec.lora_params().into_iter().enumerate() {
            v.set(&random(v.dims(), 100 + i as u64).affine(0.3, 0.0).unwrap())
                .unwrap();
        }
        dec
    }

    /// Values and gradients (input and every adapter tensor) of the fused block against the composition,
    /// with the frozen products and attention output replayed from a first pass when `replay`.
    fn check(replay: bool) {
        let dec = decoder();
        let (b, t) = (2, 6);
        let mut ctx = dec.context(b, t, 0, &Positions::From(0), None).unwrap();
        ctx.dropout = Some(DropoutSeed(11));
        let x0 = random(&[b, t, 32], 1);
        let probe = random(&[b, t, 32], 2);
        let run = |fused: bool, ctx: &mut crate::model::decoder::BlockContext| {
            let forward = |x: &Tensor, ctx: &crate::model::decoder::BlockContext| {
                if fused {
                    dec.block_forward(0, x, ctx, None).unwrap()
                } else {
                    dec.block_forward_composed(0, x, ctx, None).unwrap()
                }
            };
            let mut first = None;
            if replay {
                let saved = SavedProducts::default();
                saved.recording.set(true);
                ctx.saved = Some(saved);
                ctx.grad = false;
                first = Some(forward(&x0, ctx));
                ctx.saved.as_ref().unwrap().recording.set(false);
            }
            ctx.grad = true;
            let x = Var::from_tensor(&x0).unwrap();
            let y = forward(x.as_tensor(), ctx);
            if let Some(first) = first {
                assert!(!first.track_op());
                let e = rel_err(&first, &y);
                assert!(e < 1e-6, "first pass against the pass with gradients: {e}");
            }
            let store = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut grads = vec![store.get(x.as_tensor()).unwrap().clone()];
            for (_, v) in dec.lora_params() {
                grads.push(store.get(v.as_tensor()).unwrap().clone());
            }
            (y, grads)
        };
        let (yf, gf) = run(true, &mut ctx);
        let (yc, gc) = run(false, &mut ctx);
        assert!(rel_err(&yf, &yc) < 1e-5, "value {}", rel_err(&yf, &yc));
        assert_eq!(gf.len(), 15);
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            let e = rel_err(a, b);
            assert!(
                e < 1e-5,
                "gradient {i} (0: x, then A, B per projection): {e}"
            );
        }
    }

    #[test]
    fn matches_composition_with_dropout() {
        check(false);
    }

    #[test]
    fn matches_composition_with_replayed_first_pass() {
        check(true);
    }
}
