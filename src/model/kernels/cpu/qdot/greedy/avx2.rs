//! The AVX2 kernel of the greedy head's spans: 8 columns per group, `vpmaddubsw` + `vpmaddwd` per four values
//! of a block (absolute weights times sign-moved activations, as candle's), each block's exact integer sum
//! scaled once.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::super::avx2::{broadcast, dot4};
use super::super::{Activations, Format, Out};

const LANES: usize = 8;

/// The spans of the whole groups in `tiles` (the first group `group`) for every row: per block, the exact
/// integer sum scaled by the weight's then the row's scale and added to the estimate, and `|d_w|` times the
/// row's block scale added to the bound; then the group's highest `estimate -/+ tolerance x bound`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `tiles` must hold whole Q8_0 groups packed for `Isa::Avx2`, and their
/// groups in both outputs must be this caller's to write, for every row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn groups(
    tiles: &[u8],
    acts: &Activations,
    (scales, tolerance): (&[f32], f32),
    (low, high): (Out, Out),
    group: usize,
) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    for (g, tiles) in tiles.chunks_exact(acts.blocks * tile_bytes).enumerate() {
        for r in 0..acts.rows {
            let (mut estimate, mut bound) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
                let a = r * acts.blocks + b;
                let y = &acts.values[a];
                let mut sum = _mm256_setzero_si256();
                for j in 0..8 {
                    // SAFETY: vector j of the tile's values, 32 bytes.
                    let w = unsafe { _mm256_loadu_si256(tile[32 * j..].as_ptr().cast()) };
                    let moved = _mm256_sign_epi8(broadcast(y, j), w);
                    sum = _mm256_add_epi32(sum, dot4(_mm256_sign_epi8(w, w), moved));
                }
                // SAFETY: 8 f16 scales after the 8 vectors of values.
                let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile[256..].as_ptr().cast())) };
                let term = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(sum), dw),
                    _mm256_set1_ps(acts.d[a]),
                );
                estimate = _mm256_add_ps(estimate, term);
                let dw_size = _mm256_andnot_ps(_mm256_set1_ps(-0.0), dw);
                bound = _mm256_fmadd_ps(dw_size, _mm256_set1_ps(scales[a]), bound);
            }
            let width = _mm256_mul_ps(_mm256_set1_ps(tolerance), bound);
            let (mut lo, mut hi, mut estimates, mut bounds) =
                ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            // SAFETY: 8 floats each.
            unsafe {
                _mm256_storeu_ps(lo.as_mut_ptr(), _mm256_sub_ps(estimate, width));
                _mm256_storeu_ps(hi.as_mut_ptr(), _mm256_add_ps(estimate, width));
                _mm256_storeu_ps(estimates.as_mut_ptr(), estimate);
                _mm256_storeu_ps(bounds.as_mut_ptr(), bound);
            }
            let finite = (estimates.iter().zip(&bounds)).all(|(e, b)| (e.abs() + b).is_finite());
            let top = |v: [f32; LANES]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
            let (lo, hi) = match finite {
                true => (top(lo), top(hi)),
                false => (f32::NAN, f32::NAN),
            };
            // SAFETY: the caller's group, row `r` of `acts`.
            unsafe {
                low.at(r, group + g).write(lo);
                high.at(r, group + g).write(hi);
            }
        }
    }
}
