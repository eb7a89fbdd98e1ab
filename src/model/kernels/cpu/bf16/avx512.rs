//! The AVX512_BF16 kernel: register tiles of up to [`MR`] rows by one panel's [`NR`] columns, over the
//! whole depth `k` (the panel stays in L2; its pairs stream through two loads per step).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

use super::{MR, NR, Panels};

/// Rows `rows` of the product's columns in `panel`, into `dst` (rows `dst_rs` apart, the product's column
/// 0 at `dst`); `a` is the packed left operand, rows of `2 * rhs.pairs()`.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `dst` is valid for reads and writes of those rows and columns,
/// and no other thread touches them meanwhile; `a` holds every row in `rows`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn panel_rows(
    (dst, dst_rs): (*mut f32, usize),
    a: &[u16],
    rows: Range<usize>,
    rhs: &Panels,
    panel: usize,
    accumulate: bool,
) {
    let width = 2 * rhs.pairs();
    assert!(rows.end * width <= a.len());
    let b = rhs.panel(panel).as_ptr();
    let cols = (rhs.n() - panel * NR).min(NR);
    let masks = (lane_mask(cols), lane_mask(cols.saturating_sub(16)));
    let mut i = rows.start;
    while i < rows.end {
        let r = (rows.end - i).min(MR);
        // SAFETY: rows i..i + r lie in `rows` (so in `a`, asserted above, and in the caller's `dst`).
        let t = unsafe {
            Tile {
                a: a.as_ptr().add(i * width),
                width,
                b,
                pairs: rhs.pairs(),
                dst: dst.add(i * dst_rs + panel * NR),
                dst_rs,
                masks,
                accumulate,
            }
        };
        // SAFETY: as for this function; `t` covers r rows.
        unsafe {
            match r {
                12 => t.run::<12>(),
                11 => t.run::<11>(),
                10 => t.run::<10>(),
                9 => t.run::<9>(),
                8 => t.run::<8>(),
                7 => t.run::<7>(),
                6 => t.run::<6>(),
                5 => t.run::<5>(),
                4 => t.run::<4>(),
                3 => t.run::<3>(),
                2 => t.run::<2>(),
                _ => t.run::<1>(),
            }
        }
        i += r;
    }
}

/// The first `lanes` of 16 f32 lanes.
fn lane_mask(lanes: usize) -> u16 {
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
                let row = self.dst.add(r * self.dst_rs);
                let (mut lo, mut hi) = (acc[0], acc[1]);
                if self.accumulate {
                    lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(self.masks.0, row));
                    hi = _mm512_add_ps(
                        hi,
                        _mm512_maskz_loadu_ps(self.masks.1, row.wrapping_add(16)),
                    );
                }
                _mm512_mask_storeu_ps(row, self.masks.0, lo);
                _mm512_mask_storeu_ps(row.wrapping_add(16), self.masks.1, hi);
            }
        }
    }
}
