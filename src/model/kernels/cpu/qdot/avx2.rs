//! The AVX2 kernels: 8 columns per group, `vpmaddubsw` + `vpmaddwd` per four values of a block for all of
//! them (no pair sum reaches i16's limit: at most 2 * 31 * 128 for Q5_0; Q8_0 multiplies absolute values
//! with sign-moved activations, as candle does).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{Activations, Format, Out};

const LANES: usize = 8;

/// Outputs of the whole groups in `tiles`, the first at column `col`, for every row.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `tiles` must hold whole groups packed for `Isa::Avx2`, and their
/// columns in `out` must be this caller's to write, for every row of `acts`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns(
    format: Format,
    tiles: &[u8],
    acts: &Activations,
    out: Out,
    col: usize,
) {
    let group_bytes = acts.blocks * format.bytes() * LANES;
    for (g, tiles) in tiles.chunks_exact(group_bytes).enumerate() {
        let col = col + g * LANES;
        // SAFETY: the caller's columns.
        unsafe {
            match format {
                Format::Q8_0 => q8_0_group(tiles, acts, out, col),
                _ => nibbles_group(format, tiles, acts, out, col),
            }
        }
    }
}

/// Stores lane c of `acc` as column `col + c` of row `r`.
///
/// # Safety
/// Row `r`, columns `col..col + 8` of `out` must be the caller's to write.
#[target_feature(enable = "avx2")]
unsafe fn store(acc: __m256, out: Out, r: usize, col: usize) {
    // SAFETY: 8 floats of row r, as the caller vouches.
    unsafe { _mm256_storeu_ps(out.at(r, col), acc) };
}

/// The four activation bytes `4j..4j+4` of a block, in every lane.
#[target_feature(enable = "avx2")]
pub(super) fn broadcast(values: &[i8; 32], j: usize) -> __m256i {
    let four = i32::from_le_bytes([
        values[4 * j] as u8,
        values[4 * j + 1] as u8,
        values[4 * j + 2] as u8,
        values[4 * j + 3] as u8,
    ]);
    _mm256_set1_epi32(four)
}

/// Sums of the four products of unsigned `w` and signed `y` bytes, per 32-bit lane, exactly.
#[target_feature(enable = "avx2")]
pub(super) fn dot4(w: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), _mm256_set1_epi16(1))
}

/// 0x10 in byte i where bit i of `mask` is set.
#[target_feature(enable = "avx2")]
fn high_bits(mask: u32) -> __m256i {
    // Byte i takes byte i / 8 of the mask, keeps bit i % 8: 0xff where that bit is set.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(mask as i32),
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    let bits = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, bits), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Q4_1 and Q5_0: each block unpacked once, then its exact integer dot product with every row, and
/// candle's f32 terms added block after block.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_group(format: Format, tiles: &[u8], acts: &Activations, out: Out, col: usize) {
    let tile_bytes = format.bytes() * LANES;
    let mut acc = vec![_mm256_setzero_ps(); acts.rows];
    let low = _mm256_set1_epi8(0x0f);
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        let mut w = [_mm256_setzero_si256(); 8];
        for p in 0..4 {
            // SAFETY: a tile starts with 4 vectors of 32 bytes.
            let v = unsafe { _mm256_loadu_si256(tile[32 * p..].as_ptr().cast()) };
            w[p] = _mm256_and_si256(v, low);
            w[p + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        let scales = match format {
            Format::Q5_0 => {
                for (j, w) in w.iter_mut().enumerate() {
                    let at = 128 + 4 * j;
                    let mask = u32::from_le_bytes(tile[at..at + 4].try_into().unwrap_or([0; 4]));
                    *w = _mm256_or_si256(*w, high_bits(mask));
                }
                160
            }
            _ => 128,
        };
        // SAFETY: 8 f16 scales at `scales`, for Q4_1 8 minimums after them.
        let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile[scales..].as_ptr().cast())) };
        let mw = match format {
            Format::Q4_1 => unsafe {
                _mm256_cvtph_ps(_mm_loadu_si128(tile[scales + 16..].as_ptr().cast()))
            },
            _ => _mm256_setzero_ps(),
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = r * acts.blocks + b;
            let y = &acts.values[a];
            let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for j in (0..8).step_by(2) {
                even = _mm256_add_epi32(even, dot4(w[j], broadcast(y, j)));
                odd = _mm256_add_epi32(odd, dot4(w[j + 1], broadcast(y, j + 1)));
            }
            let sumi = _mm256_add_epi32(even, odd);
            let dx = _mm256_set1_ps(acts.d[a]);
            let term = match format {
                Format::Q4_1 => _mm256_add_ps(
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw), dx),
                    _mm256_mul_ps(mw, _mm256_set1_ps(acts.s[a])),
                ),
                // Q5_0's offset of 16, taken off in integers.
                _ => {
                    let offset = _mm256_set1_epi32(16 * acts.sums[a]);
                    let sumi = _mm256_sub_epi32(sumi, offset);
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw), dx)
                }
            };
            *acc = _mm256_add_ps(*acc, term);
        }
    }
    for (r, acc) in acc.into_iter().enumerate() {
        // SAFETY: the caller's columns, row `r` of `acts`.
        unsafe { store(acc, out, r, col) };
    }
}

/// Q8_0: per row, candle's eight lanes (four values each) accumulated with fused multiply-adds over the
/// blocks, then summed in `hsum_float_8`'s order.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_group(tiles: &[u8], acts: &Activations, out: Out, col: usize) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    for r in 0..acts.rows {
        let mut lanes = [_mm256_setzero_ps(); 8];
        for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            let a = r * acts.blocks + b;
            let y = &acts.values[a];
            // SAFETY: 8 f16 scales after the 8 vectors of values.
            let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile[256..].as_ptr().cast())) };
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(acts.d[a]));
            for (j, lane) in lanes.iter_mut().enumerate() {
                // SAFETY: vector j of the tile's values, 32 bytes.
                let w = unsafe { _mm256_loadu_si256(tile[32 * j..].as_ptr().cast()) };
                let moved = _mm256_sign_epi8(broadcast(y, j), w);
                let q = dot4(_mm256_sign_epi8(w, w), moved);
                *lane = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), *lane);
            }
        }
        let l = lanes;
        let sum = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6])),
            _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7])),
        );
        // SAFETY: the caller's columns, row `r` of `acts`.
        unsafe { store(sum, out, r, col) };
    }
}
