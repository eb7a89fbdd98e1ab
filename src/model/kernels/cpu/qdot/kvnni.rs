//! The AVX-512 VNNI kernels of [`super::kquants`]: candle's `q4k_tile` / `q6k_tile` arithmetic (exact
//! integer sums per 32- or 16-value subblock, then per subblock a fused multiply-add by the column's scale
//! times the row's d, and Q4_K's minimums taken off with a fused negated multiply-add), for up to
//! [`PASS_ROWS`] rows per pass of a tile's unpacked values.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::Out;
use super::kquants::{Kind, Q8k, QK_K, Tiles};
use super::vnni::prefetch_ahead;

const LANES: usize = 16;
/// Rows one pass keeps in registers.
const PASS_ROWS: usize = 8;

/// Outputs of the whole groups in `tiles` (`rows` input rows), the first group at column `col`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI; `tiles` must be whole groups of `all`, and their columns in
/// `out` this caller's to write, for `rows` rows (those of `acts`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn columns(
    all: &Tiles,
    tiles: &[u8],
    acts: &Q8k,
    rows: usize,
    out: Out,
    col: usize,
) {
    let group_bytes = all.blocks * all.kind.tile_bytes();
    let passes = rows.div_ceil(PASS_ROWS);
    let per_pass = rows.div_ceil(passes.max(1));
    for (g, group) in tiles.chunks_exact(group_bytes).enumerate() {
        let mut first = 0;
        while first < rows {
            let r = per_pass.min(rows - first);
            let at = (all.kind, group, acts, first, out, col + g * LANES);
            // SAFETY: the caller's columns.
            unsafe {
                match r {
                    1 => rows_pass::<1>(at),
                    2 => rows_pass::<2>(at),
                    3 => rows_pass::<3>(at),
                    4 => rows_pass::<4>(at),
                    5 => rows_pass::<5>(at),
                    6 => rows_pass::<6>(at),
                    7 => rows_pass::<7>(at),
                    _ => rows_pass::<PASS_ROWS>(at),
                }
            }
            first += r;
        }
    }
}

/// The four activation bytes `at..at + 4` in every lane.
#[target_feature(enable = "avx512f")]
fn broadcast(qs: &[i8; QK_K], at: usize) -> __m512i {
    let four = i32::from_le_bytes([
        qs[at] as u8,
        qs[at + 1] as u8,
        qs[at + 2] as u8,
        qs[at + 3] as u8,
    ]);
    _mm512_set1_epi32(four)
}

/// 16 floats (or bytes) of `tile` from `at`.
#[target_feature(enable = "avx512f")]
fn load_ps(tile: &[u8], at: usize) -> __m512 {
    // SAFETY: 64 bytes from `at`, which the slicing checks.
    unsafe { _mm512_loadu_ps(tile[at..at + 64].as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn load_si(tile: &[u8], at: usize) -> __m512i {
    // SAFETY: as `load_ps`.
    unsafe { _mm512_loadu_si512(tile[at..at + 64].as_ptr().cast()) }
}

/// One group (16 columns, every superblock) for rows `first..first + R`.
///
/// # Safety
/// As [`columns`], for the group's 16 columns at `col`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_pass<const R: usize>(
    (kind, group, acts, first, out, col): (Kind, &[u8], &Q8k, usize, Out, usize),
) {
    let blocks = acts.blocks;
    let row = |i: usize, b: usize| (first + i) * blocks + b;
    let mut acc = [_mm512_setzero_ps(); R];
    let values = kind.values_at();
    for (b, tile) in group.chunks_exact(kind.tile_bytes()).enumerate() {
        if first == 0 {
            // The first rows stream the group from memory; later rows find it in the cache.
            prefetch_ahead(tile, tile.len());
        }
        match kind {
            Kind::Q4K => {
                let low = _mm512_set1_epi8(0x0f);
                for pair in 0..4 {
                    let (sa, sb) = (2 * pair, 2 * pair + 1);
                    let mut sums = [[_mm512_setzero_si512(); 2]; R];
                    for g4 in 0..4 {
                        let wa = load_si(tile, values + (sa * 4 + g4) * 64);
                        let wb = load_si(tile, values + (sb * 4 + g4) * 64);
                        let w = [
                            _mm512_and_si512(wa, low),
                            _mm512_and_si512(_mm512_srli_epi16(wa, 4), low),
                            _mm512_and_si512(wb, low),
                            _mm512_and_si512(_mm512_srli_epi16(wb, 4), low),
                        ];
                        for (i, sums) in sums.iter_mut().enumerate() {
                            let y = &acts.qs[row(i, b)];
                            for (h, &(s, w)) in [(sa, w[0]), (sa, w[1]), (sb, w[2]), (sb, w[3])]
                                .iter()
                                .enumerate()
                            {
                                let at = s * 32 + g4 * 8 + 4 * (h % 2);
                                sums[h / 2] = _mm512_dpbusd_epi32(sums[h / 2], w, broadcast(y, at));
                            }
                        }
                    }
                    for (h, sub) in [sa, sb].into_iter().enumerate() {
                        let scale = load_ps(tile, sub * 64);
                        let min = load_ps(tile, (8 + sub) * 64);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let a = row(i, b);
                            let dall = acts.d[a];
                            let f = _mm512_cvtepi32_ps(sums[i][h]);
                            let ds = _mm512_mul_ps(scale, _mm512_set1_ps(dall));
                            *acc = _mm512_fmadd_ps(f, ds, *acc);
                            let bsum = (acts.bsums[a][2 * sub] as i32
                                + acts.bsums[a][2 * sub + 1] as i32)
                                as f32;
                            *acc = _mm512_fnmadd_ps(min, _mm512_set1_ps(dall * bsum), *acc);
                        }
                    }
                }
            }
            Kind::Q6K => {
                for sub in 0..16 {
                    let mut sums = [_mm512_setzero_si512(); R];
                    for g4 in 0..4 {
                        let w = load_si(tile, values + (sub * 4 + g4) * 64);
                        for (i, sum) in sums.iter_mut().enumerate() {
                            let y = &acts.qs[row(i, b)];
                            *sum = _mm512_dpbusd_epi32(*sum, w, broadcast(y, sub * 16 + g4 * 4));
                        }
                    }
                    let scale = load_ps(tile, sub * 64);
                    for (i, (acc, sum)) in acc.iter_mut().zip(sums).enumerate() {
                        let a = row(i, b);
                        let bsum = acts.bsums[a][sub] as f32;
                        let f = _mm512_sub_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(32.0 * bsum));
                        let ds = _mm512_mul_ps(scale, _mm512_set1_ps(acts.d[a]));
                        *acc = _mm512_fmadd_ps(f, ds, *acc);
                    }
                }
            }
        }
    }
    for (i, acc) in acc.into_iter().enumerate() {
        // SAFETY: the caller's columns, row `first + i`.
        unsafe { _mm512_storeu_ps(out.at(first + i, col), acc) };
    }
}
