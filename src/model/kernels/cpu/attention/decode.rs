//! Decoding's attention products (one query against a head's cached keys and values) with AVX-512, to the
//! same bits as the generic loops they replace: each score is the same 16-lane dot product summed lane after
//! lane, here for 16 keys at once (their lanes transposed, so that the sequential sum runs across keys
//! instead of within one vector), and the weighted sums of values keep their 16-float chunks in registers, for
//! all the query heads that share a key head's values at once.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::super::{LANES, dot};
#[cfg(target_arch = "x86_64")]
use crate::model::kernels::cpu::transpose;

/// `p[j] = scale * dot(q, keys[j])` for the `p.len()` keys of `d` values each (`keys` their rows).
#[inline(always)]
pub(super) fn scores(q: &[f32], keys: &[f32], scale: f32, p: &mut [f32]) {
    let d = q.len();
    #[cfg(target_arch = "x86_64")]
    if d > 0 && d.is_multiple_of(LANES) && has_avx512() {
        // SAFETY: the CPU has AVX-512 F; the widths were checked just above.
        return unsafe { scores_avx512(q, keys, scale, p) };
    }
    for (s, k) in p.iter_mut().zip(keys.chunks_exact(d.max(1))) {
        *s = scale * dot(q, k);
    }
}

/// For each head `h` of `out` (heads of `d` values, as the rows): `out[h] = sum_j w[h][j] * rows[j]` (`w`
/// holds each head's weights, one per row, in turn), each element summed over `j` in order. The heads that
/// share the rows (a key head's query heads) go through them together: their sums do not wait on one
/// another.
#[inline(always)]
pub(super) fn weighted(out: &mut [f32], w: &[f32], rows: &[f32], d: usize) {
    let n = rows.len() / d.max(1);
    if n == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && (d == 64 || d == 128) {
        // Four heads of 64 values or two of 128: 16 vectors of sums.
        let at_once = 256 / d;
        for (out, w) in out.chunks_mut(at_once * d).zip(w.chunks(at_once * n)) {
            // SAFETY: the CPU has AVX-512 F; `out` holds whole heads of `d` values, `w` their weights.
            unsafe {
                match (d, out.len() / d) {
                    (64, 4) => weighted_avx512::<4, 4>(out, w, rows),
                    (64, 3) => weighted_avx512::<3, 4>(out, w, rows),
                    (64, 2) => weighted_avx512::<2, 4>(out, w, rows),
                    (64, _) => weighted_avx512::<1, 4>(out, w, rows),
                    (_, 2) => weighted_avx512::<2, 8>(out, w, rows),
                    _ => weighted_avx512::<1, 8>(out, w, rows),
                }
            }
        }
        return;
    }
    weighted_loops(out, w, rows, d, n)
}

/// [`weighted`] as plain loops, head after head.
fn weighted_loops(out: &mut [f32], w: &[f32], rows: &[f32], d: usize, n: usize) {
    for (out, w) in out.chunks_mut(d.max(1)).zip(w.chunks(n.max(1))) {
        out.fill(0.0);
        for (&wj, row) in w.iter().zip(rows.chunks_exact(d.max(1))) {
            for (o, x) in out.iter_mut().zip(row) {
                *o += wj * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// [`scores`] for `d` a multiple of 16: per key the lanes of [`dot`] (`sum_c q_c * k_c` over the 16-value
/// chunks), then 16 keys' lanes transposed and added lane 0 first, as `dot` adds them. The 16 keys' sums
/// advance together, chunk after chunk, so that their additions (each key's in `dot`'s order) do not wait
/// on one another.
///
/// # Safety
/// The CPU must have AVX-512 F; `q.len()` must be a non-zero multiple of 16 and `keys` hold `p.len()` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512(q: &[f32], keys: &[f32], scale: f32, p: &mut [f32]) {
    let d = q.len();
    let load = |v: &[f32], at: usize| {
        // SAFETY: 16 floats from `at`, which the slicing checks.
        unsafe { _mm512_loadu_ps(v[at..at + LANES].as_ptr()) }
    };
    for (group, p) in p.chunks_mut(LANES).enumerate() {
        let first = group * LANES;
        let mut lanes = [_mm512_setzero_ps(); LANES];
        if p.len() == LANES {
            // SAFETY: the CPU has AVX-512 F (caller); 16 keys from `first`.
            unsafe { whole_group(q, &keys[first * d..(first + LANES) * d], &mut lanes) };
        } else {
            for (j, lanes) in lanes.iter_mut().enumerate().take(p.len()) {
                let key = &keys[(first + j) * d..][..d];
                let mut acc = _mm512_mul_ps(load(q, 0), load(key, 0));
                for c in (LANES..d).step_by(LANES) {
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(load(q, c), load(key, c)));
                }
                *lanes = acc;
            }
        }
        let by_lane = transpose::avx512(lanes);
        let sum = by_lane[1..]
            .iter()
            .fold(by_lane[0], |s, l| _mm512_add_ps(s, *l));
        let sum = _mm512_mul_ps(_mm512_set1_ps(scale), sum);
        let mut out = [0f32; LANES];
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
        p.copy_from_slice(&out[..p.len()]);
    }
}

/// 16 keys' lanes of [`dot`] with `q` into `lanes`, chunk after chunk for all of them, and the next 16 keys
/// asked for meanwhile (a line per key and chunk).
///
/// # Safety
/// The CPU must have AVX-512 F; `q.len()` must be a non-zero multiple of 16 and `keys` hold 16 rows of it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn whole_group(q: &[f32], keys: &[f32], lanes: &mut [__m512; LANES]) {
    let d = q.len();
    assert!(keys.len() == LANES * d && d.is_multiple_of(LANES) && d > 0);
    let (q, k) = (q.as_ptr(), keys.as_ptr());
    // SAFETY: chunks inside `q` and the 16 keys (asserted); prefetches fault on no address.
    unsafe {
        let q0 = _mm512_loadu_ps(q);
        for (j, lane) in lanes.iter_mut().enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(k.wrapping_add((LANES + j) * d).cast());
            *lane = _mm512_mul_ps(q0, _mm512_loadu_ps(k.add(j * d)));
        }
        for c in (LANES..d).step_by(LANES) {
            let qc = _mm512_loadu_ps(q.add(c));
            for (j, lane) in lanes.iter_mut().enumerate() {
                _mm_prefetch::<_MM_HINT_T0>(k.wrapping_add((LANES + j) * d + c).cast());
                *lane = _mm512_add_ps(*lane, _mm512_mul_ps(qc, _mm512_loadu_ps(k.add(j * d + c))));
            }
        }
    }
}

/// Rows (keys or values) ahead of the one being read that are asked for early: a step reads the whole
/// cache once, from memory.
const AHEAD: usize = 4;

/// Asks for the `len` floats of `v` from `at` (those inside `v`), line by line.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(v: &[f32], at: usize, len: usize) {
    if let Some(row) = v.get(at..at + len) {
        for line in row.iter().step_by(16) {
            // SAFETY: a prefetch reads nothing and faults on no address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((line as *const f32).cast()) };
        }
    }
}

/// Asks for the lines of `v` into the L2 cache at once, up to [`L2_AHEAD`] floats (a decoding step's keys
/// and values of one head come from memory: many requests in flight instead of a few rows ahead; a long
/// context's would only push each other out of L2, and the kernels' own prefetches cover the rest).
#[inline(always)]
pub(super) fn prefetch_l2(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v[..v.len().min(L2_AHEAD)].iter().step_by(16) {
        // SAFETY: a prefetch reads nothing and faults on no address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>((line as *const f32).cast()) };
    }
}

/// Floats [`prefetch_l2`] asks for at most: 64 KB, 256 positions of a 64-wide head.
const L2_AHEAD: usize = 16 * 1024;

/// [`weighted`] for `H` heads and rows of `16 * C` values: the heads' output chunks in registers over all
/// rows.
///
/// # Safety
/// The CPU must have AVX-512 F; `out.len()` must be `H * 16 * C` and `w.len()` `H` times the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_avx512<const H: usize, const C: usize>(
    out: &mut [f32],
    w: &[f32],
    rows: &[f32],
) {
    let n = w.len() / H;
    let mut acc = [[_mm512_setzero_ps(); C]; H];
    for (j, row) in rows.chunks_exact(C * LANES).take(n).enumerate() {
        prefetch(rows, (j + AHEAD) * C * LANES, C * LANES);
        // SAFETY: chunk c of a row of 16 * C floats.
        let x: [__m512; C] =
            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(row[c * LANES..].as_ptr()) });
        for (h, acc) in acc.iter_mut().enumerate() {
            let wj = _mm512_set1_ps(w[h * n + j]);
            for (acc, x) in acc.iter_mut().zip(x) {
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(wj, x));
            }
        }
    }
    for (h, acc) in acc.into_iter().enumerate() {
        for (c, acc) in acc.into_iter().enumerate() {
            // SAFETY: chunk c of head h of `out`, H * 16 * C floats.
            unsafe { _mm512_storeu_ps(out[(h * C + c) * LANES..][..LANES].as_mut_ptr(), acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                x as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Scores and weighted sums have the generic loops' bits, for key counts around whole groups of 16,
    /// head widths the AVX-512 paths take (64, 128) or leave to the loops (8, 48), and 1 to 5 heads sharing
    /// the rows (whole and partial sets of the heads summed together).
    #[test]
    fn the_decoding_products_have_the_generic_loops_bits() {
        for d in [8, 48, 64, 128] {
            for n in [0, 1, 15, 16, 17, 40] {
                let (q, keys) = (values(d, 1), values(n * d, 2));
                let mut ours = vec![0f32; n];
                scores(&q, &keys, 0.125, &mut ours);
                let want: Vec<u32> = keys
                    .chunks_exact(d)
                    .map(|k| (0.125 * dot(&q, k)).to_bits())
                    .collect();
                let ours: Vec<u32> = ours.iter().map(|s| s.to_bits()).collect();
                assert_eq!(ours, want, "scores d {d} n {n}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for heads in 1..=5 {
                    let w = values(heads * n, 3);
                    let mut out = vec![1f32; heads * d];
                    weighted(&mut out, &w, &keys, d);
                    let mut want = vec![0f32; heads * d];
                    for (want, w) in want.chunks_mut(d).zip(w.chunks(n.max(1))) {
                        for (&wj, row) in w.iter().zip(keys.chunks_exact(d)) {
                            for (o, x) in want.iter_mut().zip(row) {
                                *o += wj * x;
                            }
                        }
                    }
                    assert_eq!(
                        bits(&out),
                        bits(&want),
                        "weighted d {d} n {n} heads {heads}"
                    );
                }
            }
        }
    }
}
