//! Generation's frozen products on the CPU: a few rows (decoding) times a GGUF weight multiplied in the
//! weight's quantized form, with no dequantized copy of the weight (activations rounded to 8 bits, as
//! llama.cpp does): Q4_1, Q5_0 and Q8_0 by [`super::qdot`], every other GGUF type by candle's kernels.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

use super::qdot;
use crate::model::quant::{FrozenLinear, FrozenWeight};

/// Up to this many rows the quantized product is used (beyond it, dequantizing once and a dense product is
/// faster).
const QUANTIZED_PRODUCT_MAX_ROWS: usize = 32;

/// `linear(x)` through a quantized product when it serves (a GGUF weight, a CPU tensor outside any
/// autograd graph, few rows); None otherwise.
pub fn product(linear: &FrozenLinear, x: &Tensor) -> Result<Option<Tensor>> {
    let FrozenWeight::Ggml(q) = &linear.weight else {
        return Ok(None);
    };
    let (out, inp) = q.shape().dims2()?;
    let rows = x.elem_count() / inp.max(1);
    if rows > QUANTIZED_PRODUCT_MAX_ROWS || !x.device().is_cpu() || x.track_op() {
        return Ok(None);
    }
    let x2 = x.reshape((rows, inp))?;
    let y = match qdot::matmul(&x2, q)? {
        Some(y) => y,
        None => QMatMul::from_arc(q.clone())?.forward(&x2)?,
    };
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    linear.attach(x, y.reshape(dims)?, None).map(Some)
}
