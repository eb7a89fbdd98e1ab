//! The AVX-512 VNNI kernels: 16 columns per group, one `vpdpbusd` per four values of a block for all of them.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{Activations, Format, Out, in_passes};

pub(super) const LANES: usize = 16;

/// Rows one pass of the Q4_1 / Q5_0 kernel keeps in registers (with the 8 unpacked weight vectors).
const PASS_ROWS: usize = 10;

/// Outputs of the whole groups in `tiles`, the first at column `col`, for every row.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `tiles` must hold whole groups packed for
/// `Isa::Vnni512`, and their columns in `out` must be this caller's to write, for every row of `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
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
                Format::Q4_1 => nibbles_group::<false>(tiles, acts, out, col),
                Format::Q5_0 => nibbles_group::<true>(tiles, acts, out, col),
            }
        }
    }
}

/// Stores lane c of `acc` as column `col + c` of row `r`.
///
/// # Safety
/// Row `r`, columns `col..col + 16` of `out` must be the caller's to write.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store(acc: __m512, out: Out, r: usize, col: usize) {
    // SAFETY: 16 floats of row r, as the caller vouches.
    unsafe { _mm512_storeu_ps(out.at(r, col), acc) };
}

/// Tiles ahead of the one being read that are asked for early (the weights stream from memory once): 5-9 KB,
/// far enough for memory's latency at batch 1 (4 tiles decoded 10-20% slower there;
/// bench/results/cpu-decode-intel-2026-12-05.txt, section 10).
const PREFETCH_TILES: usize = 32;

/// Asks for the tile [`PREFETCH_TILES`] after `tile` (`tile_bytes` each), line by line: whatever lies
/// there, as a prefetch of an address outside the weights is harmless.
#[inline(always)]
pub(super) fn prefetch(tile: &[u8], tile_bytes: usize) {
    let ahead = tile.as_ptr().wrapping_add(PREFETCH_TILES * tile_bytes);
    for line in (0..tile_bytes).step_by(64) {
        // SAFETY: a prefetch reads nothing and faults on no address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
    }
}

/// The four activation bytes `4j..4j+4` of a block, in every lane.
#[target_feature(enable = "avx512f")]
pub(super) fn broadcast(values: &[i8; 32], j: usize) -> __m512i {
    let four = i32::from_le_bytes([
        values[4 * j] as u8,
        values[4 * j + 1] as u8,
        values[4 * j + 2] as u8,
        values[4 * j + 3] as u8,
    ]);
    _mm512_set1_epi32(four)
}

/// Q4_1 (`Q5 = false`) and Q5_0 (`Q5 = true`): rows in passes of at most [`PASS_ROWS`], their sums in
/// registers, each block unpacked once per pass.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles_group<const Q5: bool>(tiles: &[u8], acts: &Activations, out: Out, col: usize) {
    in_passes(acts.rows, PASS_ROWS, |first, rows| {
        let at = (tiles, acts, first, out, col);
        // SAFETY: the caller's columns, on the CPU the caller vouches for.
        unsafe {
            match rows {
                1 => nibbles_rows::<Q5, 1>(at),
                2 => nibbles_rows::<Q5, 2>(at),
                3 => nibbles_rows::<Q5, 3>(at),
                4 => nibbles_rows::<Q5, 4>(at),
                5 => nibbles_rows::<Q5, 5>(at),
                6 => nibbles_rows::<Q5, 6>(at),
                7 => nibbles_rows::<Q5, 7>(at),
                8 => nibbles_rows::<Q5, 8>(at),
                9 => nibbles_rows::<Q5, 9>(at),
                _ => nibbles_rows::<Q5, PASS_ROWS>(at),
            }
        }
    });
}

/// [`nibbles_group`] for rows `first..first + R`: each block's exact integer dot product with each row
/// (Q5_0's offset of 16 taken off in integers, as the accumulator's start), and candle's f32 terms added
/// block after block.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles_rows<const Q5: bool, const R: usize>(
    (tiles, acts, first, out, col): (&[u8], &Activations, usize, Out, usize),
) {
    let tile_bytes = if Q5 { 22 } else { 20 } * LANES;
    let values = &acts.values[first * acts.blocks..][..R * acts.blocks];
    let ds = &acts.d[first * acts.blocks..][..R * acts.blocks];
    let ss = &acts.s[first * acts.blocks..][..R * acts.blocks];
    let sums = match Q5 {
        true => &acts.sums[first * acts.blocks..][..R * acts.blocks],
        false => &[][..],
    };
    let mut acc = [_mm512_setzero_ps(); R];
    let low = _mm512_set1_epi8(0x0f);
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        prefetch(tile, tile_bytes);
        let mut w = [_mm512_setzero_si512(); 8];
        for p in 0..4 {
            // SAFETY: a tile starts with 4 vectors of 64 bytes.
            let v = unsafe { _mm512_loadu_si512(tile[64 * p..].as_ptr().cast()) };
            w[p] = _mm512_and_si512(v, low);
            w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        let scales = if Q5 {
            for (j, w) in w.iter_mut().enumerate() {
                let at = 256 + 8 * j;
                let mask = u64::from_le_bytes(tile[at..at + 8].try_into().unwrap_or([0; 8]));
                *w = _mm512_mask_add_epi8(*w, mask, *w, _mm512_set1_epi8(0x10));
            }
            320
        } else {
            256
        };
        // SAFETY: 16 f16 scales at `scales`, for Q4_1 16 minimums after them.
        let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[scales..].as_ptr().cast())) };
        let mw = match Q5 {
            false => unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(tile[scales + 32..].as_ptr().cast()))
            },
            true => _mm512_setzero_ps(),
        };
        // Each row's exact integer sums, the rows interleaved (independent products side by side); few rows
        // split their one chain of dependent products, which would otherwise leave the core idle.
        let chains = (4 / R).max(1);
        let mut dots = [[_mm512_setzero_si512(); 4]; R];
        if Q5 {
            for (i, dots) in dots.iter_mut().enumerate() {
                dots[0] = _mm512_set1_epi32(-16 * sums[i * acts.blocks + b]);
            }
        }
        for (j, w) in w.iter().enumerate() {
            for (i, dots) in dots.iter_mut().enumerate() {
                let dot = &mut dots[j % chains];
                *dot = _mm512_dpbusd_epi32(*dot, *w, broadcast(&values[i * acts.blocks + b], j));
            }
        }
        for (i, (acc, dots)) in acc.iter_mut().zip(dots).enumerate() {
            let a = i * acts.blocks + b;
            let sumi = dots[1..chains]
                .iter()
                .fold(dots[0], |t, s| _mm512_add_epi32(t, *s));
            let scaled = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw),
                _mm512_set1_ps(ds[a]),
            );
            let term = match Q5 {
                true => scaled,
                false => _mm512_add_ps(scaled, _mm512_mul_ps(mw, _mm512_set1_ps(ss[a]))),
            };
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    for (i, acc) in acc.into_iter().enumerate() {
        // SAFETY: the caller's columns, row `first + i` of `acts`.
        unsafe { store(acc, out, first + i, col) };
    }
}

/// Q8_0: per row, candle's eight lanes (four values each) accumulated with fused multiply-adds over the
/// blocks, then summed in `hsum_float_8`'s order; the weights' +128 taken off in integers. Rows in pairs,
/// which share each loaded weight vector.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_group(tiles: &[u8], acts: &Activations, out: Out, col: usize) {
    let mut first = 0;
    while first < acts.rows {
        // SAFETY: the caller's columns.
        unsafe {
            match acts.rows - first {
                1 => q8_0_rows::<1>(tiles, acts, first, out, col),
                _ => q8_0_rows::<2>(tiles, acts, first, out, col),
            }
        }
        first += 2;
    }
}

/// [`q8_0_group`] for rows `first..first + R`.
///
/// # Safety
/// As [`columns`], for one group at `col`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_rows<const R: usize>(
    tiles: &[u8],
    acts: &Activations,
    first: usize,
    out: Out,
    col: usize,
) {
    let tile_bytes = Format::Q8_0.bytes() * LANES;
    let mut lanes = [[_mm512_setzero_ps(); 8]; R];
    for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        if first == 0 {
            // The first rows stream the group from memory; later rows find it in the cache.
            prefetch(tile, tile_bytes);
        }
        let a = |i: usize| (first + i) * acts.blocks + b;
        // SAFETY: 16 f16 scales after the 8 vectors of values.
        let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[512..].as_ptr().cast())) };
        let mut d = [dw; R];
        for (i, d) in d.iter_mut().enumerate() {
            *d = _mm512_mul_ps(dw, _mm512_set1_ps(acts.d[a(i)]));
        }
        for j in 0..8 {
            // SAFETY: vector j of the tile's values, 64 bytes.
            let w = unsafe { _mm512_loadu_si512(tile[64 * j..].as_ptr().cast()) };
            for (i, lanes) in lanes.iter_mut().enumerate() {
                let offset = _mm512_set1_epi32(acts.offsets[a(i)][j]);
                let q = _mm512_dpbusd_epi32(offset, w, broadcast(&acts.values[a(i)], j));
                lanes[j] = _mm512_fmadd_ps(d[i], _mm512_cvtepi32_ps(q), lanes[j]);
            }
        }
    }
    for (i, l) in lanes.into_iter().enumerate() {
        let sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[2], l[6])),
            _mm512_add_ps(_mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[3], l[7])),
        );
        // SAFETY: the caller's columns, row `first + i` of `acts`.
        unsafe { store(sum, out, first + i, col) };
    }
}
