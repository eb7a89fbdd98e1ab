//! Q4_1 and Q8_0 weights to f32, as training multiplies them (a whole weight per projection, forward and
//! backward): row blocks in parallel, compiled for AVX-512 or AVX2, straight into the result's buffer.
//! candle 0.11 zero-fills the result first, then converts on one thread four floats wide. Values are bit
//! for bit candle's (`q * d + m`, `q * d` in f32, never contracted into a fused multiply-add).

use std::mem::MaybeUninit;

use candle_core::quantized::GgmlDType;

use crate::model::device::{simd, written_in_parallel};

/// Values per block of both types.
const BLOCK: usize = 32;
/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 1024;

/// Block sizes in bytes: Q4_1 `d: f16, m: f16, 16 bytes of nibble pairs`; Q8_0 `d: f16, 32 i8`.
fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4_1 => Some(20),
        GgmlDType::Q8_0 => Some(34),
        _ => None,
    }
}

/// Whether [`dequantize`] converts this type.
pub fn converts(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some()
}

/// The f16 at byte `at`, converted exactly in line (`half`'s conversion is an out-of-line call that checks
/// the CPU's features each time: as slow as the rest of a block's conversion).
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let (sign, exp, man) = ((h & 0x8000) << 16, (h >> 10) & 0x1f, h & 0x3ff);
    match exp {
        // Zero and subnormals: man * 2^-24, exact in f32.
        0 => {
            let v = man as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(v.to_bits() | sign)
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | man << 13),
        _ => f32::from_bits(sign | (exp + 112) << 23 | man << 13),
    }
}

/// One block's 32 values from its bytes.
#[inline(always)]
fn block(dtype: GgmlDType, b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    if dtype == GgmlDType::Q4_1 {
        let m = f16_at(b, 2);
        let (lo, hi) = out.split_at_mut(BLOCK / 2);
        for ((l, h), q) in lo.iter_mut().zip(hi).zip(&b[4..4 + BLOCK / 2]) {
            *l = (q & 0x0f) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    } else {
        for (o, q) in out.iter_mut().zip(&b[2..2 + BLOCK]) {
            *o = (*q as i8) as f32 * d;
        }
    }
}

/// The f32 values of `data`, whole blocks of `dtype`; None for the types this does not convert.
pub fn dequantize(dtype: GgmlDType, data: &[u8]) -> Option<Vec<f32>> {
    let size = block_bytes(dtype)?;
    let blocks = data.len() / size;
    let write = |i: usize, dst: &mut [MaybeUninit<f32>]| {
        let first = i * BLOCKS_PER_TASK;
        let src = &data[first * size..(first + dst.len() / BLOCK) * size];
        simd(
            #[inline(always)]
            || {
                let mut values = [0f32; BLOCK];
                for (o, b) in dst.chunks_exact_mut(BLOCK).zip(src.chunks_exact(size)) {
                    block(dtype, b, &mut values);
                    for (o, v) in o.iter_mut().zip(values) {
                        o.write(v);
                    }
                }
            },
        )
    };
    // SAFETY: each chunk is whole blocks, every block written from its source block.
    let out = unsafe { written_in_parallel(blocks * BLOCK, BLOCK * BLOCKS_PER_TASK, write) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn equals_candles_dequantization_bit_for_bit() {
        // 1280 blocks: two parallel tasks, the second one short.
        let values: Vec<f32> = (0..160 * 256)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let w = Tensor::from_vec(values, (160, 256), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want = (q.dequantize(&Device::Cpu).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = dequantize(dtype, &q.data().unwrap()).unwrap();
            assert_eq!(got.len(), want.len());
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype:?}"
            );
        }
        assert!(dequantize(GgmlDType::Q4K, &[0; 144]).is_none() && !converts(GgmlDType::Q4K));
    }

    #[test]
    fn converts_every_f16_exactly() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_at(&h.to_le_bytes(), 0);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }
}
