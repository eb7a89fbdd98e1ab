//! GGUF K-quant and Q8_0 weights in the tile layout of candle's `repack_x86` (16 output columns by one
//! 256-value superblock a tile), built by the same code so that the kernels read the same numbers: each
//! sub-block's scale and min unpacked to f32 once, the quants as unsigned bytes four values at a time per
//! column (Q4_K nibble pairs, Q8_0 offset by +128). Q6_K is denser than candle's tile (its 6-bit values in a
//! 4-bit and a 2-bit plane, its scales as i8), and the kernel unpacks it to candle's bytes and scales.

use half::f16;

use super::super::activations::f16_at;
use super::q8k::QK_K;

/// Output columns of a tile.
pub(super) const TILE_N: usize = 16;

/// Bytes of one GGUF block of each type.
pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q6K_BYTES: usize = 210;
pub(super) const Q8_0_BYTES: usize = 34;

/// Bytes of a tile's row: 4 bytes for each of its 16 columns.
pub(super) const ROW: usize = TILE_N * 4;

/// One Q4_K superblock of 16 columns, each sub-block's quants, scales and mins together (the kernel then
/// reads a tile front to back, one stream).
#[repr(C)]
pub(super) struct TileQ4K {
    pub subs: [SubQ4K; 8],
}

/// One sub-block of 32 values of a [`TileQ4K`].
#[repr(C)]
pub(super) struct SubQ4K {
    /// [group of 8 values (4)][column][4 bytes]: byte j holds value 8g+j low and 8g+j+4 high.
    pub qs: [u8; 4 * ROW],
    /// Per column: `d * scale`.
    pub scale: [f32; TILE_N],
    /// Per column: `dmin * min`.
    pub min: [f32; TILE_N],
}

/// One Q6_K superblock of 16 columns, denser than candle's tile (3.3 KB against 5 KB) but unpacked by the kernel
/// to candle's bytes and scales: the 6-bit values in a 4-bit and a 2-bit plane, the scales as their i8.
#[repr(C)]
pub(super) struct TileQ6K {
    /// Per column: the superblock's d.
    pub d: [f32; TILE_N],
    /// Per sub-block of 16 values (16), per column: the i8 scale (candle's tile holds `d * scale`).
    pub scales: [[i8; TILE_N]; 16],
    /// Per sub-block of 16 values (16), its planes together (the kernel then reads a tile front to back, one
    /// stream): two rows [pair of groups of 4 values][column][4 bytes] with the low 4 bits of the pair's first
    /// group in the low nibble, of its second in the high nibble; then one row [column][4 bytes] whose bits
    /// 2i..2i+2 are the high 2 bits of the sub-block's group i.
    pub subs: [[u8; 3 * ROW]; 16],
}

/// One Q8_0 block of 32 values of 16 columns.
#[repr(C)]
pub(super) struct TileQ8_0 {
    pub d: [f16; TILE_N],
    /// [group of 4 values (8)][column][4 bytes], each value + 128.
    pub qs: [u8; 32 * TILE_N],
}

/// A weight's tiles: for each group of 16 columns, its superblocks (Q8_0: its blocks) in order.
pub(super) enum Tiles {
    Q4K(Vec<TileQ4K>),
    Q6K(Vec<TileQ6K>),
    Q8_0(Vec<TileQ8_0>),
}

/// ggml's 6-bit scale and min of sub-block `j` of a Q4_K superblock.
fn scale_min_k4(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The GGUF blocks `data` of a Q4_K weight `[n, k]` (n a multiple of 16, k of 256) as tiles.
pub(super) fn q4k(data: &[u8], n: usize, k: usize) -> Tiles {
    let kb = k / QK_K;
    let mut out = Vec::with_capacity(n / TILE_N * kb);
    for t in 0..n / TILE_N {
        for b in 0..kb {
            let mut tile = TileQ4K {
                subs: std::array::from_fn(|_| SubQ4K {
                    qs: [0; 4 * ROW],
                    scale: [0.0; TILE_N],
                    min: [0.0; TILE_N],
                }),
            };
            for r in 0..TILE_N {
                let blk = &data[((t * TILE_N + r) * kb + b) * Q4K_BYTES..][..Q4K_BYTES];
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..]);
                for sub in 0..8 {
                    let (sc, mn) = scale_min_k4(sub, scales);
                    tile.subs[sub].scale[r] = d * sc as f32;
                    tile.subs[sub].min[r] = dmin * mn as f32;
                }
                // 32-byte chunk c: values c*64.. in the low nibbles, c*64+32.. in the high ones.
                let mut vals = [0u8; QK_K];
                for c in 0..4 {
                    for j in 0..32 {
                        let byte = qs[c * 32 + j];
                        vals[c * 64 + j] = byte & 0x0F;
                        vals[c * 64 + 32 + j] = byte >> 4;
                    }
                }
                for g in 0..QK_K / 8 {
                    for j in 0..4 {
                        tile.subs[g / 4].qs[(g % 4) * ROW + r * 4 + j] =
                            vals[g * 8 + j] | (vals[g * 8 + j + 4] << 4);
                    }
                }
            }
            out.push(tile);
        }
    }
    Tiles::Q4K(out)
}

/// The GGUF blocks `data` of a Q6_K weight `[n, k]` (n a multiple of 16, k of 256) as tiles.
pub(super) fn q6k(data: &[u8], n: usize, k: usize) -> Tiles {
    let kb = k / QK_K;
    let mut out = Vec::with_capacity(n / TILE_N * kb);
    for t in 0..n / TILE_N {
        for b in 0..kb {
            let mut tile = TileQ6K {
                d: [0.0; TILE_N],
                scales: [[0; TILE_N]; 16],
                subs: [[0; 3 * ROW]; 16],
            };
            for r in 0..TILE_N {
                let blk = &data[((t * TILE_N + r) * kb + b) * Q6K_BYTES..][..Q6K_BYTES];
                let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
                tile.d[r] = f16_at(blk, 208);
                for (sub, &scale) in scales.iter().enumerate() {
                    tile.scales[sub][r] = scale as i8;
                }
                // Low 4 bits in ql, high 2 in qh, in halves of 128 values.
                let mut vals = [0u8; QK_K];
                for h in 0..2 {
                    let (ql, qh) = (&ql[h * 64..], &qh[h * 32..]);
                    for j in 0..32 {
                        vals[h * 128 + j] = (ql[j] & 0x0F) | ((qh[j] & 3) << 4);
                        vals[h * 128 + j + 32] = (ql[j + 32] & 0x0F) | (((qh[j] >> 2) & 3) << 4);
                        vals[h * 128 + j + 64] = (ql[j] >> 4) | (((qh[j] >> 4) & 3) << 4);
                        vals[h * 128 + j + 96] = (ql[j + 32] >> 4) | (((qh[j] >> 6) & 3) << 4);
                    }
                }
                for g in 0..QK_K / 4 {
                    for j in 0..4 {
                        let v = vals[g * 4 + j];
                        let sub = &mut tile.subs[g / 4];
                        sub[(g / 2 % 2) * ROW + r * 4 + j] |= (v & 0x0F) << (4 * (g % 2));
                        sub[2 * ROW + r * 4 + j] |= (v >> 4) << (2 * (g % 4));
                    }
                }
            }
            out.push(tile);
        }
    }
    Tiles::Q6K(out)
}

/// The GGUF blocks `data` of a Q8_0 weight `[n, k]` (n a multiple of 16, k of 256) as tiles.
pub(super) fn q8_0(data: &[u8], n: usize, k: usize) -> Tiles {
    let kb = k / 32;
    let mut out = Vec::with_capacity(n / TILE_N * kb);
    for t in 0..n / TILE_N {
        for b in 0..kb {
            let mut tile = TileQ8_0 {
                d: [f16::ZERO; TILE_N],
                qs: [0; 32 * TILE_N],
            };
            for r in 0..TILE_N {
                let blk = &data[((t * TILE_N + r) * kb + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                tile.d[r] = f16::from_le_bytes([blk[0], blk[1]]);
                for g in 0..8 {
                    for j in 0..4 {
                        tile.qs[(g * TILE_N + r) * 4 + j] =
                            (blk[2 + g * 4 + j] as i8 as i16 + 128) as u8;
                    }
                }
            }
            out.push(tile);
        }
    }
    Tiles::Q8_0(out)
}
