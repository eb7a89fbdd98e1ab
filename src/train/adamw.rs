//! The AdamW update of one parameter as two in-place passes, moments then parameter, on the CPU or on CUDA.
//! As candle ops it takes a dozen kernels and as many parameter-sized allocations; an 8B model's 448 LoRA
//! tensors made that thousands of launches per step with the GPU idle.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};

/// One step's constants (decoupled weight decay, as PyTorch's AdamW).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken, this one included (for the bias corrections).
    pub t: i32,
}

/// Zeroed moments for `param`: m and v stacked, `[2, ..param's shape]`, f32.
pub fn zero_moments(param: &Tensor) -> Result<Tensor> {
    let mut dims = vec![2];
    dims.extend_from_slice(param.dims());
    Tensor::zeros(dims, DType::F32, param.device())
}

impl AdamWStep {
    /// The parameter pass's constants `[lr, decay, c1, c2, eps]` (decay = 1 - lr * weight_decay, c the bias
    /// corrections), as every kernel takes them.
    pub fn constants(&self) -> [f32; 5] {
        [
            self.lr as f32,
            (1.0 - self.lr * self.weight_decay) as f32,
            (1.0 - self.beta1.powi(self.t)) as f32,
            (1.0 - self.beta2.powi(self.t)) as f32,
            self.eps as f32,
        ]
    }
}

/// Updates `moments` with `grad`, then `param`, both in place (f32, contiguous).
pub fn adamw_update(param: &Tensor, grad: &Tensor, moments: &Tensor, s: &AdamWStep) -> Result<()> {
    let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
    moments.inplace_op2(&grad.contiguous()?, &Moments { b1, b2 })?;
    param.inplace_op2(moments, &ParamStep(s.constants()))
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("adamw: {what} must be contiguous f32"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adamw: {what} must be contiguous f32"),
    }
}

struct Moments {
    b1: f32,
    b2: f32,
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let g = f32_slice(g, gl, "gradient")?;
        let mv = f32_slice_mut(dst, dst_l, "moments")?;
        if mv.len() != 2 * g.len() {
            candle_core::bail!("adamw: {} moments for {} gradients", mv.len(), g.len())
        }
        let (m, v) = mv.split_at_mut(g.len());
        for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            *m = *m * self.b1 + g * (1.0 - self.b1);
            *v = *v * self.b2 + g * g * (1.0 - self.b2);
        }
        Ok(())
    }

    /// cuda hook: the same in one kernel.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        crate::model::kernels::cuda::adamw_moments(dst, dst_l, g, gl, (self.b1, self.b2))
    }
}

/// `[lr, decay, c1, c2, eps]`.
struct ParamStep([f32; 5]);

impl InplaceOp2 for ParamStep {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        mv: &CpuStorage,
        ml: &Layout,
    ) -> Result<()> {
        let mv = f32_slice(mv, ml, "moments")?;
        let p = f32_slice_mut(dst, dst_l, "parameter")?;
        if mv.len() != 2 * p.len() {
            candle_core::bail!("adamw: {} moments for {} parameters", mv.len(), p.len())
        }
        let [lr, decay, c1, c2, eps] = self.0;
        let (m, v) = mv.split_at(p.len());
        for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
            let m_hat = m / c1;
            let denom = (v / c2).sqrt() + eps;
            *p = *p * decay - (m_hat / denom) * lr;
        }
        Ok(())
    }

    /// cuda hook: the same in one kernel.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        mv: &candle_core::CudaStorage,
        ml: &Layout,
    ) -> Result<()> {
        crate::model::kernels::cuda::adamw_step(dst, dst_l, mv, ml, self.0)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::model::test_support::max_abs_diff;

    /// The same update composed of candle ops (the optimizer's previous form).
    fn composed(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamWStep) -> [Tensor; 3] {
        let m = ((m * s.beta1).unwrap() + (g * (1.0 - s.beta1)).unwrap()).unwrap();
        let v = ((v * s.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - s.beta2)).unwrap()).unwrap();
        let m_hat = (&m / (1.0 - s.beta1.powi(s.t))).unwrap();
        let denom = ((&v / (1.0 - s.beta2.powi(s.t))).unwrap().sqrt().unwrap() + s.eps).unwrap();
        let decayed = (p * (1.0 - s.lr * s.weight_decay)).unwrap();
        let next = (decayed - ((m_hat / denom).unwrap() * s.lr).unwrap()).unwrap();
        [next, m, v]
    }

    #[test]
    fn in_place_steps_match_the_composed_update() {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap()).unwrap();
        let moments = zero_moments(p.as_tensor()).unwrap();
        // Copies: the moments are updated in place, and `get` gives views.
        let (mut rp, mut rm, mut rv) = (
            p.as_tensor().copy().unwrap(),
            moments.get(0).unwrap().copy().unwrap(),
            moments.get(1).unwrap().copy().unwrap(),
        );
        for t in 1..=3 {
            let g = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
            let s = AdamWStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                t,
            };
            adamw_update(p.as_tensor(), &g, &moments, &s).unwrap();
            [rp, rm, rv] = composed(&rp, &g, &rm, &rv, &s);
        }
        assert!(max_abs_diff(p.as_tensor(), &rp) < 1e-6);
        assert!(max_abs_diff(&moments.get(0).unwrap(), &rm) < 1e-6);
        assert!(max_abs_diff(&moments.get(1).unwrap(), &rv) < 1e-6);
        assert!(
            max_abs_diff(
                p.as_tensor(),
                &Tensor::zeros((3, 5), DType::F32, &dev).unwrap()
            ) > 0.0
        );
    }
}
