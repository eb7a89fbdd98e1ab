//! The input rows rounded to 8 bits by candle's own code (Q8_1 for Q4_1 weights, Q8_0 otherwise), and the
//! scalar reference: one output computed with candle's arithmetic for the weight type.

use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1, GgmlType};
use half::f16;

use super::{BLOCK, Format};

/// The rounded rows, block by block, as the kernels read them.
pub(super) struct Activations {
    pub rows: usize,
    pub blocks: usize,
    /// Per row, per block: the 32 signed values.
    pub values: Vec<[i8; BLOCK]>,
    /// Per row, per block: the scale d.
    pub d: Vec<f32>,
    /// Per row, per block: Q8_1's s (d times the values' sum, as f16); for Q8_0 the values' sum itself.
    pub s: Vec<f32>,
    /// Per row, per block, per four values: -128 times their sum (Q8_0 only: the offset of weights stored
    /// as unsigned bytes, taken off in integers).
    pub offsets: Vec<[i32; 8]>,
}

impl Activations {
    pub fn quantize(format: Format, xs: &[f32], rows: usize, k: usize) -> Self {
        let blocks = k / BLOCK;
        let mut acts = Activations {
            rows,
            blocks,
            values: Vec::with_capacity(rows * blocks),
            d: Vec::with_capacity(rows * blocks),
            s: Vec::with_capacity(rows * blocks),
            offsets: Vec::new(),
        };
        let mut push = |d: f32, s: Option<f32>, qs: &[u8]| {
            let mut v = [0i8; BLOCK];
            v.iter_mut().zip(qs).for_each(|(v, &u)| *v = u as i8);
            acts.d.push(d);
            acts.s
                .push(s.unwrap_or(v.iter().map(|&q| q as i32).sum::<i32>() as f32));
            if format == Format::Q8_0 {
                let mut sums = [0i32; 8];
                for (sum, four) in sums.iter_mut().zip(v.chunks_exact(4)) {
                    *sum = -128 * four.iter().map(|&q| q as i32).sum::<i32>();
                }
                acts.offsets.push(sums);
            }
            acts.values.push(v);
        };
        match format {
            Format::Q4_1 => {
                let q = quantized::<BlockQ8_1>(xs, rows, k);
                // SAFETY: BlockQ8_1 is `repr(C)` {d: f16, s: f16, qs: [i8; 32]}, 36 bytes without padding
                // (candle asserts its size), so its blocks may be read as bytes.
                let bytes =
                    unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len() * 36) };
                for b in bytes.chunks_exact(36) {
                    push(f16_at(b, 0), Some(f16_at(b, 2)), &b[4..]);
                }
            }
            Format::Q5_0 | Format::Q8_0 => {
                let q = quantized::<BlockQ8_0>(xs, rows, k);
                // SAFETY: BlockQ8_0 is `repr(C)` {d: f16, qs: [i8; 32]}, 34 bytes without padding (candle
                // asserts its size), so its blocks may be read as bytes.
                let bytes =
                    unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len() * 34) };
                for b in bytes.chunks_exact(34) {
                    push(f16_at(b, 0), None, &b[2..]);
                }
            }
        }
        acts
    }
}

/// Each row of `xs` rounded to blocks of `T` by candle's own code.
fn quantized<T: GgmlType>(xs: &[f32], rows: usize, k: usize) -> Vec<T> {
    let blocks = k / BLOCK;
    let mut q = vec![T::zeros(); rows * blocks];
    for (row, dst) in xs.chunks_exact(k).zip(q.chunks_exact_mut(blocks)) {
        T::from_float(row, dst);
    }
    q
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Weight value `i` (0..32) of a GGUF block, as the integer the block stores (Q4_1: 0..16, Q5_0: -16..16,
/// Q8_0: -128..128).
pub(super) fn value(format: Format, wb: &[u8], i: usize) -> i32 {
    let (qs, shift) = (i % 16, 4 * (i / 16));
    match format {
        Format::Q4_1 => ((wb[4 + qs] >> shift) & 0x0f) as i32,
        Format::Q5_0 => {
            let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
            let high = ((qh >> i) & 1) << 4;
            (((wb[6 + qs] >> shift) & 0x0f) as u32 | high) as i32 - 16
        }
        Format::Q8_0 => wb[2 + i] as i8 as i32,
    }
}

/// One output the way candle computes it for the type (the reference for the tests, and the columns after
/// the last whole packed group): Q4_1 and Q5_0 as candle's scalar loops; Q8_0 as its AVX2 kernel, eight
/// lanes of four values each accumulated with fused multiply-adds, then summed in `hsum_float_8`'s order.
pub(super) fn dot_scalar(format: Format, w_row: &[u8], acts: &Activations, row: usize) -> f32 {
    let mut sum = 0f32;
    let mut lanes = [0f32; 8];
    for (b, wb) in w_row.chunks_exact(format.bytes()).enumerate() {
        let a = row * acts.blocks + b;
        let v = &acts.values[a];
        let product = |i: usize| value(format, wb, i) * v[i] as i32;
        match format {
            Format::Q4_1 => {
                let sumi: i32 = (0..BLOCK).map(product).sum();
                sum += sumi as f32 * f16_at(wb, 0) * acts.d[a] + f16_at(wb, 2) * acts.s[a];
            }
            Format::Q5_0 => {
                let sumi: i32 = (0..BLOCK).map(product).sum();
                sum += sumi as f32 * f16_at(wb, 0) * acts.d[a];
            }
            Format::Q8_0 => {
                let d = f16_at(wb, 0) * acts.d[a];
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let q: i32 = (4 * l..4 * l + 4).map(product).sum();
                    *lane = d.mul_add(q as f32, *lane);
                }
            }
        }
    }
    match format {
        Format::Q8_0 => {
            let l = lanes;
            ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
        }
        _ => sum,
    }
}
