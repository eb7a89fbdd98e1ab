//! The training step's row-wise and elementwise ops on CUDA bf16 as single kernels (fused.cu) with
//! single-kernel backward passes: RMSNorm and the gated MLP product.
//! candle's fused kernels have no backward (CANDLE-NOTES) and its compositions sweep the same big
//! tensors many times in f32; these are one node each in candle's autograd.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, InplaceOp2, Layout, Result, Shape,
    Storage, Tensor,
};
use cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
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

/// `(rows, cols, ld)` of a view whose rows are contiguous and evenly spaced, `ld` values apart: its last axis
/// contiguous and its other axes one run of rows (a contiguous tensor, or a column range of a wider one). None
/// for any other view.
pub(super) fn row_strided(l: &Layout) -> Option<(usize, usize, usize)> {
    let (dims, stride) = (l.dims(), l.stride());
    let (&cols, lead) = dims.split_last()?;
    let rows: usize = lead.iter().product();
    if cols > 1 && stride[lead.len()] != 1 {
        return None;
    }
    let Some(&ld) = stride.get(lead.len().wrapping_sub(1)) else {
        return Some((rows, cols, cols));
    };
    let runs = (0..lead.len() - 1).all(|i| stride[i] == stride[i + 1] * dims[i + 1]);
    match (runs, rows) {
        (_, 0 | 1) => Some((rows, cols, cols)),
        (true, _) if ld >= cols => Some((rows, cols, ld)),
        _ => None,
    }
}

/// The elements of a [`row_strided`] view from its first to its last, and its `(rows, cols, ld)`.
pub(super) fn row_view<'a, T: cudarc::driver::DeviceRepr + candle_core::cuda_backend::CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<(CudaView<'a, T>, (usize, usize, usize))> {
    let Some((rows, cols, ld)) = row_strided(l) else {
        candle_core::bail!(
            "{what}: expected evenly spaced contiguous rows, got strides {:?}",
            l.stride()
        )
    };
    let span = match rows * cols {
        0 => 0,
        _ => (rows - 1) * ld + cols,
    };
    let all = s.as_cuda_slice::<T>()?;
    let start = l.start_offset();
    if start + span > all.len() {
        candle_core::bail!("{what}: the view reaches past its storage")
    }
    Ok((all.slice(start..start + span), (rows, cols, ld)))
}

/// `t` itself when its rows are evenly spaced ([`row_strided`]), else a contiguous copy.
pub(super) fn rows_or_contiguous(t: &Tensor) -> Result<Tensor> {
    match row_strided(t.layout()) {
        Some(_) => Ok(t.clone()),
        None => t.contiguous(),
    }
}

/// Launches rms_norm_bf16 on `rows` rows of x (contiguous) with weight w into `dst`'s rows, `ld` values apart.
pub(super) fn rms_norm_into(
    dev: &candle_core::cuda_backend::CudaDevice,
    (x, w): (&CudaView<'_, bf16>, &CudaView<'_, f32>),
    (rows, cols): (usize, usize),
    (dst, ld): (&mut cudarc::driver::CudaViewMut<'_, bf16>, usize),
    eps: f32,
) -> Result<()> {
    let span = match rows {
        0 => 0,
        _ => (rows - 1) * ld + cols,
    };
    if x.len() != rows * cols || w.len() != cols || dst.len() < span || ld < cols {
        candle_core::bail!(
            "rms-norm: {rows} rows of {cols} into {} values {ld} apart",
            dst.len()
        )
    }
    let func = dev.get_or_load_custom_func("rms_norm_bf16", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(w).arg(dst).arg(&cols).arg(&ld).arg(&eps);
    // SAFETY: argument types and counts match rms_norm_bf16 in fused.cu; the views' sizes are checked above.
    unsafe { b.launch(rows_config(rows, cols)) }.w()?;
    Ok(())
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
        let mut out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
        rms_norm_into(
            &dev,
            (&xv, &wv),
            (rows, cols),
            (&mut out.slice_mut(..), cols),
            self.eps,
        )?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RmsNormBackward {
            norm: *self,
            add: None,
        };
        let dx = x.apply_op3_no_bwd(w, &g.contiguous()?, &op)?;
        Ok((Some(dx), None))
    }
}

/// The gradient of [`rms_norm`]'s input `x` for its output's gradient `g`, plus `add` (bf16, `x`'s shape:
/// another gradient of the same input) when given, summed in the same kernel.
pub fn rms_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    g: &Tensor,
    eps: f64,
    add: Option<&Tensor>,
) -> Result<Tensor> {
    let add = match add {
        Some(a) if a.dims() != x.dims() || a.dtype() != DType::BF16 => candle_core::bail!(
            "rms-norm-backward: a {:?} {:?} sum for x {:?}",
            a.dims(),
            a.dtype(),
            x.dims()
        ),
        Some(a) => Some(a.contiguous()?),
        None => None,
    };
    let op = RmsNormBackward {
        norm: RmsNorm { eps: eps as f32 },
        add,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &g.contiguous()?, &op)
}

struct RmsNormBackward {
    norm: RmsNorm,
    /// A contiguous bf16 tensor of x's shape added to the gradient.
    add: Option<Tensor>,
}

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
        let held = self.add.as_ref().map(|a| a.storage_and_layout());
        let added = match &held {
            Some((s, l)) => match &**s {
                Storage::Cuda(c) => Some(view::<bf16>(c, l, "add")?),
                _ => candle_core::bail!("rms-norm-backward: the sum is not on a CUDA device"),
            },
            None => None,
        };
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
        let func = dev.get_or_load_custom_func("rms_norm_backward_bf16", MODULE, PTX)?;
        let add_given = added.is_some() as i32;
        let mut b = func.builder();
        b.arg(&xv).arg(&wv).arg(&gv);
        // Without a sum the kernel does not read it: the gradient stands in.
        match &added {
            Some(a) => b.arg(a),
            None => b.arg(&gv),
        };
        b.arg(&add_given).arg(&out).arg(&cols).arg(&self.norm.eps);
        // SAFETY: argument types and counts match rms_norm_backward_bf16 in fused.cu; the sum, when given, has
        // x's element count (checked by `rms_norm_backward`).
        unsafe { b.launch(rows_config(rows, cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
    }
}

/// `act(gate) * up` elementwise (bf16), differentiable in both. Either may be a column range of a wider
/// tensor (one product's output holding both): its rows are read where they lie.
pub fn gated(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    rows_or_contiguous(gate)?
        .apply_op2(&rows_or_contiguous(up)?, Gated(activation_code(activation)))
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
        let dev = g.device().clone();
        let (gv, (rows, cols, lg)) = row_view::<bf16>(g, gl, "gate")?;
        let (uv, (_, _, lu)) = row_view::<bf16>(u, ul, "up")?;
        let n = rows * cols;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(n) }?;
        let func = dev.get_or_load_custom_func("gated_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&gv).arg(&uv).arg(&out).arg(&rows).arg(&cols);
        b.arg(&lg).arg(&lu).arg(&self.0);
        // SAFETY: argument types and counts match gated_bf16 in fused.cu; both views span their rows (`row_view`).
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

fn gated_backward_code(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
    code: i32,
) -> Result<(Tensor, Tensor)> {
    let both = gated_backward_op(gate, up, g, code, false)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// The gradients of [`gated`]'s gate and up `[rows, cols]` for its output's gradient `g`, side by side in each row
/// `[rows, 2 cols]`: the output gradient of one product that made both (see `adapted::Projection`).
pub fn gated_backward_rows(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    gated_backward_op(gate, up, g, activation_code(activation), true)
}

/// [`gated_backward_rows`] written over its input: `gate_up` `[.., 2 cols]` (gate's columns, then up's, one
/// contiguous product) becomes their gradients for the output's gradient `g` `[.., cols]`. The kernel reads
/// each element of gate and up before it writes their gradients in the same places, so nothing is allocated.
pub fn gated_backward_in_place(gate_up: &Tensor, g: &Tensor, activation: Activation) -> Result<()> {
    gate_up.inplace_op2(
        &g.contiguous()?,
        &GatedBackwardInPlace(activation_code(activation)),
    )
}

struct GatedBackwardInPlace(i32);

impl InplaceOp2 for GatedBackwardInPlace {
    fn name(&self) -> &'static str {
        "gated-bf16-backward-in-place"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }

    fn cuda_fwd(
        &self,
        both: &mut CudaStorage,
        bl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (lead, cols) = match (bl.dims().split_last(), gl.dims().split_last()) {
            (Some((&w, lead)), Some((&c, glead))) if lead == glead && w == 2 * c => (lead, c),
            _ => candle_core::bail!(
                "gated-backward-in-place: gate and up {:?} for a gradient {:?}",
                bl.dims(),
                gl.dims()
            ),
        };
        let Some((start, _)) = bl.contiguous_offsets() else {
            candle_core::bail!("gated-backward-in-place: gate and up must be contiguous")
        };
        let rows: usize = lead.iter().product();
        let n = rows * cols;
        let dev = both.device().clone();
        let stream = dev.cuda_stream();
        let grv = view::<bf16>(g, gl, "grad")?;
        let slice = both.as_cuda_slice_mut::<bf16>()?;
        let (base, _written) = {
            use cudarc::driver::DevicePtrMut;
            slice.device_ptr_mut(&stream)
        };
        let gate = base + (start * 2) as u64;
        let up = gate + (cols * 2) as u64;
        let (ld, code) = (2 * cols, self.0);
        let func = dev.get_or_load_custom_func("gated_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&gate).arg(&up).arg(&grv).arg(&gate);
        b.arg(&rows)
            .arg(&cols)
            .arg(&ld)
            .arg(&ld)
            .arg(&ld)
            .arg(&cols)
            .arg(&code);
        // SAFETY: argument types and counts match gated_backward_bf16 in fused.cu; gate and up are the halves of
        // each contiguous row of `both` (checked above), which the kernel overwrites element by element with
        // their gradients (each thread reads its elements before writing them; no two threads share one).
        unsafe { b.launch(elementwise_config(n)) }.w()?;
        Ok(())
    }
}

fn gated_backward_op(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
    code: i32,
    rows: bool,
) -> Result<Tensor> {
    rows_or_contiguous(gate)?.apply_op3_no_bwd(
        &rows_or_contiguous(up)?,
        &g.contiguous()?,
        &GatedBackward { code, rows },
    )
}

/// The gradients of gate and up, stacked `[2, ..]`, or side by side in each row `[rows, 2 cols]` (`rows`).
struct GatedBackward {
    code: i32,
    rows: bool,
}

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
        if gl.dims() != ul.dims() || gl.dims() != grl.dims() {
            candle_core::bail!(
                "gated-backward: gate {:?}, up {:?}, grad {:?}",
                gl.dims(),
                ul.dims(),
                grl.dims()
            )
        }
        let dev = gate.device().clone();
        let (gv, (rows, cols, lg)) = row_view::<bf16>(gate, gl, "gate")?;
        let (uv, (_, _, lu)) = row_view::<bf16>(up, ul, "up")?;
        let grv = view::<bf16>(g, grl, "grad")?;
        let n = rows * cols;
        let (lo, uo) = match self.rows {
            true => (2 * cols, cols),
            false => (cols, n),
        };
        // SAFETY: the kernel writes all 2n elements.
        let out = unsafe { dev.alloc::<bf16>(2 * n) }?;
        let func = dev.get_or_load_custom_func("gated_backward_bf16", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&gv)
            .arg(&uv)
            .arg(&grv)
            .arg(&out)
            .arg(&rows)
            .arg(&cols);
        b.arg(&lg).arg(&lu).arg(&lo).arg(&uo).arg(&self.code);
        // SAFETY: argument types and counts match gated_backward_bf16 in fused.cu; the views span their rows, the
        // gradient has their shape, and (lo, uo) place 2n values.
        unsafe { b.launch(elementwise_config(n)) }.w()?;
        let dims = match self.rows {
            true => vec![rows, 2 * cols],
            false => [&[2], gl.dims()].concat(),
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    }
}
