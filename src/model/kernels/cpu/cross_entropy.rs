//! Per-row negative log-likelihood `logsumexp(logits) - logits[target]` over a vocabulary, with its
//! backward pass `softmax - onehot`: one sweep over the logits each way, where the composition
//! (log_softmax, gather and their backward passes) makes a dozen vocabulary-wide tensors per chunk.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{LANES, cpu_slice, exp, max, simd, storage_slice};

struct RowNll {
    targets: Vec<u32>,
    /// `max + log(sum(exp(row - max)))` per row, left by the forward for the backward (one sweep fewer).
    shifts: std::sync::Mutex<Option<Vec<f32>>>,
}

/// `(max, log(sum(exp(row - max))))` of a row.
#[inline(always)]
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = max(row);
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| exp(v - max)).sum();
    for x in chunks {
        for i in 0..LANES {
            acc[i] += exp(x[i] - max);
        }
    }
    (max, (acc.iter().sum::<f32>() + tail).ln())
}

impl RowNll {
    fn check(&self, shape: &Shape) -> Result<(usize, usize)> {
        let (n, vocab) = shape.dims2()?;
        if n != self.targets.len() || self.targets.iter().any(|t| *t as usize >= vocab) {
            candle_core::bail!(
                "row nll: {} targets below {vocab} expected for logits {:?}",
                n,
                shape.dims()
            )
        }
        Ok((n, vocab))
    }
}

impl CustomOp1 for RowNll {
    fn name(&self) -> &'static str {
        "row-nll"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, vocab) = self.check(l.shape())?;
        let x = cpu_slice(x, l, self.name())?;
        let shifts: Vec<f32> = x
            .par_chunks(vocab)
            .map(|row| {
                let (max, lse) = simd(
                    #[inline(always)]
                    || log_sum_exp(row),
                );
                max + lse
            })
            .collect();
        let out = (x.chunks_exact(vocab).zip(&self.targets).zip(&shifts))
            .map(|((row, t), shift)| shift - row[*t as usize])
            .collect();
        if let Ok(mut slot) = self.shifts.lock() {
            *slot = Some(shifts);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, vocab) = self.check(x.shape())?;
        let g = grad_res.to_vec1::<f32>()?;
        let mut dx = vec![0f32; x.elem_count()];
        let shifts = self.shifts.lock().ok().and_then(|mut s| s.take());
        {
            let (xs, xl) = x.storage_and_layout();
            let x = storage_slice(&xs, xl, self.name())?;
            dx.par_chunks_mut(vocab)
                .zip(x.par_chunks(vocab))
                .zip(self.targets.par_iter().zip(&g))
                .enumerate()
                .for_each(|(i, ((drow, row), (t, g)))| {
                    // By value: a load through the reference stays in the loop (it might alias `drow`).
                    let g = *g;
                    simd(
                        #[inline(always)]
                        || {
                            let shift = match &shifts {
                                Some(s) => s[i],
                                None => {
                                    let (max, lse) = log_sum_exp(row);
                                    max + lse
                                }
                            };
                            for (d, v) in drow.iter_mut().zip(row) {
                                *d = g * exp(v - shift);
                            }
                        },
                    );
                    drow[*t as usize] -= g;
                });
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `-log softmax(logits)[target]` per row of `logits` `[n, vocab]`: `[n]`, differentiable in the logits.
/// CPU f32 only (see [`super::applies`]).
pub fn row_nll(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(RowNll {
        targets: targets.to_vec(),
        shifts: std::sync::Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::super::test_util::{random, rel_err};
    use super::*;

    #[test]
    fn matches_log_softmax_and_gather() {
        let logits = Var::from_tensor(&random(&[6, 50], 1).affine(8.0, 0.0).unwrap()).unwrap();
        let targets = [0u32, 49, 3, 3, 17, 25];
        let w = random(&[6], 2);
        let fused = row_nll(&logits, &targets).unwrap();
        let tgt = Tensor::new(&targets, &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let refr = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .gather(&tgt, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        assert!(rel_err(&fused, &refr) < 1e-5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let e = rel_err(gf.get(&logits).unwrap(), gr.get(&logits).unwrap());
        assert!(e < 1e-5, "gradient relative error {e}");
    }
}
