//! The AVX2 kernel of the greedy head's spans: 8 columns per group, `vpmaddubsw` + `vpmaddwd` per four values
//! of a block (absolute weights times sign-moved activations, as candle's), each block's exact integer sum
//! scaled once; a block's absolute weights are taken once for all the rows of a pass.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::super::avx2::{broadcast, dot4};
use super::super::in_passes;
use super::super::{Activations, Format, Out};

const LANES: usize = 8;

/// Rows one pass takes (their sums beside the block's 8 vectors of absolute weights in 16 registers).
const PASS_ROWS: usize = 3;

/// The spans of the whole groups in `tiles` (the first group `group`) for every row.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `tiles` must hold whole Q8_0 groups packed for `Isa::Avx2`, and their
/// groups in both outputs must be this caller's to write, for every row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn groups(
    tiles: &[u8],
    acts: &Activations,
    scales: (&[f32], f32),
    outs: (Out, Out),
    group: usize,
) {
    let group_bytes = acts.blocks * Format::Q8_0.bytes() * LANES;
    for (g, tiles) in tiles.chunks_exact(group_bytes).enumerate() {
        in_passes(acts.rows, PASS_ROWS, |first, rows| {
            let at = (tiles, acts, scales, first, outs, group + g);
            // SAFETY: the caller's groups, on the CPU the caller vouches for.
            unsafe {
                match rows {
                    1 => rows_of::<1>(at),
                    2 => rows_of::<2>(at),
                    _ => rows_of::<PASS_ROWS>(at),
                }
            }
        });
    }
}

/// [`groups`] for one group and rows `first..first + R`: per block, the exact integer sum times the weight's
/// and the row's scales, added to the estimate in one fused multiply-add, and `|d_w|` added to the columns'
/// sums; then each row's bound is its scale times those sums, and the group's highest
/// `estimate -/+ tolerance x bound`.
///
/// # Safety
/// As [`groups`], for one group.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<const R: usize>(
    (tiles, acts, (scales, tolerance), first, (low, high), group): super::Pass,
) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    let mut estimate = [_mm256_setzero_ps(); R];
    let mut weight_sizes = _mm256_setzero_ps();
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut size = [_mm256_setzero_si256(); 8];
        for j in 0..8 {
            // SAFETY: vector j of the tile's values, 32 bytes.
            w[j] = unsafe { _mm256_loadu_si256(tile[32 * j..].as_ptr().cast()) };
            size[j] = _mm256_sign_epi8(w[j], w[j]);
        }
        // SAFETY: 8 f16 scales after the 8 vectors of values.
        let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile[256..].as_ptr().cast())) };
        weight_sizes = _mm256_add_ps(weight_sizes, _mm256_andnot_ps(_mm256_set1_ps(-0.0), dw));
        for (i, estimate) in estimate.iter_mut().enumerate() {
            let a = (first + i) * acts.blocks + b;
            let y = &acts.values[a];
            let mut sum = _mm256_setzero_si256();
            for j in 0..8 {
                let moved = _mm256_sign_epi8(broadcast(y, j), w[j]);
                sum = _mm256_add_epi32(sum, dot4(size[j], moved));
            }
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(acts.d[a]));
            *estimate = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, *estimate);
        }
    }
    for i in 0..R {
        let bound = _mm256_mul_ps(weight_sizes, _mm256_set1_ps(scales[first + i]));
        let width = _mm256_mul_ps(_mm256_set1_ps(tolerance), bound);
        let mut ends = [[0f32; LANES]; 4];
        // SAFETY: 8 floats each.
        unsafe {
            _mm256_storeu_ps(ends[0].as_mut_ptr(), _mm256_sub_ps(estimate[i], width));
            _mm256_storeu_ps(ends[1].as_mut_ptr(), _mm256_add_ps(estimate[i], width));
            _mm256_storeu_ps(ends[2].as_mut_ptr(), estimate[i]);
            _mm256_storeu_ps(ends[3].as_mut_ptr(), bound);
        }
        let finite = (ends[2].iter().zip(&ends[3])).all(|(e, b)| (e.abs() + b).is_finite());
        let top = |v: [f32; LANES]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
        let (lo, hi) = match finite {
            true => (top(ends[0]), top(ends[1])),
            false => (f32::NAN, f32::NAN),
        };
        // SAFETY: the caller's group, row `first + i` of `acts`.
        unsafe {
            low.at(first + i, group).write(lo);
            high.at(first + i, group).write(hi);
        }
    }
}
