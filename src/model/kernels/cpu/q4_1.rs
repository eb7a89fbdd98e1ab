//! Decoding products with Q4_1 weights (the demo model's type), which candle 0.11 multiplies with a scalar
//! loop: the same arithmetic with AVX2 integer dot products, every weight row read once for all rows of a
//! batch, and a result bit for bit equal to candle's (see [`matmul`]).

use candle_core::quantized::k_quants::{BlockQ8_1, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block (Q4_1 and Q8_1).
const BLOCK: usize = 32;
/// Bytes of a Q4_1 block: scale d (f16), minimum m (f16), 16 bytes of 4-bit values.
const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_1 block: scale d (f16), d times the sum of the values (f16), 32 signed bytes.
const Q8_1_BYTES: usize = 36;
/// Weight rows (output features) one task computes for every row of the input.
const COLUMNS_PER_TASK: usize = 16;

/// `x[m, k] @ W^T` for a Q4_1 weight `W[n, k]` on the CPU, or None when this kernel does not serve the
/// operands (another weight type, a CPU without AVX2, a GPU tensor) and candle's `QMatMul` should.
///
/// Each output is the same sum, in the same order and with the same roundings, as candle's Q4_1 kernel:
/// the activations are rounded to Q8_1 by candle's own code, each block's integer dot product is exact,
/// and the f32 terms `sumi * d_w * d_x + m_w * s_x` are added block after block without fused multiply-adds.
pub fn matmul(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q4_1 || !x.device().is_cpu() || !avx2() {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || !k.is_multiple_of(BLOCK) {
        candle_core::bail!("q4_1 product: input of {kx} columns for a weight of {n} x {k}");
    }
    let xs = x
        .to_dtype(candle_core::DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let acts = Activations::quantize(&xs, m, k);
    let weights = w.data()?;
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(COLUMNS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, dst)| {
            let first = task * COLUMNS_PER_TASK;
            let cols = dst.len() / m.max(1);
            let rows =
                &weights[first * acts.blocks * Q4_1_BYTES..][..cols * acts.blocks * Q4_1_BYTES];
            columns(rows, cols, &acts, dst)
        });
    Tensor::from_vec(out_t, (n, m), &Device::Cpu)?
        .t()?
        .contiguous()
        .map(Some)
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The input rows rounded to Q8_1 (by candle's `from_float`), with each block's scales as f32.
struct Activations {
    rows: usize,
    blocks: usize,
    /// Per row, per block: the 32 signed values.
    values: Vec<[i8; BLOCK]>,
    /// Per row, per block: d and s.
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Activations {
    fn quantize(xs: &[f32], rows: usize, k: usize) -> Self {
        let blocks = k / BLOCK;
        let mut q = vec![BlockQ8_1::zeros(); rows * blocks];
        for (row, dst) in xs.chunks_exact(k).zip(q.chunks_exact_mut(blocks)) {
            BlockQ8_1::from_float(row, dst);
        }
        // SAFETY: BlockQ8_1 is `repr(C)` {d: f16, s: f16, qs: [i8; 32]}, 36 bytes without padding (candle
        // asserts its size), so its blocks may be read as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len() * Q8_1_BYTES) };
        let mut acts = Activations {
            rows,
            blocks,
            values: Vec::with_capacity(q.len()),
            d: Vec::with_capacity(q.len()),
            s: Vec::with_capacity(q.len()),
        };
        for b in bytes.chunks_exact(Q8_1_BYTES) {
            acts.d.push(f16_at(b, 0));
            acts.s.push(f16_at(b, 2));
            let mut v = [0i8; BLOCK];
            v.iter_mut().zip(&b[4..]).for_each(|(v, &u)| *v = u as i8);
            acts.values.push(v);
        }
        acts
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One output the way candle's scalar Q4_1 kernel computes it (the reference for the tests, and the
/// columns left over after the groups of four).
fn dot_scalar(w_row: &[u8], acts: &Activations, row: usize) -> f32 {
    let mut sum = 0f32;
    for (b, wb) in w_row.chunks_exact(Q4_1_BYTES).enumerate() {
        let a = row * acts.blocks + b;
        let v = &acts.values[a];
        let mut sumi = 0i32;
        for j in 0..BLOCK / 2 {
            let q = wb[4 + j];
            sumi += (q & 0x0f) as i32 * v[j] as i32 + (q >> 4) as i32 * v[j + BLOCK / 2] as i32;
        }
        sum += sumi as f32 * f16_at(wb, 0) * acts.d[a] + f16_at(wb, 2) * acts.s[a];
    }
    sum
}

/// Outputs of `cols` consecutive weight rows for every input row, written column-major into `dst`
/// (`dst[c * rows + r]`), by the fastest kernel this CPU has.
fn columns(w: &[u8], cols: usize, acts: &Activations, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features the kernel is compiled for (and AVX2 + F16C: `avx2()`).
            return unsafe { columns_vnni(w, cols, acts, dst) };
        }
        // SAFETY: callers checked `avx2()`.
        unsafe { columns_avx2(w, cols, acts, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "avx2() is false off x86_64: {w:?} {cols} {} {dst:?}",
        acts.rows
    )
}

/// The kernel behind [`columns`], for one instruction set: `$dot(q, y)` is the 8 x i32 partial dot products
/// of 32 unsigned 4-bit weights `q` with 32 signed activations `y`.
///
/// Four weight rows at a time: each block's values are unpacked once and then multiplied with that block of
/// every input row, so a batch reads each weight once; four blocks' integer sums are reduced exactly, then
/// scaled and added in f32 lane by lane (one lane per weight row, no fused multiply-add), as candle does.
macro_rules! columns_kernel {
    ($(#[$attr:meta])* $name:ident, $dot:expr) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(w: &[u8], cols: usize, acts: &Activations, dst: &mut [f32]) {
            use std::arch::x86_64::*;
            let row_bytes = acts.blocks * Q4_1_BYTES;
            let quads = cols / 4;
            let low = _mm256_set1_epi8(0x0f);
            let mut acc = vec![_mm_setzero_ps(); acts.rows];
            for quad in 0..quads {
                let w4 = &w[quad * 4 * row_bytes..][..4 * row_bytes];
                acc.fill(_mm_setzero_ps());
                for b in 0..acts.blocks {
                    let block = |c: usize| &w4[c * row_bytes + b * Q4_1_BYTES..][..Q4_1_BYTES];
                    let unpack = |c: usize| {
                        // SAFETY: bytes 4..20 of a block are its 16 bytes of values.
                        let packed = unsafe { _mm_loadu_si128(block(c)[4..].as_ptr().cast()) };
                        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low)
                    };
                    let q = [unpack(0), unpack(1), unpack(2), unpack(3)];
                    let half = |at: usize| {
                        let bits = |c: usize| i16::from_le_bytes([block(c)[at], block(c)[at + 1]]);
                        _mm_cvtph_ps(_mm_setr_epi16(bits(0), bits(1), bits(2), bits(3), 0, 0, 0, 0))
                    };
                    let (dw, mw) = (half(0), half(2));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a = r * acts.blocks + b;
                        // SAFETY: `values[a]` holds 32 bytes.
                        let y = unsafe { _mm256_loadu_si256(acts.values[a].as_ptr().cast()) };
                        let s = q.map(|q| $dot(q, y));
                        let h = _mm256_hadd_epi32(
                            _mm256_hadd_epi32(s[0], s[1]),
                            _mm256_hadd_epi32(s[2], s[3]),
                        );
                        let sums =
                            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                        let scaled = _mm_mul_ps(
                            _mm_mul_ps(_mm_cvtepi32_ps(sums), dw),
                            _mm_set1_ps(acts.d[a]),
                        );
                        let term = _mm_add_ps(scaled, _mm_mul_ps(mw, _mm_set1_ps(acts.s[a])));
                        *acc = _mm_add_ps(*acc, term);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let mut four = [0f32; 4];
                    // SAFETY: `four` holds 4 floats.
                    unsafe { _mm_storeu_ps(four.as_mut_ptr(), *acc) };
                    for (c, v) in four.into_iter().enumerate() {
                        dst[(quad * 4 + c) * acts.rows + r] = v;
                    }
                }
            }
            for c in quads * 4..cols {
                for r in 0..acts.rows {
                    dst[c * acts.rows + r] = dot_scalar(&w[c * row_bytes..][..row_bytes], acts, r);
                }
            }
        }
    };
}

columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    columns_avx2,
    |q, y| _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
);

columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512 VNNI with VL (one instruction for the 8-bit dot product).
    #[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
    columns_vnni,
    |q, y| _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y)
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    use std::sync::Arc;

    /// Random weights and inputs, with shapes that leave columns after the groups of four and tasks.
    fn operands(m: usize, n: usize, k: usize, seed: u64) -> (Tensor, Arc<QTensor>) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (n, k), &dev)
            .unwrap()
            .affine(1.0, 0.1 * seed as f64)
            .unwrap();
        let x = Tensor::randn(0f32, 2.0, (m, k), &dev).unwrap();
        (x, Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()))
    }

    #[test]
    fn products_equal_candles_q4_1_kernel_bit_for_bit() {
        if !avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for (m, n, k) in [(1, 576, 576), (10, 1536, 576), (3, 37, 128), (32, 19, 1536)] {
            let (x, w) = operands(m, n, k, n as u64);
            let ours = matmul(&x, &w).unwrap().expect("served");
            let candle = QMatMul::from_arc(w).unwrap().forward(&x).unwrap();
            let (a, b) = (
                ours.to_vec2::<f32>().unwrap(),
                candle.to_vec2::<f32>().unwrap(),
            );
            for (r, (ra, rb)) in a.iter().zip(&b).enumerate() {
                for (c, (va, vb)) in ra.iter().zip(rb).enumerate() {
                    assert_eq!(
                        va.to_bits(),
                        vb.to_bits(),
                        "({m},{n},{k}) row {r} col {c}: {va} vs {vb}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_scalar_reference_is_candles_arithmetic() {
        let (x, w) = operands(2, 8, 64, 1);
        let acts = Activations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), 2, 64);
        let data = w.data().unwrap();
        let candle = QMatMul::from_arc(w.clone())
            .unwrap()
            .forward(&x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (r, row) in candle.iter().enumerate() {
            for (c, want) in row.iter().enumerate() {
                let ours = dot_scalar(&data[c * 2 * Q4_1_BYTES..][..2 * Q4_1_BYTES], &acts, r);
                assert_eq!(ours.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn each_instruction_set_gives_the_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        {
            if !avx2() {
                return;
            }
            let (m, n, k) = (5, 22, 256);
            let (x, w) = operands(m, n, k, 3);
            let acts = Activations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), m, k);
            let data = w.data().unwrap();
            let row_bytes = k / BLOCK * Q4_1_BYTES;
            let want: Vec<u32> = (0..n)
                .flat_map(|c| (0..m).map(move |r| (c, r)))
                .map(|(c, r)| dot_scalar(&data[c * row_bytes..][..row_bytes], &acts, r).to_bits())
                .collect();
            let mut got = vec![0f32; n * m];
            // SAFETY: `avx2()` is true.
            unsafe { columns_avx2(&data, n, &acts, &mut got) };
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want,
                "avx2"
            );
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: checked just above.
                unsafe { columns_vnni(&data, n, &acts, &mut got) };
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want,
                    "vnni"
                );
            } else {
                eprintln!("the AVX-512 VNNI kernel is not tested: this CPU lacks it");
            }
        }
    }

    #[test]
    fn other_weight_types_and_bad_widths_are_not_served_or_refused() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 64), &dev).unwrap();
        let q8 = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
        assert!(matmul(&x, &q8).unwrap().is_none());
        if avx2() {
            let q4 = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let wrong = Tensor::randn(0f32, 1.0, (1, 32), &dev).unwrap();
            assert!(matmul(&wrong, &q4).is_err());
        }
    }
}
