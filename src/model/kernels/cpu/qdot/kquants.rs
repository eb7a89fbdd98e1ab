//! GGUF Q4_K and Q6_K weights (the down projections of a Q4_K_M file) multiplied as candle's x86 repacked
//! kernels multiply them on an AVX-512 VNNI CPU, to the same bits, but on qlab's threads: candle runs those
//! kernels on its own spinning thread pool, which fights the decoder's for two cores.
//!
//! The shapes are those for which candle takes its repacked path (`repack_x86::select`): 16 | n, 256 | k,
//! and for Q6_K more than one row (one row is candle's compact dot product, left to candle); at most 31 rows
//! (from 32 on, an AMX CPU takes another path). The tiles are candle's: per 16 columns and 256 values, the
//! f32 scales (and Q4_K's minimums) already multiplied out, and the 4- or 6-bit values four bytes per column.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;

use super::{GROUPS_PER_TASK, Isa, Out, kvnni, packed, reuse};
use crate::model::device::for_each_chunk;

/// Values per superblock.
pub(super) const QK_K: usize = 256;
/// Output columns per tile.
const LANES: usize = 16;
/// The activation slot of [`reuse`] for Q8_K.
const SLOT: usize = 3;

/// A K-quant weight type this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Q4K,
    Q6K,
}

impl Kind {
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Bytes of one GGUF superblock.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes of one tile: f32 scales [subblock][column] (Q4_K: then minimums), then the values
    /// [4-value group][column][4 bytes] (Q4_K: nibble pairs, byte j = q[8g + j] | q[8g + j + 4] << 4).
    pub(super) fn tile_bytes(self) -> usize {
        match self {
            Self::Q4K => 2 * 8 * LANES * 4 + QK_K / 8 * LANES * 4,
            Self::Q6K => 16 * LANES * 4 + QK_K / 4 * LANES * 4,
        }
    }

    /// Where a tile's values start.
    pub(super) fn values_at(self) -> usize {
        match self {
            Self::Q4K => 2 * 8 * LANES * 4,
            Self::Q6K => 16 * LANES * 4,
        }
    }
}

/// Input rows rounded to Q8_K as candle's `BlockQ8K::from_float` rounds them, per superblock.
pub(super) struct Q8k {
    pub blocks: usize,
    pub d: Vec<f32>,
    pub qs: Vec<[i8; QK_K]>,
    /// Sums of each 16 values.
    pub bsums: Vec<[i16; 16]>,
}

impl Q8k {
    pub(super) fn round(xs: &[f32], k: usize) -> Self {
        let blocks = k / QK_K;
        let n = xs.len() / QK_K;
        let mut q = Q8k {
            blocks,
            d: vec![0.0; n],
            qs: vec![[0; QK_K]; n],
            bsums: vec![[0; 16]; n],
        };
        let slots = q.d.iter_mut().zip(&mut q.qs).zip(&mut q.bsums);
        for (x, ((d, qs), bsums)) in xs.chunks_exact(QK_K).zip(slots) {
            super::super::simd(
                #[inline(always)]
                || round_superblock(x, d, qs, bsums),
            );
        }
        q
    }
}

/// candle's `BlockQ8K::from_float` of one superblock, in loops the compiler vectorises: the value of
/// largest magnitude (the first of them; NaN passed over) sets the scale, each value is rounded half away
/// from zero and clamped (NaN to 0), and each 16 values summed.
#[inline(always)]
fn round_superblock(x: &[f32], d: &mut f32, qs: &mut [i8; QK_K], bsums: &mut [i16; 16]) {
    let mut lanes = [0f32; 16];
    for chunk in x.chunks_exact(16) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v.abs() > *m { v.abs() } else { *m };
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let Some(&max) = x.iter().find(|v| v.abs() == amax).filter(|_| amax != 0.0) else {
        return;
    };
    let iscale = -127f32 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
    }
    for (sum, sixteen) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *sum = sixteen.iter().map(|&q| q as i32).sum::<i32>() as i16;
    }
    *d = 1.0 / iscale;
}

/// A weight's tiles, 16 columns at a time, superblocks of a group consecutive.
#[derive(Debug)]
pub(super) struct Tiles {
    pub kind: Kind,
    pub blocks: usize,
    pub bytes: Vec<u8>,
}

impl Tiles {
    /// candle's `pack_q4k` / `pack_q6k` of the GGUF superblocks `data` (`n` columns of width `k`).
    pub(super) fn new(kind: Kind, data: &[u8], n: usize, k: usize) -> Self {
        let blocks = k / QK_K;
        let tile_bytes = kind.tile_bytes();
        let mut bytes = vec![0u8; n / LANES * blocks * tile_bytes];
        for (t, tile) in bytes.chunks_exact_mut(tile_bytes).enumerate() {
            let (g, b) = (t / blocks, t % blocks);
            for c in 0..LANES {
                let at = ((g * LANES + c) * blocks + b) * kind.block_bytes();
                let block = &data[at..at + kind.block_bytes()];
                match kind {
                    Kind::Q4K => pack_q4k(block, c, tile),
                    Kind::Q6K => pack_q6k(block, c, tile),
                }
            }
        }
        Tiles {
            kind,
            blocks,
            bytes,
        }
    }
}

fn put_f32(tile: &mut [u8], index: usize, v: f32) {
    tile[4 * index..4 * index + 4].copy_from_slice(&v.to_le_bytes());
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Column `c` of a Q4_K tile from its superblock: d, dmin (f16), 12 bytes of 6-bit scales and minimums,
/// 128 bytes of values (32-byte chunks: values 64i.. in the low nibbles, 64i + 32.. in the high ones).
fn pack_q4k(block: &[u8], c: usize, tile: &mut [u8]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    for sub in 0..8 {
        let (sc, mn) = if sub < 4 {
            (scales[sub] & 63, scales[sub + 4] & 63)
        } else {
            (
                (scales[sub + 4] & 0x0f) | ((scales[sub - 4] >> 6) << 4),
                (scales[sub + 4] >> 4) | ((scales[sub] >> 6) << 4),
            )
        };
        put_f32(tile, sub * LANES + c, d * sc as f32);
        put_f32(tile, (8 + sub) * LANES + c, dmin * mn as f32);
    }
    let qs = &block[16..144];
    let value = |i: usize| {
        let byte = qs[i / 64 * 32 + i % 32];
        if i % 64 < 32 { byte & 0x0f } else { byte >> 4 }
    };
    let values = &mut tile[Kind::Q4K.values_at()..];
    for g in 0..QK_K / 8 {
        for j in 0..4 {
            values[(g * LANES + c) * 4 + j] = value(g * 8 + j) | (value(g * 8 + j + 4) << 4);
        }
    }
}

/// Column `c` of a Q6_K tile from its superblock: 128 bytes of low 4 bits, 64 of high 2 bits, 16 signed
/// scales, d (f16); the values stored as 0..64 (the weight is `v - 32`).
fn pack_q6k(block: &[u8], c: usize, tile: &mut [u8]) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for (sub, &sc) in scales.iter().enumerate() {
        put_f32(tile, sub * LANES + c, d * sc as i8 as f32);
    }
    let mut vals = [0u8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&ql[h * 64..], &qh[h * 32..]);
        for j in 0..32 {
            vals[h * 128 + j] = (ql[j] & 0x0f) | ((qh[j] & 3) << 4);
            vals[h * 128 + j + 32] = (ql[j + 32] & 0x0f) | (((qh[j] >> 2) & 3) << 4);
            vals[h * 128 + j + 64] = (ql[j] >> 4) | (((qh[j] >> 4) & 3) << 4);
            vals[h * 128 + j + 96] = (ql[j + 32] >> 4) | (((qh[j] >> 6) & 3) << 4);
        }
    }
    let values = &mut tile[Kind::Q6K.values_at()..];
    for g in 0..QK_K / 4 {
        values[(g * LANES + c) * 4..][..4].copy_from_slice(&vals[g * 4..g * 4 + 4]);
    }
}

/// Whether candle multiplies `m` rows by this `n x k` weight with its repacked kernels on this CPU, the
/// arithmetic this module reproduces.
fn candle_repacks(kind: Kind, m: usize, n: usize, k: usize) -> bool {
    // candle's own switches to its AVX2 kernels.
    static FORCED: OnceLock<bool> = OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        ["MISTRALRS_FORCE_AVX2", "MISTRALRS_FORCE_AVXVNNI"]
            .iter()
            .any(|v| std::env::var(v).as_deref() == Ok("1"))
    });
    Isa::detect() == Some(Isa::Vnni512)
        && !forced
        && n.is_multiple_of(LANES)
        && k.is_multiple_of(QK_K)
        && k > 0
        && (kind == Kind::Q4K || m > 1)
        && m < 32
}

/// `x[m, k] @ W^T` for a Q4_K or Q6_K weight, or None where candle's own path should serve.
pub(super) fn matmul(x: &Tensor, w: &Arc<QTensor>, kind: Kind) -> Result<Option<Tensor>> {
    let (n, k) = w.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || !candle_repacks(kind, m, n, k) {
        return Ok(None);
    }
    let acts = reuse::rounded(SLOT, x, k, |xs, _| Q8k::round(xs, k))?;
    let tiles = packed::cached(w, |data, n, k| Tiles::new(kind, data, n, k))?;
    // The groups cover every column (16 | n) and each task writes all m rows of its own: no zero-filling.
    let mut out = Vec::<f32>::with_capacity(m * n);
    let dst = Out {
        ptr: out.as_mut_ptr(),
        n,
    };
    let task_bytes = GROUPS_PER_TASK * tiles.blocks * kind.tile_bytes();
    for_each_chunk(&tiles.bytes, task_bytes, |t, group_tiles| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `candle_repacks` found AVX-512 VNNI; this task owns the columns of its groups, inside
        // `out`'s m rows.
        unsafe {
            kvnni::columns(
                &tiles,
                group_tiles,
                &acts,
                m,
                dst,
                t * GROUPS_PER_TASK * LANES,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no AVX-512 off x86_64: {t} {}", group_tiles.len());
    });
    // SAFETY: the tasks wrote every element (above).
    unsafe { out.set_len(m * n) };
    Tensor::from_vec(out, (m, n), &Device::Cpu).map(Some)
}
