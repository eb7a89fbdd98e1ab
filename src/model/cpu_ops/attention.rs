//! Fused attention `softmax(softcap(scale * Q K^T) + mask) V` with grouped-query heads, one (batch, key
//! head) group per task: the scores of one head live in a per-task buffer, never in a `[b, h, t, T]`
//! tensor. The backward pass recomputes the probabilities from q and k (flash-style) instead of keeping them.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Mat, cpu_slice, dot, exp_shifted_sum, matmul, max, storage_slice, to_f32_vec};

/// The attention op's constants; q `[b, h, t, d]`, k and v `[b, kvh, T, d]`, all contiguous.
struct FusedAttention {
    /// Additive mask `[b, 1, t, T]` (0 or a large negative value).
    mask: Vec<f32>,
    scale: f32,
    softcap: Option<f32>,
    /// The output of an identical earlier call (checkpointed training's first pass): copied, not recomputed.
    known_output: Option<Tensor>,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    t: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Shape, k: &Shape, v: &Shape, mask_len: usize) -> Result<Self> {
        let (b, h, t, d) = q.dims4()?;
        let (kb, kvh, tk, kd) = k.dims4()?;
        if kb != b || kd != d || v.dims() != k.dims() || kvh == 0 || h % kvh != 0 {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} are not [b, h, t, d], [b, kvh, T, d] x2",
                q.dims(),
                k.dims(),
                v.dims()
            )
        }
        if mask_len != b * t * tk {
            candle_core::bail!("fused attention: mask must be [{b}, 1, {t}, {tk}]")
        }
        Ok(Self {
            b,
            h,
            kvh,
            t,
            tk,
            d,
        })
    }

    fn rep(&self) -> usize {
        self.h / self.kvh
    }
}

impl FusedAttention {
    /// Probabilities of one head into `p` `[t, T]` from its queries and keys; with soft-capping, `dcap`
    /// receives the derivative of the cap at each score (`1 - tanh^2`).
    fn probs(&self, dm: Dims, bi: usize, qh: &[f32], kg: &[f32], p: &mut [f32], dcap: &mut [f32]) {
        let (t, tk, d) = (dm.t, dm.tk, dm.d);
        matmul(
            p,
            (t, tk, d),
            Mat::rows(qh, d),
            Mat::rows_t(kg, d),
            self.scale,
            false,
        );
        let mask = &self.mask[bi * t * tk..(bi + 1) * t * tk];
        for ((row, mrow), crow) in p
            .chunks_exact_mut(tk)
            .zip(mask.chunks_exact(tk))
            .zip(dcap.chunks_exact_mut(tk))
        {
            if let Some(cap) = self.softcap {
                for (s, c) in row.iter_mut().zip(crow.iter_mut()) {
                    let th = (*s / cap).tanh();
                    *s = cap * th;
                    *c = 1.0 - th * th;
                }
            }
            for (s, m) in row.iter_mut().zip(mrow) {
                *s += m;
            }
            let inv = 1.0 / exp_shifted_sum(row, max(row));
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }

    fn forward(&self, dm: Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (t, tk, d, rep) = (dm.t, dm.tk, dm.d, dm.rep());
        let mut out = vec![0f32; dm.b * dm.h * t * d];
        out.par_chunks_mut(rep * t * d).enumerate().for_each_init(
            || (vec![0f32; t * tk], vec![0f32; t * tk]),
            |(p, dcap), (g, og)| {
                let bi = g / dm.kvh;
                let kg = &k[g * tk * d..(g + 1) * tk * d];
                let vg = &v[g * tk * d..(g + 1) * tk * d];
                for (r, oh) in og.chunks_exact_mut(t * d).enumerate() {
                    let hq = g * rep + r;
                    let qh = &q[hq * t * d..(hq + 1) * t * d];
                    self.probs(dm, bi, qh, kg, p, dcap);
                    matmul(
                        oh,
                        (t, d, tk),
                        Mat::rows(p, tk),
                        Mat::rows(vg, d),
                        1.0,
                        false,
                    );
                }
            },
        );
        out
    }

    /// dq `[b, h, t, d]`, dk and dv `[b, kvh, T, d]` (summed over each group's query heads).
    fn backward(
        &self,
        dm: Dims,
        (q, k, v): (&[f32], &[f32], &[f32]),
        dout: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (t, tk, d, rep) = (dm.t, dm.tk, dm.d, dm.rep());
        let mut dq = vec![0f32; dm.b * dm.h * t * d];
        let mut dk = vec![0f32; dm.b * dm.kvh * tk * d];
        let mut dv = vec![0f32; dm.b * dm.kvh * tk * d];
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(tk * d))
            .zip(dv.par_chunks_mut(tk * d))
            .enumerate()
            .for_each_init(
                || (vec![0f32; t * tk], vec![0f32; t * tk], vec![0f32; t * tk]),
                |(p, dp, dcap), (g, ((dqg, dkg), dvg))| {
                    let bi = g / dm.kvh;
                    let kg = &k[g * tk * d..(g + 1) * tk * d];
                    let vg = &v[g * tk * d..(g + 1) * tk * d];
                    for (r, dqh) in dqg.chunks_exact_mut(t * d).enumerate() {
                        let hq = g * rep + r;
                        let qh = &q[hq * t * d..(hq + 1) * t * d];
                        let doh = &dout[hq * t * d..(hq + 1) * t * d];
                        self.probs(dm, bi, qh, kg, p, dcap);
                        // dV += P^T dO; dP = dO V^T.
                        let acc = r > 0;
                        matmul(
                            dvg,
                            (tk, d, t),
                            Mat::rows_t(p, tk),
                            Mat::rows(doh, d),
                            1.0,
                            acc,
                        );
                        matmul(
                            dp,
                            (t, tk, d),
                            Mat::rows(doh, d),
                            Mat::rows_t(vg, d),
                            1.0,
                            false,
                        );
                        // dS = P * (dP - rowsum(P * dP)), times the cap's derivative.
                        for ((prow, dprow), crow) in p
                            .chunks_exact(tk)
                            .zip(dp.chunks_exact_mut(tk))
                            .zip(dcap.chunks_exact(tk))
                        {
                            let dot = dot(prow, dprow);
                            for (g, pv) in dprow.iter_mut().zip(prow) {
                                *g = pv * (*g - dot);
                            }
                            if self.softcap.is_some() {
                                dprow.iter_mut().zip(crow).for_each(|(g, c)| *g *= c);
                            }
                        }
                        // dQ = scale dS K; dK += scale dS^T Q.
                        let s = self.scale;
                        matmul(
                            dqh,
                            (t, d, tk),
                            Mat::rows(dp, tk),
                            Mat::rows(kg, d),
                            s,
                            false,
                        );
                        matmul(
                            dkg,
                            (tk, d, t),
                            Mat::rows_t(dp, tk),
                            Mat::rows(qh, d),
                            s,
                            acc,
                        );
                    }
                },
            );
        (dq, dk, dv)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(ql.shape(), kl.shape(), vl.shape(), self.mask.len())?;
        if let Some(known) = &self.known_output {
            if known.shape() != ql.shape() {
                candle_core::bail!(
                    "fused attention: saved output {:?} for q {:?}",
                    known.shape(),
                    ql.shape()
                )
            }
            let (s, l) = known.storage_and_layout();
            let out = storage_slice(&s, l, self.name())?.to_vec();
            return Ok((CpuStorage::F32(out), ql.shape().clone()));
        }
        let (q, k, v) = (
            cpu_slice(q, ql, self.name())?,
            cpu_slice(k, kl, self.name())?,
            cpu_slice(v, vl, self.name())?,
        );
        Ok((
            CpuStorage::F32(self.forward(dm, q, k, v)),
            ql.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.shape(), k.shape(), v.shape(), self.mask.len())?;
        let grad = grad_res.contiguous()?;
        let (dq, dk, dv) = {
            let name = self.name();
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            self.backward(
                dm,
                (
                    storage_slice(&qs, ql, name)?,
                    storage_slice(&ks, kl, name)?,
                    storage_slice(&vs, vl, name)?,
                ),
                storage_slice(&gs, gl, name)?,
            )
        };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// `softmax(softcap(scale * q k^T) + mask) v` for q `[b, h, t, d]`, k and v `[b, kvh, T, d]` (query head
/// `i` reads key head `i / (h / kvh)`), mask `[b, 1, t, T]`; returns `[b, h, t, d]`. CPU f32 only
/// (see [`super::applies`]); differentiable in q, k and v. `known_output`: this call's result from an
/// earlier pass over the same inputs (checkpointed training), used as the value instead of recomputing it.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    (scale, softcap): (f64, Option<f64>),
    known_output: Option<Tensor>,
) -> Result<Tensor> {
    let op = FusedAttention {
        mask: to_f32_vec(mask)?,
        scale: scale as f32,
        softcap: softcap.map(|c| c as f32),
        known_output: known_output.map(|t| t.contiguous()).transpose()?,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::layers::{attention_mask, softcap};

    /// The decoder's composition of candle ops (the reference).
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        scale: f64,
        cap: Option<f64>,
    ) -> Tensor {
        let (b, h, t, d) = q.dims4().unwrap();
        let (_, kvh, tk, _) = k.dims4().unwrap();
        let qg = q.reshape((b, kvh, h / kvh * t, d)).unwrap();
        let s = (qg.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let s = softcap(&s, cap).unwrap();
        let s = s
            .reshape((b, h, t, tk))
            .unwrap()
            .broadcast_add(mask)
            .unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let p = p.reshape((b, kvh, h / kvh * t, tk)).unwrap();
        p.matmul(v).unwrap().reshape((b, h, t, d)).unwrap()
    }

    fn check(
        b: usize,
        h: usize,
        kvh: usize,
        t: usize,
        d: usize,
        valid: Vec<Vec<bool>>,
        window: Option<usize>,
        cap: Option<f64>,
    ) {
        let q = Var::from_tensor(&random(&[b, h, t, d], 1)).unwrap();
        let k = Var::from_tensor(&random(&[b, kvh, t, d], 2)).unwrap();
        let v = Var::from_tensor(&random(&[b, kvh, t, d], 3)).unwrap();
        let w = random(&[b, h, t, d], 4);
        let mask = attention_mask(&valid, 0, t, window, &Device::Cpu).unwrap();
        let scale = (d as f64).powf(-0.5) * 3.0;
        let fused = attention(&q, &k, &v, &mask, (scale, cap), None).unwrap();
        // Replaying this output (as the checkpointed recomputation does) gives the same gradients.
        let known = attention(&q, &k, &v, &mask, (scale, cap), Some(fused.detach())).unwrap();
        let gk = (known * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let refr = reference(&q, &k, &v, &mask, scale, cap);
        assert!(
            rel_err(&fused, &refr) < 1e-5,
            "values {}",
            rel_err(&fused, &refr)
        );
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, r) = (gf.get(x).unwrap(), gr.get(x).unwrap());
            let e = rel_err(a, r);
            assert!(e < 1e-5, "gradient of {name}: relative error {e}");
            assert_eq!(
                rel_err(gk.get(x).unwrap(), a),
                0.0,
                "replayed gradient of {name}"
            );
        }
    }

    #[test]
    fn matches_composition_with_gqa_and_padding() {
        let valid = vec![vec![true; 12], [vec![false; 3], vec![true; 9]].concat()];
        check(2, 6, 2, 12, 8, valid, None, None);
    }

    #[test]
    fn matches_composition_with_window_and_softcap() {
        let valid = vec![vec![true; 10], [vec![true; 7], vec![false; 3]].concat()];
        check(2, 4, 4, 10, 16, valid.clone(), Some(4), Some(5.0));
        check(2, 4, 1, 10, 16, valid, Some(3), None);
    }
}
