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
        }
    }

    /// `rows` rows of `k` values rounded to the 8-bit type `format` multiplies with, exactly as candle's
    /// `from_float` rounds them (Q8_1 for Q4_1, Q8_0 otherwise).
    pub fn quantize(format: Format, xs: &[f32], rows: usize, k: usize) -> Self {
        let mut acts = Self::unrounded(rows, k);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { round_blocks_avx2(format, xs, &mut acts) };
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
        acts
    }
}

/// [`round_blocks`] with AVX2 vectors, to the same bits: the maximum ignores NaN as `f32::max` does, and the
/// rounding clamps to -128..127 and sends NaN to 0 as Rust's `as i8` does.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn round_blocks_avx2(format: Format, xs: &[f32], acts: &mut Activations) {
    use std::arch::x86_64::*;
    let blocks = xs.chunks_exact(BLOCK);
    let slots = acts.values.iter_mut().zip(&mut acts.d).zip(&mut acts.s);
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
