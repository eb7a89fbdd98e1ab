//! Greedy decoding's next tokens from a Q8_0 vocabulary head (the demo model's; a Q4_K_M file's tied
//! embedding) without every logit in candle's arithmetic. For its bits candle spends a conversion and a fused
//! multiply-add per four values of each column (eight lanes), which makes the head the costliest product of
//! a batch's decoding step. Here each logit is first estimated with one scaling per block (its exact integer
//! sum times the two scales), with a bound on how far candle's value can lie from the estimate: both are sums
//! of the same exact products, each term rounded at most `blocks + 4` times, so they differ by at most
//! `2 gamma(blocks + 4)` times the sum of the terms' sizes, itself at most the sum over blocks of
//! `|d_w| |d_x| 128 sum|x_q|` (a weight is at most 128 in size), and so at most the row's largest
//! `|d_x| 128 sum|x_q|` times the column's sum of `|d_w|` (one product per row and column instead of one per
//! block; the bound is a few millionths of the logits' size either way). Only the columns whose interval reaches the
//! highest lower end are then computed as candle computes them, and the first largest of those is the row's
//! id: the index candle's `argmax` of the full logits gives, ties included.

mod avx2;
#[cfg(test)]
mod tests;
mod vnni;

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor};

use super::activations::{Activations, dot_scalar};
use super::packed::{self, Packed};
use super::{BLOCK, Format, GROUPS_PER_TASK, Isa, Out, reuse, run_kernel, served};
use crate::model::device::{for_each_chunk_mut, for_each_index, simd};

/// Groups of a row computed in candle's arithmetic, past which the row's logits are left to the full product
/// (logits all within the bound of one another, as a model with random weights can give).
const MOST_GROUPS: usize = 8;

/// Rows one pass of the AVX-512 kernel takes (their sums in registers).
const PASS_ROWS: usize = 5;

/// One pass's operands: a group's tiles, the rows, each row's bound scale and the tolerance, the pass's first
/// row, the spans' outputs (lower ends, upper ends), the group's index.
type Pass<'a> = (
    &'a [u8],
    &'a Activations,
    (&'a [f32], f32),
    usize,
    (Out, Out),
    usize,
);

/// Each row's greedy id for the logits `x` `[m, k]` times the Q8_0 head `w` `[n, k]`^T that [`super::matmul`]
/// gives: the first largest, as candle's `argmax` picks it. None where this does not serve (another weight
/// type, a CPU without AVX2, a shape candle's own kernel takes) or cannot tell (a value that is not finite,
/// too many columns within the bound of the largest): the caller then computes the logits.
pub fn greedy(x: &Tensor, w: &Arc<QTensor>) -> Result<Option<Vec<u32>>> {
    match served(x, std::slice::from_ref(w))? {
        Some((Format::Q8_0, isa)) => greedy_with(isa, x, w),
        _ => Ok(None),
    }
}

/// [`greedy`] with the kernels of `isa`.
fn greedy_with(isa: Isa, x: &Tensor, w: &Arc<QTensor>) -> Result<Option<Vec<u32>>> {
    let (rows, k) = x.dims2()?;
    let acts = reuse::rounded(Format::Q8_0 as usize, x, k, |xs, rows| {
        Activations::quantize(Format::Q8_0, xs, rows, k)
    })?;
    let packed = packed::cached(w, |data, n, k| {
        Packed::new(Format::Q8_0, isa, data, n, k / BLOCK)
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
            tail: &data[groups * isa.lanes() * row_bytes..],
        };
        let tail: Vec<f32> = exact.tail().collect();
        let at = r * groups..(r + 1) * groups;
        id[0] = simd(|| {
            let (low, high) = (&spans.0[at.clone()], &spans.1[at]);
            choose((low, high), isa.lanes(), |g| exact.group(g), &tail)
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

/// Per row and whole packed group of columns, row-major `[rows, groups]`: the highest lower end and the
/// highest upper end of the group's intervals (estimate -/+ tolerance x bound), within which candle's logits
/// lie (so the group's largest logit lies between the two); NaN for a group with a value that is not finite.
fn spans(packed: &Packed, acts: &Activations) -> (Vec<f32>, Vec<f32>) {
    let (rows, groups) = (acts.rows, packed.groups);
    // Per row: the largest over its blocks of 128 |d_x| sum|x_q| (a block's bound before the weight's scale),
    // infinite where one is not finite.
    let scales: Vec<f32> = (acts
        .values
        .chunks(acts.blocks)
        .zip(acts.d.chunks(acts.blocks)))
    .map(|(values, d)| {
        (values.iter().zip(d)).fold(0f32, |top, (v, d)| {
            let s = 128.0 * d.abs() * v.iter().map(|q| q.unsigned_abs() as f32).sum::<f32>();
            if s.is_finite() {
                top.max(s)
            } else {
                f32::INFINITY
            }
        })
    })
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
        // SAFETY: a Packed is built only for an instruction set found on this CPU; task i owns its groups in
        // both buffers, for every row.
        unsafe {
            match packed.isa {
                Isa::Vnni512 => vnni::groups(tiles, acts, at, outs, i * GROUPS_PER_TASK),
                Isa::Avx2 => avx2::groups(tiles, acts, at, outs, i * GROUPS_PER_TASK),
            }
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

/// One row's logits in candle's arithmetic: a whole group's at once (the exact packed kernel), or those of
/// the columns after the last whole group.
struct Exact<'a> {
    packed: &'a Packed,
    /// The row's rounded values alone.
    row: Activations,
    /// The GGUF blocks of the columns after the whole groups.
    tail: &'a [u8],
}

impl Exact<'_> {
    fn group(&self, g: usize) -> Vec<f32> {
        let lanes = self.packed.isa.lanes();
        let mut out = Vec::with_capacity(lanes);
        let bytes = self.row.blocks * self.packed.tile_bytes;
        let tiles = &self.packed.tiles[g * bytes..(g + 1) * bytes];
        let dst = Out {
            ptr: out.as_mut_ptr(),
            n: lanes,
        };
        run_kernel(self.packed, tiles, &self.row, dst, 0);
        // SAFETY: the kernel wrote the one row's `lanes` columns.
        unsafe { out.set_len(lanes) };
        out
    }

    /// The logits of the columns after the whole groups.
    fn tail(&self) -> impl Iterator<Item = f32> + '_ {
        let row_bytes = self.row.blocks * Format::Q8_0.bytes();
        (self.tail.chunks_exact(row_bytes)).map(|w| dot_scalar(Format::Q8_0, w, &self.row, 0))
    }
}

/// The first column of the largest exact logit of a row, from each whole group's span `(low, high)` (see
/// [`spans`]; groups of `width` columns), its logits in candle's arithmetic `group(g)`, and those of the
/// columns after the groups, `tail`: only the groups whose highest upper end reaches the highest lower end of
/// all are computed. None when a value is not finite or more than [`MOST_GROUPS`] groups may hold the
/// largest.
fn choose(
    (low, high): (&[f32], &[f32]),
    width: usize,
    group: impl Fn(usize) -> Vec<f32>,
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
    let candidates: Vec<usize> = (high.iter().enumerate())
        .filter_map(|(g, h)| (*h >= floor).then_some(g))
        .collect();
    if candidates.len() > MOST_GROUPS {
        return None;
    }
    let values = (candidates.into_iter()).flat_map(|g| (g * width..).zip(group(g)));
    let values = values.chain((high.len() * width..).zip(tail.iter().copied()));
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
