//! The training step's row-wise and elementwise ops on CUDA bf16 as single kernels (fused.cu) with
//! single-kernel backward passes: RMSNorm, the gated MLP product and the masked softmax of attention.
//! candle's fused kernels have no backward (CANDLE-NOTES) and its compositions sweep the same big
//! tensors many times in f32; these are one node each in candle's autograd.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    CudaStorage, CustomOp2, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor,
};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::model::config::Activation;

pub(super) const PTX: &str = include_str!("fused.ptx");
pub(super) const MODULE: &str = "qlab_fused";

/// Whether the fused CUDA ops serve this tensor (bf16 on a CUDA device).
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cuda() && x.dtype() == DType::BF16
}

/// The elements of a contiguous storage of `T`, from its layout's offset.
pub(super) fn view<'a, T: cudarc::driver::DeviceRepr + candle_core::cuda_backend::CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// One block per row of `cols`: threads enough for about eight elements each.
pub(super) fn rows_config(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024) as u32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn activation_code(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
    }
}

/// `softmax(scores + mask)` over the last dimension, written over `scores` (a fresh tensor the caller gives
/// up); scores `[b, .., t, T]` with a batch row's heads in any grouping, mask `[b, 1, t, T]` (bf16). No
/// gradient: attention's backward calls [`softmax_backward`].
pub fn masked_softmax(scores: Tensor, mask: &Tensor, t: usize) -> Result<Tensor> {
    let b = mask.dim(0)?;
    let rows_per_batch = scores.elem_count() / scores.dim(candle_core::D::Minus1)? / b.max(1);
    let scores = scores.contiguous()?;
    scores.inplace_op2(&mask.contiguous()?, &MaskedSoftmax { rows_per_batch, t })?;
    Ok(scores)
}

/// The elements of a storage that an in-place kernel may overwrite: all of it, contiguous from offset 0.
fn whole<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<&'a CudaSlice<bf16>> {
    let slice = s.as_cuda_slice_mut::<bf16>()?;
    if l.contiguous_offsets() != Some((0, slice.len())) {
        candle_core::bail!("{what}: expected a whole contiguous buffer to overwrite")
    }
    Ok(slice)
}

/// The in-place ops' refusing CPU forward.
macro_rules! cuda_only_in_place {
    () => {
        fn cpu_fwd(
            &self,
            _: &mut candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
}

struct MaskedSoftmax {
    rows_per_batch: usize,
    t: usize,
}

impl InplaceOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    cuda_only_in_place!();

    fn cuda_fwd(
        &self,
        s: &mut CudaStorage,
        sl: &Layout,
        m: &CudaStorage,
        ml: &Layout,
    ) -> Result<()> {
        let cols = sl.dims().last().copied().unwrap_or(1);
        let rows = sl.shape().elem_count() / cols.max(1);
        if ml.shape().elem_count() != rows / self.rows_per_batch.max(1) * self.t * cols {
            candle_core::bail!(
                "masked-softmax: mask {:?} does not fit scores {:?}",
                ml.dims(),
                sl.dims()
            )
        }
        let dev = s.device().clone();
        let mv = view::<bf16>(m, ml, "mask")?;
        let sv = whole(s, sl, "masked-softmax")?;
        let func = dev.get_or_load_custom_func("masked_softmax_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(sv)
            .arg(&mv)
            .arg(sv)
            .arg(&cols)
            .arg(&self.rows_per_batch)
            .arg(&self.t);
        // SAFETY: argument types and counts match masked_softmax_bf16 in fused.cu, which reads each element
        // of a row before its thread writes it (in place).
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok(())
    }
}

/// The softmax's input gradient from its output `probs` and the output's gradient `grad`, written over
/// `grad` (a fresh tensor the caller gives up).
pub fn softmax_backward(probs: &Tensor, grad: Tensor) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    grad.inplace_op2(&probs.contiguous()?, &SoftmaxBackward)?;
    Ok(grad)
}

struct SoftmaxBackward;

impl InplaceOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    cuda_only_in_place!();

    fn cuda_fwd(
        &self,
        g: &mut CudaStorage,
        gl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        if pl.dims() != gl.dims() {
            candle_core::bail!(
                "softmax-backward: probs {:?} vs grad {:?}",
                pl.dims(),
                gl.dims()
            )
        }
        let cols = pl.dims().last().copied().unwrap_or(1);
        let rows = pl.shape().elem_count() / cols.max(1);
        let dev = p.device().clone();
        let pv = view::<bf16>(p, pl, "probs")?;
        let gv = whole(g, gl, "softmax-backward")?;
        let func = dev.get_or_load_custom_func("softmax_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&pv).arg(gv).arg(gv).arg(&cols);
        // SAFETY: argument types and counts match softmax_backward_bf16 in fused.cu, which reads each
        // element of a row before its thread writes it (in place).
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok(())
    }
}

/// RMSNorm of `x` (bf16) with an f32 weight over the last dimension; differentiable in `x` (the norm's
/// weight is frozen).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if weight.track_op() {
        candle_core::bail!("rms-norm: the fused kernel takes a frozen weight (no gradient for it)")
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-bf16"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let cols = xl.dims().last().copied().unwrap_or(1);
        if wl.shape().elem_count() != cols {
            candle_core::bail!(
                "rms-norm: weight {:?} does not fit {:?}",
                wl.dims(),
                xl.dims()
            )
        }
        let rows = xl.shape().elem_count() / cols.max(1);
        let dev = x.device().clone();
        let (xv, wv) = (view::<bf16>(x, xl, "x")?, view::<f32>(w, wl, "weight")?);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
        let func = dev.get_or_load_custom_func("rms_norm_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&xv).arg(&wv).arg(&out).arg(&cols).arg(&self.eps);
        // SAFETY: argument types and counts match rms_norm_bf16 in fused.cu.
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &g.contiguous()?, &RmsNormBackward(*self))?;
        Ok((Some(dx), None))
    }
}

/// The gradient of [`rms_norm`]'s input `x` for its output's gradient `g`.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &g.contiguous()?,
        &RmsNormBackward(RmsNorm { eps: eps as f32 }),
    )
}

struct RmsNormBackward(RmsNorm);

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-bf16-backward"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let cols = xl.dims().last().copied().unwrap_or(1);
        let rows = xl.shape().elem_count() / cols.max(1);
        let dev = x.device().clone();
        let xv = view::<bf16>(x, xl, "x")?;
        let wv = view::<f32>(w, wl, "weight")?;
        let gv = view::<bf16>(g, gl, "grad")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
        let func = dev.get_or_load_custom_func("rms_norm_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&xv)
            .arg(&wv)
            .arg(&gv)
            .arg(&out)
            .arg(&cols)
            .arg(&self.0.eps);
        // SAFETY: argument types and counts match rms_norm_backward_bf16 in fused.cu.
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
    }
}

/// `act(gate) * up` elementwise (bf16), differentiable in both.
pub fn gated(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2(&up.contiguous()?, Gated(activation_code(activation)))
}

#[derive(Clone, Copy)]
struct Gated(i32);

/// One thread per 8 values (the gated kernels).
fn elementwise_config(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n.div_ceil(8) as u32)
}

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-bf16"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if gl.dims() != ul.dims() {
            candle_core::bail!("gated: gate {:?} vs up {:?}", gl.dims(), ul.dims())
        }
        let n = gl.shape().elem_count();
        let dev = g.device().clone();
        let (gv, uv) = (view::<bf16>(g, gl, "gate")?, view::<bf16>(u, ul, "up")?);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(n) }?;
        let func = dev.get_or_load_custom_func("gated_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&gv).arg(&uv).arg(&out).arg(&n).arg(&self.0);
        // SAFETY: argument types and counts match gated_bf16 in fused.cu.
        unsafe { b.launch(elementwise_config(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dgate, dup) = gated_backward_code(gate, up, g, self.0)?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// The gradients of [`gated`]'s gate and up for its output's gradient `g`.
pub fn gated_backward(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
    activation: Activation,
) -> Result<(Tensor, Tensor)> {
    gated_backward_code(gate, up, g, activation_code(activation))
}

fn gated_backward_code(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
    code: i32,
) -> Result<(Tensor, Tensor)> {
    let both = gate.contiguous()?.apply_op3_no_bwd(
        &up.contiguous()?,
        &g.contiguous()?,
        &GatedBackward(code),
    )?;
    Ok((both.get(0)?, both.get(1)?))
}

/// The gradients of gate and up stacked `[2, ..]`.
struct GatedBackward(i32);

impl CustomOp3 for GatedBackward {
    fn name(&self) -> &'static str {
        "gated-bf16-backward"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        gate: &CudaStorage,
        gl: &Layout,
        up: &CudaStorage,
        ul: &Layout,
        g: &CudaStorage,
        grl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let n = gl.shape().elem_count();
        let dev = gate.device().clone();
        let gv = view::<bf16>(gate, gl, "gate")?;
        let uv = view::<bf16>(up, ul, "up")?;
        let grv = view::<bf16>(g, grl, "grad")?;
        // SAFETY: the kernel writes all 2n elements.
        let out = unsafe { dev.alloc::<bf16>(2 * n) }?;
        let func = dev.get_or_load_custom_func("gated_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&gv).arg(&uv).arg(&grv).arg(&out).arg(&n).arg(&self.0);
        // SAFETY: argument types and counts match gated_backward_bf16 in fused.cu.
        unsafe { b.launch(elementwise_config(n)) }.w()?;
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    }
}
