//! The AVX-512 VNNI kernels: 16 columns per group, one `vpdpbusd` per four values of a block for all of them.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{Activations, Format};

const LANES: usize = 16;

/// Outputs of the whole groups in `tiles` for every row, `dst[c * rows + r]`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `tiles` must hold whole groups packed for
/// `Isa::Vnni512` and `dst` their outputs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn columns(format: Format, tiles: &[u8], acts: &Activations, dst: &mut [f32]) {
    let group_bytes = acts.blocks * format.bytes() * LANES;
    for (g, tiles) in tiles.chunks_exact(group_bytes).enumerate() {
        let dst = &mut dst[g * LANES * acts.rows..][..LANES * acts.rows];
        match format {
            Format::Q8_0 => q8_0_group(tiles, acts, dst),
            _ => nibbles_group(format, tiles, acts, dst),
        }
    }
}

/// Stores lane c of `acc` as column c of row `r`.
#[target_feature(enable = "avx512f")]
fn store(acc: __m512, r: usize, rows: usize, dst: &mut [f32]) {
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds 16 floats.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    for (c, v) in lanes.into_iter().enumerate() {
        dst[c * rows + r] = v;
    }
}

/// The four activation bytes `4j..4j+4` of a block, in every lane.
#[target_feature(enable = "avx512f")]
fn broadcast(values: &[i8; 32], j: usize) -> __m512i {
    let four = i32::from_le_bytes([
        values[4 * j] as u8,
        values[4 * j + 1] as u8,
        values[4 * j + 2] as u8,
        values[4 * j + 3] as u8,
    ]);
    _mm512_set1_epi32(four)
}

/// Q4_1 and Q5_0: rows four at a time (their sums in registers), each block unpacked once for them, its
/// exact integer dot product with each row, and candle's f32 terms added block after block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn nibbles_group(format: Format, tiles: &[u8], acts: &Activations, dst: &mut [f32]) {
    let mut first = 0;
    while first < acts.rows {
        let left = acts.rows - first;
        match left {
            1 => nibbles_rows::<1>(format, tiles, acts, first, dst),
            2 => nibbles_rows::<2>(format, tiles, acts, first, dst),
            3 => nibbles_rows::<3>(format, tiles, acts, first, dst),
            _ => nibbles_rows::<4>(format, tiles, acts, first, dst),
        }
        first += left.min(4);
    }
}

/// [`nibbles_group`] for rows `first..first + R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn nibbles_rows<const R: usize>(
    format: Format,
    tiles: &[u8],
    acts: &Activations,
    first: usize,
    dst: &mut [f32],
) {
    let tile_bytes = format.bytes() * LANES;
    let mut acc = [_mm512_setzero_ps(); R];
    let low = _mm512_set1_epi8(0x0f);
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        let mut w = [_mm512_setzero_si512(); 8];
        for p in 0..4 {
            // SAFETY: a tile starts with 4 vectors of 64 bytes.
            let v = unsafe { _mm512_loadu_si512(tile[64 * p..].as_ptr().cast()) };
            w[p] = _mm512_and_si512(v, low);
            w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        let scales = match format {
            Format::Q5_0 => {
                for (j, w) in w.iter_mut().enumerate() {
                    let at = 256 + 8 * j;
                    let mask = u64::from_le_bytes(tile[at..at + 8].try_into().unwrap_or([0; 8]));
                    *w = _mm512_mask_add_epi8(*w, mask, *w, _mm512_set1_epi8(0x10));
                }
                320
            }
            _ => 256,
        };
        // SAFETY: 16 f16 scales at `scales`, for Q4_1 16 minimums after them.
        let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[scales..].as_ptr().cast())) };
        let mw = match format {
            Format::Q4_1 => unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(tile[scales + 32..].as_ptr().cast()))
            },
            _ => _mm512_setzero_ps(),
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = (first + i) * acts.blocks + b;
            let y = &acts.values[a];
            let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for j in (0..8).step_by(2) {
                even = _mm512_dpbusd_epi32(even, w[j], broadcast(y, j));
                odd = _mm512_dpbusd_epi32(odd, w[j + 1], broadcast(y, j + 1));
            }
            let sumi = _mm512_add_epi32(even, odd);
            let dx = _mm512_set1_ps(acts.d[a]);
            let term = match format {
                Format::Q4_1 => _mm512_add_ps(
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw), dx),
                    _mm512_mul_ps(mw, _mm512_set1_ps(acts.s[a])),
                ),
                // Q5_0's offset of 16, taken off in integers.
                _ => {
                    let offset = _mm512_set1_epi32(16 * acts.s[a] as i32);
                    let sumi = _mm512_sub_epi32(sumi, offset);
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw), dx)
                }
            };
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    for (i, acc) in acc.into_iter().enumerate() {
        store(acc, first + i, acts.rows, dst);
    }
}

/// Q8_0: per row, candle's eight lanes (four values each) accumulated with fused multiply-adds over the
/// blocks, then summed in `hsum_float_8`'s order; the weights' +128 taken off in integers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn q8_0_group(tiles: &[u8], acts: &Activations, dst: &mut [f32]) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    for r in 0..acts.rows {
        let mut lanes = [_mm512_setzero_ps(); 8];
        for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            let a = r * acts.blocks + b;
            let y = &acts.values[a];
            // SAFETY: 16 f16 scales after the 8 vectors of values.
            let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[512..].as_ptr().cast())) };
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(acts.d[a]));
            for (j, lane) in lanes.iter_mut().enumerate() {
                // SAFETY: vector j of the tile's values, 64 bytes.
                let w = unsafe { _mm512_loadu_si512(tile[64 * j..].as_ptr().cast()) };
                let offset = _mm512_set1_epi32(acts.offsets[a][j]);
                let q = _mm512_dpbusd_epi32(offset, w, broadcast(y, j));
                *lane = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), *lane);
            }
        }
        let l = lanes;
        let sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[2], l[6])),
            _mm512_add_ps(_mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[3], l[7])),
        );
        store(sum, r, acts.rows, dst);
    }
}
