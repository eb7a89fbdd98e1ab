//! The optimizer's passes over all LoRA tensors as a few launches (fused.cu's `mt_*` kernels): gradients
//! summed over micro-batches, their global norm, and AdamW with the mean and the clipping applied on the
//! device. A kernel per tensor meant thousands of launches per step (an 8B model has 448 LoRA tensors),
//! each one host time with the device idle.

use candle_core::cuda_backend::WrapErr;
use candle_core::{DType, Layout, Result, Storage, Tensor};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::fused::{MODULE, PTX};

/// Tensors per launch: `MT_MAX` in fused.cu (the table is a kernel parameter, under its 4 KiB limit).
const MT_MAX: usize = 48;
const THREADS: u32 = 256;
/// Elements per thread, about, before the grid grows (blocks along x per tensor).
const PER_THREAD: usize = 4;

/// `MtTable` in fused.cu: per tensor, up to three device pointers and a length.
#[repr(C)]
#[derive(Clone, Copy)]
struct Table {
    a: [u64; MT_MAX],
    b: [u64; MT_MAX],
    c: [u64; MT_MAX],
    n: [u32; MT_MAX],
}

// SAFETY: plain old data with the layout of MtTable (repr(C): three arrays of 8-byte pointers, then u32s).
unsafe impl DeviceRepr for Table {}

/// Anything held only until it is dropped (here: candle's storage read guards).
trait Held {}
impl<T> Held for T {}

/// Device addresses of contiguous f32 CUDA tensors, with the guards that keep their storages borrowed.
struct Addresses<'a> {
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    guards: Vec<Box<dyn Held + 'a>>,
}

impl<'a> Addresses<'a> {
    fn new(dev: &candle_core::CudaDevice) -> Self {
        Self {
            stream: dev.cuda_stream(),
            guards: Vec::new(),
        }
    }

    /// The address of `t`'s first element and its length.
    fn of(&mut self, t: &'a Tensor, what: &str) -> Result<(u64, usize)> {
        if t.dtype() != DType::F32 {
            candle_core::bail!("multi-tensor {what}: expected f32, got {:?}", t.dtype())
        }
        let (guard, layout): (_, &Layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("multi-tensor {what}: expected a contiguous tensor")
        };
        let ptr = match &*guard {
            Storage::Cuda(s) => {
                let slice: &CudaSlice<f32> = s.as_cuda_slice::<f32>()?;
                let (p, _sync) = slice.device_ptr(&self.stream);
                p + (start * std::mem::size_of::<f32>()) as u64
            }
            _ => candle_core::bail!("multi-tensor {what}: the tensor is not on a CUDA device"),
        };
        self.guards.push(Box::new(guard));
        Ok((ptr, end - start))
    }
}

/// The launches for `rows` (per tensor: pointers a, b, c, and its length), `MT_MAX` tensors each.
fn tables(kernel: &str, rows: &[([u64; 3], usize)]) -> Result<Vec<(Table, LaunchConfig)>> {
    let mut out = Vec::new();
    for group in rows.chunks(MT_MAX) {
        let mut table = Table {
            a: [0; MT_MAX],
            b: [0; MT_MAX],
            c: [0; MT_MAX],
            n: [0; MT_MAX],
        };
        let mut longest = 0;
        for (k, ([a, b, c], n)) in group.iter().enumerate() {
            (table.a[k], table.b[k], table.c[k]) = (*a, *b, *c);
            table.n[k] = u32::try_from(*n).map_err(|_| {
                candle_core::Error::Msg(format!("multi-tensor {kernel}: a tensor of {n} elements"))
            })?;
            longest = longest.max(*n);
        }
        let blocks = longest.div_ceil(THREADS as usize * PER_THREAD).max(1) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, group.len() as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        out.push((table, cfg));
    }
    Ok(out)
}

fn device(t: Option<&Tensor>) -> Result<candle_core::CudaDevice> {
    match t.map(Tensor::device) {
        Some(candle_core::Device::Cuda(d)) => Ok(d.clone()),
        _ => candle_core::bail!("multi-tensor: expected tensors on a CUDA device"),
    }
}

fn check_lengths(what: &str, x: &[Tensor], y: &[Tensor]) -> Result<()> {
    if x.len() != y.len() {
        candle_core::bail!(
            "multi-tensor {what}: {} tensors against {}",
            x.len(),
            y.len()
        )
    }
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        if a.elem_count() != b.elem_count() {
            candle_core::bail!(
                "multi-tensor {what}: tensor {i} has {:?} against {:?}",
                a.dims(),
                b.dims()
            )
        }
    }
    Ok(())
}

/// `sums[i] += grads[i]` in place (f32, contiguous, same lengths).
pub fn add_into(sums: &[Tensor], grads: &[Tensor]) -> Result<()> {
    check_lengths("add", sums, grads)?;
    let Some(first) = sums.first() else {
        return Ok(());
    };
    let dev = device(Some(first))?;
    let mut at = Addresses::new(&dev);
    let mut rows = Vec::with_capacity(sums.len());
    for (s, g) in sums.iter().zip(grads) {
        let (a, n) = at.of(s, "sum")?;
        let (b, _) = at.of(g, "gradient")?;
        rows.push(([a, b, 0], n));
    }
    let func = dev.get_or_load_custom_func("mt_add_f32", MODULE, PTX)?;
    for (table, cfg) in tables("add", &rows)? {
        let mut b = func.builder();
        b.arg(&table);
        // SAFETY: the table holds live contiguous f32 buffers of the lengths it states (borrowed by `at`
        // until this returns); the arguments match mt_add_f32 in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(())
}

/// The sum of the squares of every element of `grads`, left on the device (one f64).
pub fn sum_of_squares(grads: &[Tensor]) -> Result<CudaSlice<f64>> {
    let dev = device(grads.first())?;
    let mut at = Addresses::new(&dev);
    let sumsq = at.stream.alloc_zeros::<f64>(1).w()?;
    let mut rows = Vec::with_capacity(grads.len());
    for g in grads {
        let (b, n) = at.of(g, "gradient")?;
        rows.push(([0, b, 0], n));
    }
    let func = dev.get_or_load_custom_func("mt_sumsq_f32", MODULE, PTX)?;
    for (table, cfg) in tables("sum of squares", &rows)? {
        let mut b = func.builder();
        b.arg(&table).arg(&sumsq);
        // SAFETY: as in add_into; the arguments match mt_sumsq_f32 in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(sumsq)
}

/// The value a [`sum_of_squares`] left on the device (a read that waits for the work queued before it).
pub fn read(value: &CudaSlice<f64>) -> Result<f64> {
    let host = value.stream().clone_dtoh(value).w()?;
    host.first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("multi-tensor: an empty result".into()))
}

/// AdamW's constants for [`adamw`]: `[b1, b2, lr, decay, c1, c2, eps]` as in fused.cu.
pub struct AdamWConstants {
    pub betas: (f32, f32),
    /// `[lr, decay, c1, c2, eps]`.
    pub step: [f32; 5],
    /// 1 / the number of micro-batches the gradients were summed over.
    pub inv_micro: f64,
    /// Clip the mean gradients' global norm to this (None: no clipping).
    pub max_norm: Option<f64>,
}

/// One AdamW step of every parameter from its summed gradient and moments `[2, ..]`, in place, given the
/// gradients' [`sum_of_squares`]; nothing changes where their norm is not finite.
pub fn adamw(
    params: &[Tensor],
    grads: &[Tensor],
    moments: &[Tensor],
    sumsq: &CudaSlice<f64>,
    k: &AdamWConstants,
) -> Result<()> {
    check_lengths("adamw", params, grads)?;
    if moments.len() != params.len()
        || params
            .iter()
            .zip(moments)
            .any(|(p, m)| m.elem_count() != 2 * p.elem_count())
    {
        candle_core::bail!("multi-tensor adamw: moments do not match the parameters")
    }
    let Some(first) = params.first() else {
        return Ok(());
    };
    let dev = device(Some(first))?;
    let mut at = Addresses::new(&dev);
    let mut rows = Vec::with_capacity(params.len());
    for (p, (g, m)) in params.iter().zip(grads.iter().zip(moments)) {
        let (a, n) = at.of(p, "parameter")?;
        let (b, _) = at.of(g, "gradient")?;
        let (c, _) = at.of(m, "moments")?;
        rows.push(([a, b, c], n));
    }
    let max_norm = k.max_norm.unwrap_or(0.0);
    let [lr, decay, c1, c2, eps] = k.step;
    let func = dev.get_or_load_custom_func("mt_adamw_f32", MODULE, PTX)?;
    for (table, cfg) in tables("adamw", &rows)? {
        let mut b = func.builder();
        b.arg(&table)
            .arg(sumsq)
            .arg(&k.inv_micro)
            .arg(&max_norm)
            .arg(&k.betas.0)
            .arg(&k.betas.1)
            .arg(&lr)
            .arg(&decay)
            .arg(&c1)
            .arg(&c2)
            .arg(&eps);
        // SAFETY: as in add_into; the arguments match mt_adamw_f32 in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(())
}
