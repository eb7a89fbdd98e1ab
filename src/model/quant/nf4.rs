//! NF4 with double quantization (the QLoRA paper's 4-bit type, as bitsandbytes stores it).
//!
//! Layout (kept simple on purpose; a CUDA dequant kernel reads the same arrays):
//! - `codes`: the row-major weight flattened, two 4-bit codes per byte, the FIRST element in the HIGH
//!   nibble (as bitsandbytes packs it); `ceil(n / 2)` bytes.
//! - blocks of `BLOCK` = 64 consecutive elements share one absmax. The absmaxes are double-quantized:
//!   `absmax[b] = absmax_code[absmax_q[b]] * nested_absmax[b / NESTED_BLOCK] + absmax_offset`,
//!   with `NESTED_BLOCK` = 256 blocks per nested scale.
//! - element `i` = `NF4_CODE[code(i)] * absmax[i / 64]` (bitsandbytes' `quant_map` is `NF4_CODE`).
//!
//! Storage: 0.5 + 1/64 + 4/(64*256) bytes per parameter, about 0.516.

/// Elements per absmax block.
pub const BLOCK: usize = 64;
/// Absmax blocks per nested (second-level) scale.
pub const NESTED_BLOCK: usize = 256;

/// The 16 NF4 values (bitsandbytes' quant_map for nf4).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// A frozen NF4 weight, double-quantized.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    /// Logical shape, `[out_features, in_features]`.
    pub dims: Vec<usize>,
    pub codes: Vec<u8>,
    pub quant_map: [f32; 16],
    pub absmax_q: Vec<u8>,
    pub absmax_code: Vec<f32>,
    pub nested_absmax: Vec<f32>,
    pub absmax_offset: f32,
}

impl Nf4Tensor {
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes of the per-weight arrays (codes, 8-bit absmax, nested scales). The 16- and 256-entry code
    /// tables are the same for every weight of a model (NF4 and the absmax code) and are not counted.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len() + self.absmax_q.len() + 4 * (self.nested_absmax.len() + 1)
    }

    /// Quantizes row-major f32 values.
    pub fn quantize(values: &[f32], dims: Vec<usize>) -> Self {
        let n = values.len();
        let blocks = n.div_ceil(BLOCK);
        let absmax: Vec<f32> = values
            .chunks(BLOCK)
            .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let mut codes = vec![0u8; n.div_ceil(2)];
        for (block, chunk) in values.chunks(BLOCK).enumerate() {
            let inv = if absmax[block] > 0.0 {
                1.0 / absmax[block]
            } else {
                0.0
            };
            for (j, v) in chunk.iter().enumerate() {
                let i = block * BLOCK + j;
                let code = nearest_nf4(v * inv);
                codes[i / 2] |= if i.is_multiple_of(2) { code << 4 } else { code };
            }
        }
        let absmax_offset = absmax.iter().sum::<f32>() / blocks.max(1) as f32;
        let absmax_code: Vec<f32> = (0..256).map(|i| -1.0 + 2.0 * i as f32 / 255.0).collect();
        let mut nested_absmax = Vec::with_capacity(blocks.div_ceil(NESTED_BLOCK));
        let mut absmax_q = Vec::with_capacity(blocks);
        for group in absmax.chunks(NESTED_BLOCK) {
            let scale = group
                .iter()
                .fold(0f32, |m, a| m.max((a - absmax_offset).abs()));
            nested_absmax.push(scale);
            for a in group {
                let unit = if scale > 0.0 {
                    (a - absmax_offset) / scale
                } else {
                    0.0
                };
                absmax_q.push(((unit + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
            }
        }
        Self {
            dims,
            codes,
            quant_map: NF4_CODE,
            absmax_q,
            absmax_code,
            nested_absmax,
            absmax_offset,
        }
    }

    /// The real absmax of block `b`.
    fn block_absmax(&self, b: usize) -> f32 {
        self.absmax_code[self.absmax_q[b] as usize] * self.nested_absmax[b / NESTED_BLOCK]
            + self.absmax_offset
    }

    /// Dequantizes rows `[row_start, row_start + out.len() / cols)` into `out` (row-major).
    pub fn dequantize_rows_into(&self, row_start: usize, out: &mut [f32]) {
        let cols = self.dims.last().copied().unwrap_or(1);
        let start = row_start * cols;
        let mut i = start;
        let end = start + out.len();
        while i < end {
            let block = i / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(end);
            let scale = self.block_absmax(block);
            let lut: [f32; 16] = std::array::from_fn(|c| self.quant_map[c] * scale);
            // Fast path on whole bytes, element i even.
            while i < block_end {
                let byte = self.codes[i / 2];
                let code = if i.is_multiple_of(2) {
                    byte >> 4
                } else {
                    byte & 0x0f
                };
                out[i - start] = lut[code as usize];
                i += 1;
            }
        }
    }

    /// Dequantizes the whole tensor.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.elem_count()];
        self.dequantize_rows_into(0, &mut out);
        out
    }
}

fn nearest_nf4(x: f32) -> u8 {
    let mut best = 0u8;
    let mut best_d = f32::INFINITY;
    for (c, v) in NF4_CODE.iter().enumerate() {
        let d = (x - v).abs();
        if d < best_d {
            best_d = d;
            best = c as u8;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_error_is_bounded_and_layout_is_high_nibble_first() {
        let values: Vec<f32> = (0..64 * 4096)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let q = Nf4Tensor::quantize(&values, vec![4096, 64]);
        let back = q.dequantize();
        let max_err = values
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.2, "max err {max_err}");
        // element 0 = -1.0 -> code 0 in the high nibble; element 1 = (37 - 50)/50 -> low nibble.
        assert_eq!(q.codes[0] >> 4, 0);
        assert_eq!(q.codes[0] & 0x0f, nearest_nf4(values[1] / 1.0));
        let bpp = q.storage_bytes() as f64 / values.len() as f64;
        assert!((0.515..0.52).contains(&bpp), "bytes per param {bpp}");
    }

    #[test]
    fn partial_rows_match_full_dequantization() {
        let values: Vec<f32> = (0..96 * 10).map(|i| (i as f32).sin()).collect();
        let q = Nf4Tensor::quantize(&values, vec![10, 96]);
        let full = q.dequantize();
        let mut part = vec![0f32; 96 * 3];
        q.dequantize_rows_into(5, &mut part);
        assert_eq!(&full[96 * 5..96 * 8], &part[..]);
    }
}
