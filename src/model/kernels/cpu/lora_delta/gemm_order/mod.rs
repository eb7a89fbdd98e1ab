//! The LoRA term's two small products computed in gemm's own order of roundings, so that answering with an
//! unmerged adapter keeps candle's bits without gemm's per-call cost (packing, dispatch, one output at a time).
//!
//! gemm 0.19 picks one of several paths per call (`gemm_basic_generic`), each with a fixed order of
//! roundings per output element; the lane width `W` is its instruction set's (16 with AVX-512F, 8 with FMA):
//! - *horizontal* (at most 256 outputs, both operands contiguous along the depth): W-lane fused
//!   multiply-adds along the depth in chunks of 1,024, a masked last block, a fixed tree over the lanes, and
//!   the chunks added in order;
//! - *gemv* (one row): eight W-lane accumulators over blocks of 8W, added pairwise, then one W-lane
//!   accumulator, then the lanes added one after another, then a scalar fused tail;
//! - *micro-kernel* (anything else): one fused multiply-add per depth step, in depth order.
//!
//! Here the first product (`x A^T`, depth = the layer's width) follows the horizontal path along the depth,
//! and the second (`u B^T`, depth = the rank) vectorises across W outputs at once, each lane following its
//! output's recipe on a transposed block of `B`. The rank is a compile-time constant (the usual LoRA ranks,
//! [`RANKS`]) so that every accumulator stays in a register; other ranks, and shapes whose path is not one
//! of these, go back to gemm.

#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod recipes;

/// Which of gemm's paths a product takes (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Horizontal,
    Gemv,
    MicroKernel,
    /// A path this module does not follow (gemm computes the product).
    Gemm,
}

/// gemm's horizontal path takes products of at most this many outputs.
const HORIZONTAL_OUTPUTS: usize = 16 * 16;
/// gemm's horizontal path splits the depth into chunks of this many.
const HORIZONTAL_CHUNK: usize = 1024;
/// The ranks with kernels here (all below gemm's smallest depth block, 512, so that the micro-kernel's
/// depth is never split).
pub const RANKS: [usize; 5] = [8, 16, 32, 64, 128];

/// The shapes of one `y + (s (x A^T)) B^T`: `rows` rows of width `inp`, rank `rank`, `out` outputs.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub rows: usize,
    pub inp: usize,
    pub rank: usize,
    pub out: usize,
}

/// The two products' paths for these shapes.
pub fn plan(d: Dims) -> (Path, Path) {
    if !RANKS.contains(&d.rank) || d.inp == 0 || d.out == 0 {
        return (Path::Gemm, Path::Gemm);
    }
    let first = if d.rows * d.rank <= HORIZONTAL_OUTPUTS {
        Path::Horizontal
    } else {
        Path::Gemm
    };
    let second = if d.rows * d.out <= HORIZONTAL_OUTPUTS {
        Path::Horizontal
    } else if d.rows == 1 {
        Path::Gemv
    } else {
        Path::MicroKernel
    };
    (first, second)
}

/// gemm's f32 lane width on this CPU (its own dispatch), where this module has kernels for it.
pub fn lanes() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            return Some(16);
        }
        if has!("fma") && has!("avx2") {
            return Some(8);
        }
    }
    None
}

/// The operands of one delta.
pub struct Operands<'a> {
    pub x: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub y: &'a [f32],
}

/// Calls `$f::<$lanes, R>($args)` for the rank `$rank` of [`RANKS`].
macro_rules! by_rank {
    ($rank:expr, $f:ident::<$lanes:ty>($($args:expr),*)) => {
        match $rank {
            8 => $f::<$lanes, 8>($($args),*),
            16 => $f::<$lanes, 16>($($args),*),
            32 => $f::<$lanes, 32>($($args),*),
            64 => $f::<$lanes, 64>($($args),*),
            128 => $f::<$lanes, 128>($($args),*),
            r => unreachable!("lora-delta: no kernel for rank {r}"),
        }
    };
}

/// `u = x A^T` on gemm's horizontal path with `lanes` lanes (the caller checked [`plan`] and [`lanes`]).
pub fn first_product(lanes: usize, d: Dims, o: &Operands, u: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lanes` came from `lanes()`, which found the instruction set each kernel is compiled for.
    unsafe {
        match lanes {
            16 => return avx512::first_product(d, o, u),
            8 => return avx2::first_product(d, o, u),
            _ => {}
        }
    }
    unreachable!("lora-delta: no kernel for {lanes} lanes")
}

/// `dst = y + u B^T` on the `path` gemm takes for these shapes, with `lanes` lanes.
pub fn second_product(lanes: usize, path: Path, d: Dims, o: &Operands, u: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `first_product`.
    unsafe {
        match lanes {
            16 => return avx512::second_product(path, d, o, u, dst),
            8 => return avx2::second_product(path, d, o, u, dst),
            _ => {}
        }
    }
    unreachable!("lora-delta: no kernel for {lanes} lanes")
}

/// The module `$module` of one instruction set's entry points: the recipes compiled for `$feature` on the
/// vectors `$lanes`, at the rank of the call.
macro_rules! entry_points {
    ($module:ident, $lanes:ident, $feature:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::lanes::$lanes;
            use super::recipes::{first, second};
            use super::*;

            #[target_feature(enable = $feature)]
            pub unsafe fn first_product(d: Dims, o: &Operands, u: &mut [f32]) {
                // SAFETY: this function's instruction set is the vectors'.
                unsafe { by_rank!(d.rank, first::<$lanes>(d, o, u)) }
            }

            #[target_feature(enable = $feature)]
            pub unsafe fn second_product(
                path: Path,
                d: Dims,
                o: &Operands,
                u: &[f32],
                dst: &mut [f32],
            ) {
                // SAFETY: as above.
                unsafe { by_rank!(d.rank, second::<$lanes>(path, d, o, u, dst)) }
            }
        }
    };
}

entry_points!(avx512, Zmm, "avx512f");
entry_points!(avx2, Ymm, "avx2,fma");
