//! The input rows rounded to 8 bits as candle's own code rounds them (Q8_1 for Q4_1 weights, Q8_0 otherwise), and the
//! scalar reference: one output computed with candle's arithmetic for the weight type.

use half::f16;

use super::{BLOCK, Format};

/// The rounded rows, block by block, as the kernels read them.
pub(super) struct Activations {
    pub rows: usize,
    pub blocks: usize,
    /// Per row, per block: the 32 signed values.
    pub values: Vec<[i8; BLOCK]>,
    /// Per row, per block: the scale d.
    pub d: Vec<f32>,
    /// Per row, per block: Q8_1's s (d times the values' sum, as f16); for Q8_0 the values' sum itself.
    pub s: Vec<f32>,
    /// Per row, per block, per four values: -128 times their sum (Q8_0 only: the offset of weights stored
    /// as unsigned bytes, taken off in integers).
    pub offsets: Vec<[i32; 8]>,
    /// Per row, per block: the values' sum (rounded to Q8_0 only: `s` as an integer), from which the kernels take
    /// Q5_0's offset of 16 and the greedy head's of 128 without converting a float in every block.
    pub sums: Vec<i32>,
}

impl Activations {
    /// Room for `rows` rows of `k` values, all zero.
    pub fn unrounded(rows: usize, k: usize) -> Self {
        let blocks = k / BLOCK;
        Activations {
            rows,
            blocks,
            values: vec![[0; BLOCK]; rows * blocks],
            d: vec![0.0; rows * blocks],
            s: vec![0.0; rows * blocks],
            offsets: Vec::new(),
            sums: Vec::new(),
        }
    }

    /// Row `r` alone.
    pub fn row(&self, r: usize) -> Self {
        let at = r * self.blocks..(r + 1) * self.blocks;
        Activations {
            rows: 1,
            blocks: self.blocks,
            values: self.values[at.clone()].to_vec(),
            d: self.d[at.clone()].to_vec(),
            s: self.s[at.clone()].to_vec(),
            offsets: match self.offsets.is_empty() {
                true => Vec::new(),
                false => self.offsets[at.clone()].to_vec(),
            },
            sums: match self.sums.is_empty() {
                true => Vec::new(),
                false => self.sums[at].to_vec(),
            },
        }
    }

    /// `rows` rows of `k` values rounded to the 8-bit type `format` multiplies with, exactly as candle's
    /// `from_float` rounds them (Q8_1 for Q4_1, Q8_0 otherwise).
    pub fn quantize(format: Format, xs: &[f32], rows: usize, k: usize) -> Self {
        let mut acts = Self::unrounded(rows, k);
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512 F/BW/DQ/VL and F16C.
            unsafe { round_blocks_avx512(format, xs, &mut acts) };
        } else if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { round_blocks_avx2(format, xs, &mut acts, 0) };
        } else {
            round_blocks(format, xs, &mut acts);
        }
        #[cfg(not(target_arch = "x86_64"))]
        round_blocks(format, xs, &mut acts);
        if format == Format::Q8_0 {
            acts.offsets = acts
                .values
                .iter()
                .map(|v| {
                    let mut sums = [0i32; 8];
                    for (sum, four) in sums.iter_mut().zip(v.chunks_exact(4)) {
                        *sum = -128 * four.iter().map(|&q| q as i32).sum::<i32>();
                    }
                    sums
                })
                .collect();
        }
        if format != Format::Q4_1 {
            acts.sums = (acts.values.iter())
                .map(|v| v.iter().map(|&q| q as i32).sum())
                .collect();
        }
        acts
    }
}

/// Whether [`round_blocks_avx512`] runs on this CPU.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("f16c")
}

/// Blocks [`round_blocks_avx512`] rounds side by side: one vector of their scales.
#[cfg(target_arch = "x86_64")]
const SIDE_BY_SIDE: usize = 16;

/// [`round_blocks`] with AVX-512, to the same bits, for 16 blocks at a time: each block's values in two
/// vectors, and the per-block scalars (the scale, its inverse, the f16 roundings, Q8_1's s) computed for all
/// 16 blocks in one vector instead of a chain of scalar divisions and conversions per block. The blocks
/// after the last 16 go through [`round_blocks_avx2`].
///
/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL, AVX2 and F16C ([`has_avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,f16c")]
pub(super) unsafe fn round_blocks_avx512(format: Format, xs: &[f32], acts: &mut Activations) {
    use std::arch::x86_64::*;
    let whole = (xs.len() / BLOCK).min(acts.values.len()) / SIDE_BY_SIDE * SIDE_BY_SIDE;
    let (head, tail) = xs.split_at(whole * BLOCK);
    for (g, x) in head.chunks_exact(SIDE_BY_SIDE * BLOCK).enumerate() {
        let at = g * SIDE_BY_SIDE;
        // SAFETY: a block holds 2 vectors of 16 floats.
        let load =
            |b: usize, h: usize| unsafe { _mm512_loadu_ps(x[b * BLOCK + 16 * h..].as_ptr()) };
        // Each block's largest magnitude: maxps keeps its second operand (the running maximum) when the
        // first is NaN, as f32::max ignores NaN; no lane is then NaN, so the lanes' order does not matter.
        let mut amax = [0f32; SIDE_BY_SIDE];
        for (b, amax) in amax.iter_mut().enumerate() {
            let m = _mm512_max_ps(_mm512_abs_ps(load(b, 0)), _mm512_setzero_ps());
            *amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(load(b, 1)), m));
        }
        // SAFETY: 16 floats.
        let amax = unsafe { _mm512_loadu_ps(amax.as_ptr()) };
        let d = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        let mut ids = [0f32; SIDE_BY_SIDE];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(ids.as_mut_ptr(), id) };
        let mut sums = [0i32; SIDE_BY_SIDE];
        for (b, (values, sum)) in acts.values[at..at + SIDE_BY_SIDE]
            .iter_mut()
            .zip(&mut sums)
            .enumerate()
        {
            let id = _mm512_set1_ps(ids[b]);
            let q = [0, 1].map(|h| {
                let v = _mm512_mul_ps(load(b, h), id);
                let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
                let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
                    _mm512_abs_ps(_mm512_sub_ps(v, t)),
                    _mm512_set1_ps(0.5),
                );
                let one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0)), _mm512_set1_ps(1.0));
                let r = _mm512_mask_add_ps(t, away, t, one);
                let r = _mm512_min_ps(
                    _mm512_max_ps(r, _mm512_set1_ps(-128.0)),
                    _mm512_set1_ps(127.0),
                );
                let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
                _mm512_cvtps_epi32(_mm512_maskz_mov_ps(ordered, r))
            });
            // SAFETY: `values` holds 32 bytes; each store writes 16 (exact: the values are in -128..127).
            unsafe {
                _mm512_mask_cvtsepi32_storeu_epi8(values.as_mut_ptr().cast(), 0xffff, q[0]);
                _mm512_mask_cvtsepi32_storeu_epi8(values[16..].as_mut_ptr().cast(), 0xffff, q[1]);
            }
            *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
        }
        let half = |v: __m512| _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        let d16 = half(d);
        // SAFETY: 16 floats each, in the caller's `acts` (the 16 blocks of this group).
        unsafe { _mm512_storeu_ps(acts.d[at..at + SIDE_BY_SIDE].as_mut_ptr(), d16) };
        // SAFETY: 16 integers.
        let sums = _mm512_cvtepi32_ps(unsafe { _mm512_loadu_si512(sums.as_ptr().cast()) });
        let s = match format {
            Format::Q4_1 => half(_mm512_mul_ps(half(sums), d16)),
            _ => sums,
        };
        // SAFETY: as for d.
        unsafe { _mm512_storeu_ps(acts.s[at..at + SIDE_BY_SIDE].as_mut_ptr(), s) };
    }
    // SAFETY: the caller's CPU has AVX2.
    unsafe { round_blocks_avx2(format, tail, acts, whole) };
}

/// [`round_blocks`] with AVX2 vectors, to the same bits, into blocks `first..` of `acts`: the maximum ignores
/// NaN as `f32::max` does, and the rounding clamps to -128..127 and sends NaN to 0 as Rust's `as i8` does.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn round_blocks_avx2(
    format: Format,
    xs: &[f32],
    acts: &mut Activations,
    first: usize,
) {
    use std::arch::x86_64::*;
    let blocks = xs.chunks_exact(BLOCK);
    let slots = (acts.values[first..].iter_mut())
        .zip(&mut acts.d[first..])
        .zip(&mut acts.s[first..]);
    let sign = _mm256_set1_ps(-0.0);
    for (x, ((values, d_out), s_out)) in blocks.zip(slots) {
        // SAFETY: a block holds 4 vectors of 8 floats.
        let v = [0, 1, 2, 3].map(|i| unsafe { _mm256_loadu_ps(x[8 * i..].as_ptr()) });
        let mut max = _mm256_setzero_ps();
        for v in v {
            // maxps returns its second operand when one is NaN: the running maximum.
            max = _mm256_max_ps(_mm256_andnot_ps(sign, v), max);
        }
        // No lane holds NaN (the running maximum kept its own value): any order of the last maxima agrees.
        let max = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
        let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
        let amax = _mm_cvtss_f32(_mm_max_ss(max, _mm_shuffle_ps::<0b01>(max, max)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, v) in q.iter_mut().zip(v) {
            let v = _mm256_mul_ps(v, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
            let away = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
            let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
            let r = _mm256_add_ps(t, _mm256_and_ps(away, one));
            let r = _mm256_min_ps(
                _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
                _mm256_set1_ps(127.0),
            );
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            *q = _mm256_cvtps_epi32(r);
        }
        // Saturating packs (exact: the values are in -128..127) interleave the 128-bit halves; the
        // permutation puts the 32 bytes back in order.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `values` holds 32 bytes.
        unsafe { _mm256_storeu_si256(values.as_mut_ptr().cast(), bytes) };
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let total = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256::<1>(total),
        );
        let total = _mm_add_epi32(total, _mm_shuffle_epi32::<0b01_00_11_10>(total));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(
            total,
            _mm_shuffle_epi32::<0b10_11_00_01>(total),
        ));
        let d16 = f16::from_f32(d);
        *d_out = d16.to_f32();
        *s_out = match format {
            Format::Q4_1 => f16_product(f16::from_f32(sum as f32), d16),
            _ => sum as f32,
        };
    }
}

/// candle's `quantize_row_q8_1` / `quantize_row_q8_0`: per block of 32, d = max |x| / 127, each value
/// `round(x / d)` (multiplied by 1 / d, halves away from zero), and for Q8_1 s = f16(sum) * f16(d) in f16.
pub(super) fn round_blocks(format: Format, xs: &[f32], acts: &mut Activations) {
    let blocks = xs.chunks_exact(BLOCK);
    let slots = acts.values.iter_mut().zip(&mut acts.d).zip(&mut acts.s);
    for (x, ((values, d_out), s_out)) in blocks.zip(slots) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &x) in values.iter_mut().zip(x) {
            let v = x * id;
            let t = v.trunc();
            let rounded = if (v - t).abs() >= 0.5 {
                t + v.signum()
            } else {
                t
            };
            *q = rounded as i8;
            sum += *q as i32;
        }
        let d16 = f16::from_f32(d);
        *d_out = d16.to_f32();
        *s_out = match format {
            Format::Q4_1 => f16_product(f16::from_f32(sum as f32), d16),
            _ => sum as f32,
        };
    }
}

/// `a * b` in f16, as `half` multiplies (the exact f32 product rounded once), without its slow generic path.
fn f16_product(a: f16, b: f16) -> f32 {
    f16::from_f32(a.to_f32() * b.to_f32()).to_f32()
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Weight value `i` (0..32) of a GGUF block, as the integer the block stores (Q4_1: 0..16, Q5_0: -16..16,
/// Q8_0: -128..128).
pub(super) fn value(format: Format, wb: &[u8], i: usize) -> i32 {
    let (qs, shift) = (i % 16, 4 * (i / 16));
    match format {
        Format::Q4_1 => ((wb[4 + qs] >> shift) & 0x0f) as i32,
        Format::Q5_0 => {
            let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
            let high = ((qh >> i) & 1) << 4;
            (((wb[6 + qs] >> shift) & 0x0f) as u32 | high) as i32 - 16
        }
        Format::Q8_0 => wb[2 + i] as i8 as i32,
    }
}

/// One output the way candle computes it for the type (the reference for the tests, and the columns after
/// the last whole packed group): Q4_1 and Q5_0 as candle's scalar loops; Q8_0 as its AVX2 kernel, eight
/// lanes of four values each accumulated with fused multiply-adds, then summed in `hsum_float_8`'s order.
pub(super) fn dot_scalar(format: Format, w_row: &[u8], acts: &Activations, row: usize) -> f32 {
    let mut sum = 0f32;
    let mut lanes = [0f32; 8];
    for (b, wb) in w_row.chunks_exact(format.bytes()).enumerate() {
        let a = row * acts.blocks + b;
        let v = &acts.values[a];
        let product = |i: usize| value(format, wb, i) * v[i] as i32;
        match format {
            Format::Q4_1 => {
                let sumi: i32 = (0..BLOCK).map(product).sum();
                sum += sumi as f32 * f16_at(wb, 0) * acts.d[a] + f16_at(wb, 2) * acts.s[a];
            }
            Format::Q5_0 => {
                let sumi: i32 = (0..BLOCK).map(product).sum();
                sum += sumi as f32 * f16_at(wb, 0) * acts.d[a];
            }
            Format::Q8_0 => {
                let d = f16_at(wb, 0) * acts.d[a];
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let q: i32 = (4 * l..4 * l + 4).map(product).sum();
                    *lane = d.mul_add(q as f32, *lane);
                }
            }
        }
    }
    match format {
        Format::Q8_0 => {
            let l = lanes;
            ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
        }
        _ => sum,
    }
}
