//! The AVX-512 VNNI kernel of the greedy head's spans: 16 columns per group, one `vpdpbusd` per four values
//! of a block for all of them, each block's exact integer sum scaled once.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::super::in_passes;
use super::super::vnni::{LANES, broadcast, prefetch};
use super::super::{Activations, Format, Out};
use super::{PASS_ROWS, Pass};

/// The spans of the whole groups in `tiles` (the first group `group`) for every row.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `tiles` must hold whole Q8_0 groups packed for
/// `Isa::Vnni512`, and their groups in both outputs must be this caller's to write, for every row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
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
                    3 => rows_of::<3>(at),
                    4 => rows_of::<4>(at),
                    _ => rows_of::<PASS_ROWS>(at),
                }
            }
        });
    }
}

/// [`groups`] for one group and rows `first..first + R`: per block, the exact integer sum (the weights'
/// +128 taken off as the accumulator's start) times the weight's and the row's scales, added to the estimate
/// in one fused multiply-add, and `|d_w|` added to the columns' sums; then each row's bound is its scale times
/// those sums, and the group's highest `estimate -/+ tolerance x bound`.
///
/// # Safety
/// As [`groups`], for one group.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_of<const R: usize>(
    (tiles, acts, (scales, tolerance), first, (low, high), group): Pass,
) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    // Chains of sums per row: one where the rows of a pass are enough to hide the instruction's latency.
    let chains = if R >= 4 { 1 } else { 2 };
    let mut estimate = [_mm512_setzero_ps(); R];
    let mut weight_sizes = _mm512_setzero_ps();
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        if first == 0 {
            // The first rows stream the group from memory; later rows find it in the cache.
            prefetch(tile, tile_bytes);
        }
        let a = |i: usize| (first + i) * acts.blocks + b;
        let mut sums = [[_mm512_setzero_si512(); 2]; R];
        for (i, sums) in sums.iter_mut().enumerate() {
            sums[0] = _mm512_set1_epi32(-128 * acts.sums[a(i)]);
        }
        for j in 0..8 {
            // SAFETY: vector j of the tile's values, 64 bytes.
            let w = unsafe { _mm512_loadu_si512(tile[64 * j..].as_ptr().cast()) };
            for (i, sums) in sums.iter_mut().enumerate() {
                let c = j % chains;
                sums[c] = _mm512_dpbusd_epi32(sums[c], w, broadcast(&acts.values[a(i)], j));
            }
        }
        // SAFETY: 16 f16 scales after the 8 vectors of values.
        let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[512..].as_ptr().cast())) };
        weight_sizes = _mm512_add_ps(weight_sizes, _mm512_abs_ps(dw));
        for (i, sums) in sums.iter().enumerate() {
            let sum = match chains {
                1 => sums[0],
                _ => _mm512_add_epi32(sums[0], sums[1]),
            };
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(acts.d[a(i)]));
            estimate[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, estimate[i]);
        }
    }
    let tolerance = _mm512_set1_ps(tolerance);
    for i in 0..R {
        let bound = _mm512_mul_ps(weight_sizes, _mm512_set1_ps(scales[first + i]));
        let width = _mm512_mul_ps(tolerance, bound);
        let size = _mm512_add_ps(_mm512_abs_ps(estimate[i]), bound);
        let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(size, _mm512_set1_ps(f32::INFINITY));
        let (lo, hi) = match finite {
            0xffff => (
                _mm512_reduce_max_ps(_mm512_sub_ps(estimate[i], width)),
                _mm512_reduce_max_ps(_mm512_add_ps(estimate[i], width)),
            ),
            _ => (f32::NAN, f32::NAN),
        };
        // SAFETY: the caller's group, row `first + i` of `acts`.
        unsafe {
            low.at(first + i, group).write(lo);
            high.at(first + i, group).write(hi);
        }
    }
}
