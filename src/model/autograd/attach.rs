//! Values computed outside autograd (a fused kernel, a quantized product) attached to their input's graph
//! with a hand-written backward: the forward copies the value, the backward is whatever the caller says.
//! candle's fused kernels have no backward of their own (CANDLE-NOTES), and a composition of small ops
//! often differentiates far more expensively than the closed form.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor};

/// The gradient of an attached value with respect to its input.
pub trait Backward: Send + Sync {
    fn name(&self) -> &'static str;
    /// `x`: the input; `y`: the attached value; `grad_y`: the gradient reaching `y`.
    fn grad(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Tensor>;
}

/// `y` as a function of `x` for autograd, with `backward` as its gradient; `y` itself when `x` needs none.
pub fn attach<B: Backward + 'static>(x: &Tensor, y: Tensor, backward: B) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y, Attached(backward))
}

struct Attached<B>(B);

impl<B: Backward> CustomOp2 for Attached<B> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _xl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (start, end) = yl.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: the value must be contiguous", self.0.name()))
        })?;
        let out = match y {
            CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
            CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
            CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
            _ => candle_core::bail!("{}: the value must be f32, bf16 or f16", self.0.name()),
        };
        Ok((out, yl.shape().clone()))
    }

    /// cuda hook: the same copy of `y` on the GPU.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _xl: &Layout,
        y: &candle_core::CudaStorage,
        yl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if !yl.is_contiguous() || yl.start_offset() != 0 {
            candle_core::bail!("an attached value must be contiguous from offset 0");
        }
        Ok((y.try_clone(yl)?, yl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.0.grad(x, res, grad_res)?), None))
    }
}

/// Backpropagates a known gradient `grad` of `out` (a checkpointed block's output) into the graph behind
/// `out`: a scalar node whose backward hands `grad` to `out`, instead of differentiating `sum(out * grad)`
/// (a product, a sum and their backward passes over the whole tensor).
pub fn backward_with(out: &Tensor, grad: &Tensor) -> Result<candle_core::backprop::GradStore> {
    if out.dims() != grad.dims() {
        candle_core::bail!(
            "backward: gradient {:?} for a value {:?}",
            grad.dims(),
            out.dims()
        )
    }
    out.apply_op1(Seed(grad.clone()))?.backward()
}

struct Seed(Tensor);

impl CustomOp1 for Seed {
    fn name(&self) -> &'static str {
        "backward-seed"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    /// cuda hook: the same scalar on the GPU.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = s.device().clone();
        let zero = dev.alloc_zeros::<f32>(1)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(zero, dev),
            Shape::from(()),
        ))
    }

    fn bwd(&self, _out: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}

/// Softmax over the last dimension: candle's fused kernel forward, and the closed-form backward
/// `p * (g - sum(g * p))` (row sums in f32) instead of differentiating through a max, an exp and a division
/// over the whole score tensor.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    attach(x, p, SoftmaxBackward)
}

struct SoftmaxBackward;

impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn grad(&self, _x: &Tensor, p: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dot = (g * p)?
            .to_dtype(DType::F32)?
            .sum_keepdim(D::Minus1)?
            .to_dtype(g.dtype())?;
        g.broadcast_sub(&dot)? * p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::max_abs_diff;
    use candle_core::{Device, Var};

    #[test]
    fn a_seeded_backward_equals_the_gradient_of_the_weighted_sum() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let out = x.as_tensor().sqr().unwrap();
        let seeded = backward_with(&out, &g).unwrap();
        let summed = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            seeded.get(x.as_tensor()).unwrap(),
            summed.get(x.as_tensor()).unwrap(),
        );
        let diff = max_abs_diff(a, b);
        assert!(diff < 1e-6, "{diff}");
        assert!(backward_with(&out, &g.narrow(0, 0, 2).unwrap()).is_err());
    }

    #[test]
    fn softmax_matches_the_composed_one_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (2, 3, 7), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-6);
        let g_ours = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            g_ours.get(x.as_tensor()).unwrap(),
            g_theirs.get(x.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(a, b) < 1e-6, "{}", max_abs_diff(a, b));
        assert!(
            a.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
}
