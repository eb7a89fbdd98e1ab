//! Products with the GGUF weights that candle 0.11 multiplies by its repacked x86 tile kernels on AVX-512
//! VNNI CPUs (Q4_K at any row count, Q6_K at two rows or more, Q8_0 of widths that are multiples of 256;
//! 16-column multiples in each case): the same packing and the same kernels, copied, so each output has
//! candle's bits. What differs is where they run. Here a product is one of qlab's loops, so it runs inline
//! on a thread that owns a group of a split batch (`generate::DecoderLm`). candle's barrier pool takes one
//! product at a time, so its kernels would queue such groups. The inputs are rounded to Q8_K in AVX-512
//! (`q8k`), to the bytes of candle's scalar loop.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod q8k;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

use self::pack::{TILE_N, Tiles};
use self::q8k::{QK_K, Rounded};
use super::{Out, packed, reuse};
use crate::model::device::for_each_index;

/// The rounding slot of Q8_K inputs in [`reuse`].
const Q8K_SLOT: usize = 3;

/// The weight types candle's tile kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q4K,
    Q6K,
    Q8_0,
}

impl Kind {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn pack(self, data: &[u8], n: usize, k: usize) -> Tiles {
        match self {
            Self::Q4K => pack::q4k(data, n, k),
            Self::Q6K => pack::q6k(data, n, k),
            Self::Q8_0 => pack::q8_0(data, n, k),
        }
    }
}

/// Whether candle's quantized products take their AVX-512 VNNI tile kernels on this CPU (candle reads two
/// variables that force its 256-bit kernels instead), and this module's kernels run here.
fn candle_takes_avx512_tiles() -> bool {
    static TAKES: OnceLock<bool> = OnceLock::new();
    *TAKES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let forced = ["MISTRALRS_FORCE_AVX2", "MISTRALRS_FORCE_AVXVNNI"]
                .iter()
                .any(|v| std::env::var(v).as_deref() == Ok("1"));
            !forced && has!("avx512f") && has!("avx512vnni") && has!("avx512bw") && has!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether this CPU has AMX-INT8, where candle multiplies Q4_K inputs of 32 rows or more by its AMX kernel
/// (other roundings): those stay candle's.
fn candle_may_take_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::model::kernels::cpu::tiles::has_int8_tiles();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kind of `w` `[n, k]` when candle multiplies `m` input rows by it with a tile kernel on this CPU.
fn taken(w: &QTensor, m: usize) -> Option<Kind> {
    let kind = Kind::of(w.dtype())?;
    let (n, k) = w.shape().dims2().ok()?;
    let fits = k > 0 && n.is_multiple_of(TILE_N) && k.is_multiple_of(QK_K);
    let rows = match kind {
        Kind::Q4K => m < 32 || !candle_may_take_amx(),
        // candle keeps one row's Q6_K product on the GGUF blocks.
        Kind::Q6K => m > 1,
        Kind::Q8_0 => true,
    };
    (fits && rows && candle_takes_avx512_tiles()).then_some(kind)
}

/// Whether this module multiplies inputs of two rows or more by `w`, on this CPU, as a split batch's groups
/// have: candle's pool then never serves them. Not for Q4_K where candle may take its AMX kernel (at prompts).
pub(super) fn serves(w: &QTensor) -> bool {
    taken(w, 2).is_some() && !(w.dtype() == GgmlDType::Q4K && candle_may_take_amx())
}

/// `x[m, k] @ W^T` for each weight of `ws` (all of one type and width) in one parallel loop, each the bits of
/// candle's `QMatMul`; None when candle would not multiply them all by its tile kernels here.
pub(super) fn matmul(x: &Tensor, ws: &[Arc<QTensor>]) -> Result<Option<Vec<Tensor>>> {
    let Ok((m, k)) = x.dims2() else {
        return Ok(None);
    };
    let Some(kind) = ws.first().and_then(|w| taken(w, m)) else {
        return Ok(None);
    };
    for w in ws {
        if taken(w, m) != Some(kind) || w.shape().dims2()?.1 != k {
            return Ok(None);
        }
    }
    if !x.device().is_cpu() {
        return Ok(None);
    }
    let acts = reuse::rounded(Q8K_SLOT, x, k, |xs, rows| q8k::round_rows(xs, rows, k))?;
    let tiles = (ws.iter())
        .map(|w| packed::cached(w, |data, n, k| kind.pack(data, n, k)))
        .collect::<Result<Vec<_>>>()?;
    let ns: Vec<usize> = (ws.iter())
        .map(|w| w.shape().dims2().map(|(n, _)| n))
        .collect::<Result<_>>()?;
    let mut outs: Vec<Vec<f32>> = ns.iter().map(|n| Vec::with_capacity(m * n)).collect();
    let dsts: Vec<Out> = (outs.iter_mut().zip(&ns))
        .map(|(out, &n)| Out {
            ptr: out.as_mut_ptr(),
            n,
        })
        .collect();
    products(&tiles, &ns, k / QK_K, &acts, m, &dsts);
    for (out, n) in outs.iter_mut().zip(&ns) {
        // SAFETY: `products` wrote every row of every group of 16 columns, and n is a multiple of 16.
        unsafe { out.set_len(m * n) };
    }
    (outs.into_iter().zip(&ns))
        .map(|(out, &n)| Tensor::from_vec(out, (m, n), &Device::Cpu))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Every weight's column groups in one loop, each task writing its group's columns of every row.
fn products(tiles: &[Arc<Tiles>], ns: &[usize], kb: usize, acts: &Rounded, m: usize, dsts: &[Out]) {
    let groups: Vec<usize> = ns.iter().map(|n| n / TILE_N).collect();
    let total = groups.iter().sum();
    for_each_index(total, |mut g| {
        let mut j = 0;
        while g >= groups[j] {
            g -= groups[j];
            j += 1;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `taken` found AVX-512 F/BW/VNNI and F16C; weight j has group g, `acts` holds kb blocks
        // for each of m rows, and this task alone writes group g's columns.
        unsafe {
            avx512::group(&tiles[j], g, kb, acts, m, dsts[j])
        };
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (tiles, kb, acts, m, dsts);
            unreachable!("`taken` finds no tile kernel off x86_64 (weight {j}, group {g})");
        }
    });
}
