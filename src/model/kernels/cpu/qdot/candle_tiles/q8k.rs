//! Input rows rounded to Q8_K (256 values a block, as the K-quant kernels read them), bit for bit as candle's
//! `BlockQ8K::from_float` rounds them: a scalar reference, and an AVX-512 version that gives the same bytes
//! without candle's per-value `roundf` loop.

/// Values per Q8_K block (a K-quant superblock).
pub(super) const QK_K: usize = 256;

/// One block, laid out as candle's `BlockQ8K` (292 bytes, no padding): the scale, the 256 rounded values and
/// their sums by 16.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(super) struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + QK_K / 16 * 2);

impl BlockQ8K {
    const ZERO: Self = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
}

/// The scalar terms the tile kernels take off each block's integer sums, computed once per block as candle's
/// kernels compute them for every tile (the same operations, so the same bits).
#[derive(Clone, Copy, Debug)]
pub(super) struct Terms {
    /// Q4_K, per sub-block of 32: `d * (bsums[2s] + bsums[2s + 1])`.
    pub q4k_mins: [f32; 8],
    /// Q6_K, per sub-block of 16: `32 * bsums[s]`.
    pub q6k_offsets: [f32; 16],
    /// Q8_0, per block of 32: `128 * (bsums[2b] + bsums[2b + 1])`.
    pub q8_0_offsets: [f32; 8],
}

impl Terms {
    fn of(b: &BlockQ8K) -> Self {
        let pair = |s: usize| (b.bsums[2 * s] as i32 + b.bsums[2 * s + 1] as i32) as f32;
        Terms {
            q4k_mins: std::array::from_fn(|s| b.d * pair(s)),
            q6k_offsets: std::array::from_fn(|s| 32.0 * b.bsums[s] as f32),
            q8_0_offsets: std::array::from_fn(|s| 128.0 * pair(s)),
        }
    }
}

/// Rows rounded to Q8_K, with each block's [`Terms`].
pub(super) struct Rounded {
    pub blocks: Vec<BlockQ8K>,
    pub terms: Vec<Terms>,
}

/// `rows` rows of `k` values (k a multiple of 256) as Q8_K blocks, row after row.
pub(super) fn round_rows(xs: &[f32], rows: usize, k: usize) -> Rounded {
    #[cfg(target_arch = "x86_64")]
    let round: fn(&[f32], &mut BlockQ8K) = match super::super::activations::has_avx512() {
        // SAFETY: the CPU has AVX-512 F/BW/DQ/VL; every chunk below holds 256 values.
        true => |x, y| unsafe { round_block_avx512(x, y) },
        false => round_block,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let round = round_block;
    let mut blocks = vec![BlockQ8K::ZERO; rows * (k / QK_K)];
    for (x, y) in xs.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        round(x, y);
    }
    let terms = blocks.iter().map(Terms::of).collect();
    Rounded { blocks, terms }
}

/// One block as candle rounds it: the value of largest magnitude (the first of equals; NaN never) gives the
/// scale `-127 / max`, each value is rounded half away from zero and clamped to an i8 (NaN to 0).
pub(super) fn round_block(xs: &[f32], y: &mut BlockQ8K) {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &x in xs {
        if amax < x.abs() {
            amax = x.abs();
            max = x;
        }
    }
    if amax == 0.0 {
        *y = BlockQ8K::ZERO;
        return;
    }
    let iscale = -127f32 / max;
    for (q, &x) in y.qs.iter_mut().zip(xs) {
        *q = (iscale * x).round().clamp(-128.0, 127.0) as i8;
    }
    for (sum, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *sum = qs.iter().map(|&q| q as i32).sum::<i32>() as i16;
    }
    y.d = 1.0 / iscale;
}

/// [`round_block`] with AVX-512, to the same bytes.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL; `xs` must hold 256 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn round_block_avx512(xs: &[f32], y: &mut BlockQ8K) {
    use std::arch::x86_64::*;
    const VECTORS: usize = QK_K / 16;
    // SAFETY: 16 vectors of 16 floats.
    let load = |v: usize| unsafe { _mm512_loadu_ps(xs[16 * v..].as_ptr()) };
    // The largest magnitude: maxps keeps its second operand (the running maximum) when the first is NaN, as
    // the scalar comparison skips NaN.
    let mut m = _mm512_setzero_ps();
    for v in 0..VECTORS {
        m = _mm512_max_ps(_mm512_abs_ps(load(v)), m);
    }
    let amax = _mm512_reduce_max_ps(m);
    if amax == 0.0 {
        *y = BlockQ8K::ZERO;
        return;
    }
    // Its first occurrence gives the sign.
    let wanted = _mm512_set1_ps(amax);
    let mut max = amax;
    for v in 0..VECTORS {
        let hits = _mm512_cmpeq_ps_mask(_mm512_abs_ps(load(v)), wanted);
        if hits != 0 {
            max = xs[16 * v + hits.trailing_zeros() as usize];
            break;
        }
    }
    let iscale = -127f32 / max;
    let scale = _mm512_set1_ps(iscale);
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    let ones16 = _mm_set1_epi8(1);
    for v in 0..VECTORS {
        let s = _mm512_mul_ps(scale, load(v));
        // Half away from zero, exactly: the truncation, plus one away from zero where the dropped fraction
        // (exact in f32) is at least a half.
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
        let frac = _mm512_abs_ps(_mm512_sub_ps(s, t));
        let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
        let step = _mm512_or_ps(one, _mm512_and_ps(s, _mm512_set1_ps(-0.0)));
        let r = _mm512_mask_add_ps(t, away, t, step);
        // Clamped; NaN (an unordered lane) becomes 0, as `as i8` makes it.
        let r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(s, s);
        let q = _mm512_maskz_cvttps_epi32(ordered, r);
        let bytes = _mm512_cvtepi32_epi8(q);
        // SAFETY: 16 bytes of the block's 256.
        unsafe { _mm_storeu_si128(y.qs[16 * v..].as_mut_ptr().cast(), bytes) };
        // The 16 values' sum: pairs of bytes to i16, then across the vector.
        let pairs = _mm_maddubs_epi16(ones16, bytes);
        let wide = _mm256_cvtepi16_epi32(pairs);
        y.bsums[v] = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(wide)) as i16;
    }
    y.d = 1.0 / iscale;
}
