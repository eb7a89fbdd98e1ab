//! Products through a frozen weight in bf16 with f32 accumulation, on CPUs that multiply bf16 natively:
//! AMX tiles (`amx`, Intel's AMX-BF16) where present, else AVX512_BF16's `vdpbf16ps` (`avx512`: two
//! multiply-adds per f32 lane and instruction). This is QLoRA's bf16 compute dtype for the frozen 4-bit
//! base, as the GPU path computes it. The gemm crate behind candle's CPU products has no bf16 dot-product
//! kernel (it widens bf16 to f32), hence these.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod linear;
mod panels;
#[cfg(test)]
mod tests;

use std::mem::MaybeUninit;

use crate::model::device::written_in_parallel;
use rayon::prelude::*;

pub use panels::Panels;

/// Columns of one packed panel of the right operand: two registers of 16 f32 accumulators.
const NR: usize = 32;
/// Rows of the left operand in one register tile (12 x 2 accumulators of the 32 registers).
const MR: usize = 12;
/// Rows of the left operand per parallel task (whole AMX blocks of 32 rows, too).
const ROWS_PER_TASK: usize = 8 * MR;
/// Pairs of the depth packed together: one AMX tile's 32 bf16 values per row. Both operands' depth is
/// padded with zeros to whole blocks of it.
const PAIR_BLOCK: usize = 16;

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
    /// bf16 when `allow` and it is faster than f32 on this CPU ([`Support::pays`]), else f32.
    pub fn resolve(allow: bool) -> Self {
        match allow && Support::detect().pays() {
            true => Self::Bf16,
            false => Self::F32,
        }
    }

    /// The dtype of the products through the frozen weights on `device`: bf16 on a GPU (QLoRA's compute
    /// dtype), on the CPU [`Self::resolve`]`(allow)`.
    pub fn on(device: &candle_core::Device, allow: bool) -> Self {
        match device.is_cpu() {
            true => Self::resolve(allow),
            false => Self::Bf16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype with the kernel that multiplies it on this CPU (for benchmark reports).
    pub fn label(self) -> &'static str {
        match (self, Kernel::best()) {
            (Self::F32, _) => "f32",
            (Self::Bf16, Kernel::Amx) => "bf16 (AMX)",
            (Self::Bf16, Kernel::Dot) => "bf16 (AVX512_BF16)",
        }
    }
}

/// What this CPU offers bf16 products, as measured (bench/results/cpu-train-bf16-*.txt): on an AMD Zen 4
/// `vdpbf16ps` ran the training step 1.5 times faster than f32, on an Intel Xeon (Sapphire Rapids class)
/// 0.75 times as fast, where AMX tiles run it faster than both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// No AVX512_BF16: products stay f32.
    Missing,
    /// AVX512_BF16 on an Intel CPU without AMX, where `vdpbf16ps` is no faster than f32 FMAs.
    SlowDot,
    /// AVX512_BF16 elsewhere (AMD Zen 4 and later).
    Dot,
    /// AMX-BF16 tiles.
    Amx,
}

impl Support {
    /// This CPU's, read once per process (it is asked for every training step).
    pub fn detect() -> Self {
        static SUPPORT: std::sync::OnceLock<Support> = std::sync::OnceLock::new();
        *SUPPORT.get_or_init(Self::read)
    }

    fn read() -> Self {
        if !supported() {
            return Self::Missing;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                return Self::Amx;
            }
            if intel() {
                return Self::SlowDot;
            }
        }
        Self::Dot
    }

    /// Whether bf16 products beat f32 here.
    pub fn pays(self) -> bool {
        matches!(self, Self::Dot | Self::Amx)
    }

    /// Why a step on this CPU multiplies in the dtype it does (for the run log).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "this CPU lacks AVX512_BF16",
            Self::SlowDot => "this Intel CPU has AVX512_BF16 but no AMX, where bf16 is no faster",
            Self::Dot => "with f32 sums: this CPU has AVX512_BF16",
            Self::Amx => "with f32 sums, on AMX tiles: this CPU has AMX-BF16",
        }
    }
}

/// CPUID's vendor string is Intel's.
#[cfg(target_arch = "x86_64")]
fn intel() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    (id.ebx, id.edx, id.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
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

/// The kernel that runs a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `vdpbf16ps` register tiles.
    Dot,
    /// AMX tiles.
    Amx,
}

impl Kernel {
    /// AMX where this CPU and process have it ([`Support::Amx`]), else the dot-product kernel.
    fn best() -> Self {
        match Support::detect() {
            Support::Amx => Self::Amx,
            _ => Self::Dot,
        }
    }
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
    matmul_on(Kernel::best(), dst, dst_rs, lhs, rhs, accumulate)
}

/// [`matmul`] on `kernel`.
fn matmul_on(
    kernel: Kernel,
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
        kernel,
        dst.as_mut_ptr(),
        dst_rs,
        &pack_lhs(kernel, lhs, k, rhs.pairs()),
        m,
        rhs,
        accumulate,
    );
    Ok(())
}

/// [`matmul`] into a new row-major `[m, n]` buffer; the product writes every element, so nothing is
/// zero-filled first.
pub fn matmul_new(lhs: Rows, rhs: &Panels) -> candle_core::Result<Vec<f32>> {
    matmul_new_on(Kernel::best(), lhs, rhs)
}

/// [`matmul_new`] on `kernel`.
fn matmul_new_on(kernel: Kernel, lhs: Rows, rhs: &Panels) -> candle_core::Result<Vec<f32>> {
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
        let a = pack_lhs(kernel, lhs, rhs.k(), rhs.pairs());
        product(kernel, out.as_mut_ptr(), n, &a, m, rhs, false);
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
fn product(
    kernel: Kernel,
    dst: *mut f32,
    dst_rs: usize,
    a: &[u16],
    m: usize,
    rhs: &Panels,
    accumulate: bool,
) {
    let dst_addr = dst as usize;
    let row_blocks = m.div_ceil(ROWS_PER_TASK);
    (0..rhs.panels() * row_blocks)
        .into_par_iter()
        .for_each(|task| {
            let (panel, block) = (task / row_blocks, task % row_blocks);
            let rows = block * ROWS_PER_TASK..(m.min((block + 1) * ROWS_PER_TASK));
            let t = PanelTask {
                dst: (dst_addr as *mut f32, dst_rs),
                a,
                rows,
                rhs,
                panel,
                accumulate,
            };
            // SAFETY: `matmul` checked that the CPU has the instructions (AMX is chosen only where
            // available) and that `dst` holds the m x n result; each task writes the tile of its own rows
            // and panel's columns, disjoint from the others'; `a` holds whole blocks of rows (pack_lhs).
            unsafe {
                match kernel {
                    Kernel::Dot => avx512::panel_rows(t),
                    Kernel::Amx => amx::panel_rows(t),
                }
            }
        });
}

/// One parallel task of a product: rows `rows` of the product's columns in panel `panel` of `rhs`.
#[cfg(target_arch = "x86_64")]
struct PanelTask<'a> {
    /// The product's element (0, 0) and its rows' stride.
    dst: (*mut f32, usize),
    /// The packed left operand, rows of `2 * rhs.pairs()` (`pack_lhs`).
    a: &'a [u16],
    rows: std::ops::Range<usize>,
    rhs: &'a Panels,
    panel: usize,
    /// Add to the old outputs instead of replacing them.
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
impl PanelTask<'_> {
    /// The panel's valid columns in its two 16-lane halves.
    fn masks(&self) -> (u16, u16) {
        let cols = (self.rhs.n() - self.panel * NR).min(NR);
        (
            avx512::lane_mask(cols),
            avx512::lane_mask(cols.saturating_sub(16)),
        )
    }

    /// Where row `r` of the product meets the panel's first column.
    ///
    /// # Safety
    /// `r` is a row of the product (inside the buffer `dst` points into).
    unsafe fn out(&self, r: usize) -> *mut f32 {
        // SAFETY: inside the product's buffer (caller).
        unsafe { self.dst.0.add(r * self.dst.1 + self.panel * NR) }
    }
}

/// The first `k` columns of the left operand in bf16, in rows of `2 * pairs` (the depth padded with zeros
/// to the panels' pairs), and for the AMX kernel zero rows after the last up to a whole block of
/// [`amx::BLOCK_ROWS`]; nothing is zero-filled twice. The caller has checked that the rows fit `lhs.data`
/// and that `2 * pairs >= k`.
#[cfg(target_arch = "x86_64")]
fn pack_lhs(kernel: Kernel, lhs: Rows, k: usize, pairs: usize) -> Vec<u16> {
    let width = 2 * pairs;
    let rows = match kernel {
        Kernel::Amx => lhs.m.next_multiple_of(amx::BLOCK_ROWS),
        Kernel::Dot => lhs.m,
    };
    let write = |i: usize, row: &mut [MaybeUninit<u16>]| {
        let padding = match i < lhs.m {
            true => {
                let src = &lhs.data[i * lhs.rs..i * lhs.rs + k];
                // SAFETY: only `matmul` packs, after checking that the CPU has the instructions;
                // the row holds `width >= k` values.
                unsafe { avx512::to_bf16(src, row.as_mut_ptr().cast()) };
                &mut row[k..]
            }
            false => row,
        };
        padding.fill(MaybeUninit::new(0));
    };
    // SAFETY: every row of `width` values is written: a row of `lhs` its first k by `to_bf16` and the
    // rest with zeros, a padding row all with zeros.
    unsafe { written_in_parallel(rows * width, width, write) }
}
