//! Fused CPU f32 kernels with hand-written backward passes for the recomputation pass of training.
//!
//! candle's own fused kernels have no backward (CANDLE-NOTES), and the differentiable compositions spend
//! most of a CPU training step allocating and sweeping big intermediate tensors. These custom ops compute
//! the same values in one sweep each and give exact gradients. They run only for f32 tensors on the CPU;
//! callers keep the compositions elsewhere (CUDA, bf16) through [`applies`].

use crate::model::device::simd;

pub mod adapted_linear;
pub mod attention;
pub mod bf16;
pub mod block;
pub mod cross_entropy;
pub mod decode;
pub mod gated;
pub mod gather;
pub mod lora_delta;
pub mod qdot;
pub mod rms_norm;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tiles;
#[cfg(target_arch = "x86_64")]
pub(crate) mod transpose;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

/// Whether the fused CPU kernels serve this tensor (f32 on the CPU).
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The f32 elements of a contiguous CPU storage, in layout order.
fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 storage, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// [`cpu_slice`] for a tensor's storage (backward passes receive tensors).
fn storage_slice<'a>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => cpu_slice(c, l, op),
        _ => candle_core::bail!("{op}: expected a CPU tensor"),
    }
}

/// The elements of a (small, constant) tensor as a contiguous f32 vector.
fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// A strided read-only f32 matrix view.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    /// Row stride and column stride in elements.
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            rs: row_len,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with rows of `row_len`.
    fn rows_t(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: row_len,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] = scale * lhs[m, k] @ rhs[k, n]`, plus the old `dst` when `accumulate`; `dst` row-major with
/// rows of `n`. Single-threaded: callers parallelise over heads.
fn matmul(
    dst: &mut [f32],
    dims: (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    accumulate: bool,
) {
    matmul_into(
        dst,
        dims,
        (lhs, rhs, scale),
        accumulate,
        gemm::Parallelism::None,
    )
}

/// [`matmul`] on `threads` threads of the rayon pool (the pool candle's own products use).
fn matmul_par(
    dst: &mut [f32],
    dims: (usize, usize, usize),
    operands: (Mat, Mat, f32),
    accumulate: bool,
) {
    matmul_into(dst, dims, operands, accumulate, pool())
}

/// The product behind [`matmul`] and [`matmul_par`], with its bounds check.
fn matmul_into(
    dst: &mut [f32],
    dims: (usize, usize, usize),
    operands: (Mat, Mat, f32),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, n, _) = dims;
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` is borrowed mutably and holds the m x n result.
    unsafe { matmul_in(dst.as_mut_ptr(), n, dims, operands, accumulate, parallelism) }
}

/// [`matmul_par`] into columns `[col, col + n)` of `dst`, a row-major matrix with rows of `width` (a row
/// chunk of a weight contributing its slice of the output columns); overwrites those columns.
fn matmul_par_cols(
    dst: &mut [f32],
    (width, col): (usize, usize),
    dims: (usize, usize, usize),
    operands: (Mat, Mat, f32),
) {
    let (m, n, _) = dims;
    assert!(col + n <= width && (m == 0 || (m - 1) * width + col + n <= dst.len()));
    // SAFETY: the assert above keeps the m x n block with row stride `width` inside `dst`, which is
    // borrowed mutably.
    unsafe {
        matmul_in(
            dst.as_mut_ptr().add(col),
            width,
            dims,
            operands,
            false,
            pool(),
        )
    }
}

/// The parallelism of candle's own CPU products.
fn pool() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `scale * lhs[m, k] @ rhs[k, n]` as a new row-major vector, on the rayon pool like [`matmul_par`]; the
/// product writes every element, so nothing is zero-filled first.
fn matmul_new(dims: (usize, usize, usize), lhs: Mat, rhs: Mat, scale: f32) -> Vec<f32> {
    let (m, n, k) = dims;
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `out` holds capacity for the m x n result; gemm with `read_dst = false` never reads the
    // destination and, with k > 0, writes each of its m * n elements, so every element is initialised
    // before `set_len` exposes it.
    unsafe {
        matmul_in(out.as_mut_ptr(), n, dims, (lhs, rhs, scale), false, pool());
        out.set_len(m * n);
    }
    out
}

/// The product behind the helpers above.
///
/// # Safety
/// `dst` must be valid for writes of the m x n matrix with rows `dst_rs` elements apart (and reads when
/// `accumulate`) and alias neither input.
unsafe fn matmul_in(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    (lhs, rhs, scale): (Mat, Mat, f32),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.fits(m, k) && rhs.fits(k, n));
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assert above keeps every index the kernel reads inside the two input slices; the caller
    // vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `e^x` in f32 to ~2 ulp, written so the compiler vectorises loops over it (libm's `expf` does not);
/// 0 below -87 (where `expf` is subnormal), as the softmax of masked scores needs.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and removing 1.5 * 2^23 (`f32::round` is a libm call that stops the
    // loop from vectorising).
    const ROUND: f32 = 12_582_912.0;
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on [-ln2/2, ln2/2].
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n from the integer `n` held in the low mantissa bits of `shifted` (ulp 1 in [2^23, 2^24)), in
    // wrapping integer arithmetic: `n as i32` is a saturating conversion that keeps the loop scalar.
    let biased = (shifted.to_bits())
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scaled = y * f32::from_bits(biased << 23);
    if x < -87.0 { 0.0 } else { scaled }
}

/// Lanes of the reductions below: independent partial results let the compiler vectorise them (a single
/// running f32 sum must be added in order).
const LANES: usize = 16;

/// Sum of `a * b`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element (-inf for an empty slice).
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail =
        (chunks.remainder().iter()).fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m });
    for x in chunks {
        for i in 0..LANES {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, v| if *v > m { *v } else { m })
}

/// Replaces each element by `e^(x - shift)` and returns their sum.
#[inline(always)]
fn exp_shifted_sum(a: &mut [f32], shift: f32) -> f32 {
    for v in a.iter_mut() {
        *v = exp(*v - shift);
    }
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for i in 0..LANES {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_libm() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.0431;
            let (a, b) = (super::exp(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b,
                "exp({x}) = {a}, libm {b}"
            );
        }
        assert_eq!(super::exp(-1e30), 0.0);
        assert_eq!(super::exp(f32::MIN), 0.0);
    }

    #[test]
    fn lane_reductions_match_plain_ones() {
        let a: Vec<f32> = (0..53).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..53).map(|i| ((i * 13) % 7) as f32 * 0.5).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(super::dot(&a, &b), plain);
        assert_eq!(super::max(&a), 5.0);
        let mut e = a.clone();
        let sum = super::exp_shifted_sum(&mut e, 5.0);
        let plain: f32 = a.iter().map(|v| (v - 5.0).exp()).sum();
        assert!((sum - plain).abs() < 1e-5 * plain);
    }
}

#[cfg(test)]
mod test_util {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Max |a - b| / (max |b| + tiny): a relative error over the whole tensor.
    pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-30;
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }
}
