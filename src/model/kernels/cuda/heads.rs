//! Splitting a projection `[b, t, n * d]` into attention heads `[b, n, t, d]` with rotary embeddings applied,
//! as one kernel and one autograd node on CUDA; its backward moves the gradient back with the inverse
//! rotation. As a composition (reshape, transpose, copy, rope) candle's backward would add each edge's
//! gradient into a zero-filled buffer through strided kernels. The projection may be a column range of one
//! product's output that holds q, k and v side by side, and their gradients come back side by side too
//! ([`merge_qkv`]), as that product's backward takes them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::fused::{MODULE, PTX, row_view, rows_or_contiguous, view};

/// Rotary tables `[b, 1, t, d / 2]` (bf16) and the pairing of dimensions.
#[derive(Clone)]
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
    pub interleaved: bool,
}

/// `x` `[b, t, heads * head_dim]` as `[b, heads, t, head_dim]`, rotated when `rotary` is given; `x` may be a
/// column range of a wider tensor.
pub fn split_heads(
    x: &Tensor,
    heads: usize,
    head_dim: usize,
    rotary: Option<&Rotary>,
) -> Result<Tensor> {
    let (b, t, width) = x.dims3()?;
    if width != heads * head_dim || !head_dim.is_multiple_of(2) {
        candle_core::bail!("split-heads: width {width} is not {heads} heads of an even {head_dim}")
    }
    let op = Heads {
        dims: (b, t, heads, head_dim),
        rotary: rotary.cloned(),
        to_heads: true,
    };
    rows_or_contiguous(x)?.apply_op1(op)
}

struct Heads {
    dims: (usize, usize, usize, usize),
    rotary: Option<Rotary>,
    /// true: [b, t, n, d] -> [b, n, t, d] rotating forward; false: back, rotating backward.
    to_heads: bool,
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "split-heads-rope"
    }

    cuda_only!(x);

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, t, n, d) = self.dims;
        let count = b * t * n * d;
        if xl.shape().elem_count() != count {
            candle_core::bail!("split-heads: {:?} holds no [{b}, {t}, {n}, {d}]", xl.dims())
        }
        let dev = x.device().clone();
        let (xv, ld) = match self.to_heads {
            true => {
                let (xv, (_, _, ld)) = row_view::<bf16>(x, xl, "x")?;
                (xv, ld)
            }
            false => (view::<bf16>(x, xl, "x")?, n * d),
        };
        // SAFETY: the kernel writes every element.
        let mut out = unsafe { dev.alloc::<bf16>(count) }?;
        let rotary = self.rotary.as_ref();
        let tables = rotary.map(|r| (r.cos.storage_and_layout(), r.sin.storage_and_layout()));
        let moved = Moved {
            dims: self.dims,
            ld,
            to_heads: self.to_heads,
            interleaved: rotary.is_some_and(|r| r.interleaved),
        };
        moved.launch(&dev, &xv, &mut out.slice_mut(..), tables_of(&tables)?)?;
        let shape = if self.to_heads {
            Shape::from((b, n, t, d))
        } else {
            Shape::from((b, t, n * d))
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        merge_heads(g, self.rotary.as_ref()).map(Some)
    }
}

/// Heads `[b, n, t, d]` merged into `[b, t, n * d]`, rotated back by `rotary` when given (the gradient of
/// [`split_heads`]); no autograd.
pub fn merge_heads(x: &Tensor, rotary: Option<&Rotary>) -> Result<Tensor> {
    let (b, n, t, d) = x.dims4()?;
    let back = Heads {
        dims: (b, t, n, d),
        rotary: rotary.cloned(),
        to_heads: false,
    };
    x.contiguous()?.apply_op1_no_bwd(&back)
}

/// Gradients of the query, key and value heads `[b, n_i, t, d]` merged side by side into `[b * t, (h + 2 kvh) d]`,
/// the queries' and the keys' rotated back by `rotary`: the output gradient of one product that made q, k and v
/// ([`split_heads`]' reverse for all three); no autograd.
pub fn merge_qkv(dq: &Tensor, dk: &Tensor, dv: &Tensor, rotary: &Rotary) -> Result<Tensor> {
    dq.contiguous()?.apply_op3_no_bwd(
        &dk.contiguous()?,
        &dv.contiguous()?,
        &MergeQkv(rotary.clone()),
    )
}

struct MergeQkv(Rotary);

impl CustomOp3 for MergeQkv {
    fn name(&self) -> &'static str {
        "merge-qkv-heads"
    }

    cuda_only!(x y z);

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let (kb, kvh, kt, kd) = kl.shape().dims4()?;
        if (kb, kt, kd) != (b, t, d) || vl.dims() != kl.dims() {
            candle_core::bail!(
                "merge-qkv: q {:?}, k {:?}, v {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims()
            )
        }
        let width = (h + 2 * kvh) * d;
        if b * t == 0 {
            candle_core::bail!("merge-qkv: no rows in q {:?}", ql.dims())
        }
        let dev = q.device().clone();
        // SAFETY: the three launches write every element: each its columns of every row.
        let mut out = unsafe { dev.alloc::<bf16>(b * t * width) }?;
        let tables = Some((
            self.0.cos.storage_and_layout(),
            self.0.sin.storage_and_layout(),
        ));
        let parts = [
            (q, ql, h, 0, true),
            (k, kl, kvh, h * d, true),
            (v, vl, kvh, (h + kvh) * d, false),
        ];
        for (s, l, n, column, rotate) in parts {
            let moved = Moved {
                dims: (b, t, n, d),
                ld: width,
                to_heads: false,
                interleaved: self.0.interleaved,
            };
            let span = (b * t - 1) * width + n * d;
            let mut dst = out.slice_mut(column..column + span);
            let rotation = match rotate {
                true => tables_of(&tables)?,
                false => None,
            };
            moved.launch(&dev, &view::<bf16>(s, l, "heads")?, &mut dst, rotation)?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b * t, width)),
        ))
    }
}

/// The rotary tables' elements (cos, sin), checked to be on the GPU.
type Tables<'a> = Option<(CudaView<'a, bf16>, CudaView<'a, bf16>)>;

/// The rotary tables' storages, held (cos, sin), with their layouts.
type Held<'l, G> = Option<((G, &'l Layout), (G, &'l Layout))>;

fn tables_of<'a, G: std::ops::Deref<Target = Storage>>(
    held: &'a Held<'_, G>,
) -> Result<Tables<'a>> {
    match held {
        Some(((cs, cl), (ss, sl))) => match (&**cs, &**ss) {
            (Storage::Cuda(c), Storage::Cuda(s)) => Ok(Some((
                view::<bf16>(c, cl, "cos")?,
                view::<bf16>(s, sl, "sin")?,
            ))),
            _ => candle_core::bail!("split-heads: rotary tables must be on the GPU"),
        },
        None => Ok(None),
    }
}

/// One move of heads between the sequence layout (rows `ld` values apart) and the heads layout.
struct Moved {
    dims: (usize, usize, usize, usize),
    ld: usize,
    to_heads: bool,
    interleaved: bool,
}

impl Moved {
    /// Launches heads_rope(8)_bf16 from `src` into `dst` (each the elements its layout spans from the first),
    /// rotating by `tables` when given.
    fn launch(
        &self,
        dev: &CudaDevice,
        src: &CudaView<'_, bf16>,
        dst: &mut CudaViewMut<'_, bf16>,
        tables: Tables<'_>,
    ) -> Result<()> {
        let (b, t, n, d) = self.dims;
        let count = b * t * n * d;
        // The sequence layout's rows span (b t - 1) ld + n d values, the heads layout count.
        let rows_span = match b * t {
            0 => 0,
            rows => (rows - 1) * self.ld + n * d,
        };
        let (src_span, dst_span) = match self.to_heads {
            true => (rows_span, count),
            false => (count, rows_span),
        };
        if src.len() < src_span || dst.len() < dst_span || self.ld < n * d {
            candle_core::bail!(
                "split-heads: [{b}, {t}, {n}, {d}] with rows {} apart from {} into {} values",
                self.ld,
                src.len(),
                dst.len()
            )
        }
        if let Some((cos, _)) = &tables
            && cos.len() != b * t * d / 2
        {
            candle_core::bail!(
                "split-heads: rotary tables hold {} values, expected [{b}, {t}, {}]",
                cos.len(),
                d / 2
            )
        }
        let (rope, interleaved) = match &tables {
            Some(_) => (1i32, self.interleaved as i32),
            None => (0, 0),
        };
        let sign = if self.to_heads { 1f32 } else { -1f32 };
        let to_heads = self.to_heads as i32;
        // Eight pairs a thread (16-byte accesses) where d and the rows' spacing are multiples of 16 and 8 values
        // and every view starts 16-byte aligned; a pair a thread otherwise.
        let stream = dev.cuda_stream();
        let aligned = |v: &CudaView<'_, bf16>| {
            use cudarc::driver::DevicePtr;
            let (p, _guard) = v.device_ptr(&stream);
            p.is_multiple_of(16)
        };
        let dst_aligned = {
            use cudarc::driver::DevicePtrMut;
            let (p, _guard) = dst.device_ptr_mut(&stream);
            p.is_multiple_of(16)
        };
        let tables_aligned = tables
            .as_ref()
            .is_none_or(|(c, s)| aligned(c) && aligned(s));
        let wide = d.is_multiple_of(16)
            && self.ld.is_multiple_of(8)
            && aligned(src)
            && dst_aligned
            && tables_aligned;
        let (kernel, threads) = match wide {
            true => ("heads_rope8_bf16", count / 16),
            false => ("heads_rope_bf16", count / 2),
        };
        let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(src).arg(dst);
        // Without rotation the tables are not read: the source stands in for them.
        match &tables {
            Some((cos, sin)) => builder.arg(cos).arg(sin),
            None => builder.arg(src).arg(src),
        };
        builder.arg(&b).arg(&t).arg(&n).arg(&d).arg(&self.ld);
        builder
            .arg(&rope)
            .arg(&interleaved)
            .arg(&sign)
            .arg(&to_heads);
        // SAFETY: argument types and counts match heads_rope_bf16 and heads_rope8_bf16 in fused.cu; the views
        // span the rows `ld` apart that the kernel reads and writes, and the 16-byte kernel's alignment holds.
        unsafe { builder.launch(LaunchConfig::for_num_elems(threads as u32)) }.w()?;
        Ok(())
    }
}
