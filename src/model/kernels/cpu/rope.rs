//! Rotary embeddings on `[b, h, t, d]` (half-split or interleaved pairs) with their backward pass: the
//! gradient of a rotation is the inverse rotation of the incoming gradient.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_slice, simd, to_f32_vec};

pub(super) struct FusedRope {
    /// `[b, t, d / 2]` tables.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) interleaved: bool,
    /// Rotate by minus the angle (the backward pass).
    pub(super) inverse: bool,
}

impl FusedRope {
    pub(super) fn rotate(
        &self,
        x: &[f32],
        (b, h, t, d): (usize, usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let half = d / 2;
        if d % 2 != 0 || self.cos.len() != b * t * half || self.sin.len() != self.cos.len() {
            candle_core::bail!(
                "fused rope: tables must be [{b}, 1, {t}, {half}] for x [{b}, {h}, {t}, {d}]"
            )
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t * d)
            .zip(x.par_chunks(t * d))
            .enumerate()
            .for_each(|(bh, (o, x))| {
                let bi = bh / h;
                simd(
                    #[inline(always)]
                    || {
                        for ((orow, xrow), p) in
                            o.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(0..t)
                        {
                            let at = (bi * t + p) * half;
                            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
                            if self.interleaved {
                                for i in 0..half {
                                    let (c, s) = (cos[i], sign * sin[i]);
                                    let (a, b) = (2 * i, 2 * i + 1);
                                    orow[a] = xrow[a] * c - xrow[b] * s;
                                    orow[b] = xrow[a] * s + xrow[b] * c;
                                }
                            } else {
                                // Half split: the two halves rotate as whole slices (vectorised).
                                let (o1, o2) = orow.split_at_mut(half);
                                let (x1, x2) = xrow.split_at(half);
                                for i in 0..half {
                                    let (c, s) = (cos[i], sign * sin[i]);
                                    o1[i] = x1[i] * c - x2[i] * s;
                                    o2[i] = x1[i] * s + x2[i] * c;
                                }
                            }
                        }
                    },
                )
            });
        Ok(out)
    }
}

impl CustomOp1 for FusedRope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(x, l, self.name())?;
        let out = self.rotate(x, l.shape().dims4()?)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let inverse = FusedRope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            interleaved: self.interleaved,
            inverse: !self.inverse,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// Rotary embeddings of `x` `[b, h, t, d]` with tables `[b, 1, t, d / 2]`, as [`crate::model::decoder::layers::apply_rope`]
/// (which uses candle's kernel);
/// differentiable in x. CPU f32 only (see [`super::applies`]).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let op = FusedRope {
        cos: to_f32_vec(cos)?,
        sin: to_f32_vec(sin)?,
        interleaved,
        inverse: false,
    };
    x.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::super::test_util::{random, rel_err};
    use super::*;
    use crate::model::decoder::layers::apply_rope;

    /// Rotary embeddings composed of differentiable candle ops: the reference for both fused versions.
    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        if interleaved {
            let x = x.reshape((b, h, t, d / 2, 2))?;
            let (x0, x1) = (x.narrow(4, 0, 1)?, x.narrow(4, 1, 1)?);
            let (c, s) = (cos.unsqueeze(4)?, sin.unsqueeze(4)?);
            let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let r1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
            Tensor::cat(&[r0, r1], 4)?.reshape((b, h, t, d))
        } else {
            let (x1, x2) = (x.narrow(3, 0, d / 2)?, x.narrow(3, d / 2, d / 2)?);
            let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Tensor::cat(&[r1, r2], 3)
        }
    }

    #[test]
    fn matches_composition_in_both_layouts() {
        let (b, h, t, d) = (2, 3, 7, 8);
        let angles = random(&[b, 1, t, d / 2], 5).affine(3.0, 0.0).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let g = random(&[b, h, t, d], 6);
        for interleaved in [false, true] {
            let x = Var::from_tensor(&random(&[b, h, t, d], 7)).unwrap();
            let refr = composed(&x, &cos, &sin, interleaved).unwrap();
            let gr = (&refr * &g).unwrap().sum_all().unwrap().backward().unwrap();
            // This module's CPU op, and the decoder's candle kernel with a rotated-back gradient.
            for fused in [
                rope(&x, &cos, &sin, interleaved).unwrap(),
                apply_rope(&x, &cos, &sin, interleaved).unwrap(),
            ] {
                assert!(rel_err(&fused, &refr) < 1e-5, "interleaved {interleaved}");
                let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let e = rel_err(gf.get(&x).unwrap(), gr.get(&x).unwrap());
                assert!(
                    e < 1e-5,
                    "interleaved {interleaved}: gradient relative error {e}"
                );
            }
        }
    }
}
