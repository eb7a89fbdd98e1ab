//! LoRA's rank-r products on CUDA, on cuBLAS's bf16 tensor cores at close to f32 accuracy. Activations are
//! bf16 already; each f32 operand (adapter weights, rank-wide intermediates) is split into a high and a low
//! bf16 part (`lowrank.cu`), whose products cuBLAS forms exactly and sums in f32:
//! `x A^T = x A_hi^T + x A_lo^T` (both parts side by side in one product, folded after) and
//! `p L ~ p_hi L_hi + p_lo L_hi + p_hi L_lo` (three parts along the summed axis). A rank-wide intermediate
//! `p` is only ever an operand of further products: [`project`] leaves it as those parts (`[m, 3, r]` bf16, split
//! in the launch that folds the product), which [`expand`] and [`reduce`] take as they are. An adapter weight is
//! split once per use site ([`weight_parts`]), from a transposed view (B^T) too, and its parts serve both
//! [`project`] and [`expand`] (a projection's forward and its backward). No f32 copy of an
//! activation is made, and the frozen product of a projection can share its output buffer ([`Base::Product`]).
//! A decoding step's few rows take one plain f32 kernel instead ([`rows_project`]), whose result the NF4 few-row
//! product finishes in its own launch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::fused::view;

const PTX: &str = include_str!("lowrank.ptx");
const MODULE: &str = "qlab_lowrank";

/// Which bf16 part of an f32 operand one segment of a split holds.
#[derive(Clone, Copy)]
enum Part {
    Hi,
    Lo,
}

/// Parts of `p` and of `L` in `p L` with both in f32: `p_hi L_hi + p_lo L_hi + p_hi L_lo`. The right triple's
/// last two segments, (hi, lo), are also the pair a product with a bf16 operand takes (two products, folded
/// after): one split of an adapter weight serves both uses ([`weight_parts`]).
const LEFT_TRIPLE: [Part; 3] = [Part::Hi, Part::Lo, Part::Hi];
const RIGHT_TRIPLE: [Part; 3] = [Part::Hi, Part::Hi, Part::Lo];

fn launch_config(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 8192) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `[a, parts, b, c]` bf16 from the f32 elements `(a, b, c)` at `src[a sa + b sb + c sc]`, segment `s`
/// holding `parts[s]` of each.
fn split(
    dev: &CudaDevice,
    src: &CudaView<'_, f32>,
    (a, b, c): (usize, usize, usize),
    (sa, sb, sc): (usize, usize, usize),
    parts: &[Part],
) -> Result<CudaSlice<bf16>> {
    let total = a * parts.len() * b * c;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<bf16>(total) }?;
    let lo_bits = parts
        .iter()
        .enumerate()
        .map(|(s, p)| match p {
            Part::Hi => 0u32,
            Part::Lo => 1 << s,
        })
        .sum::<u32>();
    let segments = parts.len() as i32;
    let func = dev.get_or_load_custom_func("split_bf16", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(src)
        .arg(&out)
        .arg(&a)
        .arg(&segments)
        .arg(&b)
        .arg(&c)
        .arg(&sa)
        .arg(&sb)
        .arg(&sc)
        .arg(&lo_bits);
    // SAFETY: argument types and counts match split_bf16 in lowrank.cu.
    unsafe { builder.launch(launch_config(total)) }.w()?;
    Ok(out)
}

/// `[a, c]` = `src` `[a, 2, c]` summed over its middle axis.
fn fold(dev: &CudaDevice, src: &CudaSlice<f32>, a: usize, c: usize) -> Result<CudaSlice<f32>> {
    fold_with::<f32>(dev, "fold_halves", src, a, c, 1)
}

/// `[c, a]` = `src` `[2, a, c]` summed over its first axis, transposed.
fn fold_transposed(
    dev: &CudaDevice,
    src: &CudaSlice<f32>,
    a: usize,
    c: usize,
) -> Result<CudaSlice<f32>> {
    fold_with::<f32>(dev, "fold_halves_t", src, a, c, 1)
}

/// `[a, 3, c]` bf16: `src` `[a, 2, c]` summed over its middle axis and split into ([`LEFT_TRIPLE`]) parts.
fn fold_split(
    dev: &CudaDevice,
    src: &CudaSlice<f32>,
    a: usize,
    c: usize,
) -> Result<CudaSlice<bf16>> {
    fold_with::<bf16>(dev, "fold_split_bf16", src, a, c, 3)
}

/// One of the fold kernels over `src` (`2 a c` values), writing `a c outs` values of `T`.
fn fold_with<T: cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    src: &CudaSlice<f32>,
    a: usize,
    c: usize,
    outs: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: each kernel writes every element.
    let out = unsafe { dev.alloc::<T>(a * c * outs) }?;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(src).arg(&out).arg(&a).arg(&c);
    // SAFETY: argument types and counts match fold_halves, fold_halves_t and fold_split_bf16 in lowrank.cu
    // (src, dst, A, C), with src `[2 A C]` and dst `[A C]`, `[C A]` and `[3 A C]` elements.
    unsafe { builder.launch(launch_config(a * c)) }.w()?;
    Ok(out)
}

/// The f32 elements of a 2-D operand (contiguous or a transposed view) from its layout's offset, and its
/// two strides: what [`split`] reads it through.
fn strided<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<(CudaView<'a, f32>, (usize, usize))> {
    let (rows, cols) = l.shape().dims2()?;
    let (s0, s1) = match l.stride() {
        [s0, s1] => (*s0, *s1),
        other => candle_core::bail!("lowrank: {what} has strides {other:?}"),
    };
    let start = l.start_offset();
    let span = match rows * cols {
        0 => 0,
        _ => (rows - 1) * s0 + (cols - 1) * s1 + 1,
    };
    let all = s.as_cuda_slice::<f32>()?;
    if start + span > all.len() {
        candle_core::bail!("lowrank: {what} reaches past its storage")
    }
    Ok((all.slice(start..start + span), (s0, s1)))
}

/// The bf16 parts `[m, 3, r]` of a rank-wide operand (what [`project`] returns): `(m, r)` and its elements.
fn rank_parts<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<((usize, usize), CudaView<'a, bf16>)> {
    let (m, three, r) = l.shape().dims3()?;
    if three != LEFT_TRIPLE.len() {
        candle_core::bail!("lowrank: {what} {:?} is no [m, 3, r] of parts", l.dims())
    }
    Ok(((m, r), view::<bf16>(s, l, what)?))
}

/// One cuBLAS product in its column-major terms, `C = alpha op(A) op(B) + beta C` with `op(A)` `[m, k]` and
/// `op(B)` `[k, n]`; a row-major `[r, c]` matrix is a column-major `[c, r]` one.
struct Gemm {
    trans: (bool, bool),
    mnk: (usize, usize, usize),
    ld: (usize, usize, usize),
    alpha: f32,
    beta: f32,
}

impl Gemm {
    /// Runs on bf16 A and B with f32 sums into C, of type `c_type` (bf16 or f32).
    fn run<C>(
        &self,
        dev: &CudaDevice,
        a: &impl DevicePtr<bf16>,
        b: &impl DevicePtr<bf16>,
        c: &mut impl DevicePtrMut<C>,
        c_type: cudaDataType,
    ) -> Result<()> {
        let int = |v: usize| -> Result<i32> {
            i32::try_from(v)
                .map_err(|_| candle_core::Error::Msg(format!("lowrank: {v} exceeds cuBLAS's int")))
        };
        let op = |t: bool| match t {
            true => cublasOperation_t::CUBLAS_OP_T,
            false => cublasOperation_t::CUBLAS_OP_N,
        };
        let (m, n, k) = self.mnk;
        let (lda, ldb, ldc) = self.ld;
        let stream = dev.cuda_stream();
        let blas = dev.cublas_handle();
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        let (pc, _gc) = c.device_ptr_mut(&stream);
        // SAFETY: the pointers are live device buffers of the sizes the dimensions and leading dimensions
        // describe (checked by the callers), on the stream cuBLAS's handle uses.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                op(self.trans.0),
                op(self.trans.1),
                int(m)?,
                int(n)?,
                int(k)?,
                (&self.alpha) as *const f32 as *const _,
                pa as *const _,
                cudaDataType::CUDA_R_16BF,
                int(lda)?,
                pb as *const _,
                cudaDataType::CUDA_R_16BF,
                int(ldb)?,
                (&self.beta) as *const f32 as *const _,
                pc as *mut _,
                c_type,
                int(ldc)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .w()
    }
}

/// An adapter weight W f32 `[r, k]` (any strides: B^T as a view serves) as bf16 parts `[3, r, k]`, (hi, hi,
/// lo): the right operand of [`expand`], and through its last two segments the weight of [`project`].
pub fn weight_parts(w: &Tensor) -> Result<Tensor> {
    w.apply_op1_no_bwd(&WeightParts)
}

struct WeightParts;

impl candle_core::CustomOp1 for WeightParts {
    fn name(&self) -> &'static str {
        "lowrank-weight-parts"
    }

    cuda_only!(x);

    fn cuda_fwd(&self, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (r, k) = wl.shape().dims2()?;
        let dev = w.device().clone();
        let (wv, (sr, sk)) = strided(w, wl, "W")?;
        let parts = split(&dev, &wv, (1, r, k), (0, sr, sk), &RIGHT_TRIPLE)?;
        Ok((
            CudaStorage::wrap_cuda_slice(parts, dev),
            Shape::from((RIGHT_TRIPLE.len(), r, k)),
        ))
    }
}

/// An adapter weight's parts `[3, r, k]` ([`weight_parts`]): `(r, k)` and their elements.
fn weight_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<((usize, usize), CudaView<'a, bf16>)> {
    let (three, r, k) = l.shape().dims3()?;
    if three != RIGHT_TRIPLE.len() {
        candle_core::bail!("lowrank: {what} {:?} is no [3, r, k] of parts", l.dims())
    }
    Ok(((r, k), view::<bf16>(s, l, what)?))
}

/// `scale * x W^T` for x bf16 `[m, k]` and W given as [`weight_parts`] `[3, r, k]`, as the bf16 parts
/// `[m, 3, r]` that [`expand`] and [`reduce`] take (see the module's note).
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
        let ((r, wk), parts) = weight_view(w, wl, "W")?;
        if wk != k {
            candle_core::bail!("lowrank-project: x {:?} vs W {:?}", xl.dims(), wl.dims())
        }
        let dev = x.device().clone();
        let xv = view::<bf16>(x, xl, "x")?;
        // The weight's (hi, lo) pair: its parts' last two segments.
        let pair_parts = parts.slice(r * k..);
        // SAFETY: the product writes every element (beta = 0).
        let mut pair = unsafe { dev.alloc::<f32>(m * 2 * r) }?;
        Gemm {
            trans: (true, false),
            mnk: (2 * r, m, k),
            ld: (k, k, 2 * r),
            alpha: self.0,
            beta: 0.0,
        }
        .run(&dev, &pair_parts, &xv, &mut pair, cudaDataType::CUDA_R_32F)?;
        let out = fold_split(&dev, &pair, m, r)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((m, LEFT_TRIPLE.len(), r)),
        ))
    }
}

/// `g^T x` for g given as [`project`]'s parts `[m, 3, r]` and x bf16 `[m, k]`: f32 `[r, k]` (a weight
/// gradient summed over rows), or `[k, r]` when `transposed` (B's gradient in B's layout).
pub fn reduce(g: &Tensor, x: &Tensor, transposed: bool) -> Result<Tensor> {
    g.contiguous()?
        .apply_op2_no_bwd(&x.contiguous()?, &Reduce { transposed })
}

struct Reduce {
    transposed: bool,
}

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
        let ((m, r), parts) = rank_parts(g, gl, "g")?;
        let (xm, k) = xl.shape().dims2()?;
        if xm != m {
            candle_core::bail!("lowrank-reduce: g {:?} vs x {:?}", gl.dims(), xl.dims())
        }
        let dev = g.device().clone();
        let xv = view::<bf16>(x, xl, "x")?;
        // SAFETY: the product writes every element (beta = 0).
        let mut pair = unsafe { dev.alloc::<f32>(2 * r * k) }?;
        // The parts' first two segments of each row, (hi, lo), are the pair this product takes.
        Gemm {
            trans: (false, true),
            mnk: (k, 2 * r, m),
            ld: (k, LEFT_TRIPLE.len() * r, k),
            alpha: 1.0,
            beta: 0.0,
        }
        .run(&dev, &xv, &parts, &mut pair, cudaDataType::CUDA_R_32F)?;
        let (out, shape) = match self.transposed {
            true => (fold_transposed(&dev, &pair, r, k)?, Shape::from((k, r))),
            false => (fold(&dev, &pair, 1, r * k)?, Shape::from((r, k))),
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}

/// The most rows [`rows_project`] takes (ROWS_MOST in lowrank.cu).
const ROWS_PROJECT_MOST: usize = 16;
/// Elements of the summed axis in one slice of [`rows_project`] (ROWS_SLICE in lowrank.cu).
const ROWS_SLICE: usize = 1024;

/// Answering's few rows, the adapter's first product: `x A^T` for bf16 `x` `[m, k]` and f32 A `[r, k]` as f32
/// partial sums `[S, m, r]` over slices of 1,024 elements of k (S = k / 1024 rounded up), which the NF4 few-row
/// product adds up, scales and multiplies by B in its epilogue (`GemvAdd`'s low-rank term). At a decoding step's
/// few rows the product is tiny: one launch that reads A once serves it, where the tensor-core path takes
/// several (each operand split into bf16 parts, the products, a fold). None where the kernel does not serve
/// (more than 16 rows, k not a multiple of 8, another dtype, a view not 16-byte aligned).
pub fn rows_project(x: &Tensor, a: &Tensor) -> Result<Option<Tensor>> {
    let (m, k) = x.dims2()?;
    let (r, ak) = a.dims2()?;
    if ak != k || m == 0 || m > ROWS_PROJECT_MOST || r == 0 || k == 0 || !k.is_multiple_of(8) {
        return Ok(None);
    }
    if x.dtype() != DType::BF16 || a.dtype() != DType::F32 {
        return Ok(None);
    }
    let (x, a) = (x.contiguous()?, a.contiguous()?);
    // 16-byte loads: eight bf16 values of x, four f32 values of A.
    if !x.layout().start_offset().is_multiple_of(8) || !a.layout().start_offset().is_multiple_of(4)
    {
        return Ok(None);
    }
    x.apply_op2_no_bwd(&a, &RowsProject).map(Some)
}

/// [`rows_project`]'s op on checked operands.
struct RowsProject;

impl CustomOp2 for RowsProject {
    fn name(&self) -> &'static str {
        "lowrank-rows-project"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        a: &CudaStorage,
        al: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let r = al.shape().dims2()?.0;
        let dev = x.device().clone();
        let (xv, av) = (view::<bf16>(x, xl, "x")?, view::<f32>(a, al, "A")?);
        let slices = k.div_ceil(ROWS_SLICE);
        // SAFETY: the kernel writes every element: each (slice, rank) pair's warp all m rows.
        let out = unsafe { dev.alloc::<f32>(slices * m * r) }?;
        let func = dev.get_or_load_custom_func("rows_project", MODULE, PTX)?;
        let (mi, ki, ri) = (m as i32, k as i32, r as i32);
        let mut builder = func.builder();
        builder
            .arg(&xv)
            .arg(&av)
            .arg(&out)
            .arg(&mi)
            .arg(&ki)
            .arg(&ri);
        let config = LaunchConfig {
            grid_dim: (slices as u32, r.div_ceil(8) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and counts match rows_project in lowrank.cu; `rows_project` checked m <= 16,
        // k a multiple of 8 and 16-byte aligned views (allocations are 256-byte aligned).
        unsafe { builder.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((slices, m, r)),
        ))
    }
}

/// What the low-rank product `p L` of [`expand`] is added to.
pub enum Base<'a> {
    /// Nothing: the result is `p L`.
    Zero,
    /// A bf16 tensor `[m, o]`.
    Add(&'a Tensor),
    /// A frozen product of bf16 `x` `[m, k]` and a bf16 weight: `x W^T` for `W` `[o, k]` (`out_in`), or
    /// `x W` for `W` `[k, o]`, computed into the result's buffer, plus a bf16 `[m, o]` tensor when given
    /// (a residual stream, or another gradient of the same input).
    Product {
        x: &'a Tensor,
        w: &'a Tensor,
        out_in: bool,
        add: Option<&'a Tensor>,
    },
}

/// `base + p L` in bf16: p as [`project`]'s parts `[m, 3, r]`, L as [`weight_parts`] `[3, r, o]`.
pub fn expand(base: Base, p: &Tensor, l: &Tensor) -> Result<Tensor> {
    let (p, l) = (p.contiguous()?, l.contiguous()?);
    let held = |t: &Tensor| t.contiguous();
    let op = match base {
        Base::Zero => Expand::Zero,
        Base::Add(y) => Expand::Add(held(y)?),
        Base::Product { x, w, out_in, add } => Expand::Product {
            x: held(x)?,
            w: held(w)?,
            out_in,
            add: add.map(held).transpose()?,
        },
    };
    p.apply_op2_no_bwd(&l, &op)
}

/// [`Base`] with its tensors held, as an op on `(p, L)`.
enum Expand {
    Zero,
    Add(Tensor),
    Product {
        x: Tensor,
        w: Tensor,
        out_in: bool,
        add: Option<Tensor>,
    },
}

impl CustomOp2 for Expand {
    fn name(&self) -> &'static str {
        "lowrank-expand"
    }

    cuda_only!(x y);

    fn cuda_fwd(
        &self,
        p: &CudaStorage,
        pl: &Layout,
        l: &CudaStorage,
        ll: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match self {
            Self::Zero => expand_storage(BaseView::Zero, (p, pl), (l, ll)),
            Self::Add(y) => {
                let (ys, yl) = y.storage_and_layout();
                expand_storage(BaseView::Add(on_cuda(&ys)?, yl), (p, pl), (l, ll))
            }
            Self::Product { x, w, out_in, add } => {
                let (xs, xl) = x.storage_and_layout();
                let (ws, wl) = w.storage_and_layout();
                let added = add.as_ref().map(|a| a.storage_and_layout());
                let add = match &added {
                    Some((s, l)) => Some((on_cuda(s)?, *l)),
                    None => None,
                };
                let base = BaseView::Product {
                    x: (on_cuda(&xs)?, xl),
                    w: (on_cuda(&ws)?, wl),
                    out_in: *out_in,
                    add,
                };
                expand_storage(base, (p, pl), (l, ll))
            }
        }
    }
}

fn on_cuda(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("lowrank-expand: an operand is not on a CUDA device"),
    }
}

/// [`Base`] at the storage level, for ops that hold their operands' storages already.
pub(super) enum BaseView<'a> {
    Zero,
    Add(&'a CudaStorage, &'a Layout),
    Product {
        x: (&'a CudaStorage, &'a Layout),
        w: (&'a CudaStorage, &'a Layout),
        out_in: bool,
        add: Option<(&'a CudaStorage, &'a Layout)>,
    },
}

/// [`expand`] on storages: the result's storage and shape `[m, o]`.
pub(super) fn expand_storage(
    base: BaseView,
    (p, pl): (&CudaStorage, &Layout),
    (l, ll): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let ((m, r), p_parts) = rank_parts(p, pl, "p")?;
    let ((lr, o), l_parts) = weight_view(l, ll, "L")?;
    if lr != r {
        candle_core::bail!("lowrank-expand: p {:?} vs L {:?}", pl.dims(), ll.dims())
    }
    let dev = p.device().clone();
    // SAFETY: written whole by the copy below or by the low-rank product (beta = 0).
    let mut out = unsafe { dev.alloc::<bf16>(m * o) }?;
    let added = match &base {
        BaseView::Add(y, yl) => Some((*y, *yl)),
        BaseView::Product { add, .. } => *add,
        BaseView::Zero => None,
    };
    let mut low_rank_beta = 0.0;
    if let Some((y, yl)) = added {
        if yl.shape().elem_count() != m * o {
            candle_core::bail!("lowrank-expand: base {:?}, expected [{m}, {o}]", yl.dims())
        }
        dev.memcpy_dtod(&view::<bf16>(y, yl, "base")?, &mut out)?;
        low_rank_beta = 1.0;
    }
    Gemm {
        trans: (false, false),
        mnk: (o, m, 3 * r),
        ld: (o, 3 * r, o),
        alpha: 1.0,
        beta: low_rank_beta,
    }
    .run(
        &dev,
        &l_parts,
        &p_parts,
        &mut out,
        cudaDataType::CUDA_R_16BF,
    )?;
    if let BaseView::Product { x, w, out_in, .. } = base {
        let (wr, wc) = w.1.shape().dims2()?;
        let k = if out_in { wc } else { wr };
        let wdims = w.1.dims();
        let expected = if out_in { [o, k] } else { [k, o] };
        if x.1.shape().elem_count() != m * k || wdims != expected || w.0.dtype() != DType::BF16 {
            candle_core::bail!(
                "lowrank-expand: x {:?} and W {:?} ({:?}) for a [{m}, {o}] product",
                x.1.dims(),
                wdims,
                w.0.dtype()
            )
        }
        let (xv, wv) = (view::<bf16>(x.0, x.1, "x")?, view::<bf16>(w.0, w.1, "W")?);
        Gemm {
            trans: (out_in, false),
            mnk: (o, m, k),
            ld: (if out_in { k } else { o }, k, o),
            alpha: 1.0,
            beta: 1.0,
        }
        .run(&dev, &wv, &xv, &mut out, cudaDataType::CUDA_R_16BF)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((m, o))))
}
