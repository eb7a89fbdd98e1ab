//! Answering's LoRA term on the CPU, `y + (s (x A^T)) B^T` for a few rows, with candle's bits: the two
//! small products follow gemm's own order of roundings (`gemm_order`) where gemm's path for the shape is
//! known, and are gemm's calls with candle's arguments otherwise; on the calling thread, without the
//! intermediate tensors. gemm's per-call cost on these thin products exceeded the whole base model's at batch 1
//! (bench/results/cpu-decode-intel-2026-12-05.txt, sections 10g and 10h).

mod gemm_order;
#[cfg(test)]
mod tests;

use candle_core::{Result, Tensor};

use super::{Mat, matmul, storage_slice};
use gemm_order::{Dims, Operands, Path};

const NAME: &str = "lora-delta";

/// `y + (scale (x A^T)) B^T` for `x` `[.., in]`, `A` `[r, in]`, `B` `[out, r]` and `y` shaped as `x` with
/// `out` last: what `AdaptedLinear::forward` computes with candle's matmul, affine and add (CPU f32, no
/// dropout), to the bit.
pub fn add_delta(y: &Tensor, x: &Tensor, (a, b): (&Tensor, &Tensor), scale: f64) -> Result<Tensor> {
    let (r, inp) = a.dims2()?;
    let (out, rb) = b.dims2()?;
    let n = x.elem_count() / inp.max(1);
    if rb != r || x.dims().last() != Some(&inp) || y.elem_count() != n * out {
        candle_core::bail!(
            "{NAME}: x {:?}, A {:?}, B {:?}, y {:?}",
            x.dims(),
            a.dims(),
            b.dims(),
            y.dims()
        )
    }
    let (x, a, b, y0) = (
        x.contiguous()?,
        a.contiguous()?,
        b.contiguous()?,
        y.contiguous()?,
    );
    let (xs, xl) = x.storage_and_layout();
    let (as_, al) = a.storage_and_layout();
    let (bs, bl) = b.storage_and_layout();
    let (ys, yl) = y0.storage_and_layout();
    let operands = Operands {
        x: storage_slice(&xs, xl, NAME)?,
        a: storage_slice(&as_, al, NAME)?,
        b: storage_slice(&bs, bl, NAME)?,
        y: storage_slice(&ys, yl, NAME)?,
    };
    let dims = Dims {
        rows: n,
        inp,
        rank: r,
        out,
    };
    let delta = delta(dims, &operands, scale as f32);
    Tensor::from_vec(delta, y.shape(), y.device())
}

/// The paths the two products take for these shapes on this CPU (the tests check which one ran).
fn paths(d: Dims) -> (Path, Path) {
    match gemm_order::lanes() {
        Some(_) => gemm_order::plan(d),
        None => (Path::Gemm, Path::Gemm),
    }
}

/// `y + (scale (x A^T)) B^T` as a new row-major vector.
fn delta(d: Dims, o: &Operands, scale: f32) -> Vec<f32> {
    let (first, second) = paths(d);
    let lanes = gemm_order::lanes().unwrap_or(0);
    // The rank-wide intermediate, then the scale as candle's affine applies it (`v * mul + add`).
    let mut u = vec![0f32; d.rows * d.rank];
    match first {
        Path::Gemm => matmul(
            &mut u,
            (d.rows, d.rank, d.inp),
            Mat::rows(o.x, d.inp),
            Mat::rows_t(o.a, d.inp),
            1.0,
            false,
        ),
        _ => gemm_order::first_product(lanes, d, o, &mut u),
    }
    u.iter_mut().for_each(|v| *v = *v * scale + 0.0);
    let mut dst = vec![0f32; d.rows * d.out];
    match second {
        Path::Gemm => {
            matmul(
                &mut dst,
                (d.rows, d.out, d.rank),
                Mat::rows(&u, d.rank),
                Mat::rows_t(o.b, d.rank),
                1.0,
                false,
            );
            (dst.iter_mut().zip(o.y)).for_each(|(v, y)| *v += y);
        }
        path => gemm_order::second_product(lanes, path, d, o, &u, &mut dst),
    }
    dst
}
