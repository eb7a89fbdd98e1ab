//! Fused attention `softmax(softcap(scale * Q K^T) + mask) V` with grouped-query heads, one (batch, key
//! head) group per task: the scores of one head live in a per-task buffer, never in a `[b, h, t, T]`
//! tensor. The backward pass recomputes the probabilities from q and k (flash-style) instead of keeping them.
//! Keys and values may be views of a KV cache's buffers (each head's positions contiguous rows, the heads
//! further apart): they are read in place.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

mod decode;

use super::{Mat, cpu_slice, dot, exp_shifted_sum, matmul, max, simd, storage_slice, to_f32_vec};
use crate::model::device::for_each_chunk_mut;

/// The attention op's constants; q `[b, h, t, d]` contiguous, k and v `[b, kvh, T, d]` readable as
/// [`Groups`].
pub(super) struct FusedAttention {
    /// Additive mask `[b, 1, t, T]` (0 or a large negative value).
    pub(super) mask: Vec<f32>,
    pub(super) scale: f32,
    pub(super) softcap: Option<f32>,
    /// The output of an identical earlier call (checkpointed training's first pass): copied, not recomputed.
    pub(super) known_output: Option<Tensor>,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    t: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    pub(super) fn of(q: &Shape, k: &Shape, v: &Shape, mask_len: usize) -> Result<Self> {
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

/// Keys or values `[b, kvh, T, d]` whose (batch row, key head) groups are each `T` contiguous rows of `d`,
/// wherever each group starts: a contiguous tensor, or the first `T` positions of a KV cache's buffer.
#[derive(Clone, Copy)]
pub(super) struct Groups<'a> {
    data: &'a [f32],
    kvh: usize,
    /// Elements between batch rows and between key heads.
    strides: (usize, usize),
    /// Elements of one group (`T * d`).
    len: usize,
}

impl<'a> Groups<'a> {
    /// A contiguous `[b, kvh, T, d]` tensor's elements.
    pub(super) fn contiguous(data: &'a [f32], dm: Dims) -> Self {
        let len = dm.tk * dm.d;
        Self {
            data,
            kvh: dm.kvh,
            strides: (dm.kvh * len, len),
            len,
        }
    }

    /// The groups of a CPU storage in layout `l`, or None when its positions are not contiguous rows.
    fn of(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<Option<Self>> {
        let CpuStorage::F32(all) = s else {
            candle_core::bail!("{op}: expected f32 storage, got {:?}", s.dtype())
        };
        let (b, kvh, tk, d) = l.shape().dims4()?;
        let st = l.stride();
        let rows = (d <= 1 || st[3] == 1) && (tk <= 1 || st[2] == d);
        if !rows {
            return Ok(None);
        }
        let len = tk * d;
        let last = (b.max(1) - 1) * st[0] + (kvh.max(1) - 1) * st[1] + len;
        let Some(data) = all.get(l.start_offset()..l.start_offset() + last) else {
            candle_core::bail!(
                "{op}: layout {l:?} reaches past its storage of {}",
                all.len()
            )
        };
        Ok(Some(Self {
            data,
            kvh,
            strides: (st[0], st[1]),
            len,
        }))
    }

    /// Whether [`Self::of`] reads a tensor in this layout.
    fn readable(l: &Layout) -> bool {
        let (st, dims) = (l.stride(), l.dims());
        dims.len() == 4 && (dims[3] <= 1 || st[3] == 1) && (dims[2] <= 1 || st[2] == dims[3])
    }

    /// Group `g` (`batch row * kvh + key head`): `T * d` elements.
    #[inline(always)]
    fn get(&self, g: usize) -> &'a [f32] {
        let at = (g / self.kvh) * self.strides.0 + (g % self.kvh) * self.strides.1;
        &self.data[at..at + self.len]
    }
}

/// Query rows per block: each block multiplies only the keys its rows can see (causal masks: about 60% of
/// the full products at 256 positions).
const ROW_BLOCK: usize = 64;

/// The keys `[start, end)` one query row reads: from its first visible key to its last. A row that sees no
/// key at all (a padded query) reads every key, as the composition's softmax then spreads evenly over them.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// One block of query rows `[r0, r1)` and the keys `[k0, k1)` that hold all its rows' spans.
#[derive(Clone, Copy)]
struct RowBlock {
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
}

impl RowBlock {
    fn keys(&self) -> usize {
        self.k1 - self.k0
    }
}

impl FusedAttention {
    /// The spans of batch row `bi`'s queries, and its row blocks. Blocks start afresh where padded queries
    /// end, and each row's softmax starts at its own first visible key, so that a left-padded prompt is
    /// computed in the same blocks, over the same keys in the same order, as the prompt alone: the same bits.
    fn blocks(&self, dm: Dims, bi: usize) -> (Vec<RowBlock>, Vec<Span>) {
        let (t, tk) = (dm.t, dm.tk);
        let visible: Vec<Option<Span>> = (0..t)
            .map(|i| {
                let row = &self.mask[(bi * t + i) * tk..(bi * t + i + 1) * tk];
                let seen = |m: &f32| *m > f32::MIN / 2.0;
                let start = row.iter().position(seen)?;
                let last = row.iter().rposition(seen)?;
                Some(Span {
                    start,
                    end: last + 1,
                })
            })
            .collect();
        let padded = |i: usize| visible[i].is_none();
        let spans: Vec<Span> = (visible.iter())
            .map(|s| s.unwrap_or(Span { start: 0, end: tk }))
            .collect();
        let mut blocks = Vec::with_capacity(t / ROW_BLOCK + 2);
        let mut r0 = 0;
        while r0 < t {
            let kind = padded(r0);
            let mut r1 = r0 + 1;
            while r1 < t && r1 - r0 < ROW_BLOCK && padded(r1) == kind {
                r1 += 1;
            }
            let rows = &spans[r0..r1];
            blocks.push(RowBlock {
                r0,
                r1,
                k0: rows.iter().map(|s| s.start).min().unwrap_or(0),
                k1: rows.iter().map(|s| s.end).max().unwrap_or(tk),
            });
            r0 = r1;
        }
        (blocks, spans)
    }

    /// Probabilities of rows `blk` of one head into `p` `[rows, blk.keys()]` (keys from `blk.k0`) from its
    /// queries `qh` `[t, d]` and keys `kg` `[T, d]`, zero before each row's span; with soft-capping, `dcap`
    /// receives the cap's derivative (`1 - tanh^2`).
    #[inline(always)]
    fn probs(
        &self,
        dm: Dims,
        bi: usize,
        (blk, spans): (RowBlock, &[Span]),
        (qh, kg): (&[f32], &[f32]),
        p: &mut [f32],
        dcap: &mut [f32],
    ) {
        let (t, tk, d, n) = (dm.t, dm.tk, dm.d, blk.keys());
        let rows = blk.r1 - blk.r0;
        let p = &mut p[..rows * n];
        let keys = &kg[blk.k0 * d..blk.k1 * d];
        if rows == 1 && d > 0 {
            // One query (decoding): dot products, without gemm's packing, which costs more than the product.
            decode::scores(&qh[blk.r0 * d..blk.r1 * d], keys, self.scale, p);
        } else {
            matmul(
                p,
                (rows, n, d),
                Mat::rows(&qh[blk.r0 * d..], d),
                Mat::rows_t(keys, d),
                self.scale,
                false,
            );
        }
        let mask = &self.mask[(bi * t + blk.r0) * tk..(bi * t + blk.r1) * tk];
        for (((row, mrow), crow), span) in p
            .chunks_exact_mut(n)
            .zip(mask.chunks_exact(tk))
            .zip(dcap.chunks_exact_mut(n))
            .zip(&spans[blk.r0..blk.r1])
        {
            // From the row's first visible key to the block's last: the masked keys after the row's own last
            // one add exact zeros, in the lanes where an unpadded prompt has always summed them.
            let a = span.start - blk.k0;
            row[..a].fill(0.0);
            let (row, crow) = (&mut row[a..], &mut crow[a..]);
            if let Some(cap) = self.softcap {
                for (s, c) in row.iter_mut().zip(crow.iter_mut()) {
                    let th = (*s / cap).tanh();
                    *s = cap * th;
                    *c = 1.0 - th * th;
                }
            }
            for (s, m) in row.iter_mut().zip(&mrow[span.start..blk.k1]) {
                *s += m;
            }
            let inv = 1.0 / exp_shifted_sum(row, max(row));
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }

    pub(super) fn forward(&self, dm: Dims, q: &[f32], k: Groups, v: Groups) -> Vec<f32> {
        let (t, tk, d, rep) = (dm.t, dm.tk, dm.d, dm.rep());
        let block_rows = ROW_BLOCK.min(t);
        let mut out = vec![0f32; dm.b * dm.h * t * d];
        // Decoding keeps every query head's probabilities of a key head at once.
        let len = if t == 1 { rep * tk } else { block_rows * tk };
        let buffers = || (vec![0f32; len], vec![0f32; len]);
        let group = |(p, dcap): &mut (Vec<f32>, Vec<f32>), g: usize, og: &mut [f32]| {
            simd(
                #[inline(always)]
                || self.group_forward(dm, (q, k, v), g, og, (p, dcap)),
            )
        };
        match t {
            // Decoding: one short loop per block and token, on the pool that stays awake between them.
            1 => for_each_chunk_mut(&mut out, rep * t * d, |g, og| group(&mut buffers(), g, og)),
            _ => out
                .par_chunks_mut(rep * t * d)
                .enumerate()
                .for_each_init(buffers, |buffers, (g, og)| group(buffers, g, og)),
        }
        out
    }

    /// The outputs `og` of key-head group `g`'s query heads, with the scratch buffers `p` and `dcap`.
    #[inline(always)]
    fn group_forward(
        &self,
        dm: Dims,
        (q, k, v): (&[f32], Groups, Groups),
        g: usize,
        og: &mut [f32],
        (p, dcap): (&mut [f32], &mut [f32]),
    ) {
        let (t, d, rep) = (dm.t, dm.d, dm.rep());
        let bi = g / dm.kvh;
        let (kg, vg) = (k.get(g), v.get(g));
        let (blocks, spans) = self.blocks(dm, bi);
        if let [blk] = blocks[..]
            && t == 1
            && d > 0
        {
            // Decoding: every query head's probabilities, then their weighted sums of the shared values
            // together.
            let n = blk.keys();
            decode::prefetch_l2(&kg[blk.k0 * d..blk.k1 * d]);
            decode::prefetch_l2(&vg[blk.k0 * d..blk.k1 * d]);
            for r in 0..rep {
                let hq = g * rep + r;
                let (p, dcap) = (&mut p[r * n..], &mut dcap[r * n..]);
                self.probs(dm, bi, (blk, &spans), (&q[hq * d..][..d], kg), p, dcap);
            }
            let values = &vg[blk.k0 * d..blk.k1 * d];
            decode::weighted(og, &p[..rep * n], values, d);
            return;
        }
        for (r, oh) in og.chunks_exact_mut(t * d).enumerate() {
            let hq = g * rep + r;
            let qh = &q[hq * t * d..(hq + 1) * t * d];
            for &blk in &blocks {
                let (rows, n) = (blk.r1 - blk.r0, blk.keys());
                self.probs(dm, bi, (blk, &spans), (qh, kg), p, dcap);
                let o = &mut oh[blk.r0 * d..blk.r1 * d];
                let values = &vg[blk.k0 * d..blk.k1 * d];
                if rows == 1 && d > 0 {
                    decode::weighted(o, &p[..n], values, d);
                    continue;
                }
                matmul(
                    o,
                    (rows, d, n),
                    Mat::rows(p, n),
                    Mat::rows(values, d),
                    1.0,
                    false,
                );
            }
        }
    }

    /// dq `[b, h, t, d]`, dk and dv `[b, kvh, T, d]` (summed over each group's query heads).
    pub(super) fn backward(
        &self,
        dm: Dims,
        (q, k, v): (&[f32], &[f32], &[f32]),
        dout: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (t, tk, d, rep) = (dm.t, dm.tk, dm.d, dm.rep());
        let block_rows = ROW_BLOCK.min(t);
        let mut dq = vec![0f32; dm.b * dm.h * t * d];
        let mut dk = vec![0f32; dm.b * dm.kvh * tk * d];
        let mut dv = vec![0f32; dm.b * dm.kvh * tk * d];
        let buffer = || vec![0f32; block_rows * tk];
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(tk * d))
            .zip(dv.par_chunks_mut(tk * d))
            .enumerate()
            .for_each_init(
                || (buffer(), buffer(), buffer()),
                |(p, dp, dcap), (g, ((dqg, dkg), dvg))| {
                    simd(
                        #[inline(always)]
                        || {
                            let bi = g / dm.kvh;
                            let kg = &k[g * tk * d..(g + 1) * tk * d];
                            let vg = &v[g * tk * d..(g + 1) * tk * d];
                            let (blocks, spans) = self.blocks(dm, bi);
                            for (r, dqh) in dqg.chunks_exact_mut(t * d).enumerate() {
                                let hq = g * rep + r;
                                let qh = &q[hq * t * d..(hq + 1) * t * d];
                                let doh = &dout[hq * t * d..(hq + 1) * t * d];
                                for &blk in &blocks {
                                    let (rows, n) = (blk.r1 - blk.r0, blk.keys());
                                    let (qb, dob) =
                                        (&qh[blk.r0 * d..blk.r1 * d], &doh[blk.r0 * d..blk.r1 * d]);
                                    let keys = blk.k0 * d..blk.k1 * d;
                                    let (kb, vb) = (&kg[keys.clone()], &vg[keys.clone()]);
                                    self.probs(dm, bi, (blk, &spans), (qh, kg), p, dcap);
                                    let (p, dp) = (&p[..rows * n], &mut dp[..rows * n]);
                                    // dV += P^T dO; dP = dO V^T (dk, dv start at zero and only accumulate).
                                    matmul(
                                        &mut dvg[keys.clone()],
                                        (n, d, rows),
                                        Mat::rows_t(p, n),
                                        Mat::rows(dob, d),
                                        1.0,
                                        true,
                                    );
                                    matmul(
                                        dp,
                                        (rows, n, d),
                                        Mat::rows(dob, d),
                                        Mat::rows_t(vb, d),
                                        1.0,
                                        false,
                                    );
                                    // dS = P * (dP - rowsum(P * dP)), times the cap's derivative.
                                    for ((prow, dprow), crow) in p
                                        .chunks_exact(n)
                                        .zip(dp.chunks_exact_mut(n))
                                        .zip(dcap.chunks_exact(n))
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
                                    let dqb = &mut dqh[blk.r0 * d..blk.r1 * d];
                                    matmul(
                                        dqb,
                                        (rows, d, n),
                                        Mat::rows(dp, n),
                                        Mat::rows(kb, d),
                                        s,
                                        false,
                                    );
                                    matmul(
                                        &mut dkg[keys],
                                        (n, d, rows),
                                        Mat::rows_t(dp, n),
                                        Mat::rows(qb, d),
                                        s,
                                        true,
                                    );
                                }
                            }
                        },
                    )
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
        let q = cpu_slice(q, ql, self.name())?;
        let (Some(k), Some(v)) = (
            Groups::of(k, kl, self.name())?,
            Groups::of(v, vl, self.name())?,
        ) else {
            candle_core::bail!("{}: keys and values need contiguous rows", self.name())
        };
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
        let (k, v) = (k.contiguous()?, v.contiguous()?);
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
    let rows = |x: &Tensor| match Groups::readable(x.layout()) {
        true => Ok(x.clone()),
        false => x.contiguous(),
    };
    q.contiguous()?.apply_op3(&rows(k)?, &rows(v)?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::decoder::layers::softcap;
    use crate::model::kernels::mask::additive_mask as attention_mask;

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

    /// Sizes `(b, h, kvh, t, d)`.
    fn check(
        (b, h, kvh, t, d): (usize, usize, usize, usize, usize),
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
        check((2, 6, 2, 12, 8), valid, None, None);
    }

    #[test]
    fn matches_composition_across_row_blocks() {
        // Longer than a row block: blocks stop at different key extents; padded queries see every key.
        let valid = vec![[vec![false; 5], vec![true; 145]].concat(), vec![true; 150]];
        check((2, 4, 2, 150, 8), valid.clone(), None, None);
        check((2, 2, 1, 150, 8), valid, Some(70), Some(4.0));
    }

    #[test]
    fn matches_composition_with_window_and_softcap() {
        let valid = vec![vec![true; 10], [vec![true; 7], vec![false; 3]].concat()];
        check((2, 4, 4, 10, 16), valid.clone(), Some(4), Some(5.0));
        check((2, 4, 1, 10, 16), valid, Some(3), None);
    }

    /// A left-padded prompt's rows are the prompt alone's to the bit: its prefill over several row blocks
    /// (the padding not a multiple of a block), and a decode step against all its keys, with and without a
    /// window and soft-capping. (Generation rounds activations to 8 bits, which turns a last-bit difference
    /// into a different answer.)
    #[test]
    fn a_left_padded_prompt_is_computed_as_the_prompt_alone() {
        let (h, kvh, len, pad, d) = (4, 2, 150, 37, 16);
        let bits = |x: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|f| f.to_bits()).collect()
        };
        let rows =
            |x: &Tensor, from: usize, n: usize| x.narrow(2, from, n).unwrap().contiguous().unwrap();
        let padded_keys = vec![[vec![false; pad], vec![true; len]].concat()];
        let alone_keys = vec![vec![true; len]];
        for (window, cap) in [(None, None), (Some(70), Some(4.0))] {
            let (q, k, v) = (
                random(&[1, h, pad + len, d], 1),
                random(&[1, kvh, pad + len, d], 2),
                random(&[1, kvh, pad + len, d], 3),
            );
            let (qa, ka, va) = (rows(&q, pad, len), rows(&k, pad, len), rows(&v, pad, len));
            let mask = attention_mask(&padded_keys, 0, pad + len, window, &Device::Cpu).unwrap();
            let padded = attention(&q, &k, &v, &mask, (0.3, cap), None).unwrap();
            let mask = attention_mask(&alone_keys, 0, len, window, &Device::Cpu).unwrap();
            let alone = attention(&qa, &ka, &va, &mask, (0.3, cap), None).unwrap();
            assert_eq!(
                bits(&rows(&padded, pad, len)),
                bits(&alone),
                "prefill, window {window:?}"
            );

            let last = pad + len - 1;
            let mask = attention_mask(&padded_keys, last, 1, window, &Device::Cpu).unwrap();
            let padded = attention(&rows(&q, last, 1), &k, &v, &mask, (0.3, cap), None).unwrap();
            let mask = attention_mask(&alone_keys, len - 1, 1, window, &Device::Cpu).unwrap();
            let alone =
                attention(&rows(&qa, len - 1, 1), &ka, &va, &mask, (0.3, cap), None).unwrap();
            assert_eq!(
                bits(&padded),
                bits(&alone),
                "decode step, window {window:?}"
            );
        }
    }

    /// A decode step: one query per row against keys and values that are views of the first positions of
    /// larger buffers (a KV cache's), read in place with the same result as contiguous copies.
    #[test]
    fn decoding_reads_cache_views_in_place() {
        let (b, h, kvh, past, d, capacity) = (3, 6, 2, 9, 8, 16);
        let q = random(&[b, h, 1, d], 1);
        let k_buffer = random(&[b, kvh, capacity, d], 2);
        let v_buffer = random(&[b, kvh, capacity, d], 3);
        let (k, v) = (
            k_buffer.narrow(2, 0, past + 1).unwrap(),
            v_buffer.narrow(2, 0, past + 1).unwrap(),
        );
        assert!(!k.is_contiguous() && Groups::readable(k.layout()));
        let valid = vec![
            vec![true; past + 1],
            [vec![false; 4], vec![true; past - 3]].concat(),
            [vec![false; past], vec![true]].concat(),
        ];
        let mask = attention_mask(&valid, past, 1, None, &Device::Cpu).unwrap();
        let in_place = attention(&q, &k, &v, &mask, (0.3, None), None).unwrap();
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let copied = attention(&q, &kc, &vc, &mask, (0.3, None), None).unwrap();
        assert_eq!(rel_err(&in_place, &copied), 0.0);
        let refr = reference(&q, &kc, &vc, &mask, 0.3, None);
        assert!(rel_err(&in_place, &refr) < 1e-5);
    }
}
