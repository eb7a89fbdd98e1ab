//! The tile kernels of candle's `repack_x86` for AVX-512 VNNI (`q4k_tile`, `q6k_tile`, `q8_0_tile2`), with
//! the same instructions in the same order, so each output has candle's bits; they differ only in how rows
//! are grouped (any number up to [`PASS_ROWS`] per call, each row's sums apart from the others') and in
//! running on qlab's loops instead of candle's barrier pool.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::super::Out;
use super::pack::{TILE_N, TileQ4K, TileQ6K, TileQ8_0, Tiles};
use super::q8k::{BlockQ8K, Rounded, Terms};

/// Rows one call of a tile kernel keeps in registers (two integer sums and one f32 sum a row for Q4_K).
const PASS_ROWS: usize = 6;
/// Rows whose sums one column group keeps while it walks its superblocks once.
const CHUNK_ROWS: usize = 16;
/// Superblocks ahead of the one being multiplied whose tiles are asked for early: the weights stream from
/// memory once a step, 3-5 KB a superblock.
const PREFETCH_AHEAD: usize = 4;

/// Asks for the tiles of superblock `at` (counted over the whole weight), line by line: whatever lies there,
/// as a prefetch of an address outside the tiles is harmless.
#[inline(always)]
fn prefetch(tiles: &Tiles, at: usize) {
    let (start, bytes) = match tiles {
        Tiles::Q4K(t) => (t.as_ptr().wrapping_add(at).cast::<i8>(), size_of::<TileQ4K>()),
        Tiles::Q6K(t) => (t.as_ptr().wrapping_add(at).cast::<i8>(), size_of::<TileQ6K>()),
        Tiles::Q8_0(t) => (t.as_ptr().wrapping_add(8 * at).cast::<i8>(), 8 * size_of::<TileQ8_0>()),
    };
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch reads nothing and faults on no address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line)) };
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bcast4(qs: &[i8; 256], off: usize) -> __m512i {
    // SAFETY: off + 4 <= 256 at every call below.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(qs.as_ptr().add(off) as *const i32) })
}

/// One Q4_K superblock tile against `R` rows (candle's `q4k_tile`): sub-blocks in pairs with separate
/// integer sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q4k_tile<const R: usize>(
    tile: &TileQ4K,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    acc: &mut [__m512],
) {
    let mask = _mm512_set1_epi8(0x0F);
    for sub2 in 0..4 {
        let (sa, sb) = (sub2 * 2, sub2 * 2 + 1);
        let mut isum_a = [_mm512_setzero_si512(); R];
        let mut isum_b = [_mm512_setzero_si512(); R];
        for g4 in 0..4 {
            let (ga, gb) = (sa * 4 + g4, sb * 4 + g4);
            // SAFETY: groups ga, gb < 32 of the tile's 32 x 64 bytes.
            let (wa, wb) = unsafe {
                (
                    _mm512_loadu_si512(tile.qs.as_ptr().add(ga * TILE_N * 4).cast()),
                    _mm512_loadu_si512(tile.qs.as_ptr().add(gb * TILE_N * 4).cast()),
                )
            };
            let lo_a = _mm512_and_si512(wa, mask);
            let hi_a = _mm512_and_si512(_mm512_srli_epi16::<4>(wa), mask);
            let lo_b = _mm512_and_si512(wb, mask);
            let hi_b = _mm512_and_si512(_mm512_srli_epi16::<4>(wb), mask);
            for m in 0..R {
                let qs = &acts[m].qs;
                // SAFETY: offsets below 256 - 4.
                unsafe {
                    isum_a[m] = _mm512_dpbusd_epi32(isum_a[m], lo_a, bcast4(qs, sa * 32 + g4 * 8));
                    isum_a[m] =
                        _mm512_dpbusd_epi32(isum_a[m], hi_a, bcast4(qs, sa * 32 + g4 * 8 + 4));
                    isum_b[m] = _mm512_dpbusd_epi32(isum_b[m], lo_b, bcast4(qs, sb * 32 + g4 * 8));
                    isum_b[m] =
                        _mm512_dpbusd_epi32(isum_b[m], hi_b, bcast4(qs, sb * 32 + g4 * 8 + 4));
                }
            }
        }
        for (sub, isum) in [(sa, &isum_a), (sb, &isum_b)] {
            // SAFETY: 16 floats of the tile.
            let (scale, min) = unsafe {
                (
                    _mm512_loadu_ps(tile.scales[sub].as_ptr()),
                    _mm512_loadu_ps(tile.mins[sub].as_ptr()),
                )
            };
            for m in 0..R {
                let dall = acts[m].d;
                let f = _mm512_cvtepi32_ps(isum[m]);
                acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(scale, _mm512_set1_ps(dall)), acc[m]);
                acc[m] = _mm512_fnmadd_ps(min, _mm512_set1_ps(terms[m].q4k_mins[sub]), acc[m]);
            }
        }
    }
}

/// One Q6_K superblock tile against `R` rows (candle's `q6k_tile`): the unsigned 6-bit values, then 32
/// times each 16 values' sum taken off.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q6k_tile<const R: usize>(
    tile: &TileQ6K,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    acc: &mut [__m512],
) {
    for sub in 0..16 {
        let mut isum = [_mm512_setzero_si512(); R];
        for g4 in 0..4 {
            let g = sub * 4 + g4;
            // SAFETY: group g < 64 of the tile's 64 x 64 bytes.
            let w = unsafe { _mm512_loadu_si512(tile.qs.as_ptr().add(g * TILE_N * 4).cast()) };
            for m in 0..R {
                // SAFETY: offset below 256 - 4.
                let a = unsafe { bcast4(&acts[m].qs, sub * 16 + g4 * 4) };
                isum[m] = _mm512_dpbusd_epi32(isum[m], w, a);
            }
        }
        // SAFETY: 16 floats of the tile.
        let scale = unsafe { _mm512_loadu_ps(tile.scales[sub].as_ptr()) };
        for m in 0..R {
            let dall = acts[m].d;
            let offset = _mm512_set1_ps(terms[m].q6k_offsets[sub]);
            let f = _mm512_sub_ps(_mm512_cvtepi32_ps(isum[m]), offset);
            acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(scale, _mm512_set1_ps(dall)), acc[m]);
        }
    }
}

/// Two Q8_0 tiles (blocks `sub32` and `sub32 + 1` of a superblock) against `R` rows (candle's
/// `q8_0_tile2`): weights stored +128, the offset taken off through the rows' sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q8_0_tile2<const R: usize>(
    t0: &TileQ8_0,
    t1: &TileQ8_0,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    sub32: usize,
    acc: &mut [__m512],
) {
    let mut isum_a = [_mm512_setzero_si512(); R];
    let mut isum_b = [_mm512_setzero_si512(); R];
    for g4 in 0..8 {
        // SAFETY: group g4 < 8 of each tile's 8 x 64 bytes.
        let (wa, wb) = unsafe {
            (
                _mm512_loadu_si512(t0.qs.as_ptr().add(g4 * TILE_N * 4).cast()),
                _mm512_loadu_si512(t1.qs.as_ptr().add(g4 * TILE_N * 4).cast()),
            )
        };
        for m in 0..R {
            let qs = &acts[m].qs;
            // SAFETY: offsets below 256 - 4 (sub32 <= 6).
            unsafe {
                isum_a[m] = _mm512_dpbusd_epi32(isum_a[m], wa, bcast4(qs, sub32 * 32 + g4 * 4));
                isum_b[m] =
                    _mm512_dpbusd_epi32(isum_b[m], wb, bcast4(qs, (sub32 + 1) * 32 + g4 * 4));
            }
        }
    }
    for (blk, isum, tile) in [(sub32, &isum_a, t0), (sub32 + 1, &isum_b, t1)] {
        // SAFETY: 16 f16 of the tile.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.d.as_ptr().cast()) });
        for m in 0..R {
            let offset = _mm512_set1_ps(terms[m].q8_0_offsets[blk]);
            let f = _mm512_sub_ps(_mm512_cvtepi32_ps(isum[m]), offset);
            acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, _mm512_set1_ps(acts[m].d)), acc[m]);
        }
    }
}

/// Superblock `b` of column group `nt` against the `R` rows from `first` of `acts` (`kb` blocks a row).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn superblock<const R: usize>(
    tiles: &Tiles,
    nt: usize,
    kb: usize,
    b: usize,
    acts: &Rounded,
    first: usize,
    acc: &mut [__m512],
) {
    let rows: [&BlockQ8K; R] = std::array::from_fn(|i| &acts.blocks[(first + i) * kb + b]);
    let terms: [&Terms; R] = std::array::from_fn(|i| &acts.terms[(first + i) * kb + b]);
    // SAFETY: the caller's CPU features; the tiles of group nt exist.
    unsafe {
        match tiles {
            Tiles::Q4K(t) => q4k_tile(&t[nt * kb + b], &rows, &terms, acc),
            Tiles::Q6K(t) => q6k_tile(&t[nt * kb + b], &rows, &terms, acc),
            Tiles::Q8_0(t) => {
                for s in (0..8).step_by(2) {
                    let at = nt * kb * 8 + b * 8 + s;
                    q8_0_tile2(&t[at], &t[at + 1], &rows, &terms, s, acc);
                }
            }
        }
    }
}

/// Every row's outputs of column group `nt` (columns `16 nt ..`), written to `out`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI; `tiles` must hold group `nt` of a weight `kb` superblocks wide,
/// `acts` `kb` blocks for each of `out`'s rows, and those rows' columns of group `nt` must be this caller's
/// to write.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub(super) unsafe fn group(
    tiles: &Tiles,
    nt: usize,
    kb: usize,
    acts: &Rounded,
    rows: usize,
    out: Out,
) {
    let mut chunk_first = 0;
    while chunk_first < rows {
        let chunk = CHUNK_ROWS.min(rows - chunk_first);
        let mut acc = [_mm512_setzero_ps(); CHUNK_ROWS];
        // Passes of the chunk's rows as even as they can be, as `in_passes` makes them.
        let per_pass = chunk.div_ceil(chunk.div_ceil(PASS_ROWS));
        for b in 0..kb {
            if chunk_first == 0 {
                prefetch(tiles, nt * kb + b + PREFETCH_AHEAD);
            }
            let mut first = 0;
            while first < chunk {
                let count = per_pass.min(chunk - first);
                let (row, acc) = (chunk_first + first, &mut acc[first..first + count]);
                // SAFETY: as the caller vouches; count <= PASS_ROWS.
                unsafe {
                    match count {
                        1 => superblock::<1>(tiles, nt, kb, b, acts, row, acc),
                        2 => superblock::<2>(tiles, nt, kb, b, acts, row, acc),
                        3 => superblock::<3>(tiles, nt, kb, b, acts, row, acc),
                        4 => superblock::<4>(tiles, nt, kb, b, acts, row, acc),
                        5 => superblock::<5>(tiles, nt, kb, b, acts, row, acc),
                        _ => superblock::<PASS_ROWS>(tiles, nt, kb, b, acts, row, acc),
                    }
                }
                first += count;
            }
        }
        for (i, acc) in acc[..chunk].iter().enumerate() {
            // SAFETY: 16 floats of row chunk_first + i in the caller's columns.
            unsafe { _mm512_storeu_ps(out.at(chunk_first + i, nt * TILE_N), *acc) };
        }
        chunk_first += chunk;
    }
}
