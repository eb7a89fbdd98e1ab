//! Launchers of the flash attention kernels (flash.cu) on candle's CUDA storages: the forward writes the
//! merged output `[b, t, h * d]` and each query row's log-sum-exp `[b, h, t]` (f32); the backward
//! recomputes the probabilities from them. The mask is read as the keys' flags plus the causal offset and
//! the window, never as a dense tensor. A decoding step's single new query per head has a kernel of its own.

use std::ops::Deref;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::model::kernels::mask::AttentionMask;

const PTX: &str = include_str!("flash.ptx");
const MODULE: &str = "qlab_flash";
/// The head sizes flash.cu is instantiated for.
const HEAD_SIZES: [usize; 5] = [16, 32, 64, 128, 256];
const THREADS: u32 = 128;
/// Keys per CTA of the keys' gradient (16 per warp).
const KEY_ROWS: usize = 64;
/// Query rows per step of the keys' gradient.
const QUERY_TILE_KV: usize = 64;
const WARPS: usize = 4;
/// Warps of the decoding kernel (flash.cu's DECODE_WARPS).
const DECODE_WARPS: usize = 8;
/// CUDA's bound on a grid's y dimension, along which the kernels' tiles run.
const MAX_GRID_Y: usize = 65_535;

/// flash.cu's `Geometry`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Geometry {
    strides: [i64; 9],
    heads: i32,
    kv_heads: i32,
    t: i32,
    keys: i32,
    past: i32,
    window: i32,
    scale: f32,
    softcap: f32,
}

// SAFETY: plain old data with the C layout flash.cu declares.
unsafe impl DeviceRepr for Geometry {}

// Tile choices per head size, as flash.cu's ENTRIES make them (and scripts/flash_ptx_check.py mirrors).

/// Query rows per CTA of the forward and of the queries' gradient: 32 per warp up to d = 128, 16 beyond
/// (registers).
fn query_rows(d: usize) -> usize {
    if d <= 128 { 128 } else { 64 }
}

/// Keys per tile of the forward (registers bound it for big heads).
fn forward_key_tile(d: usize) -> usize {
    if d <= 128 { 64 } else { 32 }
}

/// Keys per tile of the queries' gradient.
const GRAD_Q_KEY_TILE: usize = 32;

/// Row bytes of a tile in shared memory (rows padded by 8 elements against bank conflicts).
fn row_bytes(d: usize) -> usize {
    (d + 8) * 2
}

/// The mask, scale and soft-cap of one attention call.
#[derive(Clone)]
pub struct Call {
    /// The keys' flags `[b, past + t]` (u8 on the device).
    flags: Tensor,
    past: usize,
    window: Option<usize>,
    scale_softcap: (f64, Option<f64>),
}

impl Call {
    pub fn new(mask: &AttentionMask, scale_softcap: (f64, Option<f64>)) -> Result<Self> {
        Ok(Self {
            flags: mask.flags()?,
            past: mask.past(),
            window: mask.window(),
            scale_softcap,
        })
    }
}

/// A tensor on a CUDA device, held for a launch: its storage guard and layout.
struct Operand<'a> {
    guard: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Operand<'a> {
    /// `x`, which must be `dtype` on a CUDA device.
    fn of(x: &'a Tensor, dtype: DType, what: &str) -> Result<Self> {
        let (guard, layout) = x.storage_and_layout();
        if !matches!(&*guard, Storage::Cuda(_)) || x.dtype() != dtype {
            candle_core::bail!("flash attention: {what} is not {dtype:?} on a CUDA device")
        }
        Ok(Self { guard, layout })
    }

    fn storage(&self) -> &CudaStorage {
        match self.guard.deref() {
            Storage::Cuda(s) => s,
            _ => unreachable!("checked in Operand::of"),
        }
    }

    /// From the layout's offset to the end of the storage.
    fn view<T: cudarc::driver::DeviceRepr + candle_core::cuda_backend::CudaDType>(
        &self,
    ) -> Result<CudaView<'_, T>> {
        let s = self.storage().as_cuda_slice::<T>()?;
        Ok(s.slice(self.layout.start_offset()..))
    }
}

/// Whether a `[b, heads, tokens, d]` bf16 layout is one the kernels read in place: contiguous rows of `d`
/// starting on 16-byte boundaries (the kernels load 8 values at a time).
fn readable(l: &Layout) -> bool {
    let s = l.stride();
    s.len() == 4
        && s[3] == 1
        && l.start_offset().is_multiple_of(8)
        && s[..3].iter().all(|v| v % 8 == 0)
}

/// `x` in a layout [`readable`] accepts: itself, or a fresh contiguous copy.
pub(super) fn ready(x: &Tensor) -> Result<Tensor> {
    if readable(x.layout()) {
        Ok(x.clone())
    } else {
        x.force_contiguous()
    }
}

fn strides3(l: &Layout) -> [i64; 3] {
    let s = l.stride();
    [s[0] as i64, s[1] as i64, s[2] as i64]
}

/// The kernels' geometry for q `[b, h, t, d]` and k, v `[b, kvh, T, d]`, checked against each other and
/// the mask.
fn geometry(q: &Layout, k: &Layout, v: &Layout, call: &Call) -> Result<(Geometry, [usize; 3])> {
    let [b, h, t, d] = dims4(q, "queries")?;
    if ![q, k, v].iter().all(|l| readable(l)) {
        candle_core::bail!(
            "flash attention: q, k and v need rows of d on 16-byte boundaries (see `ready`)"
        )
    }
    let [kb, kvh, keys, kd] = dims4(k, "keys")?;
    if dims4(v, "values")? != [kb, kvh, keys, kd] || kb != b || kd != d {
        candle_core::bail!(
            "flash attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!("flash attention: {h} query heads do not group over {kvh} key heads")
    }
    if !HEAD_SIZES.contains(&d) {
        candle_core::bail!("flash attention: head size {d} is not one of {HEAD_SIZES:?}")
    }
    // the tiles run along the grid's y, which CUDA bounds at 65,535; query tiles (at least KEY_ROWS rows,
    // over t <= keys queries) are never more than key tiles
    if keys.div_ceil(KEY_ROWS) > MAX_GRID_Y {
        candle_core::bail!(
            "flash attention: {keys} keys are more than the grid's {MAX_GRID_Y} tiles of {KEY_ROWS} hold"
        )
    }
    let past = call.past;
    if past + t != keys {
        candle_core::bail!("flash attention: {keys} keys for {past} cached + {t} new positions")
    }
    if call.flags.dims() != [b, keys] || !call.flags.is_contiguous() {
        candle_core::bail!(
            "flash attention: key flags {:?} for [{b}, {keys}]",
            call.flags.dims()
        )
    }
    let [q3, k3, v3] = [strides3(q), strides3(k), strides3(v)];
    let (scale, softcap) = call.scale_softcap;
    let g = Geometry {
        strides: [
            q3[0], q3[1], q3[2], k3[0], k3[1], k3[2], v3[0], v3[1], v3[2],
        ],
        heads: h as i32,
        kv_heads: kvh as i32,
        t: t as i32,
        keys: keys as i32,
        past: past as i32,
        window: call.window.unwrap_or(0) as i32,
        scale: scale as f32,
        softcap: softcap.unwrap_or(0.0) as f32,
    };
    Ok((g, [b, h, d]))
}

fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        other => {
            candle_core::bail!("flash attention: {what} {other:?} are not [b, heads, tokens, d]")
        }
    }
}

fn launch_config(grid: (usize, usize, usize), smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Lets kernel `f` use `smem` bytes of dynamic shared memory (above the default 48 KiB).
fn allow_shared(f: &CudaFunction, smem: usize) -> Result<()> {
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
        .w()
}

fn wrap<T: candle_core::cuda_backend::CudaDType + cudarc::driver::DeviceRepr>(
    s: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// The forward on storages: the merged output `[b, t, h * d]` and the log-sum-exp `[b, h, t]`.
pub(super) fn forward_storages(
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    call: &Call,
) -> Result<(CudaStorage, Shape, Tensor)> {
    let (g, [b, h, d]) = geometry(ql, kl, vl, call)?;
    let t = g.t as usize;
    let dev = q.device().clone();
    let flags = Operand::of(&call.flags, DType::U8, "the key flags")?;
    let out = dev.alloc_zeros::<bf16>(b * t * h * d)?;
    let lse = dev.alloc_zeros::<f32>(b * h * t)?;
    let (qv, kv, vv) = (
        q.as_cuda_slice::<bf16>()?.slice(ql.start_offset()..),
        k.as_cuda_slice::<bf16>()?.slice(kl.start_offset()..),
        v.as_cuda_slice::<bf16>()?.slice(vl.start_offset()..),
    );
    let fv = flags.view::<u8>()?;
    let (name, config) = if t == 1 {
        // a decoding step: a CTA per (batch, head), its warps' partial softmaxes merged in shared memory
        let smem = DECODE_WARPS * (d + 2) * 4;
        let config = LaunchConfig {
            grid_dim: ((b * h) as u32, 1, 1),
            block_dim: (DECODE_WARPS as u32 * 32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        (format!("flash_decode_d{d}"), config)
    } else {
        // q, then two stages of k and v tiles
        let smem = (query_rows(d) + 4 * forward_key_tile(d)) * row_bytes(d);
        let grid = (b * h, t.div_ceil(query_rows(d)), 1);
        (format!("flash_forward_d{d}"), launch_config(grid, smem))
    };
    let f = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    allow_shared(&f, config.shared_mem_bytes as usize)?;
    let mut builder = f.builder();
    builder
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&fv)
        .arg(&out)
        .arg(&lse)
        .arg(&g);
    // SAFETY: argument types and order match flash_forward_d* and flash_decode_d* in flash.cu; geometry()
    // checked the shapes, the layouts' alignment and the mask's length; the grid covers every query row of
    // every head.
    unsafe { builder.launch(config) }.w()?;
    let lse = wrap(lse, &dev, (b, h, t));
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((b, t, h * d)),
        lse,
    ))
}

/// The forward on tensors (no autograd): the merged output `[b, t, h * d]` and the log-sum-exp.
pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, call: &Call) -> Result<(Tensor, Tensor)> {
    let (q, k, v) = (ready(q)?, ready(k)?, ready(v)?);
    let (oq, ok, ov) = (
        Operand::of(&q, DType::BF16, "q")?,
        Operand::of(&k, DType::BF16, "k")?,
        Operand::of(&v, DType::BF16, "v")?,
    );
    let (out, shape, lse) = forward_storages(
        (oq.storage(), oq.layout),
        (ok.storage(), ok.layout),
        (ov.storage(), ov.layout),
        call,
    )?;
    let out = Tensor::from_storage(Storage::Cuda(out), shape, BackpropOp::none(), false);
    Ok((out, lse))
}

/// The gradients of q, k and v (the layouts of q, k and v, contiguous) for the gradient `dout` of the
/// merged output `out` `[b, t, h * d]`, from the forward's log-sum-exp.
pub(super) fn backward(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (out, lse): (&Tensor, &Tensor),
    dout: &Tensor,
    call: &Call,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, k, v) = (
        ready(&q.detach())?,
        ready(&k.detach())?,
        ready(&v.detach())?,
    );
    let (out, dout, lse) = (out.contiguous()?, dout.contiguous()?, lse.contiguous()?);
    let (oq, ok, ov) = (
        Operand::of(&q, DType::BF16, "q")?,
        Operand::of(&k, DType::BF16, "k")?,
        Operand::of(&v, DType::BF16, "v")?,
    );
    let (g, [b, h, d]) = geometry(oq.layout, ok.layout, ov.layout, call)?;
    let (t, keys, kvh) = (g.t as usize, g.keys as usize, g.kv_heads as usize);
    if out.elem_count() != b * t * h * d || dout.elem_count() != out.elem_count() {
        candle_core::bail!(
            "flash attention backward: output {:?} / gradient {:?} for [{b}, {t}, {}]",
            out.dims(),
            dout.dims(),
            h * d
        )
    }
    let dev = oq.storage().device().clone();
    let (oo, og) = (
        Operand::of(&out, DType::BF16, "out")?,
        Operand::of(&dout, DType::BF16, "dout")?,
    );
    let (olse, fl) = (
        Operand::of(&lse, DType::F32, "lse")?,
        Operand::of(&call.flags, DType::U8, "the key flags")?,
    );
    let (qv, kv, vv) = (oq.view::<bf16>()?, ok.view::<bf16>()?, ov.view::<bf16>()?);
    let (outv, doutv, fv) = (oo.view::<bf16>()?, og.view::<bf16>()?, fl.view::<u8>()?);
    let ol = olse.view::<f32>()?;

    let delta = dev.alloc_zeros::<f32>(b * h * t)?;
    let f = dev.get_or_load_custom_func("flash_delta_bf16", MODULE, PTX)?;
    let (bi, hi, ti, di) = (b as i32, h as i32, t as i32, d as i32);
    let mut builder = f.builder();
    builder
        .arg(&outv)
        .arg(&doutv)
        .arg(&delta)
        .arg(&bi)
        .arg(&hi)
        .arg(&ti)
        .arg(&di);
    // SAFETY: argument types match flash_delta_bf16; out and dout hold b * t * h rows of d (checked above).
    unsafe { builder.launch(launch_config(((b * t * h).div_ceil(WARPS), 1, 1), 0)) }.w()?;

    let dk = dev.alloc_zeros::<bf16>(b * kvh * keys * d)?;
    let dv = dev.alloc_zeros::<bf16>(b * kvh * keys * d)?;
    let cols = d.min(128);
    // k, v, then two stages of q and dout tiles with their rows' lse and delta
    let smem = (2 * KEY_ROWS + 4 * QUERY_TILE_KV) * row_bytes(d) + 4 * QUERY_TILE_KV * 4;
    let f = dev.get_or_load_custom_func(&format!("flash_backward_kv_d{d}"), MODULE, PTX)?;
    allow_shared(&f, smem)?;
    let mut builder = f.builder();
    builder
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&fv)
        .arg(&doutv)
        .arg(&ol)
        .arg(&delta);
    builder.arg(&dk).arg(&dv).arg(&g);
    // SAFETY: argument types and order match flash_backward_kv_d*; dk and dv hold [b, kvh, T, d].
    unsafe {
        builder.launch(launch_config(
            (b * kvh, keys.div_ceil(KEY_ROWS), d / cols),
            smem,
        ))
    }
    .w()?;

    let dq = dev.alloc_zeros::<bf16>(b * h * t * d)?;
    // q, dout, then two stages of k and v tiles
    let smem = (2 * query_rows(d) + 4 * GRAD_Q_KEY_TILE) * row_bytes(d);
    let f = dev.get_or_load_custom_func(&format!("flash_backward_q_d{d}"), MODULE, PTX)?;
    allow_shared(&f, smem)?;
    let mut builder = f.builder();
    builder
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&fv)
        .arg(&doutv)
        .arg(&ol)
        .arg(&delta);
    builder.arg(&dq).arg(&g);
    // SAFETY: argument types and order match flash_backward_q_d*; dq holds [b, h, t, d].
    unsafe { builder.launch(launch_config((b * h, t.div_ceil(query_rows(d)), 1), smem)) }.w()?;

    Ok((
        wrap(dq, &dev, (b, h, t, d)),
        wrap(dk, &dev, (b, kvh, keys, d)),
        wrap(dv, &dev, (b, kvh, keys, d)),
    ))
}
