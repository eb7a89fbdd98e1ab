//! Products through a frozen weight in bf16 with f32 accumulation, on CPUs that multiply bf16 pairs natively
//! (AVX512_BF16's `vdpbf16ps`: two multiply-adds per f32 lane and instruction, twice the f32 FMA's rate).
//! This is QLoRA's bf16 compute dtype for the frozen 4-bit base, as the GPU path computes it. The gemm
//! crate behind candle's CPU products has no bf16 dot-product kernel (it widens bf16 to f32), hence this one.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod linear;
mod panels;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use panels::Panels;

/// Columns of one packed panel of the right operand: two registers of 16 f32 accumulators.
const NR: usize = 32;
/// Rows of the left operand in one register tile (12 x 2 accumulators of the 32 registers).
const MR: usize = 12;
/// Rows of the left operand per parallel task.
const ROWS_PER_TASK: usize = 8 * MR;

/// The dtype a CPU training step multiplies through the frozen weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout (the gemm crate's kernels).
    #[default]
    F32,
    /// Operands rounded to bf16, products accumulated in f32 (this module; only where [`supported`]).
    Bf16,
}

impl Precision {
    /// bf16 when `allow` and this CPU multiplies it natively, else f32.
    pub fn resolve(allow: bool) -> Self {
        match allow && supported() {
            true => Self::Bf16,
            false => Self::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// Whether this CPU has the instructions of the bf16 kernels (AVX-512F and BW, AVX512_BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits.
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A left operand `[m, k]` of f32 rows `rs` elements apart.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub m: usize,
    pub rs: usize,
}

/// `dst[m, n] = lhs[m, k] @ rhs[k, n]` (plus the old `dst` when `accumulate`), `dst` row-major with rows
/// `dst_rs` apart, `lhs` rounded to bf16 here and `rhs` packed. Errors when the CPU lacks the instructions
/// ([`supported`]) or the sizes do not fit.
pub fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Rows,
    rhs: &Panels,
    accumulate: bool,
) -> candle_core::Result<()> {
    let (m, k, n) = (lhs.m, rhs.k(), rhs.n());
    check(lhs, rhs)?;
    let dst_fits = m == 0 || (dst_rs >= n && (m - 1) * dst_rs + n <= dst.len());
    if !dst_fits {
        candle_core::bail!(
            "bf16 product: [{m}, {n}] does not fit the {} elements of its output",
            dst.len()
        )
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    product(
        dst.as_mut_ptr(),
        dst_rs,
        &pack_lhs(lhs, k, rhs.pairs()),
        m,
        rhs,
        accumulate,
    );
    Ok(())
}

/// [`matmul`] into a new row-major `[m, n]` buffer; the product writes every element, so nothing is
/// zero-filled first.
pub fn matmul_new(lhs: Rows, rhs: &Panels) -> candle_core::Result<Vec<f32>> {
    check(lhs, rhs)?;
    let (m, n) = (lhs.m, rhs.n());
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if m == 0 || n == 0 {
        return Ok(out);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `out` holds capacity for the m x n result; the product's tasks cover every row block and
    // panel, and each writes every one of its rows' valid columns (the masked stores cover exactly the
    // columns below n), so every element is initialised before `set_len` exposes it.
    unsafe {
        let a = pack_lhs(lhs, rhs.k(), rhs.pairs());
        product(out.as_mut_ptr(), n, &a, m, rhs, false);
        out.set_len(m * n);
    }
    Ok(out)
}

/// That the CPU has the instructions and `lhs` holds its `m` rows of the product's depth.
fn check(lhs: Rows, rhs: &Panels) -> candle_core::Result<()> {
    if !supported() {
        candle_core::bail!(
            "bf16 products need AVX-512F, AVX-512BW and AVX512_BF16, which this CPU lacks"
        )
    }
    let (m, k) = (lhs.m, rhs.k());
    if m > 0 && (m - 1) * lhs.rs + k > lhs.data.len() {
        candle_core::bail!(
            "bf16 product: {m} rows of {k} from {} values, rows {} apart",
            lhs.data.len(),
            lhs.rs
        )
    }
    Ok(())
}

/// The tasks of [`matmul`] once its checks passed: tiles of [`ROWS_PER_TASK`] rows by one panel.
#[cfg(target_arch = "x86_64")]
fn product(dst: *mut f32, dst_rs: usize, a: &[u16], m: usize, rhs: &Panels, accumulate: bool) {
    let dst_addr = dst as usize;
    let row_blocks = m.div_ceil(ROWS_PER_TASK);
    (0..rhs.panels() * row_blocks)
        .into_par_iter()
        .for_each(|task| {
            let (panel, block) = (task / row_blocks, task % row_blocks);
            let rows = block * ROWS_PER_TASK..(m.min((block + 1) * ROWS_PER_TASK));
            // SAFETY: `matmul` checked that the CPU has the instructions and that `dst` holds the m x n
            // result; each task writes the tile of its own rows and panel's columns, disjoint from the
            // others'.
            unsafe {
                avx512::panel_rows(
                    (dst_addr as *mut f32, dst_rs),
                    a,
                    rows,
                    rhs,
                    panel,
                    accumulate,
                )
            }
        });
}

/// The first `k` columns of the left operand in bf16, in rows of `2 * pairs` (an odd `k` padded with a
/// zero to the panels' pairs). The caller has checked that the rows fit `lhs.data`.
#[cfg(target_arch = "x86_64")]
fn pack_lhs(lhs: Rows, k: usize, pairs: usize) -> Vec<u16> {
    let width = 2 * pairs;
    let mut a = vec![0u16; lhs.m * width];
    a.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
        let src = &lhs.data[i * lhs.rs..i * lhs.rs + k];
        // SAFETY: only `matmul` packs, after checking that the CPU has the instructions.
        unsafe { avx512::to_bf16(src, row) };
    });
    a
}
