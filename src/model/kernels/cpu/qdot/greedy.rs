//! Greedy decoding's next tokens from a Q8_0 vocabulary head (the demo model's; a Q4_K_M file's tied
//! embedding) without every logit in candle's arithmetic. For its bits candle spends a conversion and a fused
//! multiply-add per four values of each column (eight lanes), which makes the head the costliest product of
//! a batch's decoding step. Here each logit is first estimated with one scaling per block (its exact integer
//! sum times the two scales), with a bound on how far candle's value can lie from the estimate: both are sums
//! of the same exact products, each term rounded at most `blocks + 4` times, so they differ by at most
//! `2 gamma(blocks + 4)` times the sum of the terms' sizes, itself at most the sum over blocks of
//! `|d_w| |d_x| 128 sum|x_q|` (a weight is at most 128 in size). Only the columns whose interval reaches the
//! highest lower end are then computed as candle computes them, and the first largest of those is the row's
//! id: the index candle's `argmax` of the full logits gives, ties included.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor};

use super::activations::{Activations, dot_scalar};
use super::packed::{self, Packed};
use super::{BLOCK, Format, GROUPS_PER_TASK, Isa, Out, reuse, served};
use crate::model::device::for_each_index;

/// Columns of a row computed in candle's arithmetic, past which the row's logits are left to the full
/// product (logits all within the bound of one another, as a model with random weights can give).
const MOST_CANDIDATES: usize = 64;

/// Rows one pass of the estimating kernel takes (their sums in registers).
const PASS_ROWS: usize = 5;

/// Each row's greedy id for the logits `x` `[m, k]` times the Q8_0 head `w` `[n, k]`^T that [`super::matmul`]
/// gives: the first largest, as candle's `argmax` picks it. None where this does not serve (another weight
/// type, a CPU without AVX-512 VNNI, a shape candle's own kernel takes) or cannot tell (a value that is not
/// finite, too many columns within the bound of the largest): the caller then computes the logits.
pub fn greedy(x: &Tensor, w: &Arc<QTensor>) -> Result<Option<Vec<u32>>> {
    let Some((Format::Q8_0, Isa::Vnni512)) = served(x, std::slice::from_ref(w))? else {
        return Ok(None);
    };
    let (rows, k) = x.dims2()?;
    let acts = reuse::rounded(Format::Q8_0 as usize, x, k, |xs, rows| {
        Activations::quantize(Format::Q8_0, xs, rows, k)
    })?;
    let packed = packed::cached(w, |data, n, k| {
        Packed::new(Format::Q8_0, Isa::Vnni512, data, n, k / BLOCK)
    })?;
    let data = w.data()?;
    let row_bytes = acts.blocks * Format::Q8_0.bytes();
    let exact = |r: usize, c: usize| {
        dot_scalar(Format::Q8_0, &data[c * row_bytes..][..row_bytes], &acts, r)
    };
    let (estimates, bounds) = estimate(&packed, &acts, &exact);
    let tolerance = tolerance(acts.blocks);
    let n = packed.n;
    Ok((0..rows)
        .map(|r| {
            let at = r * n..(r + 1) * n;
            choose(&estimates[at.clone()], &bounds[at], tolerance, |c| {
                exact(r, c)
            })
        })
        .collect())
}

/// The factor of a bound within which candle's logit lies from its estimate, for `blocks` blocks:
/// 2 gamma(blocks + 4) with u = 2^-24, and half as much again for the bound's own roundings and those of the
/// interval's ends.
fn tolerance(blocks: usize) -> f32 {
    3.0 * (blocks + 4) as f32 * (f32::EPSILON / 2.0)
}

/// Per row and column: the logit's estimate and the size bound of its terms, row-major `[rows, n]`; the
/// columns after the last whole packed group are computed exactly (bound 0).
fn estimate(
    packed: &Packed,
    acts: &Activations,
    exact: &(impl Fn(usize, usize) -> f32 + Sync),
) -> (Vec<f32>, Vec<f32>) {
    let (rows, n) = (acts.rows, packed.n);
    // Per row and block: 128 |d_x| sum|x_q|, the block's bound before the weight's scale.
    let scales: Vec<f32> = (acts.values.iter().zip(&acts.d))
        .map(|(v, d)| 128.0 * d.abs() * v.iter().map(|q| q.unsigned_abs() as f32).sum::<f32>())
        .collect();
    // Every element is written below (the groups' columns by their tasks, the columns after them by the
    // loop at the end), so the buffers are not zero-filled first.
    let mut estimates = Vec::with_capacity(rows * n);
    let mut bounds = Vec::with_capacity(rows * n);
    let outs = (
        Out {
            ptr: estimates.as_mut_ptr(),
            n,
        },
        Out {
            ptr: bounds.as_mut_ptr(),
            n,
        },
    );
    let task_tiles = GROUPS_PER_TASK * acts.blocks * packed.tile_bytes;
    let lanes = packed.isa.lanes();
    for_each_index(packed.groups.div_ceil(GROUPS_PER_TASK), |i| {
        let tiles = &packed.tiles[i * task_tiles..packed.tiles.len().min((i + 1) * task_tiles)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `greedy` runs only with a Vnni512 packing (found on this CPU); task i owns the columns of its
        // groups in both buffers, for every row.
        unsafe {
            kernel::groups(tiles, acts, &scales, outs, i * GROUPS_PER_TASK * lanes)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no packing off x86_64: {} {lanes} {outs:?}", tiles.len());
    });
    for c in packed.groups * lanes..n {
        for r in 0..rows {
            // SAFETY: row r, column c of both buffers, which no task writes.
            unsafe {
                outs.0.at(r, c).write(exact(r, c));
                outs.1.at(r, c).write(0.0);
            }
        }
    }
    // SAFETY: the tasks wrote every row of the groups' columns, the loop above every row of the others.
    unsafe {
        estimates.set_len(rows * n);
        bounds.set_len(rows * n);
    }
    (estimates, bounds)
}

/// The first column of the largest exact logit, given each column's estimate and bound (the exact value lies
/// within `tolerance * bound` of the estimate) and `exact` for a column's exact value; None when a value is
/// not finite or more than [`MOST_CANDIDATES`] columns may be the largest.
fn choose(
    estimates: &[f32],
    bounds: &[f32],
    tolerance: f32,
    exact: impl Fn(usize) -> f32,
) -> Option<u32> {
    const LANES: usize = 16;
    // The highest lower end, and a sum that is finite only when every estimate and bound is.
    let (mut floor, mut size) = ([f32::NEG_INFINITY; LANES], [0f32; LANES]);
    let chunks = estimates
        .chunks_exact(LANES)
        .zip(bounds.chunks_exact(LANES));
    for (e, b) in chunks {
        for l in 0..LANES {
            let low = e[l] - tolerance * b[l];
            floor[l] = if low > floor[l] { low } else { floor[l] };
            size[l] += e[l].abs() + b[l];
        }
    }
    let tail = estimates.len() / LANES * LANES;
    let mut floor = floor.into_iter().fold(f32::NEG_INFINITY, f32::max);
    let mut size: f32 = size.iter().sum();
    for (e, b) in estimates[tail..].iter().zip(&bounds[tail..]) {
        floor = floor.max(e - tolerance * b);
        size += e.abs() + b;
    }
    if !size.is_finite() {
        return None;
    }
    let mut best: Option<(usize, f32)> = None;
    let mut candidates = 0;
    for (c, (e, b)) in estimates.iter().zip(bounds).enumerate() {
        if e + tolerance * b < floor {
            continue;
        }
        candidates += 1;
        let value = exact(c);
        if candidates > MOST_CANDIDATES || !value.is_finite() {
            return None;
        }
        if best.is_none_or(|(_, top)| value > top) {
            best = Some((c, value));
        }
    }
    best.map(|(c, _)| c as u32)
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::super::vnni::{LANES, broadcast, prefetch, store};
    use super::super::{Activations, Format, Out};
    use super::PASS_ROWS;

    /// One pass's operands: a group's tiles, the rows, their block scales, the pass's first row, the
    /// estimates' and bounds' outputs, the group's first column.
    type Pass<'a> = (
        &'a [u8],
        &'a Activations,
        &'a [f32],
        usize,
        (Out, Out),
        usize,
    );

    /// Estimates and bounds of the whole groups in `tiles` (the first at column `col`) for every row.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `tiles` must hold whole Q8_0 groups packed for
    /// `Isa::Vnni512`, and their columns in both outputs must be this caller's to write, for every row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn groups(
        tiles: &[u8],
        acts: &Activations,
        scales: &[f32],
        outs: (Out, Out),
        col: usize,
    ) {
        let group_bytes = acts.blocks * Format::Q8_0.bytes() * LANES;
        for (g, tiles) in tiles.chunks_exact(group_bytes).enumerate() {
            let col = col + g * LANES;
            let passes = acts.rows.div_ceil(PASS_ROWS);
            let per_pass = acts.rows.div_ceil(passes.max(1));
            let mut first = 0;
            while first < acts.rows {
                let rows = per_pass.min(acts.rows - first);
                let at = (tiles, acts, scales, first, outs, col);
                // SAFETY: the caller's columns.
                unsafe {
                    match rows {
                        1 => rows_of::<1>(at),
                        2 => rows_of::<2>(at),
                        3 => rows_of::<3>(at),
                        4 => rows_of::<4>(at),
                        _ => rows_of::<PASS_ROWS>(at),
                    }
                }
                first += rows;
            }
        }
    }

    /// [`groups`] for one group and rows `first..first + R`: per block, the exact integer sum (the weights'
    /// +128 taken off as the accumulator's start) scaled by the weight's then the row's scale and added to
    /// the estimate; `|d_w|` times the row's block scale added to the bound.
    ///
    /// # Safety
    /// As [`groups`], for one group at `col`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn rows_of<const R: usize>(
        (tiles, acts, scales, first, (estimates, bounds), col): Pass,
    ) {
        let tile_bytes = Format::Q8_0.bytes() * LANES;
        let mut estimate = [_mm512_setzero_ps(); R];
        let mut bound = [_mm512_setzero_ps(); R];
        for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            if first == 0 {
                // The first rows stream the group from memory; later rows find it in the cache.
                prefetch(tile, tile_bytes);
            }
            let a = |i: usize| (first + i) * acts.blocks + b;
            // Two chains of sums per row, so that few rows still keep both ports busy.
            let mut sums = [[_mm512_setzero_si512(); 2]; R];
            for (i, sums) in sums.iter_mut().enumerate() {
                sums[0] = _mm512_set1_epi32(-128 * acts.s[a(i)] as i32);
            }
            for j in 0..8 {
                // SAFETY: vector j of the tile's values, 64 bytes.
                let w = unsafe { _mm512_loadu_si512(tile[64 * j..].as_ptr().cast()) };
                for (i, sums) in sums.iter_mut().enumerate() {
                    sums[j % 2] =
                        _mm512_dpbusd_epi32(sums[j % 2], w, broadcast(&acts.values[a(i)], j));
                }
            }
            // SAFETY: 16 f16 scales after the 8 vectors of values.
            let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(tile[512..].as_ptr().cast())) };
            let dw_size = _mm512_abs_ps(dw);
            for (i, sums) in sums.iter().enumerate() {
                let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(sums[0], sums[1]));
                let term = _mm512_mul_ps(_mm512_mul_ps(sum, dw), _mm512_set1_ps(acts.d[a(i)]));
                estimate[i] = _mm512_add_ps(estimate[i], term);
                bound[i] = _mm512_fmadd_ps(dw_size, _mm512_set1_ps(scales[a(i)]), bound[i]);
            }
        }
        for i in 0..R {
            // SAFETY: the caller's columns, row `first + i` of `acts`.
            unsafe {
                store(estimate[i], estimates, first + i, col);
                store(bound[i], bounds, first + i, col);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::{Device, Module};

    use super::*;

    /// The first column of the largest value, as candle's `argmax` gives it.
    fn first_max(values: &[f32]) -> u32 {
        let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        values.iter().position(|&v| v == top).unwrap_or(0) as u32
    }

    #[test]
    fn the_choice_is_the_exact_values_first_largest_whatever_the_estimates_within_their_bounds() {
        let exact = [1.0f32, 3.0, 2.5, 3.0, -1.0, 2.9999];
        // Estimates off by up to their bound, in either direction.
        let bounds = [0.1f32, 0.2, 0.5, 0.3, 0.1, 0.4];
        for shift in [-1.0f32, -0.5, 0.0, 0.5, 1.0] {
            let estimates: Vec<f32> = (exact.iter().zip(&bounds))
                .enumerate()
                .map(|(i, (e, b))| e + shift * b * if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            let got = choose(&estimates, &bounds, 1.0, |c| exact[c]);
            assert_eq!(got, Some(first_max(&exact)), "shift {shift}");
        }
    }

    #[test]
    fn columns_whose_interval_cannot_reach_the_best_are_never_computed() {
        let estimates: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let bounds = vec![0.4f32; 100];
        let computed = std::cell::Cell::new(0);
        let got = choose(&estimates, &bounds, 1.0, |c| {
            computed.set(computed.get() + 1);
            estimates[c]
        });
        assert_eq!((got, computed.get()), (Some(99), 1));
    }

    #[test]
    fn too_many_candidates_or_a_value_not_finite_leave_the_choice_to_the_logits() {
        let flat = vec![0.0f32; 200];
        assert_eq!(choose(&flat, &vec![1.0; 200], 1.0, |_| 0.0), None);
        assert_eq!(choose(&flat, &vec![0.0; 200], 1.0, |_| 0.0), None);
        let mut nan = vec![0.0f32; 20];
        nan[7] = f32::NAN;
        assert_eq!(choose(&nan, &[0.0; 20], 1.0, |c| c as f32), None);
        let one = [5.0f32, 1.0];
        assert_eq!(choose(&one, &[0.0, 0.0], 1.0, |_| f32::INFINITY), None);
    }

    /// Random Q8_0 heads, each row's input made the largest logit of a column copied to a later column
    /// (an exact tie) and to one with a single value nudged (a near tie): the ids equal the argmax of
    /// candle's logits, on widths with columns after the whole groups.
    #[test]
    fn greedy_ids_are_the_argmax_of_candles_logits_ties_included() {
        if Isa::detect() != Some(Isa::Vnni512) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        for (m, n, k, seed) in [
            (1, 645, 576, 1u64),
            (10, 1000, 576, 2),
            (7, 403, 96, 3),
            (3, 64, 896, 4),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let mut w = Tensor::randn(0f32, 0.05, (n, k), &dev)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let xs = x.to_vec2::<f32>().unwrap();
            for (r, row) in xs.iter().enumerate() {
                let c = (r * 37 + seed as usize) % (n / 3);
                w[c] = row.iter().map(|v| v * 0.02).collect();
                w[c + n / 3] = w[c].clone();
                w[c + 2 * n / 3] = w[c].clone();
                w[c + 2 * n / 3][r % k] += 1e-4;
            }
            let w = Tensor::new(w, &dev).unwrap();
            let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let logits = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
            let want: Vec<u32> = (logits.to_vec2::<f32>().unwrap().iter())
                .map(|row| first_max(row))
                .collect();
            assert_eq!(greedy(&x, &w).unwrap(), Some(want), "({m}, {n}, {k})");
        }
    }

    /// Every estimate lies within its tolerance of candle's logit (and some differ from it: the bound is
    /// what makes the choice exact), and the tolerance is small against the logits' spread.
    #[test]
    fn candles_logits_lie_within_the_tolerance_of_their_estimates() {
        if Isa::detect() != Some(Isa::Vnni512) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        let (mut differ, mut worst) = (0, 0f32);
        for (m, n, k) in [(10, 2048, 576), (4, 517, 896), (2, 96, 32)] {
            let x = Tensor::randn(0f32, 3.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
            let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let logits = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
            let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let acts = Activations::quantize(
                Format::Q8_0,
                &x.flatten_all().unwrap().to_vec1().unwrap(),
                m,
                k,
            );
            let packed = Packed::new(Format::Q8_0, Isa::Vnni512, &w.data().unwrap(), n, k / BLOCK);
            let row_bytes = acts.blocks * Format::Q8_0.bytes();
            let data = w.data().unwrap();
            let exact = |r: usize, c: usize| {
                dot_scalar(Format::Q8_0, &data[c * row_bytes..][..row_bytes], &acts, r)
            };
            let (estimates, bounds) = estimate(&packed, &acts, &exact);
            let tol = tolerance(acts.blocks);
            for ((e, a), b) in logits.iter().zip(&estimates).zip(&bounds) {
                differ += usize::from(e != a);
                worst = worst.max((e - a).abs() / (tol * b));
                assert!(
                    (e - a).abs() <= tol * b,
                    "{e} vs {a} bound {b} ({m}, {n}, {k})"
                );
            }
            let spread = logits.iter().fold(0f32, |s, v| s.max(v.abs()));
            let widest = bounds.iter().fold(0f32, |s, b| s.max(tol * b));
            assert!(
                widest < 1e-3 * spread,
                "tolerance {widest} for logits up to {spread}"
            );
        }
        assert!(
            differ > 100,
            "{differ} estimates differ from candle's logits"
        );
        eprintln!(
            "{differ} estimates differ; the largest difference is {worst:.3} of its tolerance"
        );
    }

    #[test]
    fn other_weight_types_are_left_to_the_logits() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 64), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (32, 64), &dev).unwrap();
        let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        assert_eq!(greedy(&x, &w).unwrap(), None);
    }
}
