//! Decoding products with GGUF block weights, faster than candle 0.11's for the types a decode spends its
//! time in: Q4_1 (the demo model's projections), Q5_0 (most of a Q4_K_M file whose widths are not multiples
//! of 256, as Qwen2-0.5B's) and Q8_0 (vocabulary heads), with a result bit for bit equal to candle's.
//!
//! The weights are repacked once (`packed`): 16 output columns (AVX-512 VNNI) or 8 (AVX2) interleaved four
//! bytes at a time, so that one integer dot-product instruction with four broadcast activation bytes serves
//! every column of the group, each packed block is unpacked once for all rows of a batch, and no horizontal
//! sum is needed. `activations` rounds the inputs with candle's own code and holds the scalar reference.

mod activations;
mod avx2;
mod packed;
#[cfg(test)]
mod tests;
mod vnni;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use self::activations::{Activations, dot_scalar};
use self::packed::Packed;

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

/// `x[m, k] @ W^T` for a Q4_1, Q5_0 or Q8_0 weight `W[n, k]` on the CPU, or None when this module does not
/// serve the operands (another weight type, a CPU without AVX2, a GPU tensor) and candle's `QMatMul` should.
///
/// Each output is the same sum, in the same order and with the same roundings, as candle's kernel for the
/// type on this CPU: the activations are rounded to Q8_1 / Q8_0 by candle's own code, each block's integer
/// dot product is exact, and the f32 terms are combined as candle combines them (block after block without
/// fused multiply-adds for Q4_1 and Q5_0, candle's scalar loops; eight lanes with fused multiply-adds and
/// candle's final horizontal sum for Q8_0, its AVX2 kernel).
pub fn matmul(x: &Tensor, w: &Arc<QTensor>) -> Result<Option<Tensor>> {
    let Some(format) = Format::of(w.dtype()) else {
        return Ok(None);
    };
    let Some(isa) = Isa::detect() else {
        return Ok(None);
    };
    if !x.device().is_cpu() {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || !k.is_multiple_of(BLOCK) {
        candle_core::bail!("{format:?} product: input of {kx} columns for a weight of {n} x {k}");
    }
    if format == Format::Q8_0 && k.is_multiple_of(256) && n.is_multiple_of(16) {
        // candle's own repacked kernels take these shapes (with other roundings): theirs is the reference.
        return Ok(None);
    }
    let xs = x
        .to_dtype(candle_core::DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let acts = Activations::quantize(format, &xs, m, k);
    let packed = packed::cached(w, format, isa)?;
    let out_t = product(&packed, &acts, w)?;
    let mut out = vec![0f32; m * n];
    for (c, column) in out_t.chunks_exact(m.max(1)).enumerate() {
        for (r, &y) in column.iter().enumerate() {
            out[r * n + c] = y;
        }
    }
    Tensor::from_vec(out, (m, n), &Device::Cpu).map(Some)
}

/// Outputs column-major (`out[c * rows + r]`): packed groups in parallel, then the columns after the last
/// whole group from the original blocks by the scalar reference.
fn product(packed: &Packed, acts: &Activations, w: &QTensor) -> Result<Vec<f32>> {
    let rows = acts.rows;
    let lanes = packed.isa.lanes();
    let mut out_t = vec![0f32; packed.n * rows];
    let (grouped, tail) = out_t.split_at_mut(packed.groups * lanes * rows);
    let task_tiles = GROUPS_PER_TASK * acts.blocks * packed.tile_bytes;
    grouped
        .par_chunks_mut(GROUPS_PER_TASK * lanes * rows)
        .zip(packed.tiles.par_chunks(task_tiles))
        .for_each(|(dst, tiles)| run_kernel(packed, tiles, acts, dst));
    if !tail.is_empty() {
        let weights = w.data()?;
        let row_bytes = acts.blocks * packed.format.bytes();
        for (i, dst) in tail.chunks_exact_mut(rows).enumerate() {
            let c = packed.groups * lanes + i;
            for (r, y) in dst.iter_mut().enumerate() {
                *y = dot_scalar(
                    packed.format,
                    &weights[c * row_bytes..][..row_bytes],
                    acts,
                    r,
                );
            }
        }
    }
    Ok(out_t)
}

/// Whole packed groups `tiles` (their outputs `dst`, column-major) by the packed layout's kernel.
fn run_kernel(packed: &Packed, tiles: &[u8], acts: &Activations, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a Packed is built only for an instruction set `Isa::detect` found on this CPU.
    unsafe {
        match packed.isa {
            Isa::Vnni512 => vnni::columns(packed.format, tiles, acts, dst),
            Isa::Avx2 => avx2::columns(packed.format, tiles, acts, dst),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "no instruction set is detected off x86_64: {packed:?} {} {} {}",
        tiles.len(),
        acts.rows,
        dst.len()
    )
}
