//! RMSNorm `x / sqrt(mean(x^2) + eps) * w` over the last dimension, with the gradient for x only (the
//! norm weights are frozen).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

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
}
