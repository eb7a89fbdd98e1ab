//! The AdamW kernels of fused.cu (moments, then the parameter, in place) for `model::adamw`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::fused::{MODULE, PTX, view};

/// `mv` `[2, n]` (m then v) takes the gradient `g` `[n]` (f32).
pub fn moments(
    mv: &mut CudaStorage,
    ml: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    (b1, b2): (f32, f32),
) -> Result<()> {
    let n = gl.shape().elem_count();
    if ml.shape().elem_count() != 2 * n || !ml.is_contiguous() || ml.start_offset() != 0 {
        candle_core::bail!(
            "adamw: moments {:?} for a gradient {:?}",
            ml.dims(),
            gl.dims()
        )
    }
    let dev = mv.device().clone();
    let gv = view::<f32>(g, gl, "grad")?;
    let mvs = mv.as_cuda_slice_mut::<f32>()?;
    let func = dev.get_or_load_custom_func("adamw_moments_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(mvs).arg(&gv).arg(&n).arg(&b1).arg(&b2);
    // SAFETY: argument types and counts match adamw_moments_f32 in fused.cu; sizes checked above.
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
    Ok(())
}

/// The parameter `p` `[n]` steps with moments `mv` `[2, n]`: `(lr, decay, c1, c2, eps)` as in fused.cu.
pub fn step(
    p: &mut CudaStorage,
    pl: &Layout,
    mv: &CudaStorage,
    ml: &Layout,
    h: [f32; 5],
) -> Result<()> {
    let n = pl.shape().elem_count();
    if ml.shape().elem_count() != 2 * n || !pl.is_contiguous() || pl.start_offset() != 0 {
        candle_core::bail!(
            "adamw: parameter {:?} with moments {:?}",
            pl.dims(),
            ml.dims()
        )
    }
    let dev = p.device().clone();
    let mvv = view::<f32>(mv, ml, "moments")?;
    let ps = p.as_cuda_slice_mut::<f32>()?;
    let func = dev.get_or_load_custom_func("adamw_param_f32", MODULE, PTX)?;
    let [lr, decay, c1, c2, eps] = h;
    let mut b = func.builder();
    b.arg(ps)
        .arg(&mvv)
        .arg(&n)
        .arg(&lr)
        .arg(&decay)
        .arg(&c1)
        .arg(&c2)
        .arg(&eps);
    // SAFETY: argument types and counts match adamw_param_f32 in fused.cu; sizes checked above.
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
    Ok(())
}
