//! LoRA's rank-r products on CUDA (lowrank.cu): bf16 activations times f32 adapter weights with f32
//! accumulation, without the f32 copies of activations and gradients that candle's same-dtype matmuls need.
//! Ranks up to [`MAX_RANK`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::fused::view;

const PTX: &str = include_str!("lowrank.ptx");
const MODULE: &str = "qlab_lowrank";

/// The largest rank the kernels are built for.
pub const MAX_RANK: usize = 64;
/// Rows per block of lowrank_grad and lowrank_out (see lowrank.cu; lowrank_in: 8 warps x rows per warp).
const GRAD_ROWS: usize = 128;
/// Columns per block of lowrank_in.
const IN_SPLIT: usize = 512;
const OUT_ROWS: usize = 32;

/// The kernel instance for rank `r` (padded to 8, 16, 32 or 64) and lowrank_in's rows per warp.
fn instance(r: usize) -> Result<(usize, usize)> {
    Ok(match r {
        1..=8 => (8, 1),
        9..=16 => (16, 1),
        17..=32 => (32, 1),
        33..=MAX_RANK => (64, 1),
        _ => candle_core::bail!("lowrank: rank {r} is outside 1..={MAX_RANK}"),
    })
}

fn grid(x: usize, y: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `scale * x W^T`: x bf16 `[m, k]`, W f32 `[r, k]`, result f32 `[m, r]`.
pub fn project(x: &Tensor, w: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &Project(scale as f32))
}

struct Project(f32);

impl CustomOp2 for Project {
    fn name(&self) -> &'static str {
        "lowrank-project"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (r, wk) = wl.shape().dims2()?;
        if wk != k {
            candle_core::bail!("lowrank-project: x {:?} vs W {:?}", xl.dims(), wl.dims())
        }
        let (rp, rows_per_warp) = instance(r)?;
        let dev = x.device().clone();
        let (xv, wv) = (view::<bf16>(x, xl, "x")?, view::<f32>(w, wl, "W")?);
        let out = dev.alloc_zeros::<f32>(m * r)?;
        let func = dev.get_or_load_custom_func(&format!("lowrank_in_r{rp}"), MODULE, PTX)?;
        let (r32, scale) = (r as i32, self.0);
        let mut b = func.builder();
        b.arg(&xv)
            .arg(&wv)
            .arg(&out)
            .arg(&m)
            .arg(&k)
            .arg(&r32)
            .arg(&scale);
        // SAFETY: argument types and counts match lowrank_in_r* in lowrank.cu.
        unsafe { b.launch(grid(m.div_ceil(8 * rows_per_warp), k.div_ceil(IN_SPLIT))) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((m, r))))
    }
}

/// `g^T x`: g f32 `[m, r]`, x bf16 `[m, k]`, result f32 `[r, k]` (a weight gradient summed over rows).
pub fn reduce(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &Reduce)
}

struct Reduce;

impl CustomOp2 for Reduce {
    fn name(&self) -> &'static str {
        "lowrank-reduce"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, r) = gl.shape().dims2()?;
        let (xm, k) = xl.shape().dims2()?;
        if xm != m {
            candle_core::bail!("lowrank-reduce: g {:?} vs x {:?}", gl.dims(), xl.dims())
        }
        let (rp, _) = instance(r)?;
        let dev = g.device().clone();
        let (gv, xv) = (view::<f32>(g, gl, "g")?, view::<bf16>(x, xl, "x")?);
        let out = dev.alloc_zeros::<f32>(r * k)?;
        let func = dev.get_or_load_custom_func(&format!("lowrank_grad_r{rp}"), MODULE, PTX)?;
        let r32 = r as i32;
        let mut b = func.builder();
        b.arg(&gv).arg(&xv).arg(&out).arg(&m).arg(&k).arg(&r32);
        // SAFETY: argument types and counts match lowrank_grad_r* in lowrank.cu.
        unsafe { b.launch(grid(k.div_ceil(256), m.div_ceil(GRAD_ROWS))) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((r, k))))
    }
}

/// `y + p W^T`: y bf16 `[m, o]`, p f32 `[m, r]`, W f32 `[o, r]`, result bf16 `[m, o]`.
pub fn expand_add(y: &Tensor, p: &Tensor, w: &Tensor) -> Result<Tensor> {
    y.contiguous()?
        .apply_op3_no_bwd(&p.contiguous()?, &w.contiguous()?, &ExpandAdd)
}

pub(super) struct ExpandAdd;

impl CustomOp3 for ExpandAdd {
    fn name(&self) -> &'static str {
        "lowrank-expand-add"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        yl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, o) = yl.shape().dims2()?;
        let (pm, r) = pl.shape().dims2()?;
        if pm != m || wl.dims() != [o, r] {
            candle_core::bail!(
                "lowrank-expand-add: y {:?}, p {:?}, W {:?}",
                yl.dims(),
                pl.dims(),
                wl.dims()
            )
        }
        let (rp, _) = instance(r)?;
        let dev = y.device().clone();
        let yv = view::<bf16>(y, yl, "y")?;
        let pv = view::<f32>(p, pl, "p")?;
        let wv = view::<f32>(w, wl, "W")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(m * o) }?;
        let func = dev.get_or_load_custom_func(&format!("lowrank_out_r{rp}"), MODULE, PTX)?;
        let r32 = r as i32;
        let mut b = func.builder();
        b.arg(&yv)
            .arg(&pv)
            .arg(&wv)
            .arg(&out)
            .arg(&m)
            .arg(&o)
            .arg(&r32);
        // SAFETY: argument types and counts match lowrank_out_r* in lowrank.cu.
        unsafe { b.launch(grid(o.div_ceil(256), m.div_ceil(OUT_ROWS))) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), yl.shape().clone()))
    }
}
