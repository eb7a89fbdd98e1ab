//! RMSNorm `x / sqrt(mean(x^2) + eps) * w` over the last dimension, with the gradient for x only (the
//! norm weights are frozen); and, for passes without a gradient, candle's own arithmetic several rows at a
//! time.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_slice, dot, simd, storage_slice, to_f32_vec};
use crate::model::device::written_in_parallel;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

pub(super) struct FusedRmsNorm {
    pub(super) weight: Vec<f32>,
    pub(super) eps: f32,
}

impl FusedRmsNorm {
    #[inline(always)]
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = dot(row, row) / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }

    pub(super) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let d = self.weight.len();
        let n = self.whole_rows(x.len());
        let chunk = d * ROWS_PER_TASK;
        let write = |i: usize, o: &mut [MaybeUninit<f32>]| {
            let x = &x[i * chunk..i * chunk + o.len()];
            simd(
                #[inline(always)]
                || {
                    for (orow, xrow) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let r = self.inv_rms(xrow);
                        for ((o, x), w) in orow.iter_mut().zip(xrow).zip(&self.weight) {
                            o.write(x * r * w);
                        }
                    }
                },
            )
        };
        // SAFETY: each chunk is whole rows (n is), every row written from the row of x in its place.
        unsafe { written_in_parallel(n, chunk, write) }
    }

    /// `len`, checked to be whole rows of the weight's width (what the sweeps above write completely).
    fn whole_rows(&self, len: usize) -> usize {
        let d = self.weight.len();
        assert!(
            d > 0 && len.is_multiple_of(d),
            "{len} values are not rows of {d}"
        );
        len
    }

    /// `dx = r w dy - x r^3 / n * sum(w dy x)`.
    pub(super) fn backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let d = self.weight.len();
        let n = self.whole_rows(x.len());
        assert_eq!(dy.len(), n, "dy and x of different lengths");
        let chunk = d * ROWS_PER_TASK;
        let write = |i: usize, dx: &mut [MaybeUninit<f32>]| {
            let at = i * chunk..i * chunk + dx.len();
            let (x, dy) = (&x[at.clone()], &dy[at]);
            simd(
                #[inline(always)]
                || {
                    for ((dxr, xr), dyr) in dx
                        .chunks_exact_mut(d)
                        .zip(x.chunks_exact(d))
                        .zip(dy.chunks_exact(d))
                    {
                        let r = self.inv_rms(xr);
                        let dot: f32 = (xr.iter().zip(dyr).zip(&self.weight))
                            .map(|((x, g), w)| x * g * w)
                            .sum();
                        let c = dot * r * r * r / d as f32;
                        for (((o, x), g), w) in dxr.iter_mut().zip(xr).zip(dyr).zip(&self.weight) {
                            o.write(r * w * g - x * c);
                        }
                    }
                },
            )
        };
        // SAFETY: as in `forward`: whole rows, each written from the rows of x and dy in its place.
        unsafe { written_in_parallel(n, chunk, write) }
    }

    fn check(&self, shape: &Shape) -> Result<()> {
        if shape.dims().last() != Some(&self.weight.len()) {
            candle_core::bail!(
                "fused rms-norm: input {:?} does not end in the weight's {}",
                shape.dims(),
                self.weight.len()
            )
        }
        Ok(())
    }
}

impl CustomOp1 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.check(l.shape())?;
        let x = cpu_slice(x, l, self.name())?;
        Ok((CpuStorage::F32(self.forward(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        self.check(x.shape())?;
        let grad = grad_res.contiguous()?;
        let dx = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            self.backward(
                storage_slice(&xs, xl, self.name())?,
                storage_slice(&gs, gl, self.name())?,
            )
        };
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// RMSNorm of `x` over its last dimension with a frozen `weight`; differentiable in x. CPU f32 only
/// (see [`super::applies`]).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let op = FusedRmsNorm {
        weight: to_f32_vec(weight)?,
        eps: eps as f32,
    };
    x.contiguous()?.apply_op1(op)
}

/// Rows whose sums of squares [`CandleRmsNorm`] adds side by side.
const SIDE_BY_SIDE: usize = 8;

/// candle's RMSNorm (`candle_nn::ops::rms_norm`) to the bit: each row's squares summed in order, then
/// `x / sqrt(sum / n + eps) * w`, without fused multiply-adds. candle sums one row at a time, a chain of
/// dependent additions that leaves the core waiting; here [`SIDE_BY_SIDE`] rows' independent sums advance
/// together (a decoding step's 10 rows: 0.45 of its 13 ms went to its 61 norms, one row after another).
struct CandleRmsNorm {
    eps: f32,
}

impl CandleRmsNorm {
    /// Rows `x` (whole rows of `w.len()`) normed into `out`.
    #[inline(always)]
    fn rows(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let d = w.len();
        for (xs, os) in x
            .chunks(d * SIDE_BY_SIDE)
            .zip(out.chunks_mut(d * SIDE_BY_SIDE))
        {
            let sums = match xs.len() / d {
                1 => sums_of_squares::<1>(xs, d),
                2 => sums_of_squares::<2>(xs, d),
                3 => sums_of_squares::<3>(xs, d),
                4 => sums_of_squares::<4>(xs, d),
                5 => sums_of_squares::<5>(xs, d),
                6 => sums_of_squares::<6>(xs, d),
                7 => sums_of_squares::<7>(xs, d),
                _ => sums_of_squares::<SIDE_BY_SIDE>(xs, d),
            };
            for ((xr, or), sum) in xs.chunks_exact(d).zip(os.chunks_exact_mut(d)).zip(sums) {
                let m = (sum / d as f32 + self.eps).sqrt();
                for ((o, x), w) in or.iter_mut().zip(xr).zip(w) {
                    *o = *x / m * *w;
                }
            }
        }
    }
}

/// The sums of squares of the first `R` rows of `d` values in `xs`, each added in order (as
/// `iter().map(|v| v * v).sum()`), the rows' sums side by side; the rest of the array zero.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // position j of every row in one step: the rows' sums advance together
fn sums_of_squares<const R: usize>(xs: &[f32], d: usize) -> [f32; SIDE_BY_SIDE] {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &xs[r * d..(r + 1) * d]);
    let mut sums = [0f32; R];
    for j in 0..d {
        for r in 0..R {
            let v = rows[r][j];
            sums[r] += v * v;
        }
    }
    std::array::from_fn(|r| if r < R { sums[r] } else { 0.0 })
}

impl CustomOp2 for CandleRmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-no-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            cpu_slice(x, xl, self.name())?,
            cpu_slice(w, wl, self.name())?,
        );
        let d = w.len();
        if d == 0 || xl.dims().last() != Some(&d) {
            candle_core::bail!(
                "rms-norm: input {:?} does not end in the weight's {d}",
                xl.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        let task = d * SIDE_BY_SIDE;
        // A prompt's many rows on rayon's threads, as candle parallelises more than 32 rows.
        if x.len() > 32 * d {
            (x.par_chunks(task).zip(out.par_chunks_mut(task)))
                .for_each(|(x, out)| simd(|| self.rows(x, w, out)));
        } else {
            simd(|| self.rows(x, w, &mut out));
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// RMSNorm of `x` over its last dimension with `weight`, with candle's bits and no gradient (generation, the
/// checkpointed first pass). CPU f32 only (see [`super::applies`]).
pub fn rms_norm_no_grad(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let op = CandleRmsNorm { eps: eps as f32 };
    x.detach()
        .contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &op)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::decoder::layers::RmsNorm;

    #[test]
    fn matches_composition_values_and_gradient() {
        let x = Var::from_tensor(&random(&[3, 37, 24], 1)).unwrap();
        let w = random(&[24], 2);
        let g = random(&[3, 37, 24], 3);
        let norm = RmsNorm {
            weight: w.clone(),
            eps: 1e-5,
        };
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let refr = norm.forward(&x).unwrap();
        assert!(rel_err(&fused, &refr) < 1e-5);
        let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let e = rel_err(gf.get(&x).unwrap(), gr.get(&x).unwrap());
        assert!(e < 1e-5, "gradient relative error {e}");
    }

    #[test]
    fn the_no_gradient_norm_has_candles_bits() {
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        for (rows, d) in [
            (1, 576),
            (3, 7),
            (8, 576),
            (10, 576),
            (17, 64),
            (40, 576),
            (9, 1),
        ] {
            let x = (random(&[rows, d], rows as u64) * 30.0).unwrap();
            // A row of zeros and a row of large values among random ones.
            let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values[..d].fill(0.0);
            if rows > 2 {
                values[2 * d..3 * d].iter_mut().for_each(|v| *v *= 1e18);
            }
            let x = Tensor::from_vec(values, (rows, d), x.device()).unwrap();
            let w = random(&[d], 7);
            let ours = rms_norm_no_grad(&x, &w, 1e-5).unwrap();
            let candle = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
            assert_eq!(bits(&ours), bits(&candle), "{rows} rows of {d}");
        }
        assert!(rms_norm_no_grad(&random(&[2, 6], 1), &random(&[5], 2), 1e-5).is_err());
    }
}
