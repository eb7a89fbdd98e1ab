//! The AVX512_BF16 kernel: register tiles of up to [`MR`] rows by one panel's [`NR`] columns, over the
//! whole depth `k` (the panel stays in L2; its pairs stream through two loads per step).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{MR, NR, PanelTask, bf16_bits};

/// The task's rows of its panel's columns, in register tiles of up to [`MR`] rows; the tile reads the
/// depth's pairs of `a`'s rows (the rest are zeros).
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; the task's rows and panel columns of `dst` are valid for reads
/// and writes, and no other thread touches them meanwhile; `a` holds every row in `rows`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn panel_rows(t: PanelTask) {
    let width = 2 * t.rhs.pairs();
    assert!(t.rows.end * width <= t.a.len());
    let b = t.rhs.panel(t.panel).as_ptr();
    let masks = t.masks();
    let mut i = t.rows.start;
    while i < t.rows.end {
        let r = (t.rows.end - i).min(MR);
        // SAFETY: rows i..i + r lie in `rows` (so in `a`, asserted above, and in the caller's `dst`).
        let tile = unsafe {
            Tile {
                a: t.a.as_ptr().add(i * width),
                width,
                b,
                pairs: t.rhs.k().div_ceil(2),
                dst: t.out(i),
                dst_rs: t.dst.1,
                masks,
                accumulate: t.accumulate,
            }
        };
        // SAFETY: as for this function; `tile` covers r rows.
        unsafe {
            match r {
                12 => tile.run::<12>(),
                11 => tile.run::<11>(),
                10 => tile.run::<10>(),
                9 => tile.run::<9>(),
                8 => tile.run::<8>(),
                7 => tile.run::<7>(),
                6 => tile.run::<6>(),
                5 => tile.run::<5>(),
                4 => tile.run::<4>(),
                3 => tile.run::<3>(),
                2 => tile.run::<2>(),
                _ => tile.run::<1>(),
            }
        }
        i += r;
    }
}

/// The first `lanes` of 16 f32 lanes.
pub(super) fn lane_mask(lanes: usize) -> u16 {
    match lanes {
        0 => 0,
        l if l >= 16 => u16::MAX,
        l => (1u16 << l) - 1,
    }
}

/// One register tile's operands.
struct Tile {
    a: *const u16,
    width: usize,
    b: *const u16,
    pairs: usize,
    dst: *mut f32,
    dst_rs: usize,
    /// Valid columns of the two 16-lane halves.
    masks: (u16, u16),
    accumulate: bool,
}

impl Tile {
    /// `R` rows: 2R accumulators, a broadcast pair of each row times the panel's two registers per pair.
    ///
    /// # Safety
    /// As for [`panel_rows`], for the tile's `R` rows.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn run<const R: usize>(&self) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..self.pairs {
            // SAFETY: pair p of the panel (2 * NR values) and of each row are in bounds (caller); the
            // pointer casts reinterpret bf16 bits as the intrinsics' vector types.
            unsafe {
                let bp = self.b.add(p * 2 * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(NR).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = self
                        .a
                        .add(r * self.width + 2 * p)
                        .cast::<i32>()
                        .read_unaligned();
                    let a2: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a2, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a2, b1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the masked lanes are the tile's valid columns of row r (caller).
            unsafe {
                store_row(
                    self.dst.add(r * self.dst_rs),
                    (acc[0], acc[1]),
                    self.masks,
                    self.accumulate,
                )
            };
        }
    }
}

/// Writes one row's 32 sums (two halves of 16) to the columns of `out` that `masks` keep, added to what is
/// there when `accumulate`.
///
/// # Safety
/// The CPU has AVX-512F; the masked columns of `out` are valid for reads and writes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_row(
    out: *mut f32,
    (mut lo, mut hi): (__m512, __m512),
    masks: (u16, u16),
    accumulate: bool,
) {
    let out_hi = out.wrapping_add(16);
    // SAFETY: only the masked lanes are read and written (caller).
    unsafe {
        if accumulate {
            lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(masks.0, out));
            hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(masks.1, out_hi));
        }
        _mm512_mask_storeu_ps(out, masks.0, lo);
        _mm512_mask_storeu_ps(out_hi, masks.1, hi);
    }
}

/// `dst[i] = bf16(src[i])` (round to nearest even) for every value of `src`, 32 values per step.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `dst` is valid for writes of `src.len()` values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16(src: &[f32], dst: *mut u16) {
    let n = src.len();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: values i..i + 32 are inside `src` and, as the caller vouches, `dst`.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.add(i).cast(), v);
        }
        i += 32;
    }
    for (j, s) in src.iter().enumerate().skip(i) {
        // SAFETY: inside `dst` (caller).
        unsafe { dst.add(j).write(bf16_bits(*s)) };
    }
}

/// Packs one panel of `W^T` from its rows `rows` (up to [`NR`] rows of `cols`, row-major): each row in
/// bf16, its pairs (one u32 each) written down the panel's pair runs.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn transposed_panel(rows: &[f32], cols: usize, panel: &mut [u16]) {
    let mut row16 = vec![0u16; 2 * cols.div_ceil(2)];
    for (j, row) in rows.chunks_exact(cols).enumerate().take(NR) {
        // SAFETY: this function's own contract; `row16` holds the row's `cols` values.
        unsafe { to_bf16(row, row16.as_mut_ptr()) };
        for (q, pair) in row16.chunks_exact(2).enumerate() {
            panel[q * 2 * NR + 2 * j] = pair[0];
            panel[q * 2 * NR + 2 * j + 1] = pair[1];
        }
    }
}

/// Packs the panel of `W` (row-major, rows of `cols`) whose [`NR`] columns start at `first`: two rows'
/// 32 values each in bf16, interleaved value by value, per pair run (an odd last row paired with zeros).
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW and AVX512_BF16; `first + NR <= cols`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn plain_panel(w: &[f32], cols: usize, first: usize, panel: &mut [u16]) {
    /// Lanes of `a` (0-31) and `b` (32-63) interleaved: the first 16 of each, then the last 16.
    const LOW: [u16; 32] = interleave(0);
    const HIGH: [u16; 32] = interleave(16);
    const fn interleave(from: u16) -> [u16; 32] {
        let mut idx = [0u16; 32];
        let mut j = 0;
        while j < 16 {
            idx[2 * j] = from + j as u16;
            idx[2 * j + 1] = 32 + from + j as u16;
            j += 1;
        }
        idx
    }
    let rows = w.len() / cols;
    assert!(first + NR <= cols && panel.len() >= rows.div_ceil(2) * 2 * NR);
    // SAFETY: the index tables are 32 u16 each; every row read holds columns first..first + NR (asserted
    // above) and every pair run written is inside `panel` (asserted above).
    unsafe {
        let (low, high) = (
            _mm512_loadu_si512(LOW.as_ptr().cast()),
            _mm512_loadu_si512(HIGH.as_ptr().cast()),
        );
        for q in 0..rows.div_ceil(2) {
            let (a, b) = (
                row32(w, cols, first, 2 * q),
                row32(w, cols, first, 2 * q + 1),
            );
            let out = panel.as_mut_ptr().add(q * 2 * NR);
            _mm512_storeu_si512(out.cast(), _mm512_permutex2var_epi16(a, low, b));
            _mm512_storeu_si512(out.add(NR).cast(), _mm512_permutex2var_epi16(a, high, b));
        }
    }
}

/// Row `r`'s 32 values from column `first` in bf16, in order (zeros past the last row).
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; rows of `w` hold columns `first..first + 32`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn row32(w: &[f32], cols: usize, first: usize, r: usize) -> __m512i {
    if (r + 1) * cols > w.len() {
        return _mm512_setzero_si512();
    }
    // SAFETY: row r is inside `w` (checked above) and holds the 32 columns (caller).
    unsafe {
        let src = w.as_ptr().add(r * cols + first);
        std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(src.add(16)),
            _mm512_loadu_ps(src),
        ))
    }
}
