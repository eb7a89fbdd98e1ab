//! Greedy choice for a whole batch at once: each row's largest logit, as candle's `argmax` (which
//! `LogitsProcessor` uses for greedy sampling) picks it (on the CPU the first of equal ones), without a tensor
//! (or, on a GPU, a launch and a copy) per row.

use candle_core::{D, DType, Result, Storage, Tensor};

/// The greedy id of each row of `logits` `[batch, vocab]`: on a GPU candle's `argmax` of all the rows' f32 values
/// in one launch and one copy back (ties broken as its CUDA reduction breaks them, as `LogitsProcessor` row by row
/// did; its bf16 argmax took 110 us a row on an H100 against 66 for the f32 one and 10 for the cast:
/// bench/results/h100-greedy-batch-2026-12-08.txt); on the CPU straight from an f32 buffer; None for CPU logits
/// of another dtype or layout.
pub(super) fn ids(logits: &Tensor) -> Result<Option<Vec<u32>>> {
    if !logits.device().is_cpu() {
        // A no-op for generate()'s logits, cast already.
        let values = logits.to_dtype(DType::F32)?;
        return Ok(Some(values.argmax(D::Minus1)?.to_vec1::<u32>()?));
    }
    if logits.dtype() != DType::F32 || !logits.is_contiguous() {
        return Ok(None);
    }
    let (_, vocab) = logits.dims2()?;
    let (storage, layout) = logits.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let all = &cpu.as_slice::<f32>()?[start..end];
    Ok(Some(
        all.chunks_exact(vocab.max(1)).map(first_max).collect(),
    ))
}

/// The index candle's `argmax` gives: starting from element 0, the first element greater than every one
/// before it, last (so a NaN first element stays, and later NaNs are passed over). Found in two
/// vectorisable passes: the largest value that is not NaN, then its first position.
fn first_max(row: &[f32]) -> u32 {
    const LANES: usize = 16;
    let Some(&first) = row.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [first; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(first, |m, &v| if v > m { v } else { m });
    row.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Ties, NaNs (first and later), both zeros and an infinity pick what candle's `argmax` picks.
    #[test]
    fn greedy_ids_are_candles_argmax() {
        let rows: Vec<Vec<f32>> = vec![
            (0..100).map(|i| ((i * 37) % 23) as f32).collect(),
            [vec![f32::NAN], vec![5.0; 40]].concat(),
            [vec![1.0, f32::NAN, 3.0, f32::NAN], vec![3.0; 30]].concat(),
            [vec![-0.0, 0.0, -1.0], vec![-2.0; 20]].concat(),
            [vec![-5.0; 33], vec![f32::INFINITY], vec![f32::INFINITY; 3]].concat(),
            vec![-3.0; 17],
        ];
        for row in rows {
            let t = Tensor::from_vec(row.clone(), (1, row.len()), &Device::Cpu).unwrap();
            let want = t.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
            assert_eq!(ids(&t).unwrap(), Some(want), "{row:?}");
        }
        let two = Tensor::new(&[[1f32, 4.0, 2.0], [7.0, 0.0, 7.0]], &Device::Cpu).unwrap();
        assert_eq!(ids(&two).unwrap(), Some(vec![1, 0]));
        assert_eq!(ids(&two.t().unwrap()).unwrap(), None, "not contiguous");
    }
}
