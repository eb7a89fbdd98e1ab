//! LoRA's rank-r products on CUDA, on cuBLAS's bf16 tensor cores at close to f32 accuracy. Activations are
//! bf16 already; each f32 operand (adapter weights, rank-wide intermediates) is split into a high and a low
//! bf16 part (`lowrank.cu`), whose products cuBLAS forms exactly and sums in f32:
//! `x A^T = x A_hi^T + x A_lo^T` (both parts side by side in one product, folded after) and
//! `p L ~ p_hi L_hi + p_lo L_hi + p_hi L_lo` (three parts along the summed axis). A rank-wide intermediate
//! `p` is only ever an operand of further products: [`project`] leaves it as those parts (`[m, 3, r]` bf16, split
//! in the launch that folds the product), which [`expand`] and [`reduce`] take as they are. An adapter weight is
//! split once per use site ([`weight_parts`]), from a transposed view (B^T) too, and its parts serve both
//! [`project`] and [`expand`] (a projection's forward and its backward). Projections that share an input (q, k
//! and v; gate and up) stack their adapters into one such operand ([`stacked_parts`]: the A's one above the
//! other, the B^T's on a block diagonal), so that each product serves all of them. No f32 copy of an
//! activation is made, and the frozen product of a projection can share its output buffer ([`Base::Product`]).
//! A decoding step's few rows take one plain f32 kernel instead ([`rows_project`]; the adapters of projections
//! that share an input in one launch, [`rows_project_members`]), whose result the NF4 few-row product finishes in
//! its own launch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor,
};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::fused::{rms_norm_into, row_view, rows_or_contiguous, view};

const PTX: &str = include_str!("lowrank.ptx");
const MODULE: &str = "qlab_lowrank";

/// Segments of an operand split into bf16 parts: a rank-wide intermediate's `(hi, lo, hi)` (left, from
/// `fold_split_bf16`) and an adapter weight's `(hi, hi, lo)` (right, from `stack_parts_bf16`), so that
/// `p L ~ p_hi L_hi + p_lo L_hi + p_hi L_lo`. The right triple's last two segments, (hi, lo), are also the
/// pair a product with a bf16 operand takes (two products, folded after): one split of an adapter weight serves
/// both uses ([`weight_parts`]).
const PARTS: usize = 3;

/// The most members [`stacked_parts`] stacks (STACK_MOST in lowrank.cu).
pub const STACK_MOST: usize = 4;

/// `Stack` in lowrank.cu: each member's f32 elements, strides and column span.
#[repr(C)]
#[derive(Clone, Copy)]
struct Stack {
    src: [u64; STACK_MOST],
    s0: [i64; STACK_MOST],
    s1: [i64; STACK_MOST],
    lo: [i32; STACK_MOST],
    cols: [i32; STACK_MOST],
}

// SAFETY: plain old data with the layout of Stack in lowrank.cu (repr(C): three arrays of 8-byte values, then
// two of i32).
unsafe impl cudarc::driver::DeviceRepr for Stack {}

fn launch_config(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 8192) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `[a, c]` = `src` `[a, 2, c]` summed over its middle axis.
fn fold(dev: &CudaDevice, src: &CudaSlice<f32>, a: usize, c: usize) -> Result<CudaSlice<f32>> {
    fold_with(dev, "fold_halves", src, a, c)
}

/// `[c, a]` = `src` `[2, a, c]` summed over its first axis, transposed.
fn fold_transposed(
    dev: &CudaDevice,
    src: &CudaSlice<f32>,
    a: usize,
    c: usize,
) -> Result<CudaSlice<f32>> {
    fold_with(dev, "fold_halves_t", src, a, c)
}

/// `[a, 3, c]` bf16 in `dst`'s rows, `ld` values apart: `src` `[a, 2, c]` summed over its middle axis and split
/// into (hi, lo, hi) parts ([`PARTS`]).
fn fold_split_into(
    dev: &CudaDevice,
    src: &CudaSlice<f32>,
    (a, c): (usize, usize),
    dst: &mut CudaViewMut<'_, bf16>,
    ld: usize,
) -> Result<()> {
    let span = match a {
        0 => 0,
        _ => (a - 1) * ld + PARTS * c,
    };
    if dst.len() < span || ld < PARTS * c || src.len() < 2 * a * c {
        candle_core::bail!(
            "lowrank: {a} rows of parts {ld} apart into {} values",
            dst.len()
        )
    }
    let func = dev.get_or_load_custom_func("fold_split_bf16", MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(src).arg(dst).arg(&a).arg(&c).arg(&ld);
    // SAFETY: argument types and counts match fold_split_bf16 in lowrank.cu; src holds `[a, 2, c]` and dst spans
    // the `a` rows (checked above).
    unsafe { builder.launch(launch_config(a * c)) }.w()?;
    Ok(())
}

/// One of the summing fold kernels over `src` (`2 a c` values), writing `a c` values.
fn fold_with(
    dev: &CudaDevice,
    kernel: &str,
    src: &CudaSlice<f32>,
    a: usize,
    c: usize,
) -> Result<CudaSlice<f32>> {
    // SAFETY: each kernel writes every element.
    let out = unsafe { dev.alloc::<f32>(a * c) }?;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(src).arg(&out).arg(&a).arg(&c);
    // SAFETY: argument types and counts match fold_halves and fold_halves_t in lowrank.cu (src, dst, A, C), with
    // src `[2 A C]` and dst `[A C]` and `[C A]` elements.
    unsafe { builder.launch(launch_config(a * c)) }.w()?;
    Ok(out)
}

/// The f32 elements of a 2-D operand (contiguous or a transposed view) from its layout's offset, and its
/// two strides: what [`stacked_parts`] reads each member through.
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

/// The bf16 parts of a rank-wide operand: what [`project`] returns (`[m, 3, r]`), or its rows' parts as a column
/// range `[m, 3 r]` of a wider tensor (what [`norm_project`] leaves after its input's columns): `(m, r)`, the
/// elements from the first, and the rows' spacing.
fn rank_parts<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<((usize, usize), CudaView<'a, bf16>, usize)> {
    let (m, r) = match l.dims() {
        &[m, three, r] if three == PARTS => (m, r),
        &[m, w] if w.is_multiple_of(PARTS) => (m, w / PARTS),
        other => candle_core::bail!("lowrank: {what} {other:?} is no [m, 3, r] of parts"),
    };
    let flat = Layout::contiguous_with_offset((m, PARTS * r), l.start_offset());
    let layout = match l.dims().len() {
        3 if l.is_contiguous() => &flat,
        _ => l,
    };
    let (v, (_, _, ld)) = row_view::<bf16>(s, layout, what)?;
    Ok(((m, r), v, ld))
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
    stacked_parts(std::slice::from_ref(w), false)
}

/// The adapter weights of projections that share an input as one operand of [`weight_parts`]' kind
/// `[3, n r, c]`, each f32 `[r, c_i]` (any strides): member i's rows at `[i r, i r + r)`. Not `diagonal`: every
/// member spans all c columns (the A's, `[r, in]` each). `diagonal`: member i sits at columns from the sum of
/// the earlier members' widths, zeros elsewhere (the B^T's, `[r, out_i]` each, c their widths' sum).
pub fn stacked_parts(members: &[Tensor], diagonal: bool) -> Result<Tensor> {
    stack(members, diagonal, false)
}

/// [`stacked_parts`]' transpose `[c, 3 n r]` (contiguous): the columns that follow a frozen weight's rows so that
/// one product adds the low-rank term (see [`norm_project`]).
pub fn stacked_parts_transposed(members: &[Tensor], diagonal: bool) -> Result<Tensor> {
    stack(members, diagonal, true)
}

fn stack(members: &[Tensor], diagonal: bool, transposed: bool) -> Result<Tensor> {
    let Some((first, rest)) = members.split_first() else {
        candle_core::bail!("lowrank-stack: no members")
    };
    if members.len() > STACK_MOST {
        candle_core::bail!(
            "lowrank-stack: {} members, at most {STACK_MOST}",
            members.len()
        )
    }
    first.apply_op1_no_bwd(&StackParts {
        rest: rest.to_vec(),
        diagonal,
        transposed,
    })
}

struct StackParts {
    /// The members after the op's input.
    rest: Vec<Tensor>,
    diagonal: bool,
    transposed: bool,
}

impl candle_core::CustomOp1 for StackParts {
    fn name(&self) -> &'static str {
        "lowrank-stack-parts"
    }

    cuda_only!(x);

    fn cuda_fwd(&self, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = w.device().clone();
        let held: Vec<_> = self.rest.iter().map(|t| t.storage_and_layout()).collect();
        let mut members = vec![(w, wl)];
        for (s, l) in &held {
            members.push((on_cuda(s)?, *l));
        }
        let r = wl.shape().dims2()?.0;
        let widths = members
            .iter()
            .map(|(_, l)| match l.shape().dims2()? {
                (rows, c) if rows == r => Ok(c),
                other => candle_core::bail!("lowrank-stack: member {other:?}, expected {r} rows"),
            })
            .collect::<Result<Vec<_>>>()?;
        let cols = match self.diagonal {
            true => widths.iter().sum(),
            false if widths.iter().all(|&c| c == widths[0]) => widths[0],
            false => candle_core::bail!("lowrank-stack: members of widths {widths:?}"),
        };
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| candle_core::Error::Msg(format!("lowrank-stack: {v} too large")))
        };
        let stream = dev.cuda_stream();
        let mut stack = Stack {
            src: [0; STACK_MOST],
            s0: [0; STACK_MOST],
            s1: [0; STACK_MOST],
            lo: [0; STACK_MOST],
            cols: [0; STACK_MOST],
        };
        let mut views = Vec::with_capacity(members.len());
        let mut lo = 0;
        for (i, ((s, l), &width)) in members.iter().zip(&widths).enumerate() {
            let (view, (s0, s1)) = strided(s, l, "W")?;
            stack.s0[i] = s0 as i64;
            stack.s1[i] = s1 as i64;
            stack.lo[i] = int(lo)?;
            stack.cols[i] = int(width)?;
            if self.diagonal {
                lo += width;
            }
            views.push(view);
        }
        let guards: Vec<_> = views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (ptr, guard) = v.device_ptr(&stream);
                stack.src[i] = ptr;
                guard
            })
            .collect();
        let (n, rows) = (members.len(), members.len() * r);
        let total = rows * cols;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(PARTS * total) }?;
        let func = dev.get_or_load_custom_func("stack_parts_bf16", MODULE, PTX)?;
        let (ri, ni) = (int(r)?, int(n)?);
        let mut builder = func.builder();
        let (transposed, ld) = (self.transposed as i32, PARTS * rows);
        builder.arg(&stack).arg(&out).arg(&ri).arg(&ni).arg(&cols);
        builder.arg(&transposed).arg(&ld);
        // SAFETY: argument types and counts match stack_parts_bf16 in lowrank.cu; each member's pointer, strides
        // and span describe its checked view (`strided`), alive until after the launch (`guards`).
        unsafe { builder.launch(launch_config(total)) }.w()?;
        drop(guards);
        let shape = match self.transposed {
            true => Shape::from((cols, PARTS * rows)),
            false => Shape::from((PARTS, rows, cols)),
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}

/// An adapter weight's parts `[3, r, k]` ([`weight_parts`]): `(r, k)` and their elements.
fn weight_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<((usize, usize), CudaView<'a, bf16>)> {
    let (three, r, k) = l.shape().dims3()?;
    if three != PARTS {
        candle_core::bail!("lowrank: {what} {:?} is no [3, r, k] of parts", l.dims())
    }
    Ok(((r, k), view::<bf16>(s, l, what)?))
}

/// `scale * x W^T` for x bf16 `[m, k]` and W given as [`weight_parts`] `[3, r, k]`, as the bf16 parts
/// `[m, 3, r]` that [`expand`] and [`reduce`] take (see the module's note). x may be a column range of a wider
/// tensor.
pub fn project(x: &Tensor, w: &Tensor, scale: f64) -> Result<Tensor> {
    rows_or_contiguous(x)?.apply_op2_no_bwd(&w.contiguous()?, &Project(scale as f32))
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
        let dev = x.device().clone();
        let (xv, (m, k, ld)) = row_view::<bf16>(x, xl, "x")?;
        let (weight, r) = weight_pair(w, wl, k)?;
        // SAFETY: written whole by `project_into`.
        let mut out = unsafe { dev.alloc::<bf16>(m * PARTS * r) }?;
        project_into(
            &dev,
            (&xv, ld),
            (m, k, r),
            &weight,
            self.0,
            (&mut out.slice_mut(..), PARTS * r),
        )?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((m, PARTS, r)),
        ))
    }
}

/// The (hi, lo) pair of an adapter weight's parts `[3, r, k]` (their last two segments) and r, checked against
/// the product's k.
fn weight_pair<'a>(
    w: &'a CudaStorage,
    wl: &Layout,
    k: usize,
) -> Result<(CudaView<'a, bf16>, usize)> {
    let ((r, wk), parts) = weight_view(w, wl, "W")?;
    if wk != k {
        candle_core::bail!("lowrank-project: W {:?} for rows of {k}", wl.dims())
    }
    Ok((parts.slice(r * k..), r))
}

/// [`project`]'s product of `m` rows of x (`k` values each, `ld` apart) and the weight's (hi, lo) pair, folded
/// and split into the parts `[m, 3, r]` in `dst`'s rows, `dst_ld` values apart.
fn project_into(
    dev: &CudaDevice,
    x: (&CudaView<'_, bf16>, usize),
    (m, k, r): (usize, usize, usize),
    weight: &CudaView<'_, bf16>,
    scale: f32,
    (dst, dst_ld): (&mut CudaViewMut<'_, bf16>, usize),
) -> Result<()> {
    let pair = project_pair(dev, x, (m, k, r), weight, scale)?;
    fold_split_into(dev, &pair, (m, r), dst, dst_ld)
}

/// `scale x W^T` for W's (hi, lo) pair: f32 `[m, 2, r]`, the products of both parts before their fold.
fn project_pair(
    dev: &CudaDevice,
    (xv, ld): (&CudaView<'_, bf16>, usize),
    (m, k, r): (usize, usize, usize),
    weight: &CudaView<'_, bf16>,
    scale: f32,
) -> Result<CudaSlice<f32>> {
    // SAFETY: the product writes every element (beta = 0).
    let mut pair = unsafe { dev.alloc::<f32>(m * 2 * r) }?;
    Gemm {
        trans: (true, false),
        mnk: (2 * r, m, k),
        ld: (k, ld, 2 * r),
        alpha: scale,
        beta: 0.0,
    }
    .run(dev, weight, xv, &mut pair, cudaDataType::CUDA_R_32F)?;
    Ok(pair)
}

/// `g^T x` for g given as [`project`]'s parts `[m, 3, r]` and x bf16 `[m, k]`: f32 `[r, k]` (a weight
/// gradient summed over rows), or `[k, r]` when `transposed` (B's gradient in B's layout). Either may be a
/// column range of a wider tensor (see [`rank_parts`]).
pub fn reduce(g: &Tensor, x: &Tensor, transposed: bool) -> Result<Tensor> {
    rows_or_contiguous(g)?.apply_op2_no_bwd(&rows_or_contiguous(x)?, &Reduce { transposed })
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
        let ((m, r), parts, lp) = rank_parts(g, gl, "g")?;
        let (xv, (xm, k, lx)) = row_view::<bf16>(x, xl, "x")?;
        if xm != m || xl.dims().len() != 2 {
            candle_core::bail!("lowrank-reduce: g {:?} vs x {:?}", gl.dims(), xl.dims())
        }
        let dev = g.device().clone();
        // SAFETY: the product writes every element (beta = 0).
        let mut pair = unsafe { dev.alloc::<f32>(2 * r * k) }?;
        // The parts' first two segments of each row, (hi, lo), are the pair this product takes.
        Gemm {
            trans: (false, true),
            mnk: (k, 2 * r, m),
            ld: (lx, lp, k),
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

/// The input of projections that read a normed `x` (bf16 `[m, k]`) with their low-rank term in the same
/// product: `[m, k + 3 n r]`, each row `rms_norm(x) w` (the frozen product's input) followed by
/// `scale rms_norm(x) w A^T` as [`project`]'s parts (for A given as [`stacked_parts`] `[3, n r, k]`). Multiplied
/// by the frozen weight whose rows continue with `B^T`'s parts (`FrozenWeight::dequantize_stacked`'s tail, from
/// [`stacked_parts_transposed`]), one product gives `x W^T + s (x A^T) B^T`: no separate low-rank product writes
/// the output first. Its first k columns are the normed input; the rest are the rank-wide parts [`reduce`] takes.
pub fn norm_project(x: &Tensor, w: &Tensor, eps: f64, a: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &a.contiguous()?,
        &NormProject {
            eps: eps as f32,
            scale: scale as f32,
        },
    )
}

struct NormProject {
    eps: f32,
    scale: f32,
}

impl candle_core::CustomOp3 for NormProject {
    fn name(&self) -> &'static str {
        "lowrank-norm-project"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        a: &CudaStorage,
        al: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (weight, r) = weight_pair(a, al, k)?;
        let ld = k + PARTS * r;
        let dev = x.device().clone();
        // SAFETY: the norm writes each row's first k values, the product's fold the rest.
        let mut out = unsafe { dev.alloc::<bf16>(m * ld) }?;
        let (xv, wv) = (
            view::<bf16>(x, xl, "x")?,
            view::<f32>(w, wl, "norm weight")?,
        );
        if wv.len() != k {
            candle_core::bail!(
                "lowrank-norm-project: norm weight {:?} for rows of {k}",
                wl.dims()
            )
        }
        if m > 0 {
            let span = (m - 1) * ld + k;
            rms_norm_into(
                &dev,
                (&xv, &wv),
                (m, k),
                (&mut out.slice_mut(..span), ld),
                self.eps,
            )?;
            let pair = project_pair(
                &dev,
                (&out.slice(..span), ld),
                (m, k, r),
                &weight,
                self.scale,
            )?;
            fold_split_into(&dev, &pair, (m, r), &mut out.slice_mut(k..), ld)?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((m, ld))))
    }
}

/// The most rows [`rows_project`] takes (ROWS_MOST in lowrank.cu).
const ROWS_PROJECT_MOST: usize = 16;
/// Elements of the summed axis in one slice of [`rows_project`] (ROWS_SLICE in lowrank.cu).
const ROWS_SLICE: usize = 1024;
/// The most adapters [`rows_project_members`] takes at once (rows_project's a0, a1 and a2 in lowrank.cu).
pub const ROWS_PROJECT_MEMBERS: usize = 3;

/// Answering's few rows, the adapter's first product: `x A^T` for bf16 `x` `[m, k]` and f32 A `[r, k]` as f32
/// partial sums `[S, m, r]` over slices of 1,024 elements of k (S = k / 1024 rounded up), which the NF4 few-row
/// product adds up, scales and multiplies by B in its epilogue (`GemvAdd`'s low-rank term). At a decoding step's
/// few rows the product is tiny: one launch that reads A once serves it, where the tensor-core path takes
/// several (each operand split into bf16 parts, the products, a fold). None where the kernel does not serve
/// (more than 16 rows, k not a multiple of 8, another dtype, a view not 16-byte aligned).
pub fn rows_project(x: &Tensor, a: &Tensor) -> Result<Option<Tensor>> {
    rows_project_members(x, &[a])?
        .map(|parts| parts.squeeze(0))
        .transpose()
}

/// [`rows_project`] for the adapters of projections that read the same `x` (q, k and v; gate and up), up to
/// [`ROWS_PROJECT_MEMBERS`] A's of one shape, in one launch: `[members, S, m, r]`, member j's partial sums
/// contiguous at `[j]`. None where the kernel does not serve them.
pub fn rows_project_members(x: &Tensor, a: &[&Tensor]) -> Result<Option<Tensor>> {
    let (m, k) = x.dims2()?;
    let Some(first) = a.first() else {
        return Ok(None);
    };
    let (r, ak) = first.dims2()?;
    if a.len() > ROWS_PROJECT_MEMBERS
        || ak != k
        || m == 0
        || m > ROWS_PROJECT_MOST
        || r == 0
        || k == 0
        || !k.is_multiple_of(8)
        || x.dtype() != DType::BF16
    {
        return Ok(None);
    }
    let mut members = Vec::with_capacity(a.len());
    for t in a {
        if t.dims2()? != (r, k) || t.dtype() != DType::F32 {
            return Ok(None);
        }
        let t = t.contiguous()?;
        // 16-byte loads: four f32 values of A.
        if !t.layout().start_offset().is_multiple_of(4) {
            return Ok(None);
        }
        members.push(t);
    }
    let x = x.contiguous()?;
    // 16-byte loads: eight bf16 values of x.
    if !x.layout().start_offset().is_multiple_of(8) {
        return Ok(None);
    }
    x.apply_op1_no_bwd(&RowsProject { a: members }).map(Some)
}

/// [`rows_project_members`]'s op on checked operands: x is the op's tensor, the A's ride along.
struct RowsProject {
    a: Vec<Tensor>,
}

impl CustomOp1 for RowsProject {
    fn name(&self) -> &'static str {
        "lowrank-rows-project"
    }

    cuda_only!(x);

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let Some(first) = self.a.first() else {
            candle_core::bail!("lowrank-rows-project: no adapter")
        };
        let r = first.dim(0)?;
        let members = self.a.len();
        let dev = x.device().clone();
        let xv = view::<bf16>(x, xl, "x")?;
        let guards: Vec<_> = self.a.iter().map(|a| a.storage_and_layout()).collect();
        let mut views = Vec::with_capacity(members);
        for (storage, layout) in &guards {
            views.push(view::<f32>(on_cuda(storage)?, layout, "A")?);
        }
        let slices = k.div_ceil(ROWS_SLICE);
        // SAFETY: the kernel writes every element: each (member, slice, rank) triple's warp all m rows.
        let out = unsafe { dev.alloc::<f32>(members * slices * m * r) }?;
        let func = dev.get_or_load_custom_func("rows_project", MODULE, PTX)?;
        let (mi, ki, ri, mj) = (m as i32, k as i32, r as i32, members as i32);
        let mut builder = func.builder();
        builder.arg(&xv);
        // Unused pointers repeat the first A (the kernel never reads them).
        for j in 0..ROWS_PROJECT_MEMBERS {
            builder.arg(&views[j.min(members - 1)]);
        }
        builder.arg(&out).arg(&mi).arg(&ki).arg(&ri).arg(&mj);
        let config = LaunchConfig {
            grid_dim: (slices as u32, (members * r).div_ceil(8) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and counts match rows_project in lowrank.cu; `rows_project_members` checked
        // m <= 16, at most three A's of one shape [r, k], k a multiple of 8 and 16-byte aligned views
        // (allocations are 256-byte aligned).
        unsafe { builder.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((members, slices, m, r)),
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
    /// `x W` for `W` `[k, o]` (or the first o columns of a wider `[k, o + c]`), computed into the result's
    /// buffer, plus a bf16 `[m, o]` tensor when given (a residual stream, or another gradient of the same
    /// input).
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
        _ => candle_core::bail!("lowrank: an operand is not on a CUDA device"),
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
    let ((m, r), p_parts, lp) = rank_parts(p, pl, "p")?;
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
        ld: (o, lp, o),
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
        // `x W` reads the first o columns of a wider W: a weight whose rows continue with a low-rank tail
        // (`adapted::Projection::over_columns`), its row stride the whole width.
        let (k, fits) = match out_in {
            true => (wc, wr == o),
            false => (wr, wc >= o),
        };
        if x.1.shape().elem_count() != m * k || !fits || w.0.dtype() != DType::BF16 {
            candle_core::bail!(
                "lowrank-expand: x {:?} and W {:?} ({:?}) for a [{m}, {o}] product",
                x.1.dims(),
                w.1.dims(),
                w.0.dtype()
            )
        }
        let (xv, wv) = (view::<bf16>(x.0, x.1, "x")?, view::<bf16>(w.0, w.1, "W")?);
        Gemm {
            trans: (out_in, false),
            mnk: (o, m, k),
            ld: (wc, k, o),
            alpha: 1.0,
            beta: 1.0,
        }
        .run(&dev, &wv, &xv, &mut out, cudaDataType::CUDA_R_16BF)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((m, o))))
}
