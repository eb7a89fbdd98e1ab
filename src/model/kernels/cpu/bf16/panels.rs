//! The right operand of a bf16 product packed for the kernel: panels of [`NR`] columns, each holding, pair
//! of rows by pair of rows, the two bf16 values of every column side by side (the operand `vdpbf16ps`
//! multiplies with a broadcast pair of the left operand's row).

use rayon::prelude::*;

use super::{NR, PAIR_BLOCK, bf16_bits};

/// A right operand `[k, n]` in bf16, packed (columns past `n` and rows past `k`, up to whole blocks of
/// [`PAIR_BLOCK`] pairs, are zeros).
#[derive(Debug)]
pub struct Panels {
    data: Vec<u16>,
    k: usize,
    n: usize,
}

impl Panels {
    /// `W^T` for a row-major `W` `[rows, cols]`: the operand of `x W^T` (`k = cols`, `n = rows`).
    pub fn transposed(w: &[f32], rows: usize, cols: usize) -> Self {
        assert!(
            w.len() >= rows * cols,
            "weight [{rows}, {cols}] from {} values",
            w.len()
        );
        Self::pack(cols, rows, |p, panel| {
            let first = p * NR;
            #[cfg(target_arch = "x86_64")]
            if super::supported() {
                let here = &w[first * cols..rows.min(first + NR) * cols];
                // SAFETY: the CPU has the kernel's instructions (checked just above).
                unsafe { super::avx512::transposed_panel(here, cols, panel) };
                return;
            }
            fill(panel, (cols, rows), first, |kk, c| w[c * cols + kk]);
        })
    }

    /// `W` itself, row-major `[rows, cols]`: the operand of `g W` (`k = rows`, `n = cols`).
    pub fn plain(w: &[f32], rows: usize, cols: usize) -> Self {
        assert!(
            w.len() >= rows * cols,
            "weight [{rows}, {cols}] from {} values",
            w.len()
        );
        Self::pack(rows, cols, |p, panel| {
            let first = p * NR;
            #[cfg(target_arch = "x86_64")]
            if super::supported() && first + NR <= cols {
                // SAFETY: the CPU has the kernel's instructions (checked just above), and the panel's
                // columns lie inside every row.
                unsafe { super::avx512::plain_panel(&w[..rows * cols], cols, first, panel) };
                return;
            }
            fill(panel, (rows, cols), first, |kk, c| w[kk * cols + c]);
        })
    }

    /// The `[k, n]` operand, each panel (zeros, `p`) filled by `fill_panel` in parallel.
    pub(super) fn pack(k: usize, n: usize, fill_panel: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        let pairs = pairs_of(k);
        let mut data = vec![0u16; n.div_ceil(NR) * pairs * 2 * NR];
        if pairs > 0 {
            data.par_chunks_mut(pairs * 2 * NR)
                .enumerate()
                .for_each(|(p, panel)| fill_panel(p, panel));
        }
        Self { data, k, n }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Pairs of rows packed (`k` halved, rounded up to whole blocks of [`PAIR_BLOCK`]).
    pub(super) fn pairs(&self) -> usize {
        pairs_of(self.k)
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Panel `p`: `pairs` runs of `2 * NR` values.
    pub(super) fn panel(&self, p: usize) -> &[u16] {
        let len = self.pairs() * 2 * NR;
        &self.data[p * len..(p + 1) * len]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Pairs packed for a depth of `k`.
fn pairs_of(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(PAIR_BLOCK)
}

/// Fills `panel` (zeros), the one whose first column is `first`, of the `[k, n]` operand whose element
/// `(row, col)` is `at(row, col)`, value by value: edge panels, and CPUs without the kernel's instructions
/// (where only the tests pack).
pub(super) fn fill(
    panel: &mut [u16],
    (k, n): (usize, usize),
    first: usize,
    at: impl Fn(usize, usize) -> f32,
) {
    for (q, pair) in panel
        .chunks_exact_mut(2 * NR)
        .enumerate()
        .take(k.div_ceil(2))
    {
        for (j, c) in (first..n.min(first + NR)).enumerate() {
            pair[2 * j] = bf16_bits(at(2 * q, c));
            if 2 * q + 1 < k {
                pair[2 * j + 1] = bf16_bits(at(2 * q + 1, c));
            }
        }
    }
}
