//! The last input rounded for each activation type, kept for the next product with the same input: a
//! block's q, k and v projections multiply the same rows, and so do its gate and up projections, where they
//! are not multiplied in one loop (`matmul` of several weights: weights of different types, or one at a time). An input
//! is recognised by its bits, so a kept rounding is only ever used for exactly the values it was made from.
//! Kept per thread (a forward pass runs its products on one thread).

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

/// Inputs of more values than this (a long prompt's rows) are rounded each time and not kept: keeping one
/// would hold a copy of it (and its buffer's capacity, reused for every later input) for the thread's life.
const KEEP_MAX: usize = 1 << 20;

/// Activation types kept apart: Q8_1 (Q4_1 weights), Q8_0 (Q5_0), Q8_0 with offsets (Q8_0), Q8_K.
pub(super) const SLOTS: usize = 4;

/// One input and its rounding.
struct Kept {
    input: Vec<f32>,
    k: usize,
    rounded: Arc<dyn Any + Send + Sync>,
}

thread_local! {
    static KEPT: RefCell<[Option<Kept>; SLOTS]> = const { RefCell::new([None, None, None, None]) };
}

/// `x` `[rows, k]` rounded by `round` (given the values, rows and width) for activation type `slot`: the
/// kept rounding when `x` holds the same values as the last input rounded in that slot on this thread,
/// otherwise rounded now (and kept).
pub(super) fn rounded<A: Any + Send + Sync>(
    slot: usize,
    x: &Tensor,
    k: usize,
    round: impl FnOnce(&[f32], usize) -> A,
) -> Result<Arc<A>> {
    if x.dtype() == DType::F32 && x.is_contiguous() {
        let (storage, layout) = x.storage_and_layout();
        let xs = super::super::storage_slice(&storage, layout, "quantized product")?;
        return Ok(lookup(slot, xs, k, round));
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(lookup(slot, &xs, k, round))
}

fn lookup<A: Any + Send + Sync>(
    slot: usize,
    xs: &[f32],
    k: usize,
    round: impl FnOnce(&[f32], usize) -> A,
) -> Arc<A> {
    if xs.len() > KEEP_MAX {
        return Arc::new(round(xs, xs.len() / k.max(1)));
    }
    KEPT.with_borrow_mut(|kept| {
        if let Some(hit) = kept[slot]
            .as_ref()
            .filter(|kept| kept.k == k && same_bits(&kept.input, xs))
            .and_then(|kept| kept.rounded.clone().downcast::<A>().ok())
        {
            return hit;
        }
        let rounded = Arc::new(round(xs, xs.len() / k.max(1)));
        let mut input = kept[slot].take().map(|k| k.input).unwrap_or_default();
        input.clear();
        input.extend_from_slice(xs);
        kept[slot] = Some(Kept {
            input,
            k,
            rounded: rounded.clone(),
        });
        rounded
    })
}

/// Whether `a` and `b` hold the same bits (NaN payloads and the sign of zero included).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    const CHUNK: usize = 64;
    a.len() == b.len()
        && a.chunks(CHUNK).zip(b.chunks(CHUNK)).all(|(a, b)| {
            let diff = a
                .iter()
                .zip(b)
                .fold(0u32, |d, (x, y)| d | (x.to_bits() ^ y.to_bits()));
            diff == 0
        })
}
