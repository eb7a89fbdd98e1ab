//! The LoRA-adapted frozen linear `y = x W^T + s (x A^T) B^T` of CPU training as one op with its backward:
//! `dx = g W + s (g B) A` (the adapter's term accumulated into the frozen one's buffer), `dA = s (g B)^T x`,
//! `dB = s g^T (x A^T)`. The composition it replaces (an attached frozen product, two matmuls, a scale, an
//! add and reshapes) costs candle's backward a zero-filled gradient and a sum per node, each as wide as the
//! layer.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::{Mat, cpu_slice, matmul_new, matmul_par, storage_slice};
use crate::model::quant::frozen::FrozenWeight;

/// The frozen half of an adapted product.
pub struct FrozenPart {
    /// `x W^T` `[.., out]` without bias (computed now, or saved by the checkpointed first pass).
    pub product: Tensor,
    pub weight: FrozenWeight,
    /// `W` in f32 when the product has just dequantized it whole (spares the backward a dequantization).
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

pub(super) struct AdaptedProduct {
    /// The frozen product, taken by the forward (the backward does not need it).
    product: Mutex<Option<Tensor>>,
    weight: FrozenWeight,
    dequantized: Option<Tensor>,
    scale: f32,
    /// LoRA dropout on the adapter's input: 0 or `1 / (1 - p)` per element of `x`.
    mask: Option<Vec<f32>>,
}

impl AdaptedProduct {
    /// The op of `call`, and its frozen product (which [`CustomOp3::cpu_fwd`] would take from the op).
    pub(super) fn new(call: AdapterCall) -> (Self, Tensor) {
        let op = Self {
            product: Mutex::new(None),
            weight: call.frozen.weight,
            dequantized: call.frozen.dequantized,
            scale: call.scale as f32,
            mask: call.mask,
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

    pub(super) fn forward(
        &self,
        dm: Dims,
        (x, a, b): (&[f32], &[f32], &[f32]),
        y0: &[f32],
    ) -> Vec<f32> {
        let u = Self::down(dm, &self.adapter_input(x), a);
        let mut y = y0.to_vec();
        matmul_par(
            &mut y,
            (dm.n, dm.out, dm.r),
            (Mat::rows(&u, dm.r), Mat::rows_t(b, dm.r), self.scale),
            true,
        );
        y
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
        let db = need[2].then(|| {
            let u = Self::down(dm, &xd, a);
            matmul_new(
                (out, r, n),
                Mat::rows_t(g, out),
                Mat::rows(&u, r),
                self.scale,
            )
        });
        let da =
            need[1].then(|| matmul_new((r, inp, n), Mat::rows_t(&du, r), Mat::rows(&xd, inp), 1.0));
        let dx = if need[0] {
            let chunks = self.weight.row_chunks()?;
            let mut dx = frozen_grad(&self.weight, self.dequantized.as_ref(), &chunks, dm, g)?;
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

/// `g W` `[n, in]` for `g` `[n, out]`: with `W` dequantized whole, or row chunk by row chunk (`chunks`,
/// as [`FrozenWeight::row_chunks`] gives them), each chunk's product accumulated into the first's buffer.
fn frozen_grad(
    weight: &FrozenWeight,
    dequantized: Option<&Tensor>,
    chunks: &[(usize, usize)],
    dm: Dims,
    g: &[f32],
) -> Result<Vec<f32>> {
    let (n, inp, out) = (dm.n, dm.inp, dm.out);
    let parts: Vec<(usize, usize, Tensor)> = match dequantized {
        Some(w) => vec![(0, out, w.clone())],
        None if chunks.len() == 1 => vec![(0, out, weight.dequantize(&Device::Cpu)?)],
        None => Vec::new(),
    };
    let mut dx: Option<Vec<f32>> = None;
    let mut add_chunk = |start: usize, len: usize, w: &Tensor| -> Result<()> {
        let w = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let (ws, wl) = w.storage_and_layout();
        let w = storage_slice(&ws, wl, "adapted linear")?;
        let lhs = Mat {
            data: &g[start..],
            rs: out,
            cs: 1,
        };
        let dims = (n, inp, len);
        match dx.as_mut() {
            None => dx = Some(matmul_new(dims, lhs, Mat::rows(w, inp), 1.0)),
            Some(d) => matmul_par(d, dims, (lhs, Mat::rows(w, inp), 1.0), true),
        }
        Ok(())
    };
    if parts.is_empty() {
        for &(start, len) in chunks {
            add_chunk(
                start,
                len,
                &weight.dequantize_rows(start, len, &Device::Cpu)?,
            )?;
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
        let product = self
            .product
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{name}: poisoned product")))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: the forward ran twice")))?;
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
        let y = self.forward(dm, inputs, y0);
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

/// `x W^T + s (dropout(x) A^T) B^T` (no bias), differentiable in `x`, `A` and `B`; `mask` is the dropout's
/// (0 or `1 / (1 - p)` per element of `x`). CPU f32 only (see [`super::applies`]).
pub fn adapted_linear(x: &Tensor, call: AdapterCall) -> Result<Tensor> {
    let (a, b) = (call.a.contiguous()?, call.b.contiguous()?);
    let (op, product) = AdaptedProduct::new(call);
    *op.product
        .lock()
        .map_err(|_| candle_core::Error::Msg("adapted linear: poisoned product".into()))? =
        Some(product.contiguous()?);
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

    fn check(weight: FrozenWeight, mask: Option<Vec<f32>>) {
        let dev = Device::Cpu;
        let w = weight.dequantize(&dev).unwrap();
        let (out, inp) = w.dims2().unwrap();
        let x = Var::from_tensor(&random(&[2, 5, inp], 1)).unwrap();
        let a = Var::from_tensor(&random(&[4, inp], 2)).unwrap();
        let b = Var::from_tensor(&random(&[out, 4], 3)).unwrap();
        let probe = random(&[2, 5, out], 4);
        let lin = FrozenLinear::new(weight.clone(), None);
        let (product, dequantized) = lin.product(&x).unwrap();
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
        };
        let fused = adapted_linear(&x, call).unwrap();
        let refr = composed(&x, &w, (&a, &b), 0.5, mask_t.as_ref());
        assert!(
            rel_err(&fused, &refr) < 1e-5,
            "value {}",
            rel_err(&fused, &refr)
        );
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
            assert!(e < 1e-5, "d{what}: relative error {e}");
        }
    }

    #[test]
    fn matches_composition_for_dense_and_quantized_weights() {
        let w = random(&[24, 32], 9);
        check(FrozenWeight::Dense(w.clone()), None);
        check(FrozenWeight::quantize_nf4(&w).unwrap(), None);
        check(
            FrozenWeight::quantize_ggml(&w, GgmlDType::Q4_1).unwrap(),
            None,
        );
    }

    #[test]
    fn matches_composition_with_dropout() {
        let mask: Vec<f32> = (0..2 * 5 * 32)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        check(FrozenWeight::Dense(random(&[24, 32], 9)), Some(mask));
    }

    #[test]
    fn row_chunks_give_the_whole_weights_gradient() {
        let w = random(&[24, 32], 9);
        let weight = FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0).unwrap();
        let g = random(&[6, 24], 5);
        let dm = Dims {
            n: 6,
            inp: 32,
            r: 4,
            out: 24,
        };
        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let chunked = frozen_grad(&weight, None, &[(0, 10), (10, 10), (20, 4)], dm, &gv).unwrap();
        let whole = frozen_grad(&weight, None, &[(0, 24)], dm, &gv).unwrap();
        let refr = g.matmul(&weight.dequantize(&Device::Cpu).unwrap()).unwrap();
        let as_t = |v: Vec<f32>| Tensor::from_vec(v, (6, 32), &Device::Cpu).unwrap();
        assert!(rel_err(&as_t(chunked), &refr) < 1e-5);
        assert!(rel_err(&as_t(whole), &refr) < 1e-5);
    }
}
