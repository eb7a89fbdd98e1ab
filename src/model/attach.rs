//! Values computed outside autograd (a fused kernel, a quantized product) attached to their input's graph
//! with a hand-written backward: the forward copies the value, the backward is whatever the caller says.
//! candle's fused kernels have no backward of their own (CANDLE-NOTES), and a composition of small ops
//! often differentiates far more expensively than the closed form.

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor};

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
        super::cuda::clone_cuda_storage(y, yl)
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
    use candle_core::{Device, Var};

    #[test]
    fn softmax_matches_the_composed_one_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (2, 3, 7), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-6);
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
        assert!(diff(a, b) < 1e-6, "{}", diff(a, b));
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
