//! NF4 weights kept on a CUDA device in the layout of `model::nf4` (about 0.516 bytes per parameter), with
//! the kernels of nf4.cu run as candle custom ops: dequantize rows to bf16 / f32 on the GPU, quantize a
//! GPU tensor in place of the CPU loop (an 8B model quantizes in seconds instead of minutes), and multiply a few
//! rows straight from the codes (answering), a bias and an unmerged adapter's low-rank term added in the same
//! kernel; several weights that multiply one input (q, k and v) in one launch (`members`).
//!
//! The same ops run on the CPU (cpu_fwd) from the same arrays, which is what the GPU results are tested
//! against; the CPU path of the model engine keeps using `Nf4Tensor` directly.

use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::bf16;

use std::sync::Arc;

use super::frozen::FrozenWeight;
use super::nf4::{BLOCK, NESTED_BLOCK, NF4_CODE, Nf4Tensor};

mod members;

const PTX: &str = include_str!("../kernels/cuda/nf4.ptx");
const MODULE: &str = "qlab_nf4";
/// Index of the absmax offset in the tables, then the nested scales (see nf4.cu).
const TABLE_OFFSET: usize = 16 + 256;

/// An NF4 weight `[out_features, in_features]` resident on a device.
#[derive(Debug)]
pub struct Nf4Cuda {
    pub dims: Vec<usize>,
    /// u8 `[ceil(n / 2)]`, first element in the high nibble.
    codes: Tensor,
    /// u8 `[n / 64]`.
    absmax_q: Tensor,
    /// f32 `quant_map[16] ++ absmax_code[256] ++ [offset] ++ nested_absmax`.
    tables: Tensor,
}

impl Nf4Cuda {
    /// Copies a host NF4 weight to `device`.
    pub fn upload(n: &Nf4Tensor, device: &candle_core::Device) -> candle_core::Result<Self> {
        let mut tables = n.quant_map.to_vec();
        tables.extend_from_slice(&n.absmax_code);
        tables.push(n.absmax_offset);
        tables.extend_from_slice(&n.nested_absmax);
        if n.absmax_code.len() != 256 {
            candle_core::bail!("nf4: absmax code table must have 256 entries");
        }
        Ok(Self {
            dims: n.dims.clone(),
            codes: Tensor::from_slice(&n.codes, n.codes.len(), device)?,
            absmax_q: Tensor::from_slice(&n.absmax_q, n.absmax_q.len(), device)?,
            tables: Tensor::from_vec(tables.clone(), tables.len(), device)?,
        })
    }

    /// Quantizes a weight where it lies (on the GPU: block absmax by candle, codes by the kernel; the
    /// 8-bit double quantization of the absmaxes on the host). Identical to `Nf4Tensor::quantize`.
    pub fn quantize(w: &Tensor) -> candle_core::Result<Self> {
        let dims = w.dims().to_vec();
        let n = w.elem_count();
        if n == 0 || !n.is_multiple_of(BLOCK) {
            let host = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            return Self::upload(&Nf4Tensor::quantize(&host, dims), w.device());
        }
        let flat = w.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
        let absmax = flat.reshape((n / BLOCK, BLOCK))?.abs()?.max(1)?;
        let codes = flat.apply_op2_no_bwd(&absmax, &Nf4Quantize)?;
        let absmax_host = absmax.to_vec1::<f32>()?;
        let (absmax_q, nested, offset) = double_quantize(&absmax_host);
        let mut tables = NF4_CODE.to_vec();
        tables.extend(absmax_code());
        tables.push(offset);
        tables.extend_from_slice(&nested);
        let dev = w.device();
        Ok(Self {
            dims,
            codes,
            absmax_q: Tensor::from_vec(absmax_q.clone(), absmax_q.len(), dev)?,
            tables: Tensor::from_vec(tables.clone(), tables.len(), dev)?,
        })
    }

    /// Bytes of the per-weight arrays, counted as `Nf4Tensor::storage_bytes` counts them.
    pub fn storage_bytes(&self) -> usize {
        self.codes.elem_count() + self.absmax_q.elem_count() + 4 * (self.tables.elem_count() - 272)
    }

    /// Rows `[start, start + len)` as `[len, in_features]` in `dtype` (bf16 or f32).
    pub fn dequantize_rows(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let cols = self.dims.last().copied().unwrap_or(1);
        let op = Nf4Dequant {
            start: start * cols,
            count: len * cols,
            cols,
            dtype,
        };
        self.codes
            .apply_op3_no_bwd(&self.absmax_q, &self.tables, &op)?
            .reshape((len, cols))
    }

    /// Generation's product `x @ W^T` for a few rows of bf16 `x` `[rows, in_features]` straight from the NF4
    /// codes (`nf4_gemv_mma*` or `nf4_gemv_lut*` on the tensor cores: the weight is never dequantized into
    /// memory), or None where the kernels do not apply (more than 16 rows, another dtype, a row width that is
    /// not a multiple of 64, a misaligned view).
    pub fn gemv(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.gemv_with(x, GemvKernel::Auto, &GemvAdd::default())
    }

    /// [`Nf4Cuda::gemv`] with a chosen kernel and launch shape (tests and timings compare them), plus what `add`
    /// names, summed in f32 before the result is rounded to bf16 (in the tensor-core kernels' epilogue; the warp
    /// kernel adds a bias after, and no low-rank term); an error for a shape the kernels do not take, or a
    /// low-rank term that does not fit (see [`Nf4Cuda::gemv_adds_rank`]).
    pub fn gemv_with(
        &self,
        x: &Tensor,
        kernel: GemvKernel,
        add: &GemvAdd,
    ) -> candle_core::Result<Option<Tensor>> {
        let rank = add.rank()?;
        let Some((x, kernel)) = self.gemv_plan(x, kernel, rank)? else {
            return Ok(None);
        };
        let (n, rows) = (self.dims[0], x.dim(0)?);
        add.check(n, rows)?;
        match kernel.shared_bytes(rows, rank) {
            Some(bytes) if bytes > GEMV_SHARED_MOST => candle_core::bail!(
                "nf4-gemv: a rank-{rank} term at {rows} rows overflows shared memory"
            ),
            None if rank > 0 => {
                candle_core::bail!("nf4-gemv: the warp kernel adds no low-rank term")
            }
            _ => {}
        }
        // The warp kernel adds nothing itself: its bias comes after.
        let (in_kernel, after) = match kernel {
            GemvKernel::Warp => (GemvAdd::default(), add.bias.as_ref()),
            _ => (add.clone(), None),
        };
        let op = Nf4Gemv {
            codes: self.codes.clone(),
            absmax_q: self.absmax_q.clone(),
            tables: self.tables.clone(),
            n,
            kernel,
            add: in_kernel,
        };
        let y = x.apply_op1_no_bwd(&op)?;
        Ok(Some(match after {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::BF16)?)?,
            None => y,
        }))
    }

    /// Whether [`Nf4Cuda::gemv`] serves `x` with a low-rank term of rank `rank` added in its kernel
    /// ([`GemvAdd::low_rank`]): a tensor-core kernel, with the term's rank-wide rows and its B rows in the
    /// block's shared memory beside the warps' partial sums.
    pub fn gemv_adds_rank(&self, x: &Tensor, rank: usize) -> candle_core::Result<bool> {
        Ok(match self.gemv_plan(x, GemvKernel::Auto, rank)? {
            Some((x, kernel)) => kernel
                .shared_bytes(x.dim(0)?, rank)
                .is_some_and(|bytes| bytes <= GEMV_SHARED_MOST),
            None => false,
        })
    }

    /// Contiguous `x` and the kernel (Auto resolved for a low-rank term of rank `rank`) that serve it, None
    /// where none does; an error for a kernel shape the kernels do not take.
    fn gemv_plan(
        &self,
        x: &Tensor,
        kernel: GemvKernel,
        rank: usize,
    ) -> candle_core::Result<Option<(Tensor, GemvKernel)>> {
        let (n, k) = match self.dims.as_slice() {
            [n, k] => (*n, *k),
            _ => return Ok(None),
        };
        let (rows, kx) = x.dims2()?;
        if n == 0 || rows == 0 || rows > GEMV_MAX_ROWS || kx != k || !k.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        if x.dtype() != DType::BF16 || !x.device().is_cuda() {
            return Ok(None);
        }
        let x = x.contiguous()?;
        // 16-byte loads of x (eight bf16 values) need a 16-byte aligned start.
        if !x.layout().start_offset().is_multiple_of(8) {
            return Ok(None);
        }
        // The tensor-core kernels index 64-blocks in 32 bits.
        let fits = (n * (k / BLOCK)) as u64 <= u32::MAX as u64;
        let kernel = match kernel {
            GemvKernel::Auto if fits => {
                // The lut kernel's table leaves less shared memory for a large low-rank term.
                let chosen = GemvKernel::for_shape(n, k);
                match chosen.shared_bytes(rows, rank) {
                    Some(bytes) if bytes > GEMV_SHARED_MOST => GemvKernel::for_width(n),
                    _ => chosen,
                }
            }
            GemvKernel::Auto => GemvKernel::Warp,
            GemvKernel::Mma { groups, warps } | GemvKernel::Lut { groups, warps } => {
                let ok = match (kernel, groups) {
                    (_, 1 | 2) => (1..=16).contains(&warps),
                    (GemvKernel::Mma { .. }, 4) => (1..=8).contains(&warps),
                    _ => false,
                };
                if !ok || !fits {
                    candle_core::bail!("nf4-gemv: no tensor-core kernel {kernel:?} for [{n}, {k}]");
                }
                kernel
            }
            GemvKernel::Warp => kernel,
        };
        Ok(Some((x, kernel)))
    }

    /// The arrays back on the host, in `Nf4Tensor`'s form (tests compare the two quantizers with it).
    pub fn to_host(&self) -> candle_core::Result<Nf4Tensor> {
        let tables = self.tables.to_vec1::<f32>()?;
        let quant_map: [f32; 16] = std::array::from_fn(|i| tables[i]);
        Ok(Nf4Tensor {
            dims: self.dims.clone(),
            codes: self.codes.to_vec1::<u8>()?,
            quant_map,
            absmax_q: self.absmax_q.to_vec1::<u8>()?,
            absmax_code: tables[16..TABLE_OFFSET].to_vec(),
            nested_absmax: tables[TABLE_OFFSET + 1..].to_vec(),
            absmax_offset: tables[TABLE_OFFSET],
        })
    }
}

/// The 256-entry code of the quantized absmaxes, as `Nf4Tensor::quantize` builds it.
fn absmax_code() -> impl Iterator<Item = f32> {
    (0..256).map(|i| -1.0 + 2.0 * i as f32 / 255.0)
}

/// The second quantization level of `Nf4Tensor::quantize`: 8-bit absmaxes, one f32 scale per 256 blocks.
fn double_quantize(absmax: &[f32]) -> (Vec<u8>, Vec<f32>, f32) {
    let offset = absmax.iter().sum::<f32>() / absmax.len().max(1) as f32;
    let mut nested = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCK));
    let mut q = Vec::with_capacity(absmax.len());
    for group in absmax.chunks(NESTED_BLOCK) {
        let scale = group.iter().fold(0f32, |m, a| m.max((a - offset).abs()));
        nested.push(scale);
        for a in group {
            let unit = if scale > 0.0 {
                (a - offset) / scale
            } else {
                0.0
            };
            q.push(((unit + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
        }
    }
    (q, nested, offset)
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("nf4: {what} must be contiguous"),
    }
}

/// Dequantizes elements `[start, start + count)` of a weight from (codes, absmax_q, tables).
struct Nf4Dequant {
    start: usize,
    count: usize,
    /// The weight's row width.
    cols: usize,
    dtype: DType,
}

impl Nf4Dequant {
    fn check(&self) -> candle_core::Result<()> {
        if !self.start.is_multiple_of(2) || !self.count.is_multiple_of(2) {
            candle_core::bail!(
                "nf4: rows must have an even number of values to dequantize on the GPU"
            );
        }
        if !matches!(self.dtype, DType::BF16 | DType::F32) {
            candle_core::bail!("nf4: dequantizes to bf16 or f32, not {:?}", self.dtype);
        }
        Ok(())
    }
}

impl CustomOp3 for Nf4Dequant {
    fn name(&self) -> &'static str {
        "nf4-dequant"
    }

    fn cpu_fwd(
        &self,
        codes: &CpuStorage,
        cl: &Layout,
        absmax_q: &CpuStorage,
        al: &Layout,
        tables: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check()?;
        let (CpuStorage::U8(c), CpuStorage::U8(a), CpuStorage::F32(t)) = (codes, absmax_q, tables)
        else {
            candle_core::bail!("nf4: expected u8 codes, u8 absmax_q and f32 tables");
        };
        let (c, a, t) = (
            contiguous(c, cl, "codes")?,
            contiguous(a, al, "absmax_q")?,
            contiguous(t, tl, "tables")?,
        );
        let values = (self.start..self.start + self.count).map(|i| {
            let b = i / BLOCK;
            let scale =
                t[16 + a[b] as usize] * t[TABLE_OFFSET + 1 + b / NESTED_BLOCK] + t[TABLE_OFFSET];
            let byte = c[i / 2];
            let code = if i.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 0x0f
            };
            t[code as usize] * scale
        });
        let out = match self.dtype {
            DType::BF16 => CpuStorage::BF16(values.map(bf16::from_f32).collect()),
            _ => CpuStorage::F32(values.collect()),
        };
        Ok((out, Shape::from(self.count)))
    }

    fn cuda_fwd(
        &self,
        codes: &CudaStorage,
        cl: &Layout,
        absmax_q: &CudaStorage,
        al: &Layout,
        tables: &CudaStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.check()?;
        let dev = &codes.device;
        let (c, a, t) = weight_arrays((codes, cl), (absmax_q, al), (tables, tl))?;
        let pairs = self.count / 2;
        let start = self.start;
        let out = if self.dtype == DType::BF16 {
            // SAFETY: every element is written by the kernel before it is read.
            let mut out = unsafe { dev.alloc::<bf16>(self.count) }?;
            let cols = self.cols;
            dequant_bf16_into(
                dev,
                (c, a, t),
                (start, self.count),
                &mut out.slice_mut(..),
                (cols, cols),
            )?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        } else {
            let func = dev.get_or_load_custom_func("nf4_dequant_f32", MODULE, PTX)?;
            // SAFETY: as above.
            let out = unsafe { dev.alloc::<f32>(self.count) }?;
            let mut b = func.builder();
            b.arg(c).arg(a).arg(t).arg(&start).arg(&pairs).arg(&out);
            // SAFETY: argument types and counts match nf4_dequant_f32 in nf4.cu.
            unsafe { b.launch(LaunchConfig::for_num_elems(pairs as u32)) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        };
        Ok((out, Shape::from(self.count)))
    }
}

/// A weight's (codes, absmax_q, tables) on the GPU, each checked to be contiguous from offset 0 (what the
/// dequantization kernels index).
fn weight_arrays<'a>(
    (codes, cl): (&'a CudaStorage, &Layout),
    (absmax_q, al): (&'a CudaStorage, &Layout),
    (tables, tl): (&'a CudaStorage, &Layout),
) -> candle_core::Result<(&'a CudaSlice<u8>, &'a CudaSlice<u8>, &'a CudaSlice<f32>)> {
    for (l, what) in [(cl, "codes"), (al, "absmax_q"), (tl, "tables")] {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("nf4: {what} must be contiguous from offset 0");
        }
    }
    Ok((
        codes.as_cuda_slice::<u8>()?,
        absmax_q.as_cuda_slice::<u8>()?,
        tables.as_cuda_slice::<f32>()?,
    ))
}

/// Launches the bf16 dequantization of elements `[start, start + count)` (both even) of a weight's (codes,
/// absmax_q, tables) into `out`, as rows of `cols` values (`count` a multiple of it) `ld` values apart.
fn dequant_bf16_into(
    dev: &candle_core::CudaDevice,
    (c, a, t): (&CudaSlice<u8>, &CudaSlice<u8>, &CudaSlice<f32>),
    (start, count): (usize, usize),
    out: &mut CudaViewMut<'_, bf16>,
    (cols, ld): (usize, usize),
) -> candle_core::Result<()> {
    if cols == 0 || !count.is_multiple_of(cols) || !cols.is_multiple_of(2) || ld < cols {
        candle_core::bail!("nf4: {count} values as rows of {cols}, {ld} apart")
    }
    let span = match count {
        0 => 0,
        _ => (count / cols - 1) * ld + cols,
    };
    if out.len() != span {
        candle_core::bail!("nf4: {count} values over {span} into {}", out.len())
    }
    let pairs = count / 2;
    // Sixteen elements per thread when the span allows (the kernel takes the narrow path where the output is
    // not 16-byte aligned).
    let wide = start.is_multiple_of(16) && pairs.is_multiple_of(8) && cols.is_multiple_of(16);
    let (name, cfg) = match wide {
        // Blocks of 256 threads: 5% faster than 1024 on an H100 at the 8B weights' sizes, the output the same
        // (bench/results/h100-dequant-2026-12-07.txt).
        true => (
            "nf4_dequant16_bf16",
            LaunchConfig {
                grid_dim: ((pairs / 8).div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
        ),
        false => (
            "nf4_dequant_bf16",
            LaunchConfig::for_num_elems(pairs as u32),
        ),
    };
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(c).arg(a).arg(t).arg(&start).arg(&pairs).arg(out);
    b.arg(&cols).arg(&ld);
    // SAFETY: argument types and counts match nf4_dequant_bf16 and nf4_dequant16_bf16 in nf4.cu, `out` spans the
    // rows (checked above), and the wide kernel's span conditions hold.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Whole NF4 weights of one width dequantized to bf16 one under the other, `[sum of rows, in_features]`: the
/// weight of projections that share an input (see `kernels::cuda::adapted`), without a copy. With `tail` (bf16
/// `[sum of rows, c]`), each row continues with the tail's row: `[sum of rows, in_features + c]`, the weight that
/// adds a low-rank term in the same product (see `kernels::cuda::lowrank::norm_project`).
pub fn dequantize_stacked(
    members: &[&Nf4Cuda],
    tail: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let Some((first, rest)) = members.split_first() else {
        candle_core::bail!("nf4: no weights to stack")
    };
    let cols = first.dims.last().copied().unwrap_or(1);
    if cols == 0
        || members
            .iter()
            .any(|m| m.dims.len() != 2 || m.dims[1] != cols)
    {
        candle_core::bail!("nf4: stacked weights must share one width, got {cols} and others")
    }
    let rows: usize = members.iter().map(|m| m.dims[0]).sum();
    let extra = match tail.map(|t| (t.dims2(), t.dtype())) {
        Some((Ok((tail_rows, extra)), DType::BF16)) if tail_rows == rows => extra,
        Some((dims, dtype)) => {
            candle_core::bail!("nf4: a tail {dims:?} ({dtype:?}) for {rows} rows of bf16")
        }
        None => 0,
    };
    let op = Nf4DequantStacked {
        rest: rest
            .iter()
            .map(|m| {
                (
                    m.codes.clone(),
                    m.absmax_q.clone(),
                    m.tables.clone(),
                    m.dims[0] * cols,
                )
            })
            .collect(),
        first: first.dims[0] * cols,
        cols,
        tail: tail.map(|t| t.contiguous()).transpose()?,
    };
    first
        .codes
        .apply_op3_no_bwd(&first.absmax_q, &first.tables, &op)?
        .reshape((rows, cols + extra))
}

/// [`dequantize_stacked`]'s op on the first weight's arrays, holding the others' and each weight's element count.
struct Nf4DequantStacked {
    rest: Vec<(Tensor, Tensor, Tensor, usize)>,
    first: usize,
    cols: usize,
    tail: Option<Tensor>,
}

impl CustomOp3 for Nf4DequantStacked {
    fn name(&self) -> &'static str {
        "nf4-dequant-stacked"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4: stacked dequantization runs on a CUDA device only")
    }

    fn cuda_fwd(
        &self,
        codes: &CudaStorage,
        cl: &Layout,
        absmax_q: &CudaStorage,
        al: &Layout,
        tables: &CudaStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let held: Vec<_> = self
            .rest
            .iter()
            .map(|(c, a, t, n)| {
                (
                    c.storage_and_layout(),
                    a.storage_and_layout(),
                    t.storage_and_layout(),
                    *n,
                )
            })
            .collect();
        let mut members = vec![((codes, cl), (absmax_q, al), (tables, tl), self.first)];
        for ((cs, cl), (as_, al), (ts, tl), n) in &held {
            members.push((
                (on_cuda(cs, "codes")?, *cl),
                (on_cuda(as_, "absmax_q")?, *al),
                (on_cuda(ts, "tables")?, *tl),
                *n,
            ));
        }
        let cols = self.cols;
        let rows: usize = members.iter().map(|m| m.3 / cols).sum();
        let extra = match &self.tail {
            Some(t) => t.dim(1)?,
            None => 0,
        };
        let ld = cols + extra;
        let dev = &codes.device;
        // SAFETY: the launches below write every element: each weight its rows' first `cols` values, the tail's
        // copy the rest.
        let mut out = unsafe { dev.alloc::<bf16>(rows * ld) }?;
        let mut at = 0;
        for (c, a, t, n) in members {
            let arrays = weight_arrays(c, a, t)?;
            if n == 0 {
                continue;
            }
            let span = (n / cols - 1) * ld + cols;
            dequant_bf16_into(
                dev,
                arrays,
                (0, n),
                &mut out.slice_mut(at..at + span),
                (cols, ld),
            )?;
            at += n / cols * ld;
        }
        let mut stacked = CudaStorage::wrap_cuda_slice(out, dev.clone());
        if let Some(tail) = &self.tail {
            let (ts, tl) = tail.storage_and_layout();
            use candle_core::backend::BackendStorage;
            // The tail's rows after each weight row: rows x extra values from rows extra apart into rows ld apart.
            on_cuda(&ts, "the tail")?.copy2d(
                &mut stacked,
                rows,
                extra,
                extra,
                ld,
                tl.start_offset(),
                cols,
            )?;
        }
        Ok((stacked, Shape::from(rows * ld)))
    }
}

/// Most rows [`Nf4Cuda::gemv`] multiplies at once (GEMV_MAX_ROWS in nf4.cu).
const GEMV_MAX_ROWS: usize = 16;

/// The words of nf4_gemv_lut's table in shared memory: 256 code bytes' bf16 pairs, one copy per lane.
const LUT_TABLE_WORDS: usize = 256 * 32;

/// Dynamic shared memory a launch of a tensor-core kernel may take: 48 KiB (the most without opting in) less
/// 2 KiB for nf4_gemv_mma's static tables (1,088 bytes).
const GEMV_SHARED_MOST: usize = 46 * 1024;

/// The floats of a tensor-core kernel's dynamic shared memory (nf4.cu) that a low-rank term of rank `rank` takes:
/// its rank-wide rows and the block's rows of B (each padded by one float).
fn low_rank_floats(groups: usize, rows: usize, rank: usize) -> usize {
    match rank {
        0 => 0,
        r => rows * r + 16 * groups * (r + 1),
    }
}

/// What [`Nf4Cuda::gemv_with`] adds to `x W^T` before rounding the result to bf16.
#[derive(Debug, Clone, Default)]
pub struct GemvAdd {
    /// f32 `[n]`.
    pub bias: Option<Tensor>,
    /// A low-rank product, an unmerged LoRA adapter's.
    pub low_rank: Option<LowRankAdd>,
}

impl GemvAdd {
    /// A linear layer's bias (any dtype, as f32) and nothing else.
    pub fn bias(bias: Option<&Tensor>) -> candle_core::Result<Self> {
        Ok(GemvAdd {
            bias: bias.map(|b| b.to_dtype(DType::F32)).transpose()?,
            low_rank: None,
        })
    }

    /// The low-rank term's rank (0 without one).
    fn rank(&self) -> candle_core::Result<usize> {
        self.low_rank.as_ref().map_or(Ok(0), |l| l.parts.dim(2))
    }

    /// An error unless the terms fit a product of `rows` rows and `n` features: bias f32 `[n]`, parts f32
    /// `[slices, rows, r]`, B f32 `[n, r]`.
    fn check(&self, n: usize, rows: usize) -> candle_core::Result<()> {
        if let Some(b) = &self.bias
            && (b.dims() != [n] || b.dtype() != DType::F32)
        {
            candle_core::bail!(
                "nf4-gemv: the bias must be f32 [{n}], not {:?} {:?}",
                b.dtype(),
                b.dims()
            )
        }
        if let Some(l) = &self.low_rank {
            let (slices, prow, rank) = l.parts.dims3()?;
            if slices == 0
                || prow != rows
                || l.b.dims() != [n, rank]
                || l.parts.dtype() != DType::F32
                || l.b.dtype() != DType::F32
            {
                candle_core::bail!(
                    "nf4-gemv: low-rank parts {:?} and B {:?} for {rows} rows and {n} features",
                    l.parts.dims(),
                    l.b.dims()
                )
            }
        }
        Ok(())
    }

    /// `GemvAdd` for the kernel: the terms' device addresses (null and rank 0 for what is absent), with the
    /// guards that keep their storages borrowed until the launch.
    fn args<'a>(
        &'a self,
        stream: &Arc<CudaStream>,
    ) -> candle_core::Result<(GemvAddArgs, Vec<impl Sized + 'a>)> {
        let mut args = GemvAddArgs {
            bias: 0,
            parts: 0,
            b: 0,
            slices: 0,
            rank: 0,
            scale: 0.0,
        };
        let mut guards = Vec::new();
        if let Some(bias) = &self.bias {
            let (address, guard) = f32_address(bias, stream, "the bias")?;
            args.bias = address;
            guards.push(guard);
        }
        if let Some(l) = &self.low_rank {
            let (slices, _, rank) = l.parts.dims3()?;
            let (parts, guard) = f32_address(&l.parts, stream, "the low-rank parts")?;
            guards.push(guard);
            let (b, guard) = f32_address(&l.b, stream, "B")?;
            guards.push(guard);
            args = GemvAddArgs {
                parts,
                b,
                slices: slices as i32,
                rank: rank as i32,
                scale: l.scale,
                ..args
            };
        }
        Ok((args, guards))
    }
}

/// `scale (x A^T) B^T`, with `x A^T` as f32 `parts` `[slices, rows, r]` to be summed over their first axis (the
/// adapter's few-row kernel leaves it so: `kernels::cuda::lowrank::rows_project`) and f32 B `[n, r]`.
#[derive(Debug, Clone)]
pub struct LowRankAdd {
    pub parts: Tensor,
    pub b: Tensor,
    pub scale: f32,
}

/// `GemvAdd` in nf4.cu, field for field (null addresses and rank 0: nothing added).
#[repr(C)]
#[derive(Clone, Copy)]
struct GemvAddArgs {
    bias: u64,
    parts: u64,
    b: u64,
    slices: i32,
    rank: i32,
    scale: f32,
}

// SAFETY: plain old data with the C layout nf4.cu declares (three 8-byte addresses, two ints and a float).
unsafe impl DeviceRepr for GemvAddArgs {}

/// The device address of a contiguous f32 CUDA tensor's first element, with the guard that keeps its storage
/// borrowed until the launch.
fn f32_address<'a>(
    t: &'a Tensor,
    stream: &Arc<CudaStream>,
    what: &str,
) -> candle_core::Result<(u64, impl Sized + 'a)> {
    let (guard, layout) = t.storage_and_layout();
    let address = device_address::<f32>(&guard, layout, stream, what)?;
    Ok((address, guard))
}

/// The device address of the first element of a contiguous view of a CUDA storage of `T`s.
fn device_address<T: CudaDType + DeviceRepr>(
    storage: &candle_core::Storage,
    layout: &Layout,
    stream: &Arc<CudaStream>,
    what: &str,
) -> candle_core::Result<u64> {
    let Some((start, _)) = layout.contiguous_offsets() else {
        candle_core::bail!("nf4-gemv: {what} must be contiguous")
    };
    let slice = on_cuda(storage, what)?.as_cuda_slice::<T>()?;
    let (base, _sync) = slice.device_ptr(stream);
    Ok(base + (start * std::mem::size_of::<T>()) as u64)
}

/// The kernel behind [`Nf4Cuda::gemv_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvKernel {
    /// The kernel and launch shape `gemv` takes for the weight's shape ([`GemvKernel::for_shape`]).
    Auto,
    /// `nf4_gemv_bf16`: one warp per output feature, FMAs on the CUDA cores for every row (the first kernel).
    Warp,
    /// `nf4_gemv_mma{groups}`: the tensor cores, 16 * `groups` output features per block (groups 1, 2 or 4),
    /// k split over `warps` warps (1 to 16; at most 8 for 4 groups).
    Mma { groups: usize, warps: usize },
    /// `nf4_gemv_lut{groups}_*`: the tensor cores on the raw code values, each 64-block's sum scaled once after
    /// them (groups 1 or 2, 1 to 16 warps along k).
    Lut { groups: usize, warps: usize },
}

impl GemvKernel {
    /// The kernel and launch shape for a weight of `n` output features by `k` inputs: the lut kernel where it
    /// measured fastest, from 8,192 features (4 warps a block: 14336 x 4096 took 26.8 us a row against 29.5 for
    /// nf4_gemv_mma's best launch on an H100) or from k = 8,192 (16 warps: 4096 x 14336, 21.1 against 26.8;
    /// bench/results/h100-gemv-lut-2026-12-07.txt), nf4_gemv_mma as [`GemvKernel::for_width`] launches it below,
    /// where the two were within 4% (4096 x 4096) or it was faster (1024 x 4096 at one row).
    pub fn for_shape(n: usize, k: usize) -> Self {
        match (n, k) {
            (8192.., _) => GemvKernel::Lut {
                groups: 2,
                warps: 4,
            },
            (_, 8192..) => GemvKernel::Lut {
                groups: 2,
                warps: 16,
            },
            _ => GemvKernel::for_width(n),
        }
    }

    /// The dynamic shared memory of a launch for `rows` rows and a low-rank term of rank `rank` (nf4.cu): for
    /// nf4_gemv_mma 256 floats of partial sums per warp and group of 16 features, for nf4_gemv_lut its table of
    /// 8,192 words (which the partial sums reuse) and 256 floats, then the low-rank term's; None for the warp
    /// kernel (no dynamic shared memory, no low-rank term) and Auto.
    fn shared_bytes(self, rows: usize, rank: usize) -> Option<usize> {
        match self {
            GemvKernel::Mma { groups, warps } => {
                Some(4 * (warps * groups * 256 + low_rank_floats(groups, rows, rank)))
            }
            GemvKernel::Lut { groups, .. } => {
                Some(4 * (LUT_TABLE_WORDS + 256 + low_rank_floats(groups, rows, rank)))
            }
            GemvKernel::Auto | GemvKernel::Warp => None,
        }
    }

    /// The tensor-core kernel's launch shape for `n` output features: 32 features a block from 2,048 features
    /// up (fewer x reads per weight byte), 16 below (enough blocks for the narrow key and value projections);
    /// warps along k so that the grid holds about 4,096 warps (four to sixteen a block), enough loads in
    /// flight to keep memory busy.
    pub fn for_width(n: usize) -> Self {
        let groups = if n >= 2048 { 2 } else { 1 };
        let blocks = n.div_ceil(16 * groups).max(1);
        let warps = (4096 / blocks).clamp(4, 16);
        // The largest power of two not above it (4, 8 or 16).
        let warps = 1 << (usize::BITS - 1 - warps.leading_zeros());
        GemvKernel::Mma { groups, warps }
    }
}

/// `x @ W^T` from the NF4 arrays of `W` `[n, k]` (see [`Nf4Cuda::gemv`]).
struct Nf4Gemv {
    codes: Tensor,
    absmax_q: Tensor,
    tables: Tensor,
    n: usize,
    /// Warp or Mma (Auto is resolved by `gemv_with`).
    kernel: GemvKernel,
    /// What the tensor-core kernel adds (checked by `gemv_with`); nothing for the warp kernel.
    add: GemvAdd,
}

/// The CUDA storage behind a tensor's storage.
fn on_cuda<'a>(
    storage: &'a candle_core::Storage,
    what: &str,
) -> candle_core::Result<&'a CudaStorage> {
    match storage {
        candle_core::Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("nf4: {what} is not on a CUDA device"),
    }
}

impl candle_core::CustomOp1 for Nf4Gemv {
    fn name(&self) -> &'static str {
        "nf4-gemv"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-gemv runs on CUDA only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, k) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("nf4-gemv: x must be contiguous")
        };
        let dev = &x.device;
        let xs = x.as_cuda_slice::<bf16>()?.slice(start..end);
        let (codes, _) = self.codes.storage_and_layout();
        let (absmax_q, _) = self.absmax_q.storage_and_layout();
        let (tables, _) = self.tables.storage_and_layout();
        let c = on_cuda(&codes, "codes")?.as_cuda_slice::<u8>()?;
        let a = on_cuda(&absmax_q, "absmax_q")?.as_cuda_slice::<u8>()?;
        let t = on_cuda(&tables, "tables")?.as_cuda_slice::<f32>()?;
        let n = self.n;
        // The addresses of what the kernel adds, and the guards that keep their storages borrowed.
        let stream = dev.cuda_stream();
        let (args, _guards) = self.add.args(&stream)?;
        let rank = args.rank as usize;
        let tensor_cores = |groups: usize, warps: usize| LaunchConfig {
            grid_dim: (n.div_ceil(16 * groups) as u32, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: self.kernel.shared_bytes(rows, rank).unwrap_or(0) as u32,
        };
        let (name, cfg) = match self.kernel {
            GemvKernel::Mma { groups, warps } => (
                match groups {
                    1 => "nf4_gemv_mma1",
                    2 => "nf4_gemv_mma2",
                    _ => "nf4_gemv_mma4",
                },
                tensor_cores(groups, warps),
            ),
            // The wide kernels take rows 9 to 16 too.
            GemvKernel::Lut { groups, warps } => (
                match (groups, rows > 8) {
                    (1, false) => "nf4_gemv_lut1_0",
                    (1, true) => "nf4_gemv_lut1_1",
                    (_, false) => "nf4_gemv_lut2_0",
                    (_, true) => "nf4_gemv_lut2_1",
                },
                tensor_cores(groups, warps),
            ),
            // Eight warps (output features) per block of 256 threads.
            _ => (
                "nf4_gemv_bf16",
                LaunchConfig {
                    grid_dim: (n.div_ceil(8) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
        };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: the kernel writes every element of y (rows x n).
        let out = unsafe { dev.alloc::<bf16>(rows * n) }?;
        let rows_i = rows as i32;
        let mut b = func.builder();
        b.arg(c)
            .arg(a)
            .arg(t)
            .arg(&xs)
            .arg(&out)
            .arg(&n)
            .arg(&k)
            .arg(&rows_i);
        if self.kernel != GemvKernel::Warp {
            b.arg(&args);
        }
        // SAFETY: argument types and counts match nf4_gemv_bf16, nf4_gemv_mma* and nf4_gemv_lut* in nf4.cu;
        // `gemv_with` checked rows <= 16, k a multiple of 64, a 16-byte aligned x (codes are whole allocations,
        // 256-byte aligned), n * k / 64 within 32 bits, the tensor-core kernels' groups and warps (their launch
        // bounds; the lut kernels' partial sums fit their table: warps * groups <= 32) and their shared
        // memory within 48 KiB, and the added terms' shapes (bias [n], parts [slices, rows, rank], B [n, rank]),
        // whose storages the guards above keep borrowed.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((rows, n)),
        ))
    }
}

/// Packs f32 values (even count) into NF4 codes given each 64-block's absmax.
struct Nf4Quantize;

impl CustomOp2 for Nf4Quantize {
    fn name(&self) -> &'static str {
        "nf4-quantize"
    }

    fn cpu_fwd(
        &self,
        _v: &CpuStorage,
        _vl: &Layout,
        _a: &CpuStorage,
        _al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-quantize runs on CUDA only; the CPU uses Nf4Tensor::quantize")
    }

    fn cuda_fwd(
        &self,
        values: &CudaStorage,
        vl: &Layout,
        absmax: &CudaStorage,
        al: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        for (l, what) in [(vl, "values"), (al, "absmax")] {
            if !l.is_contiguous() || l.start_offset() != 0 {
                candle_core::bail!("nf4: {what} must be contiguous from offset 0");
            }
        }
        let dev = &values.device;
        let v = values.as_cuda_slice::<f32>()?;
        let a = absmax.as_cuda_slice::<f32>()?;
        let pairs = vl.shape().elem_count() / 2;
        let qmap = dev.clone_htod(&NF4_CODE[..])?;
        let func = dev.get_or_load_custom_func("nf4_quantize_f32", MODULE, PTX)?;
        // SAFETY: every byte is written by the kernel.
        let codes = unsafe { dev.alloc::<u8>(pairs) }?;
        let mut b = func.builder();
        b.arg(v).arg(a).arg(&qmap).arg(&pairs).arg(&codes);
        // SAFETY: argument types and counts match nf4_quantize_f32 in nf4.cu.
        unsafe { b.launch(LaunchConfig::for_num_elems(pairs as u32)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(codes, dev.clone()),
            Shape::from(pairs),
        ))
    }
}

/// Moves a host NF4 weight (as loaded from a file) to a CUDA `device`; other weights are returned as they are.
pub fn place_on_device(
    w: FrozenWeight,
    device: &candle_core::Device,
) -> candle_core::Result<FrozenWeight> {
    match w {
        FrozenWeight::Nf4(n) if device.is_cuda() => Ok(FrozenWeight::Nf4Cuda(Arc::new(
            Nf4Cuda::upload(&n, device)?,
        ))),
        other => Ok(other),
    }
}
