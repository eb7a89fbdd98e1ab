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
use crate::model::device::{for_each_chunk_mut, for_each_index, simd};

/// Columns of a packed group.
const LANES: usize = 16;

/// Groups of 16 columns of a row computed in candle's arithmetic, past which the row's logits are left to the
/// full product (logits all within the bound of one another, as a model with random weights can give).
const MOST_GROUPS: usize = 8;

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
    let spans = spans(&packed, &acts);
    let data = w.data()?;
    let row_bytes = acts.blocks * Format::Q8_0.bytes();
    let groups = packed.groups;
    let mut ids = vec![None; rows];
    for_each_chunk_mut(&mut ids, 1, |r, id| {
        let exact = Exact {
            packed: &packed,
            row: acts.row(r),
            tail: &data[groups * LANES * row_bytes..],
        };
        let tail: Vec<f32> = exact.tail().collect();
        let at = r * groups..(r + 1) * groups;
        id[0] = simd(|| {
            choose(
                &spans.0[at.clone()],
                &spans.1[at],
                |g| exact.group(g),
                &tail,
            )
        });
    });
    Ok(ids.into_iter().collect())
}

/// The factor of a bound within which candle's logit lies from its estimate, for `blocks` blocks:
/// 2 gamma(blocks + 4) with u = 2^-24, and half as much again for the bound's own roundings and those of the
/// interval's ends.
fn tolerance(blocks: usize) -> f32 {
    3.0 * (blocks + 4) as f32 * (f32::EPSILON / 2.0)
}

/// Per row and whole group of 16 columns, row-major `[rows, groups]`: the highest lower end and the highest
/// upper end of the group's intervals (estimate -/+ tolerance x bound), within which candle's logits lie (so
/// the group's largest logit lies between the two); NaN for a group with a value that is not finite.
fn spans(packed: &Packed, acts: &Activations) -> (Vec<f32>, Vec<f32>) {
    let (rows, groups) = (acts.rows, packed.groups);
    // Per row and block: 128 |d_x| sum|x_q|, the block's bound before the weight's scale.
    let scales: Vec<f32> = (acts.values.iter().zip(&acts.d))
        .map(|(v, d)| 128.0 * d.abs() * v.iter().map(|q| q.unsigned_abs() as f32).sum::<f32>())
        .collect();
    let tolerance = tolerance(acts.blocks);
    // Every element is written by the tasks (each its groups, for every row), so the buffers are not
    // zero-filled first.
    let mut low = Vec::with_capacity(rows * groups);
    let mut high = Vec::with_capacity(rows * groups);
    let outs = (
        Out {
            ptr: low.as_mut_ptr(),
            n: groups,
        },
        Out {
            ptr: high.as_mut_ptr(),
            n: groups,
        },
    );
    let task_tiles = GROUPS_PER_TASK * acts.blocks * packed.tile_bytes;
    for_each_index(groups.div_ceil(GROUPS_PER_TASK), |i| {
        let tiles = &packed.tiles[i * task_tiles..packed.tiles.len().min((i + 1) * task_tiles)];
        let at = (&scales[..], tolerance);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `greedy` runs only with a Vnni512 packing (found on this CPU); task i owns its groups in both
        // buffers, for every row.
        unsafe {
            kernel::groups(tiles, acts, at, outs, i * GROUPS_PER_TASK)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no packing off x86_64: {} {at:?} {outs:?}", tiles.len());
    });
    // SAFETY: the tasks wrote every row of every group.
    unsafe {
        low.set_len(rows * groups);
        high.set_len(rows * groups);
    }
    (low, high)
}

/// One row's logits in candle's arithmetic: a whole group's 16 at once (the exact packed kernel), or a
/// column after the last whole group.
struct Exact<'a> {
    packed: &'a Packed,
    /// The row's rounded values alone.
    row: Activations,
    /// The GGUF blocks of the columns after the whole groups.
    tail: &'a [u8],
}

impl Exact<'_> {
    fn group(&self, g: usize) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        let bytes = self.row.blocks * self.packed.tile_bytes;
        let tiles = &self.packed.tiles[g * bytes..(g + 1) * bytes];
        let dst = Out {
            ptr: out.as_mut_ptr(),
            n: LANES,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a Vnni512 packing (see `greedy`); `dst` is row 0, columns 0..16 of `out`, for the one row.
        unsafe {
            super::vnni::columns(Format::Q8_0, tiles, &self.row, dst, 0)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no packing off x86_64: {} {dst:?}", tiles.len());
        out
    }

    /// The logits of the columns after the whole groups.
    fn tail(&self) -> impl Iterator<Item = f32> + '_ {
        let row_bytes = self.row.blocks * Format::Q8_0.bytes();
        (self.tail.chunks_exact(row_bytes)).map(|w| dot_scalar(Format::Q8_0, w, &self.row, 0))
    }
}

/// The first column of the largest exact logit of a row, from each whole group's span (see [`spans`]), its
/// logits in candle's arithmetic `group(g)`, and those of the columns after the groups, `tail`: only the
/// groups whose highest upper end reaches the highest lower end of all are computed. None when a value is not
/// finite or more than [`MOST_GROUPS`] groups may hold the largest.
fn choose(
    low: &[f32],
    high: &[f32],
    group: impl Fn(usize) -> [f32; LANES],
    tail: &[f32],
) -> Option<u32> {
    // The highest lower end; a sum that is finite only when every end is.
    let (floor, size) = (low.iter().zip(high)).fold((f32::NEG_INFINITY, 0f32), |(f, s), (l, h)| {
        (if *l > f { *l } else { f }, s + l.abs() + h.abs())
    });
    if !size.is_finite() {
        return None;
    }
    let floor = tail.iter().fold(floor, |f, v| f.max(*v));
    let candidates = (high.iter().enumerate()).filter(|(_, h)| **h >= floor);
    if candidates.clone().count() > MOST_GROUPS {
        return None;
    }
    let values = candidates.flat_map(|(g, _)| (g * LANES..).zip(group(g)));
    let values = values.chain((high.len() * LANES..).zip(tail.iter().copied()));
    let mut best: Option<(usize, f32)> = None;
    for (c, value) in values {
        if !value.is_finite() {
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

    use super::super::vnni::{LANES, broadcast, prefetch};
    use super::super::{Activations, Format, Out};
    use super::PASS_ROWS;

    /// One pass's operands: a group's tiles, the rows, their block scales and the tolerance, the pass's first
    /// row, the spans' outputs (lower ends, upper ends), the group's index.
    type Pass<'a> = (
        &'a [u8],
        &'a Activations,
        (&'a [f32], f32),
        usize,
        (Out, Out),
        usize,
    );

    /// The spans of the whole groups in `tiles` (the first group `group`) for every row.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `tiles` must hold whole Q8_0 groups packed for
    /// `Isa::Vnni512`, and their groups in both outputs must be this caller's to write, for every row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn groups(
        tiles: &[u8],
        acts: &Activations,
        scales: (&[f32], f32),
        outs: (Out, Out),
        group: usize,
    ) {
        let group_bytes = acts.blocks * Format::Q8_0.bytes() * LANES;
        for (g, tiles) in tiles.chunks_exact(group_bytes).enumerate() {
            let passes = acts.rows.div_ceil(PASS_ROWS);
            let per_pass = acts.rows.div_ceil(passes.max(1));
            let mut first = 0;
            while first < acts.rows {
                let rows = per_pass.min(acts.rows - first);
                let at = (tiles, acts, scales, first, outs, group + g);
                // SAFETY: the caller's groups.
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
    /// the estimate, and `|d_w|` times the row's block scale added to the bound; then the group's highest
    /// `estimate -/+ tolerance x bound`.
    ///
    /// # Safety
    /// As [`groups`], for one group.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn rows_of<const R: usize>(
        (tiles, acts, (scales, tolerance), first, (low, high), group): Pass,
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
        let tolerance = _mm512_set1_ps(tolerance);
        for i in 0..R {
            let width = _mm512_mul_ps(tolerance, bound[i]);
            let size = _mm512_add_ps(_mm512_abs_ps(estimate[i]), bound[i]);
            let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(size, _mm512_set1_ps(f32::INFINITY));
            let (lo, hi) = match finite {
                0xffff => (
                    _mm512_reduce_max_ps(_mm512_sub_ps(estimate[i], width)),
                    _mm512_reduce_max_ps(_mm512_add_ps(estimate[i], width)),
                ),
                _ => (f32::NAN, f32::NAN),
            };
            // SAFETY: the caller's group, row `first + i` of `acts`.
            unsafe {
                low.at(first + i, group).write(lo);
                high.at(first + i, group).write(hi);
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

    /// Groups of exact values with a tie for the largest across groups and a near tie, and a tail.
    fn exact_values() -> (Vec<[f32; LANES]>, Vec<f32>) {
        let mut groups = vec![[0f32; LANES]; 6];
        for (g, group) in groups.iter_mut().enumerate() {
            for (l, v) in group.iter_mut().enumerate() {
                *v = ((g * 7 + l * 3) % 11) as f32 * 0.25;
            }
        }
        groups[2][5] = 3.0;
        groups[4][1] = 3.0;
        groups[3][9] = 2.9999;
        (groups, vec![1.0, 2.5])
    }

    #[test]
    fn the_choice_is_the_exact_values_first_largest_whatever_the_spans_around_them() {
        let (groups, tail) = exact_values();
        let all: Vec<f32> = groups.iter().flatten().chain(&tail).copied().collect();
        let top = |g: &[f32; LANES]| g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (below, above) in [(0.0f32, 0.0f32), (0.5, 0.01), (0.01, 0.5), (1e-4, 1e-4)] {
            let low: Vec<f32> = groups.iter().map(|g| top(g) - below).collect();
            let high: Vec<f32> = groups.iter().map(|g| top(g) + above).collect();
            let got = choose(&low, &high, |g| groups[g], &tail);
            assert_eq!(got, Some(first_max(&all)), "spans -{below} +{above}");
        }
    }

    #[test]
    fn groups_whose_span_cannot_reach_the_best_are_never_computed() {
        let low: Vec<f32> = (0..100).map(|g| g as f32).collect();
        let high: Vec<f32> = low.iter().map(|l| l + 0.4).collect();
        let computed = std::cell::Cell::new(0);
        let got = choose(
            &low,
            &high,
            |g| {
                computed.set(computed.get() + 1);
                [g as f32; LANES]
            },
            &[],
        );
        assert_eq!((got, computed.get()), (Some(99 * LANES as u32), 1));
    }

    #[test]
    fn too_many_candidates_or_a_value_not_finite_leave_the_choice_to_the_logits() {
        let flat = vec![0.0f32; 20];
        assert_eq!(choose(&flat, &flat, |_| [0.0; LANES], &[]), None);
        let mut nan = vec![0.0f32; 5];
        nan[3] = f32::NAN;
        assert_eq!(choose(&nan, &nan, |_| [0.0; LANES], &[]), None);
        let (low, high) = ([5.0f32, 1.0], [5.0f32, 1.0]);
        assert_eq!(choose(&low, &high, |_| [f32::INFINITY; LANES], &[]), None);
        assert_eq!(
            choose(&low, &high, |g| [g as f32; LANES], &[f32::NAN]),
            None
        );
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

    /// Each group's largest candle logit lies within its span, whose width is small against the logits'
    /// spread; a span of no width (the estimates' own largest) misses it for many groups, so the bound is
    /// what makes the choice exact.
    #[test]
    fn each_groups_largest_logit_lies_within_its_span() {
        if Isa::detect() != Some(Isa::Vnni512) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        let mut off_centre = 0;
        for (m, n, k) in [(10, 2048, 576), (4, 512, 896), (2, 96, 32)] {
            let x = Tensor::randn(0f32, 3.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
            let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let logits = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
            let logits = logits.to_vec2::<f32>().unwrap();
            let xs = x.flatten_all().unwrap().to_vec1().unwrap();
            let acts = Activations::quantize(Format::Q8_0, &xs, m, k);
            let data = w.data().unwrap();
            let packed = Packed::new(Format::Q8_0, Isa::Vnni512, &data, n, k / BLOCK);
            let (low, high) = spans(&packed, &acts);
            let spread = logits.iter().flatten().fold(0f32, |s, v| s.max(v.abs()));
            for (r, row) in logits.iter().enumerate() {
                for (g, group) in row.chunks_exact(LANES).enumerate() {
                    let top = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (lo, hi) = (low[r * n / LANES + g], high[r * n / LANES + g]);
                    assert!(
                        lo <= top && top <= hi,
                        "{top} outside [{lo}, {hi}] ({m}, {n}, {k})"
                    );
                    assert!(
                        hi - lo < 1e-3 * spread,
                        "span {} for logits up to {spread}",
                        hi - lo
                    );
                    off_centre += usize::from(top != (lo + hi) / 2.0);
                }
            }
        }
        assert!(
            off_centre > 100,
            "{off_centre} groups' largest logits off their spans' centres"
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
