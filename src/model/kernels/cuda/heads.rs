//! Splitting a projection `[b, t, n * d]` into attention heads `[b, n, t, d]` with rotary embeddings applied,
//! as one kernel and one autograd node on CUDA; its backward moves the gradient back with the inverse
//! rotation. As a composition (reshape, transpose, copy, rope) candle's backward would add each edge's
//! gradient into a zero-filled buffer through strided kernels.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::fused::{MODULE, PTX, view};

/// Rotary tables `[b, 1, t, d / 2]` (bf16) and the pairing of dimensions.
#[derive(Clone)]
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
    pub interleaved: bool,
}

/// `x` `[b, t, heads * head_dim]` as `[b, heads, t, head_dim]`, rotated when `rotary` is given.
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
    x.contiguous()?.apply_op1(op)
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
        let xv = view::<bf16>(x, xl, "x")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(count) }?;
        let (rope, interleaved) = match &self.rotary {
            Some(r) => (1i32, r.interleaved as i32),
            None => (0, 0),
        };
        let tables = self
            .rotary
            .as_ref()
            .map(|r| (r.cos.storage_and_layout(), r.sin.storage_and_layout()));
        let rotary_views = match &tables {
            Some(((cs, cl), (ss, sl))) => match (&**cs, &**ss) {
                (Storage::Cuda(c), Storage::Cuda(s)) => {
                    Some((view::<bf16>(c, cl, "cos")?, view::<bf16>(s, sl, "sin")?))
                }
                _ => candle_core::bail!("split-heads: rotary tables must be on the GPU"),
            },
            None => None,
        };
        if let Some((cos, _)) = &rotary_views
            && cos.len() != b * t * d / 2
        {
            candle_core::bail!(
                "split-heads: rotary tables hold {} values, expected [{b}, {t}, {}]",
                cos.len(),
                d / 2
            )
        }
        let sign = if self.to_heads { 1f32 } else { -1f32 };
        let to_heads = self.to_heads as i32;
        // Eight pairs a thread (16-byte accesses) where d is a multiple of 16 and every view starts at a multiple
        // of 8 values (allocations are 256-byte aligned); a pair a thread otherwise.
        let aligned = |l: &Layout| l.start_offset().is_multiple_of(8);
        let tables_aligned = match &tables {
            Some(((_, cl), (_, sl))) => aligned(cl) && aligned(sl),
            None => true,
        };
        let wide = d.is_multiple_of(16) && aligned(xl) && tables_aligned;
        let (kernel, threads) = match wide {
            true => ("heads_rope8_bf16", count / 16),
            false => ("heads_rope_bf16", count / 2),
        };
        let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&xv).arg(&out);
        // Without rotation the tables are not read: x stands in for them.
        match &rotary_views {
            Some((cos, sin)) => builder.arg(cos).arg(sin),
            None => builder.arg(&xv).arg(&xv),
        };
        builder.arg(&b).arg(&t).arg(&n).arg(&d);
        builder
            .arg(&rope)
            .arg(&interleaved)
            .arg(&sign)
            .arg(&to_heads);
        // SAFETY: argument types and counts match heads_rope_bf16 and heads_rope8_bf16 in fused.cu; sizes checked
        // above, and the 16-byte kernel's alignment.
        unsafe { builder.launch(LaunchConfig::for_num_elems(threads as u32)) }.w()?;
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
