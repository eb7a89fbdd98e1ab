//! Generation's products with GGUF block weights (prompts and decoding), faster than candle 0.11's for the
//! types answering spends its time in: Q4_1 (the demo model's projections), Q5_0 (most of a Q4_K_M file
//! whose widths are not multiples of 256, as Qwen2-0.5B's) and Q8_0 (vocabulary heads), with a result bit
//! for bit equal to candle's. Q4_K and Q6_K (a Q4_K_M file's down projections), and Q8_0 of widths that are
//! multiples of 256, go through `candle_tiles`: copies of candle's own repacked tile kernels, which give
//! candle's bits but run on qlab's loops, so that a batch split between threads does not queue on candle's
//! pool.
//!
//! The weights are repacked once (`packed`): 16 output columns (AVX-512 VNNI) or 8 (AVX2) interleaved four
//! bytes at a time, so that one integer dot-product instruction with four broadcast activation bytes serves
//! every column of the group, each packed block is unpacked once for all rows of a batch (in passes of up to
//! 10 rows), and no horizontal sum is needed; each task writes its columns of the row-major output in place.
//! `activations` rounds the inputs as candle's own code does and holds the scalar reference; `reuse` keeps
//! the last rounding of each type for the products that share an input; `greedy` finds greedy decoding's
//! next tokens from a Q8_0 head without every logit in candle's arithmetic.

mod activations;
mod avx2;
mod candle_tiles;
mod greedy;
mod packed;
mod reuse;
#[cfg(test)]
mod tests;
mod vnni;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

use self::activations::{Activations, dot_scalar};
use self::packed::Packed;
use crate::model::device::for_each_index;

pub use self::greedy::greedy;

/// Values per block (all the types here).
const BLOCK: usize = 32;
/// Column groups one task computes for every row of the input.
const GROUPS_PER_TASK: usize = 2;

/// A weight block type this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// d (f16), m (f16), 16 bytes of 4-bit values: `d * q + m`; activations Q8_1.
    Q4_1,
    /// d (f16), 32 high bits, 16 bytes of low 4-bit values: `d * (q - 16)`; activations Q8_0.
    Q5_0,
    /// d (f16), 32 signed bytes: `d * q`; activations Q8_0.
    Q8_0,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one GGUF weight block.
    fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
        }
    }
}

/// The instruction set the kernels use, which fixes the packed layout's group width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Isa {
    /// AVX-512 F/BW with VNNI: `vpdpbusd` on 16 columns.
    Vnni512,
    /// AVX2 with FMA and F16C: `vpmaddubsw` + `vpmaddwd` on 8 columns.
    Avx2,
}

impl Isa {
    /// The best this CPU has, or None (candle's own kernels then serve).
    fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Some(Self::Vnni512);
            }
            if avx2 {
                return Some(Self::Avx2);
            }
        }
        None
    }

    /// Output columns interleaved in one packed group.
    fn lanes(self) -> usize {
        match self {
            Self::Vnni512 => 16,
            Self::Avx2 => 8,
        }
    }
}

/// `x[m, k] @ W^T` for each Q4_1, Q5_0 or Q8_0 weight `W[n, k]` of `ws` on the CPU, all of one type and
/// width (one weight; a block's q, k and v projections; its gate and up projections), in one parallel loop
/// instead of one loop each: every loop's end waits for the slowest thread, and the input is rounded once.
/// None when this module does not serve every weight (another weight type, a CPU without AVX2, a GPU tensor,
/// a shape candle multiplies with its own repacked kernel) or the weights differ in type (their inputs round
/// differently), and candle's `QMatMul` should multiply them.
///
/// Each output is the same sum, in the same order and with the same roundings, as candle's kernel for the
/// type on this CPU: the activations are rounded to Q8_1 / Q8_0 by candle's own code, each block's integer
/// dot product is exact, and the f32 terms are combined as candle combines them (block after block without
/// fused multiply-adds for Q4_1 and Q5_0, candle's scalar loops; eight lanes with fused multiply-adds and
/// candle's final horizontal sum for Q8_0, its AVX2 kernel).
pub fn matmul(x: &Tensor, ws: &[Arc<QTensor>]) -> Result<Option<Vec<Tensor>>> {
    if let Some(outs) = candle_tiles::matmul(x, ws)? {
        return Ok(Some(outs));
    }
    let Some((format, isa)) = served(x, ws)? else {
        return Ok(None);
    };
    let (m, kx) = x.dims2()?;
    let acts = reuse::rounded(format as usize, x, kx, |xs, rows| {
        Activations::quantize(format, xs, rows, kx)
    })?;
    let packed = (ws.iter())
        .map(|w| packed::cached(w, |data, n, k| Packed::new(format, isa, data, n, k / BLOCK)))
        .collect::<Result<Vec<_>>>()?;
    let weights: Vec<(&Packed, &QTensor)> = packed
        .iter()
        .map(|p| &**p)
        .zip(ws.iter().map(|w| &**w))
        .collect();
    let outs = products(&weights, &acts)?;
    (outs.into_iter().zip(&packed))
        .map(|(out, p)| Tensor::from_vec(out, (m, p.n), &Device::Cpu))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The weight type and instruction set of `x` `[m, k]` times every weight of `ws`, or None when this
/// module does not serve them all (see [`matmul`]); an error for a width that does not fit.
fn served(x: &Tensor, ws: &[Arc<QTensor>]) -> Result<Option<(Format, Isa)>> {
    if !x.device().is_cpu() || ws.is_empty() {
        return Ok(None);
    }
    let Some(format) = Format::of(ws[0].dtype()) else {
        return Ok(None);
    };
    let Some(isa) = Isa::detect() else {
        return Ok(None);
    };
    let (_, kx) = x.dims2()?;
    for w in ws {
        let (n, k) = w.shape().dims2()?;
        if Format::of(w.dtype()) != Some(format) {
            return Ok(None);
        }
        if kx != k || !k.is_multiple_of(BLOCK) {
            candle_core::bail!(
                "{format:?} product: input of {kx} columns for a weight of {n} x {k}"
            );
        }
        if candles_shape(format, n, k) {
            return Ok(None);
        }
    }
    Ok(Some((format, isa)))
}

/// Whether this module multiplies by `w` on this CPU (inputs of its width), or leaves it to candle's
/// `QMatMul`.
pub fn serves(w: &QTensor) -> bool {
    if candle_tiles::serves(w) {
        return true;
    }
    let Some(format) = Format::of(w.dtype()) else {
        return false;
    };
    match w.shape().dims2() {
        Ok((n, k)) => {
            Isa::detect().is_some() && k.is_multiple_of(BLOCK) && !candles_shape(format, n, k)
        }
        Err(_) => false,
    }
}

/// A Q8_0 weight of a shape candle's own repacked kernels take (with other roundings): theirs is the
/// reference.
fn candles_shape(format: Format, n: usize, k: usize) -> bool {
    format == Format::Q8_0 && k.is_multiple_of(256) && n.is_multiple_of(16)
}

/// Rows `0..rows` in passes of at most `most` (the rows a kernel keeps in registers), as even as they can
/// be: `run(first, count)` for each.
fn in_passes(rows: usize, most: usize, mut run: impl FnMut(usize, usize)) {
    let per_pass = rows.div_ceil(rows.div_ceil(most.max(1)).max(1));
    let mut first = 0;
    while first < rows {
        let count = per_pass.min(rows - first);
        run(first, count);
        first += count;
    }
}

/// The product's row-major output `[rows, n]`, which the parallel tasks write each in its own columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    /// Columns of a row.
    n: usize,
}

// SAFETY: `product` hands each task its own columns of a buffer that outlives the tasks, so tasks on other
// threads never write the same element.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Where row `r`'s column `c` is.
    ///
    /// # Safety
    /// `r` must be a row and `c` a column of the buffer, and the caller the task that owns column `c`.
    #[inline(always)]
    unsafe fn at(self, r: usize, c: usize) -> *mut f32 {
        // SAFETY: inside the buffer, as the caller vouches.
        unsafe { self.ptr.add(r * self.n + c) }
    }
}

/// Each weight's outputs row-major (`out[r * n + c]`): the packed groups of all the weights in one parallel
/// loop, each task writing its own columns in place, then the columns after each weight's last whole group
/// from the original blocks by the scalar reference.
fn products(weights: &[(&Packed, &QTensor)], acts: &Activations) -> Result<Vec<Vec<f32>>> {
    let rows = acts.rows;
    // Every element is written below (the groups' columns by their tasks, the columns after them by the
    // loop at the end), so the buffers are not zero-filled first.
    let mut outs: Vec<Vec<f32>> = (weights.iter())
        .map(|(p, _)| Vec::with_capacity(rows * p.n))
        .collect();
    let dsts: Vec<Out> = (outs.iter_mut().zip(weights))
        .map(|(out, (p, _))| Out {
            ptr: out.as_mut_ptr(),
            n: p.n,
        })
        .collect();
    // Task i of the loop: the first weight's tasks, then the second's, ...
    let tasks: Vec<usize> = (weights.iter())
        .map(|(p, _)| p.groups.div_ceil(GROUPS_PER_TASK))
        .collect();
    let total: usize = tasks.iter().sum();
    for_each_index(total, |mut i| {
        let mut j = 0;
        while i >= tasks[j] {
            i -= tasks[j];
            j += 1;
        }
        let packed = weights[j].0;
        let task_tiles = GROUPS_PER_TASK * acts.blocks * packed.tile_bytes;
        let tiles = &packed.tiles[i * task_tiles..packed.tiles.len().min((i + 1) * task_tiles)];
        run_kernel(
            packed,
            tiles,
            acts,
            dsts[j],
            i * GROUPS_PER_TASK * packed.isa.lanes(),
        );
    });
    for ((packed, w), dst) in weights.iter().zip(&dsts) {
        let first_tail = packed.groups * packed.isa.lanes();
        if first_tail < packed.n {
            let weights = w.data()?;
            let row_bytes = acts.blocks * packed.format.bytes();
            for c in first_tail..packed.n {
                let w_row = &weights[c * row_bytes..][..row_bytes];
                for r in 0..rows {
                    // SAFETY: row r, column c of the buffer, which no task writes.
                    unsafe {
                        dst.at(r, c)
                            .write(dot_scalar(packed.format, w_row, acts, r))
                    };
                }
            }
        }
    }
    for (out, (p, _)) in outs.iter_mut().zip(weights) {
        // SAFETY: the tasks wrote every row of the groups' columns, the loop above every row of the others.
        unsafe { out.set_len(rows * p.n) };
    }
    Ok(outs)
}

fn run_kernel(packed: &Packed, tiles: &[u8], acts: &Activations, out: Out, col: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a Packed is built only for an instruction set `Isa::detect` found on this CPU; `product` gives
    // this task the columns of `tiles`' groups, inside `out`'s rows.
    unsafe {
        match packed.isa {
            Isa::Vnni512 => vnni::columns(packed.format, tiles, acts, out, col),
            Isa::Avx2 => avx2::columns(packed.format, tiles, acts, out, col),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "no instruction set is detected off x86_64: {packed:?} {} {} {}",
        tiles.len(),
        acts.rows,
        out.n + col
    )
}
