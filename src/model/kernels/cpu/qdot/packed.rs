//! GGUF weights repacked for the kernels, once per weight (kept while the weight lives; the cache serves
//! every packed layout), the way
//! llama.cpp's Q4_0x8 / Q8_0 repacks and candle's own `repack_x86` lay them out: `lanes` output columns
//! interleaved four bytes at a time, so that lane c of a vector holds column c.
//!
//! One tile per (group of `lanes` columns, block of 32 values), tiles of a group consecutive:
//! - values: Q4_1 / Q5_0: 4 vectors, vector p holding bytes 4p..4p+4 of each column's 16 packed bytes (low
//!   nibbles: values 4p..4p+4, high nibbles: values 16+4p..); Q8_0: 8 vectors, vector j holding values
//!   4j..4j+4 of each column, stored as unsigned bytes (+128) for VNNI, as signed bytes for AVX2;
//! - Q5_0 only: 8 masks of `lanes * 4` bits, mask j's bit 4c+t the high bit of value 4j+t of column c;
//! - each column's d (f16), then for Q4_1 each column's m (f16).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use candle_core::Result;
use candle_core::quantized::QTensor;

use super::{Format, Isa};

/// A weight's whole groups, repacked (the columns after them stay in the GGUF tensor).
#[derive(Debug)]
pub(super) struct Packed {
    pub format: Format,
    pub isa: Isa,
    /// Output columns of the weight.
    pub n: usize,
    /// Whole groups of `isa.lanes()` columns.
    pub groups: usize,
    pub tile_bytes: usize,
    pub tiles: Vec<u8>,
}

impl Packed {
    /// Repacks the GGUF blocks `data` of a weight of `n` columns and `blocks` blocks per column.
    pub fn new(format: Format, isa: Isa, data: &[u8], n: usize, blocks: usize) -> Self {
        let lanes = isa.lanes();
        let groups = n / lanes;
        let tile_bytes = format.bytes() * lanes;
        let mut tiles = vec![0u8; groups * blocks * tile_bytes];
        let row_bytes = blocks * format.bytes();
        for (t, tile) in tiles.chunks_exact_mut(tile_bytes).enumerate() {
            let (g, b) = (t / blocks, t % blocks);
            let block = |c: usize| &data[(g * lanes + c) * row_bytes + b * format.bytes()..];
            let values = match format {
                Format::Q8_0 => 32 * lanes,
                _ => 16 * lanes,
            };
            for c in 0..lanes {
                let wb = block(c);
                for four in 0..values / (4 * lanes) {
                    let at = four * 4 * lanes + 4 * c;
                    let src = match format {
                        Format::Q4_1 => &wb[4 + 4 * four..][..4],
                        Format::Q5_0 => &wb[6 + 4 * four..][..4],
                        Format::Q8_0 => &wb[2 + 4 * four..][..4],
                    };
                    tile[at..at + 4].copy_from_slice(src);
                    if format == Format::Q8_0 && isa == Isa::Vnni512 {
                        tile[at..at + 4].iter_mut().for_each(|v| *v ^= 0x80);
                    }
                }
                let mut at = values;
                if format == Format::Q5_0 {
                    let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
                    for j in 0..8 {
                        let mask = &mut tile[at + j * lanes / 2..][..lanes / 2];
                        for t in 0..4 {
                            let bit = 4 * c + t;
                            mask[bit / 8] |= (((qh >> (4 * j + t)) & 1) as u8) << (bit % 8);
                        }
                    }
                    at += 4 * lanes;
                }
                tile[at + 2 * c..][..2].copy_from_slice(&wb[..2]);
                if format == Format::Q4_1 {
                    tile[at + 2 * lanes + 2 * c..][..2].copy_from_slice(&wb[2..4]);
                }
            }
        }
        Packed {
            format,
            isa,
            n,
            groups,
            tile_bytes,
            tiles,
        }
    }
}

/// Repacked weights by the address of their tensor; the weak reference keeps that address from being
/// reused while the entry exists and tells a live weight from a dropped one.
type Cache = HashMap<usize, (Weak<QTensor>, Arc<dyn Any + Send + Sync>)>;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// `w` repacked by `pack` (given the GGUF bytes, the columns and the width): from the cache, or packed now
/// (and the entries of dropped weights let go).
pub(super) fn cached<P: Any + Send + Sync>(
    w: &Arc<QTensor>,
    pack: impl FnOnce(&[u8], usize, usize) -> P,
) -> Result<Arc<P>> {
    let key = Arc::as_ptr(w) as usize;
    {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let kept = cache.as_ref().and_then(|c| c.get(&key));
        if let Some(p) = kept.and_then(|(_, p)| p.clone().downcast::<P>().ok()) {
            return Ok(p);
        }
    }
    let (n, k) = w.shape().dims2()?;
    let packed = Arc::new(pack(&w.data()?, n, k));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.retain(|_, (weight, _)| weight.strong_count() > 0);
    cache.insert(key, (Arc::downgrade(w), packed.clone()));
    Ok(packed)
}
