//! The tile kernels of candle's `repack_x86` for AVX-512 VNNI (`q4k_tile`, `q6k_tile`, `q8_0_tile2`): each
//! row's integer sums and float operations are candle's, in candle's order, so each output has candle's bits.
//! They differ in how the work is grouped (and Q6_K's tile is unpacked from denser planes): up to [`PASS_ROWS`] rows per call instead of 4, which lets one
//! sub-block (or Q8_0 block) at a time keep the rows' sums apart where candle pairs them; the row sums stay
//! in registers through a tile; and the products run on qlab's loops instead of candle's barrier pool.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::super::Out;
use super::pack::{ROW, TILE_N, TileQ4K, TileQ6K, TileQ8_0, Tiles};
use super::q8k::{BlockQ8K, Rounded, Terms};

/// Rows one call of a tile kernel keeps in registers (an integer and a float sum a row).
const PASS_ROWS: usize = 10;
/// Rows whose sums one column group keeps while it walks its superblocks once.
const CHUNK_ROWS: usize = 16;
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bcast4(qs: &[i8; 256], off: usize) -> __m512i {
    // SAFETY: off + 4 <= 256 at every call below.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(qs.as_ptr().add(off) as *const i32) })
}

/// One Q4_K superblock tile against `R` rows (candle's `q4k_tile`, which takes the sub-blocks in pairs with
/// separate integer sums; one at a time here, as `R` rows already give independent sums, with each row's
/// float operations in candle's order).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q4k_tile<const R: usize>(
    tile: &TileQ4K,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    acc: &mut [__m512; R],
) {
    let mask = _mm512_set1_epi8(0x0F);
    for sub in 0..8 {
        let mut isum = [_mm512_setzero_si512(); R];
        for g4 in 0..4 {
            // SAFETY: group g4 < 4 of the sub-block's 4 x 64 bytes.
            let w = unsafe { _mm512_loadu_si512(tile.subs[sub].qs.as_ptr().add(g4 * ROW).cast()) };
            let lo = _mm512_and_si512(w, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask);
            for m in 0..R {
                let qs = &acts[m].qs;
                // SAFETY: offsets below 256 - 4.
                unsafe {
                    isum[m] = _mm512_dpbusd_epi32(isum[m], lo, bcast4(qs, sub * 32 + g4 * 8));
                    isum[m] = _mm512_dpbusd_epi32(isum[m], hi, bcast4(qs, sub * 32 + g4 * 8 + 4));
                }
            }
        }
        // SAFETY: 16 floats of the tile.
        let (scale, min) = unsafe {
            (
                _mm512_loadu_ps(tile.subs[sub].scale.as_ptr()),
                _mm512_loadu_ps(tile.subs[sub].min.as_ptr()),
            )
        };
        for m in 0..R {
            let f = _mm512_cvtepi32_ps(isum[m]);
            acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(scale, _mm512_set1_ps(acts[m].d)), acc[m]);
            acc[m] = _mm512_fnmadd_ps(min, _mm512_set1_ps(terms[m].q4k_mins[sub]), acc[m]);
        }
    }
}

/// One Q6_K superblock tile against `R` rows (candle's `q6k_tile`): the unsigned 6-bit values, unpacked from
/// their planes to the bytes candle's tile holds, then 32 times each 16 values' sum taken off; each scale is
/// `d * scale` as candle's packing computes it.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q6k_tile<const R: usize>(
    tile: &TileQ6K,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    acc: &mut [__m512; R],
) {
    let (low4, high2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    // SAFETY: 16 floats of the tile.
    let d = unsafe { _mm512_loadu_ps(tile.d.as_ptr()) };
    for (sub, rows) in tile.subs.iter().enumerate() {
        // SAFETY: row i < 3 of the sub-block's 3 x 64 bytes.
        let at = |i: usize| unsafe { _mm512_loadu_si512(rows.as_ptr().add(i * ROW).cast()) };
        let (l0, l1, h) = (at(0), at(1), at(2));
        let ws = [
            _mm512_or_si512(
                _mm512_and_si512(l0, low4),
                _mm512_and_si512(_mm512_slli_epi16::<4>(h), high2),
            ),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(l0), low4),
                _mm512_and_si512(_mm512_slli_epi16::<2>(h), high2),
            ),
            _mm512_or_si512(_mm512_and_si512(l1, low4), _mm512_and_si512(h, high2)),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(l1), low4),
                _mm512_and_si512(_mm512_srli_epi16::<2>(h), high2),
            ),
        ];
        let mut isum = [_mm512_setzero_si512(); R];
        for (g4, &w) in ws.iter().enumerate() {
            for m in 0..R {
                // SAFETY: offset below 256 - 4.
                let a = unsafe { bcast4(&acts[m].qs, sub * 16 + g4 * 4) };
                isum[m] = _mm512_dpbusd_epi32(isum[m], w, a);
            }
        }
        // SAFETY: 16 bytes of the tile.
        let scales = unsafe { _mm_loadu_si128(tile.scales[sub].as_ptr().cast()) };
        let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scales)));
        for m in 0..R {
            let dall = acts[m].d;
            let offset = _mm512_set1_ps(terms[m].q6k_offsets[sub]);
            let f = _mm512_sub_ps(_mm512_cvtepi32_ps(isum[m]), offset);
            acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(scale, _mm512_set1_ps(dall)), acc[m]);
        }
    }
}

/// One Q8_0 tile (block `blk` of a superblock) against `R` rows (candle's `q8_0_tile2`, which takes two
/// blocks with separate integer sums; one here, each row's float operations in candle's order): weights
/// stored +128, the offset taken off through the rows' sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
#[inline]
unsafe fn q8_0_tile<const R: usize>(
    tile: &TileQ8_0,
    acts: &[&BlockQ8K; R],
    terms: &[&Terms; R],
    blk: usize,
    acc: &mut [__m512; R],
) {
    let mut isum = [_mm512_setzero_si512(); R];
    for g4 in 0..8 {
        // SAFETY: group g4 < 8 of the tile's 8 x 64 bytes.
        let w = unsafe { _mm512_loadu_si512(tile.qs.as_ptr().add(g4 * TILE_N * 4).cast()) };
        for m in 0..R {
            // SAFETY: offsets below 256 - 4 (blk < 8).
            isum[m] = _mm512_dpbusd_epi32(isum[m], w, unsafe {
                bcast4(&acts[m].qs, blk * 32 + g4 * 4)
            });
        }
    }
    // SAFETY: 16 f16 of the tile.
    let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.d.as_ptr().cast()) });
    for m in 0..R {
        let offset = _mm512_set1_ps(terms[m].q8_0_offsets[blk]);
        let f = _mm512_sub_ps(_mm512_cvtepi32_ps(isum[m]), offset);
        acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, _mm512_set1_ps(acts[m].d)), acc[m]);
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
    let mut sums: [__m512; R] = std::array::from_fn(|i| acc[i]);
    // SAFETY: the caller's CPU features; the tiles of group nt exist.
    unsafe {
        match tiles {
            Tiles::Q4K(t) => q4k_tile(&t[nt * kb + b], &rows, &terms, &mut sums),
            Tiles::Q6K(t) => q6k_tile(&t[nt * kb + b], &rows, &terms, &mut sums),
            Tiles::Q8_0(t) => {
                for blk in 0..8 {
                    q8_0_tile(&t[nt * kb * 8 + b * 8 + blk], &rows, &terms, blk, &mut sums);
                }
            }
        }
    }
    acc[..R].copy_from_slice(&sums);
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
                        6 => superblock::<6>(tiles, nt, kb, b, acts, row, acc),
                        7 => superblock::<7>(tiles, nt, kb, b, acts, row, acc),
                        8 => superblock::<8>(tiles, nt, kb, b, acts, row, acc),
                        9 => superblock::<9>(tiles, nt, kb, b, acts, row, acc),
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
