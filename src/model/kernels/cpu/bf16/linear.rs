//! A frozen weight packed once for bf16 products both ways, and its product as a candle op differentiable in
//! its input: the vocabulary head of a CPU training step, applied to every chunk of the loss of every step,
//! which would otherwise be dequantized and packed again each time.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{Panels, Rows, matmul_new};
use crate::model::kernels::cpu::{cpu_slice, storage_slice};

/// `W` `[out, in]` packed for `x W^T` and for its input gradient `g W`.
#[derive(Debug)]
pub struct PackedWeight {
    forward: Panels,
    backward: Panels,
}

impl PackedWeight {
    /// Packs a row-major f32 `W` `[out, in]`.
    pub fn new(w: &[f32], out: usize, inp: usize) -> Self {
        Self {
            forward: Panels::transposed(w, out, inp),
            backward: Panels::plain(w, out, inp),
        }
    }

    /// Bytes held (two bf16 copies: as much as one f32 copy).
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.bytes()
    }
}

struct PackedLinear(Arc<PackedWeight>);

const NAME: &str = "bf16-linear";

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0.forward;
        let (inp, out) = (w.k(), w.n());
        if l.dims().last() != Some(&inp) {
            candle_core::bail!("{NAME}: input {:?} does not end in {inp}", l.dims())
        }
        let x = cpu_slice(x, l, NAME)?;
        let m = x.len() / inp;
        let y = matmul_new(
            Rows {
                data: x,
                m,
                rs: inp,
            },
            w,
        )?;
        let mut dims = l.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let w = &self.0.backward;
        let out = w.k();
        let g = grad_res.contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let g = storage_slice(&gs, gl, NAME)?;
        let m = g.len() / out.max(1);
        let dx = matmul_new(
            Rows {
                data: g,
                m,
                rs: out,
            },
            w,
        )?;
        Tensor::from_vec(dx, x.shape(), x.device()).map(Some)
    }
}

/// `x W^T` `[.., out]` for `x` `[.., in]` (CPU f32), differentiable in `x`.
pub fn linear(x: &Tensor, w: &Arc<PackedWeight>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(PackedLinear(w.clone()))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::model::kernels::cpu::test_util::{random, rel_err};

    #[test]
    fn value_and_input_gradient_match_f32_within_bf16_rounding() {
        if !super::super::supported() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        let w = random(&[70, 33], 1);
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let packed = Arc::new(PackedWeight::new(&wv, 70, 33));
        // Forward: 3 panels of 17 pairs (k = 33) padded to 32; backward: 2 panels of 35 pairs (k = 70)
        // padded to 48; 64 values each.
        assert_eq!(packed.bytes(), 2 * (3 * 32 + 2 * 48) * 64);
        let x = Var::from_tensor(&random(&[2, 9, 33], 2)).unwrap();
        let probe = random(&[2, 9, 70], 3);
        let y = linear(x.as_tensor(), &packed).unwrap();
        let want = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let e = rel_err(&y, &want);
        assert!((1e-6..1e-2).contains(&e), "value: relative error {e}");
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let e = rel_err(
            g.get(x.as_tensor()).unwrap(),
            gw.get(x.as_tensor()).unwrap(),
        );
        assert!((1e-6..1e-2).contains(&e), "dx: relative error {e}");
    }
}
