//! Helpers shared by the model engine's unit tests.

use candle_core::Tensor;

/// Largest absolute element-wise difference of two tensors of one shape (f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
