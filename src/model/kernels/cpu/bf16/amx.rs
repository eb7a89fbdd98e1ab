//! The AMX kernel: tile products (`tdpbf16ps`, 16 x 16 f32 sums of 32-deep bf16 rows each) on Intel CPUs
//! with AMX-BF16: 16 times `vdpbf16ps`'s multiply-adds per cycle on paper, and on an Intel Xeon the
//! training step's frozen products about 4.5 times faster in practice. The tile state and its
//! configuration are `tiles`'.

use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::avx512::store_row;
use super::{NR, PAIR_BLOCK, PanelTask};
use crate::model::kernels::cpu::tiles::{self, TileConfig};

/// Rows of one tile (and of the left operand per tile load).
const TILE_ROWS: usize = 16;
/// Rows of one block: two row tiles, which with the panel's two column tiles make four sums.
pub(super) const BLOCK_ROWS: usize = 2 * TILE_ROWS;
/// Bytes of one tile row: 16 f32 sums, 32 bf16 values or 16 bf16 pairs.
const ROW_BYTES: usize = 64;

/// Whether this CPU has AMX-TILE and AMX-BF16 and the kernel lets this process use the tiles.
pub(super) fn available() -> bool {
    tiles::available()
}

/// All eight tiles 16 rows of 64 bytes.
fn full_config() -> TileConfig {
    TileConfig::new([(TILE_ROWS as u8, ROW_BYTES as u8); 8])
}

/// The task's rows of its panel's columns, in blocks of [`BLOCK_ROWS`]; `a`'s rows are whole
/// [`PAIR_BLOCK`]s deep and padded with zero rows to whole blocks (`pack_lhs`).
///
/// # Safety
/// [`available`] is true and the CPU has AVX-512F; the task's rows and panel columns of `dst` are valid
/// for reads and writes, and no other thread touches them meanwhile; `a` holds every row of `rows` rounded
/// up to whole blocks.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_rows(t: PanelTask) {
    let width = 2 * t.rhs.pairs();
    let chunks = t.rhs.pairs() / PAIR_BLOCK;
    let blocks = (t.rows.end - t.rows.start).div_ceil(BLOCK_ROWS);
    assert!(
        t.rhs.pairs().is_multiple_of(PAIR_BLOCK)
            && (t.rows.start + blocks * BLOCK_ROWS) * width <= t.a.len()
    );
    let masks = t.masks();
    let config = full_config();
    if chunks == 0 {
        // An empty depth: every sum is zero.
        for r in t.rows.clone() {
            // SAFETY: row r is the task's; the masked lanes are the panel's valid columns.
            unsafe {
                store_row(
                    t.out(r),
                    (_mm512_setzero_ps(), _mm512_setzero_ps()),
                    masks,
                    t.accumulate,
                )
            };
        }
        return;
    }
    let mut sums = MaybeUninit::<[f32; BLOCK_ROWS * NR]>::uninit();
    // SAFETY: the CPU has AMX and this process may use it (caller).
    let _tiles = unsafe { config.load() };
    for block in 0..blocks {
        let first = t.rows.start + block * BLOCK_ROWS;
        // SAFETY: the block's rows of `a` and every pair of the panel are in bounds (asserted above), and
        // `sums` holds the block's sums; the tiles configured above stay configured, as no compiled code
        // touches tile state. The four tile stores write every element of `sums`.
        let sums = unsafe {
            block_sums(
                t.a.as_ptr().add(first * width),
                width,
                t.rhs.panel(t.panel).as_ptr(),
                chunks,
                sums.as_mut_ptr().cast(),
            );
            sums.assume_init_ref()
        };
        let valid = (t.rows.end - first).min(BLOCK_ROWS);
        for (r, row) in sums.chunks_exact(NR).take(valid).enumerate() {
            // SAFETY: row `first + r` is the task's; the masked lanes are the panel's valid columns.
            unsafe {
                let sums = (
                    _mm512_loadu_ps(row.as_ptr()),
                    _mm512_loadu_ps(row.as_ptr().add(16)),
                );
                store_row(t.out(first + r), sums, masks, t.accumulate)
            }
        }
    }
}

/// The four tiles of one block's sums (`chunks > 0`), `[BLOCK_ROWS, NR]` row-major at `sums`: tmm0..3 the sums of
/// rows 0-15 / 16-31 by columns 0-15 / 16-31, tmm4/5 the two row tiles of `a`, tmm6/7 the panel's two
/// column tiles, per 32-deep chunk.
///
/// # Safety
/// The tiles are configured by [`TileConfig::full`]; `a` holds [`BLOCK_ROWS`] rows `width` values apart
/// of `chunks` chunks; `b` holds `chunks` chunks of [`PAIR_BLOCK`] pair runs of `2 * NR` values; `sums`
/// is valid for writes of `BLOCK_ROWS * NR` values.
#[inline]
unsafe fn block_sums(a: *const u16, width: usize, b: *const u16, chunks: usize, sums: *mut f32) {
    assert!(chunks > 0, "an empty depth would run the loop past its end");
    let a_stride = width * 2;
    let b_stride = NR * 2 * 2;
    let s_stride = NR * 4;
    // SAFETY: every tile load reads 16 rows of 64 bytes inside the operands (caller) and every store
    // writes 16 rows of 64 bytes inside `sums`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {ast}*1]",
            "tileloadd tmm5, [{a1} + {ast}*1]",
            "tileloadd tmm6, [{b} + {bs}*1]",
            "tileloadd tmm7, [{b} + {bs}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {a1}, 64",
            "add {b}, {bstep}",
            "dec {n}",
            "jnz 2b",
            "tilestored [{s} + {ss}*1], tmm0",
            "tilestored [{s} + {ss}*1 + 64], tmm1",
            "tilestored [{s1} + {ss}*1], tmm2",
            "tilestored [{s1} + {ss}*1 + 64], tmm3",
            a = inout(reg) a => _,
            a1 = inout(reg) a.byte_add(TILE_ROWS * a_stride) => _,
            b = inout(reg) b => _,
            n = inout(reg) chunks => _,
            ast = in(reg) a_stride,
            bs = in(reg) b_stride,
            bstep = in(reg) PAIR_BLOCK * b_stride,
            s = in(reg) sums,
            s1 = in(reg) sums.add(TILE_ROWS * NR),
            ss = in(reg) s_stride,
            options(nostack),
        );
    }
}
