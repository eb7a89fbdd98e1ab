//! Decoding products with the GGUF block types candle 0.11 multiplies with a scalar loop: Q4_1 (the demo
//! model's type) and Q5_0 (most of a Q4_K_M file whose widths are not multiples of 256, as Qwen2-0.5B's).
//! The same arithmetic with AVX2 / AVX-512 VNNI integer dot products, every weight row read once for all
//! rows of a batch, and a result bit for bit equal to candle's (see [`matmul`]).

use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block (all the types here).
const BLOCK: usize = 32;
/// Weight rows (output features) one task computes for every row of the input.
const COLUMNS_PER_TASK: usize = 16;

/// A weight block type this module multiplies, and the 8-bit type candle rounds the activations to for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// d (f16), m (f16), 16 bytes of 4-bit values: `d * q + m`; activations Q8_1.
    Q4_1,
    /// d (f16), 32 high bits, 16 bytes of low 4-bit values: `d * (q - 16)`; activations Q8_0.
    Q5_0,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            _ => None,
        }
    }

    /// Bytes of one weight block.
    fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
        }
    }
}

/// `x[m, k] @ W^T` for a Q4_1 or Q5_0 weight `W[n, k]` on the CPU, or None when this module does not
/// serve the operands (another weight type, a CPU without AVX2, a GPU tensor) and candle's `QMatMul` should.
///
/// Each output is the same sum, in the same order and with the same roundings, as candle's kernel for the
/// type: the activations are rounded to Q8_1 / Q8_0 by candle's own code, each block's integer dot product
/// is exact, and the f32 terms (`sumi * d_w * d_x + m_w * s_x` for Q4_1, `sumi * d_w * d_x` for Q5_0) are
/// added block after block without fused multiply-adds.
pub fn matmul(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let Some(format) = Format::of(w.dtype()) else {
        return Ok(None);
    };
    if !x.device().is_cpu() || !avx2() {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || !k.is_multiple_of(BLOCK) {
        candle_core::bail!("{format:?} product: input of {kx} columns for a weight of {n} x {k}");
    }
    let xs = x
        .to_dtype(candle_core::DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let acts = Activations::quantize(format, &xs, m, k);
    let weights = w.data()?;
    let row_bytes = acts.blocks * format.bytes();
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(COLUMNS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, dst)| {
            let first = task * COLUMNS_PER_TASK;
            let cols = dst.len() / m.max(1);
            let rows = &weights[first * row_bytes..][..cols * row_bytes];
            columns(format, rows, cols, &acts, dst)
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

/// The input rows rounded to the format's 8-bit type (by candle's `from_float`), each block's scales as f32.
struct Activations {
    rows: usize,
    blocks: usize,
    /// Per row, per block: the 32 signed values.
    values: Vec<[i8; BLOCK]>,
    /// Per row, per block: the scale d.
    d: Vec<f32>,
    /// Per row, per block: Q8_1's s (d times the values' sum, as f16); for Q8_0 the values' sum itself.
    s: Vec<f32>,
}

impl Activations {
    fn quantize(format: Format, xs: &[f32], rows: usize, k: usize) -> Self {
        let blocks = k / BLOCK;
        let mut acts = Activations {
            rows,
            blocks,
            values: Vec::with_capacity(rows * blocks),
            d: Vec::with_capacity(rows * blocks),
            s: Vec::with_capacity(rows * blocks),
        };
        let mut push = |d: f32, s: Option<f32>, qs: &[u8]| {
            let mut v = [0i8; BLOCK];
            v.iter_mut().zip(qs).for_each(|(v, &u)| *v = u as i8);
            acts.d.push(d);
            acts.s
                .push(s.unwrap_or(v.iter().map(|&q| q as i32).sum::<i32>() as f32));
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
            Format::Q5_0 => {
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

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Weight value `i` (0..32) of a block, as the integer the block stores (Q4_1: 0..16, Q5_0: -16..16).
fn value(format: Format, wb: &[u8], i: usize) -> i32 {
    let (qs, shift) = (i % 16, 4 * (i / 16));
    match format {
        Format::Q4_1 => ((wb[4 + qs] >> shift) & 0x0f) as i32,
        Format::Q5_0 => {
            let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
            let high = ((qh >> i) & 1) << 4;
            (((wb[6 + qs] >> shift) & 0x0f) as u32 | high) as i32 - 16
        }
    }
}

/// One output the way candle's scalar kernels compute it (the reference for the tests, and the columns
/// left over after the groups of four).
fn dot_scalar(format: Format, w_row: &[u8], acts: &Activations, row: usize) -> f32 {
    let mut sum = 0f32;
    for (b, wb) in w_row.chunks_exact(format.bytes()).enumerate() {
        let a = row * acts.blocks + b;
        let v = &acts.values[a];
        let sumi: i32 = (0..BLOCK).map(|i| value(format, wb, i) * v[i] as i32).sum();
        sum += match format {
            Format::Q4_1 => sumi as f32 * f16_at(wb, 0) * acts.d[a] + f16_at(wb, 2) * acts.s[a],
            Format::Q5_0 => sumi as f32 * f16_at(wb, 0) * acts.d[a],
        };
    }
    sum
}

/// Outputs of `cols` consecutive weight rows for every input row, written column-major into `dst`
/// (`dst[c * rows + r]`), by the fastest kernel this CPU has.
fn columns(format: Format, w: &[u8], cols: usize, acts: &Activations, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl");
        // SAFETY: each kernel runs only on a CPU with the features it is compiled for (callers checked
        // `avx2()`, which covers AVX2 and F16C; `vnni` the rest).
        unsafe {
            match (format, vnni) {
                (Format::Q4_1, true) => q4_1_vnni(w, cols, acts, dst),
                (Format::Q4_1, false) => q4_1_avx2(w, cols, acts, dst),
                (Format::Q5_0, true) => q5_0_vnni(w, cols, acts, dst),
                (Format::Q5_0, false) => q5_0_avx2(w, cols, acts, dst),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "avx2() is false off x86_64: {format:?} {w:?} {cols} {} {dst:?}",
        acts.rows
    )
}

/// A kernel behind [`columns`] for one block format and instruction set:
/// - `$dot(q, y)`: the 8 x i32 partial dot products of 32 unsigned weight values `q` with 32 signed
///   activations `y`;
/// - `$unpack(block)`: a block's 32 values as unsigned bytes (Q5_0's offset of 16 is taken off later);
/// - `$term(sums, d_w, m_w, d_x, s_x)`: the f32 terms of four weight rows (their scales `d_w` and, for Q4_1,
///   minimums `m_w`) with an activation block (scale `d_x`, sum `s_x`), from four exact dot products `sums`.
///
/// Four weight rows at a time: each block's values are unpacked once and then multiplied with that block of
/// every input row, so a batch reads each weight once; four blocks' integer sums are reduced exactly, then
/// scaled and added in f32 lane by lane (one lane per weight row, no fused multiply-add), as candle does.
macro_rules! columns_kernel {
    ($(#[$attr:meta])* $name:ident, $format:expr, $dot:expr, $unpack:expr, $term:expr) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(w: &[u8], cols: usize, acts: &Activations, dst: &mut [f32]) {
            use std::arch::x86_64::*;
            let format: Format = $format;
            let bytes = format.bytes();
            let row_bytes = acts.blocks * bytes;
            let quads = cols / 4;
            let mut acc = vec![_mm_setzero_ps(); acts.rows];
            for quad in 0..quads {
                let w4 = &w[quad * 4 * row_bytes..][..4 * row_bytes];
                acc.fill(_mm_setzero_ps());
                for b in 0..acts.blocks {
                    let block_at = |c: usize| &w4[c * row_bytes + b * bytes..][..bytes];
                    let q = [0, 1, 2, 3].map(|c| $unpack(block_at(c)));
                    let halves = |at: usize| {
                        let bits = |c: usize| i16::from_le_bytes([block_at(c)[at], block_at(c)[at + 1]]);
                        _mm_cvtph_ps(_mm_setr_epi16(bits(0), bits(1), bits(2), bits(3), 0, 0, 0, 0))
                    };
                    // d at offset 0 in both formats; Q4_1's m at offset 2.
                    let dw = halves(0);
                    let mw = match format {
                        Format::Q4_1 => halves(2),
                        Format::Q5_0 => _mm_setzero_ps(),
                    };
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
                        *acc = _mm_add_ps(*acc, $term(sums, dw, mw, acts.d[a], acts.s[a]));
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
                    dst[c * acts.rows + r] =
                        dot_scalar(format, &w[c * row_bytes..][..row_bytes], acts, r);
                }
            }
        }
    };
}

/// Q4_1 values: the 16 bytes at offset 4, low nibbles first.
macro_rules! unpack_q4_1 {
    () => {
        |blk: &[u8]| {
            // SAFETY: bytes 4..20 of a Q4_1 block are its 16 bytes of values.
            let packed = unsafe { _mm_loadu_si128(blk[4..].as_ptr().cast()) };
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    };
}

/// Q4_1 terms: `sumi * d_w * d_x + m_w * s_x`.
macro_rules! term_q4_1 {
    () => {
        |sums: __m128i, dw: __m128, mw: __m128, dx: f32, sx: f32| {
            let scaled = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sums), dw), _mm_set1_ps(dx));
            _mm_add_ps(scaled, _mm_mul_ps(mw, _mm_set1_ps(sx)))
        }
    };
}

/// Q5_0 values: low nibbles of the 16 bytes at offset 6, with bit i of the u32 at offset 2 as bit 4.
macro_rules! unpack_q5_0 {
    () => {
        |blk: &[u8]| {
            // SAFETY: bytes 6..22 of a Q5_0 block are its 16 bytes of low bits.
            let packed = unsafe { _mm_loadu_si128(blk[6..].as_ptr().cast()) };
            let low = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                _mm256_set1_epi8(0x0f),
            );
            let qh = i32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            // Byte i takes byte i / 8 of qh, keeps bit i % 8: 0xff where that bit is set.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh),
                _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                ),
            );
            let bits = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
            let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, bits), _mm256_set1_epi64x(-1));
            _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        }
    };
}

/// Q5_0 terms: `(sumi - 16 * sum(y)) * d_w * d_x`, the offset taken off in integers.
macro_rules! term_q5_0 {
    () => {
        |sums: __m128i, dw: __m128, _mw: __m128, dx: f32, sx: f32| {
            let sumi = _mm_sub_epi32(sums, _mm_set1_epi32(16 * sx as i32));
            _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sumi), dw), _mm_set1_ps(dx))
        }
    };
}

/// AVX2: `maddubs` pairs, then `madd` by ones.
macro_rules! dot_avx2 {
    () => {
        |q, y| _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
    };
}

/// AVX-512 VNNI: one `dpbusd`.
macro_rules! dot_vnni {
    () => {
        |q, y| _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y)
    };
}

columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    q4_1_avx2, Format::Q4_1, dot_avx2!(), unpack_q4_1!(), term_q4_1!()
);
columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512 VNNI with VL.
    #[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
    q4_1_vnni, Format::Q4_1, dot_vnni!(), unpack_q4_1!(), term_q4_1!()
);
columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    q5_0_avx2, Format::Q5_0, dot_avx2!(), unpack_q5_0!(), term_q5_0!()
);
columns_kernel!(
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512 VNNI with VL.
    #[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
    q5_0_vnni, Format::Q5_0, dot_vnni!(), unpack_q5_0!(), term_q5_0!()
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    use std::sync::Arc;

    const DTYPES: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q5_0];

    /// Random weights (with an offset, so Q4_1's minimum and Q5_0's high bits both matter) and inputs.
    fn operands(
        dtype: GgmlDType,
        m: usize,
        n: usize,
        k: usize,
        seed: u64,
    ) -> (Tensor, Arc<QTensor>) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (n, k), &dev)
            .unwrap()
            .affine(1.0, 0.1 * seed as f64)
            .unwrap();
        let x = Tensor::randn(0f32, 2.0, (m, k), &dev).unwrap();
        (x, Arc::new(QTensor::quantize(&w, dtype).unwrap()))
    }

    fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
        v.iter()
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    #[test]
    fn products_equal_candles_kernels_bit_for_bit() {
        if !avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        // Shapes that leave columns after the groups of four and the tasks.
        for dtype in DTYPES {
            for (m, n, k) in [(1, 576, 576), (10, 1536, 576), (3, 37, 128), (32, 19, 1536)] {
                let (x, w) = operands(dtype, m, n, k, n as u64);
                let ours = matmul(&x, &w).unwrap().expect("served");
                let candle = QMatMul::from_arc(w).unwrap().forward(&x).unwrap();
                assert_eq!(
                    bits(&ours.to_vec2::<f32>().unwrap()),
                    bits(&candle.to_vec2::<f32>().unwrap()),
                    "{dtype:?} ({m},{n},{k})"
                );
            }
        }
    }

    #[test]
    fn the_scalar_reference_is_candles_arithmetic() {
        for dtype in DTYPES {
            let format = Format::of(dtype).unwrap();
            let (x, w) = operands(dtype, 2, 8, 64, 1);
            let acts =
                Activations::quantize(format, &x.flatten_all().unwrap().to_vec1().unwrap(), 2, 64);
            let data = w.data().unwrap();
            let row = 2 * format.bytes();
            let candle = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
            for (r, want) in candle.to_vec2::<f32>().unwrap().iter().enumerate() {
                for (c, want) in want.iter().enumerate() {
                    let ours = dot_scalar(format, &data[c * row..][..row], &acts, r);
                    assert_eq!(ours.to_bits(), want.to_bits(), "{dtype:?}");
                }
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
            let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if !vnni {
                eprintln!("the AVX-512 VNNI kernels are not tested: this CPU lacks them");
            }
            for dtype in DTYPES {
                let format = Format::of(dtype).unwrap();
                let (m, n, k) = (5, 22, 256);
                let (x, w) = operands(dtype, m, n, k, 3);
                let acts = Activations::quantize(
                    format,
                    &x.flatten_all().unwrap().to_vec1().unwrap(),
                    m,
                    k,
                );
                let data = w.data().unwrap();
                let row_bytes = k / BLOCK * format.bytes();
                let want: Vec<u32> = (0..n)
                    .flat_map(|c| (0..m).map(move |r| (c, r)))
                    .map(|(c, r)| {
                        dot_scalar(format, &data[c * row_bytes..][..row_bytes], &acts, r).to_bits()
                    })
                    .collect();
                type Kernel = unsafe fn(&[u8], usize, &Activations, &mut [f32]);
                let kernels: [(&str, Kernel, bool); 2] = match format {
                    Format::Q4_1 => [("avx2", q4_1_avx2, true), ("vnni", q4_1_vnni, vnni)],
                    Format::Q5_0 => [("avx2", q5_0_avx2, true), ("vnni", q5_0_vnni, vnni)],
                };
                for (name, kernel, available) in kernels {
                    if !available {
                        continue;
                    }
                    let mut got = vec![0f32; n * m];
                    // SAFETY: the CPU has the kernel's features (`avx2()`, `vnni`).
                    unsafe { kernel(&data, n, &acts, &mut got) };
                    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{dtype:?} {name}");
                }
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
