//! The LoRA-adapted frozen linear `y = x W^T + s (x A^T) B^T` of CPU training as one op with its backward:
//! `dx = g W + s (g B) A` (the adapter's term accumulated into the frozen one's buffer), `dA = s (g B)^T x`,
//! `dB = s g^T (x A^T)`. The composition it replaces (an attached frozen product, two matmuls, a scale, an
//! add and reshapes) costs candle's backward a zero-filled gradient and a sum per node, each as wide as the
//! layer. The op computes the frozen product itself, into the buffer it returns, unless a checkpointed
//! recomputation replays one; it keeps the rank-wide `x A^T` of its forward for the backward's `dB`.

use std::borrow::Cow;
use std::sync::{Mutex, MutexGuard};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::bf16::{self, Panels, Precision, Rows};
use super::{Mat, cpu_slice, matmul_new, matmul_par, matmul_par_cols, storage_slice};
use crate::model::quant::frozen::FrozenWeight;

const NAME: &str = "adapted linear";

/// The frozen half of an adapted product.
pub struct FrozenPart {
    /// `x W^T` `[.., out]` without bias when it is already known (saved by the checkpointed first pass, or
    /// computed there to be saved); None: the op computes it.
    pub product: Option<Tensor>,
    pub weight: FrozenWeight,
    /// `W` in f32 when the caller has just dequantized it whole (spares the backward a dequantization).
    pub dequantized: Option<Tensor>,
}

/// One adapted projection's operands besides its input: the frozen half, the adapter, its dropout.
pub struct AdapterCall {
    pub frozen: FrozenPart,
    /// `A` `[r, in]` and `B` `[out, r]` (Vars when their gradients are wanted).
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// LoRA dropout on the adapter's input: 0 or `1 / (1 - p)` per element of `x`.
    pub mask: Option<Vec<f32>>,
    /// The dtype of the products through the frozen weight.
    pub precision: Precision,
}

/// Sizes of one call: `n` rows of `x`, `inp` and `out` features, rank `r`.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) inp: usize,
    pub(super) r: usize,
    pub(super) out: usize,
}

impl Dims {
    pub(super) fn of(x: &Shape, a: &Shape, b: &Shape) -> Result<Self> {
        let inp = x.dims().last().copied().unwrap_or(0);
        let (r, a_in) = a.dims2()?;
        let (out, b_r) = b.dims2()?;
        if inp == 0 || a_in != inp || b_r != r {
            candle_core::bail!(
                "adapted linear: x {:?}, A {:?}, B {:?} are not [.., in], [r, in], [out, r]",
                x.dims(),
                a.dims(),
                b.dims()
            )
        }
        Ok(Self {
            n: x.elem_count() / inp,
            inp,
            r,
            out,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))
}

pub(super) struct AdaptedProduct {
    /// The given frozen product, taken by the forward (the backward does not need it).
    product: Mutex<Option<Tensor>>,
    weight: FrozenWeight,
    /// `W` in f32 for the backward: given by the caller, or kept from the forward's own product.
    dequantized: Mutex<Option<Tensor>>,
    /// Whether the forward keeps the `W` it dequantizes for the backward (false: the backward dequantizes
    /// again, and memory holds only the quantized weight in between).
    keep_weight: bool,
    /// The forward's `x_d A^T` `[n, r]`, taken by the backward.
    down: Mutex<Option<Vec<f32>>>,
    scale: f32,
    /// LoRA dropout on the adapter's input: 0 or `1 / (1 - p)` per element of `x`.
    mask: Option<Vec<f32>>,
    precision: Precision,
}

impl AdaptedProduct {
    /// The op of `call`, and its given frozen product (which [`CustomOp3::cpu_fwd`] would take from the op).
    pub(super) fn new(call: AdapterCall, keep_weight: bool) -> (Self, Option<Tensor>) {
        let op = Self {
            product: Mutex::new(None),
            weight: call.frozen.weight,
            dequantized: Mutex::new(call.frozen.dequantized.filter(|_| keep_weight)),
            keep_weight,
            down: Mutex::new(None),
            scale: call.scale as f32,
            mask: call.mask,
            precision: call.precision,
        };
        (op, call.frozen.product)
    }

    /// The adapter's input: `x`, masked by the dropout when there is one.
    fn adapter_input<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        match &self.mask {
            Some(m) => Cow::Owned(x.iter().zip(m).map(|(v, k)| v * k).collect()),
            None => Cow::Borrowed(x),
        }
    }

    /// `u = x_d A^T` `[n, r]`.
    fn down(dm: Dims, xd: &[f32], a: &[f32]) -> Vec<f32> {
        matmul_new(
            (dm.n, dm.r, dm.inp),
            Mat::rows(xd, dm.inp),
            Mat::rows_t(a, dm.inp),
            1.0,
        )
    }

    /// `y` `[n, out]`: the frozen product `y0` when given (copied), else computed here; plus the adapter's
    /// term.
    pub(super) fn forward(
        &self,
        dm: Dims,
        (x, a, b): (&[f32], &[f32], &[f32]),
        y0: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let mut y = match y0 {
            Some(y0) => y0.to_vec(),
            None => {
                let chunks = self.weight.row_chunks()?;
                let (y, w) = frozen_product(&self.weight, &chunks, x, dm, self.precision)?;
                if self.keep_weight {
                    *lock(&self.dequantized)? = w;
                }
                y
            }
        };
        let u = Self::down(dm, &self.adapter_input(x), a);
        matmul_par(
            &mut y,
            (dm.n, dm.out, dm.r),
            (Mat::rows(&u, dm.r), Mat::rows_t(b, dm.r), self.scale),
            true,
        );
        *lock(&self.down)? = Some(u);
        Ok(y)
    }

    /// `(dx, dA, dB)`, each only when `need` asks for it.
    pub(super) fn backward(
        &self,
        dm: Dims,
        (x, a, b): (&[f32], &[f32], &[f32]),
        g: &[f32],
        need: [bool; 3],
    ) -> Result<[Option<Vec<f32>>; 3]> {
        let (n, inp, r, out) = (dm.n, dm.inp, dm.r, dm.out);
        let xd = self.adapter_input(x);
        // du = s g B `[n, r]`: the gradient reaching the adapter's rank-wide intermediate.
        let du = matmul_new((n, r, out), Mat::rows(g, out), Mat::rows(b, r), self.scale);
        let db = match need[2] {
            true => {
                let u = lock(&self.down)?.take().ok_or_else(|| {
                    candle_core::Error::Msg(format!("{NAME}: the backward ran before the forward"))
                })?;
                Some(matmul_new(
                    (out, r, n),
                    Mat::rows_t(g, out),
                    Mat::rows(&u, r),
                    self.scale,
                ))
            }
            false => None,
        };
        let da =
            need[1].then(|| matmul_new((r, inp, n), Mat::rows_t(&du, r), Mat::rows(&xd, inp), 1.0));
        let dx = if need[0] {
            let chunks = self.weight.row_chunks()?;
            let w = lock(&self.dequantized)?.take();
            let mut dx = frozen_grad(&self.weight, w.as_ref(), &chunks, dm, g, self.precision)?;
            let adapter = (Mat::rows(&du, r), Mat::rows(a, inp), 1.0);
            match &self.mask {
                None => matmul_par(&mut dx, (n, inp, r), adapter, true),
                Some(m) => {
                    let t = matmul_new((n, inp, r), adapter.0, adapter.1, 1.0);
                    for ((d, v), k) in dx.iter_mut().zip(&t).zip(m) {
                        *d += v * k;
                    }
                }
            }
            Some(dx)
        } else {
            None
        };
        Ok([dx, da, db])
    }
}

/// Rows `[start, start + len)` of `W` in f32, contiguous.
fn f32_rows(weight: &FrozenWeight, start: usize, len: usize) -> Result<Tensor> {
    weight
        .dequantize_rows(start, len, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()
}

/// `x W^T` `[n, out]` for `x` `[n, in]` in `precision`: with `W` dequantized whole (returned too), or row
/// chunk by row chunk (`chunks`, as [`FrozenWeight::row_chunks`] gives them), each chunk's product written
/// into its columns.
fn frozen_product(
    weight: &FrozenWeight,
    chunks: &[(usize, usize)],
    x: &[f32],
    dm: Dims,
    precision: Precision,
) -> Result<(Vec<f32>, Option<Tensor>)> {
    let (n, inp, out) = (dm.n, dm.inp, dm.out);
    let lhs = Mat::rows(x, inp);
    let whole = matches!(chunks, [(0, rows)] if *rows == out);
    let mut y = match whole {
        true => Vec::new(),
        false => vec![0f32; n * out],
    };
    let rows = Rows {
        data: x,
        m: n,
        rs: inp,
    };
    let mut kept = None;
    for &(start, len) in chunks {
        let w = f32_rows(weight, start, len)?;
        {
            let (ws, wl) = w.storage_and_layout();
            let w = storage_slice(&ws, wl, NAME)?;
            match (precision, whole) {
                (Precision::Bf16, true) => {
                    y = bf16::matmul_new(rows, &Panels::transposed(w, len, inp))?
                }
                (Precision::Bf16, false) => {
                    let w = Panels::transposed(w, len, inp);
                    bf16::matmul(&mut y[start..], out, rows, &w, false)?
                }
                (Precision::F32, true) => {
                    y = matmul_new((n, out, inp), lhs, Mat::rows_t(w, inp), 1.0)
                }
                (Precision::F32, false) => {
                    let rhs = Mat::rows_t(w, inp);
                    matmul_par_cols(&mut y, (out, start), (n, len, inp), (lhs, rhs, 1.0))
                }
            }
        }
        if whole {
            kept = Some(w);
        }
    }
    Ok((y, kept))
}

/// `g W` `[n, in]` for `g` `[n, out]` in `precision`: with `W` dequantized whole, or row chunk by row chunk
/// (`chunks`, as [`FrozenWeight::row_chunks`] gives them), each chunk's product accumulated into the
/// first's buffer.
fn frozen_grad(
    weight: &FrozenWeight,
    dequantized: Option<&Tensor>,
    chunks: &[(usize, usize)],
    dm: Dims,
    g: &[f32],
    precision: Precision,
) -> Result<Vec<f32>> {
    let (n, inp, out) = (dm.n, dm.inp, dm.out);
    let parts: Vec<(usize, usize, Tensor)> = match dequantized {
        Some(w) => vec![(0, out, w.clone())],
        None if chunks.len() == 1 => vec![(0, out, weight.dequantize(&Device::Cpu)?)],
        None => Vec::new(),
    };
    let mut dx: Option<Vec<f32>> = None;
    let mut add_chunk = |start: usize, len: usize, w: &Tensor| -> Result<()> {
        let w = w.to_dtype(DType::F32)?.contiguous()?;
        let (ws, wl) = w.storage_and_layout();
        let w = storage_slice(&ws, wl, NAME)?;
        let lhs = Mat {
            data: &g[start..],
            rs: out,
            cs: 1,
        };
        let dims = (n, inp, len);
        if precision == Precision::Bf16 {
            let rows = Rows {
                data: &g[start..],
                m: n,
                rs: out,
            };
            let w = Panels::plain(w, len, inp);
            match dx.as_mut() {
                None => dx = Some(bf16::matmul_new(rows, &w)?),
                Some(d) => bf16::matmul(d, inp, rows, &w, true)?,
            }
            return Ok(());
        }
        match dx.as_mut() {
            None => dx = Some(matmul_new(dims, lhs, Mat::rows(w, inp), 1.0)),
            Some(d) => matmul_par(d, dims, (lhs, Mat::rows(w, inp), 1.0), true),
        }
        Ok(())
    };
    if parts.is_empty() {
        for &(start, len) in chunks {
            add_chunk(start, len, &f32_rows(weight, start, len)?)?;
        }
    } else {
        for (start, len, w) in &parts {
            add_chunk(*start, *len, w)?;
        }
    }
    Ok(dx.unwrap_or_else(|| vec![0f32; n * inp]))
}

impl CustomOp3 for AdaptedProduct {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let dm = Dims::of(xl.shape(), al.shape(), bl.shape())?;
        let inputs = (
            cpu_slice(x, xl, name)?,
            cpu_slice(a, al, name)?,
            cpu_slice(b, bl, name)?,
        );
        if self
            .mask
            .as_ref()
            .is_some_and(|m| m.len() != inputs.0.len())
        {
            candle_core::bail!("{name}: the dropout mask does not match x {:?}", xl.dims())
        }
        let y = match lock(&self.product)?.take() {
            Some(product) => {
                let (ps, pl) = product.storage_and_layout();
                let y0 = storage_slice(&ps, pl, name)?;
                if y0.len() != dm.n * dm.out {
                    candle_core::bail!(
                        "{name}: frozen product {:?} does not have {} rows of {}",
                        pl.dims(),
                        dm.n,
                        dm.out
                    )
                }
                self.forward(dm, inputs, Some(y0))?
            }
            None => self.forward(dm, inputs, None)?,
        };
        let mut dims = xl.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = dm.out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let g = grad_res.contiguous()?;
        let dm = Dims::of(x.shape(), a.shape(), b.shape())?;
        let need = [x.track_op(), a.track_op(), b.track_op()];
        let [dx, da, db] = {
            let (xs, xl) = x.storage_and_layout();
            let (as_, al) = a.storage_and_layout();
            let (bs, bl) = b.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            self.backward(
                dm,
                (
                    storage_slice(&xs, xl, name)?,
                    storage_slice(&as_, al, name)?,
                    storage_slice(&bs, bl, name)?,
                ),
                storage_slice(&gs, gl, name)?,
                need,
            )?
        };
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
                .transpose()?,
            da.map(|v| Tensor::from_vec(v, a.shape(), dev))
                .transpose()?,
            db.map(|v| Tensor::from_vec(v, b.shape(), dev))
                .transpose()?,
        ))
    }
}

/// `x W^T` `[.., out]` for a CPU f32 `x` `[.., in]` in `precision`, without autograd, and `W` when it was
/// dequantized whole: the frozen product a checkpointed first pass saves for the recomputation.
pub fn frozen_product_of(
    weight: &FrozenWeight,
    x: &Tensor,
    precision: Precision,
) -> Result<(Tensor, Option<Tensor>)> {
    let (out, inp) = weight.dims2()?;
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let xv = storage_slice(&xs, xl, NAME)?;
    let dm = Dims {
        n: xv.len() / inp.max(1),
        inp,
        r: 0,
        out,
    };
    let (y, w) = frozen_product(weight, &weight.row_chunks()?, xv, dm, precision)?;
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    Ok((Tensor::from_vec(y, dims, x.device())?, w))
}

/// `x W^T + s (dropout(x) A^T) B^T` (no bias), differentiable in `x`, `A` and `B`; `mask` is the dropout's
/// (0 or `1 / (1 - p)` per element of `x`). CPU f32 only (see [`super::applies`]).
pub fn adapted_linear(x: &Tensor, call: AdapterCall) -> Result<Tensor> {
    let (a, b) = (call.a.contiguous()?, call.b.contiguous()?);
    let (op, product) = AdaptedProduct::new(call, true);
    *lock(&op.product)? = product.map(|p| p.contiguous()).transpose()?;
    x.contiguous()?.apply_op3(&a, &b, op)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_core::quantized::GgmlDType;

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::quant::frozen::FrozenLinear;

    /// The composition the op replaces: `x W^T + ((x_d A^T) s) B^T`.
    fn composed(
        x: &Tensor,
        w: &Tensor,
        (a, b): (&Tensor, &Tensor),
        s: f64,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let xd = match mask {
            Some(m) => (x * m).unwrap(),
            None => x.clone(),
        };
        let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let u = xd
            .broadcast_matmul(&a.t().unwrap())
            .unwrap()
            .affine(s, 0.0)
            .unwrap();
        (y + u.broadcast_matmul(&b.t().unwrap()).unwrap()).unwrap()
    }

    /// With `given`, the frozen product comes computed (as a checkpointed first pass saves it); otherwise
    /// the op computes it, in f32.
    fn check(weight: FrozenWeight, mask: Option<Vec<f32>>, given: bool) {
        check_in(weight, mask, given, Precision::F32);
    }

    /// [`check`] with the op's own frozen products in `precision`: f32 within float noise of the
    /// composition, bf16 within its rounding (and not equal to f32's, so the bf16 kernel ran).
    fn check_in(weight: FrozenWeight, mask: Option<Vec<f32>>, given: bool, precision: Precision) {
        let dev = Device::Cpu;
        let w = weight.dequantize(&dev).unwrap();
        let (out, inp) = w.dims2().unwrap();
        let x = Var::from_tensor(&random(&[2, 5, inp], 1)).unwrap();
        let a = Var::from_tensor(&random(&[4, inp], 2)).unwrap();
        let b = Var::from_tensor(&random(&[out, 4], 3)).unwrap();
        let probe = random(&[2, 5, out], 4);
        let lin = FrozenLinear::new(weight.clone(), None);
        let (product, dequantized) = match given {
            true => {
                let (p, w) = lin.product(&x).unwrap();
                (Some(p), w)
            }
            false => (None, None),
        };
        let frozen = FrozenPart {
            product,
            weight,
            dequantized,
        };
        let mask_t = mask
            .as_ref()
            .map(|m| Tensor::from_vec(m.clone(), x.shape(), &dev).unwrap());
        let call = AdapterCall {
            frozen,
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 0.5,
            mask,
            precision,
        };
        let fused = adapted_linear(&x, call).unwrap();
        let refr = composed(&x, &w, (&a, &b), 0.5, mask_t.as_ref());
        let (tol, floor) = match precision {
            Precision::F32 => (1e-5, 0.0),
            // The frozen product's operands rounded to 8 significant bits; a product given by the first
            // pass (here in f32) leaves only the backward's dx in bf16.
            Precision::Bf16 => (1e-2, 1e-6),
        };
        let e = rel_err(&fused, &refr);
        assert!(e < tol && (given || e >= floor), "value {e}");
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (refr * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (v, what) in [(&x, "x"), (&a, "A"), (&b, "B")] {
            let e = rel_err(gf.get(v).unwrap(), gr.get(v).unwrap());
            assert!(e < tol, "d{what}: relative error {e}");
            if what == "x" {
                assert!(e >= floor, "dx: relative error {e} (bf16 did not run)");
            }
        }
    }

    #[test]
    fn bf16_products_match_composition_within_rounding() {
        if !bf16::supported() {
            eprintln!("skipped: this CPU lacks AVX512_BF16 (training stays in f32 here)");
            return;
        }
        let w = random(&[24, 32], 9);
        let mask: Vec<f32> = (0..2 * 5 * 32)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        for given in [true, false] {
            check_in(
                FrozenWeight::quantize_nf4(&w).unwrap(),
                None,
                given,
                Precision::Bf16,
            );
            let q41 = FrozenWeight::quantize_ggml(&w, GgmlDType::Q4_1).unwrap();
            check_in(q41, Some(mask.clone()), given, Precision::Bf16);
        }
    }

    #[test]
    fn matches_composition_for_dense_and_quantized_weights() {
        let w = random(&[24, 32], 9);
        for given in [true, false] {
            check(FrozenWeight::Dense(w.clone()), None, given);
            check(FrozenWeight::quantize_nf4(&w).unwrap(), None, given);
            check(
                FrozenWeight::quantize_ggml(&w, GgmlDType::Q4_1).unwrap(),
                None,
                given,
            );
        }
    }

    #[test]
    fn matches_composition_with_dropout() {
        let mask: Vec<f32> = (0..2 * 5 * 32)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        let w = FrozenWeight::Dense(random(&[24, 32], 9));
        check(w.clone(), Some(mask.clone()), true);
        check(w, Some(mask), false);
    }

    /// The precisions this CPU runs, with the relative error each allows against an f32 product.
    fn precisions() -> Vec<(Precision, f32)> {
        let mut p = vec![(Precision::F32, 1e-5)];
        if bf16::supported() {
            p.push((Precision::Bf16, 1e-2));
        }
        p
    }

    /// A Q8_0 weight `[24, 32]` and the dims of a 6-row, rank-4 product through it: rows 0-9, 10-19 and
    /// 20-23 make three chunks of it.
    fn q8_weight() -> (FrozenWeight, Dims) {
        let w = random(&[24, 32], 9);
        let dm = Dims {
            n: 6,
            inp: 32,
            r: 4,
            out: 24,
        };
        (
            FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0).unwrap(),
            dm,
        )
    }

    #[test]
    fn row_chunks_give_the_whole_weights_gradient() {
        let (weight, dm) = q8_weight();
        let g = random(&[6, 24], 5);
        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let refr = g.matmul(&weight.dequantize(&Device::Cpu).unwrap()).unwrap();
        let as_t = |v: Vec<f32>| Tensor::from_vec(v, (6, 32), &Device::Cpu).unwrap();
        for (precision, tol) in precisions() {
            let grad = |chunks: &[(usize, usize)]| {
                as_t(frozen_grad(&weight, None, chunks, dm, &gv, precision).unwrap())
            };
            assert!(rel_err(&grad(&[(0, 10), (10, 10), (20, 4)]), &refr) < tol);
            assert!(rel_err(&grad(&[(0, 24)]), &refr) < tol);
        }
    }

    /// The op's own frozen product, for a weight dequantized whole (kept for the backward) and for one
    /// taken in row chunks, each chunk writing its columns of the output.
    #[test]
    fn frozen_product_fills_every_chunks_columns() {
        let (weight, dm) = q8_weight();
        let x = random(&[6, 32], 5);
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let deq = weight.dequantize(&Device::Cpu).unwrap();
        let refr = x.matmul(&deq.t().unwrap()).unwrap();
        let as_t = |v: Vec<f32>| Tensor::from_vec(v, (6, 24), &Device::Cpu).unwrap();
        for (precision, tol) in precisions() {
            let (chunked, none) =
                frozen_product(&weight, &[(0, 10), (10, 10), (20, 4)], &xv, dm, precision).unwrap();
            let (whole, kept) = frozen_product(&weight, &[(0, 24)], &xv, dm, precision).unwrap();
            assert!(rel_err(&as_t(chunked), &refr) < tol);
            assert!(rel_err(&as_t(whole), &refr) < tol);
            assert!(none.is_none());
            assert_eq!(rel_err(&kept.unwrap(), &deq), 0.0);
        }
    }
}
