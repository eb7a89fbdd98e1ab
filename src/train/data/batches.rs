//! Deterministic per-epoch order of sequences and the padded tensors of one micro-batch.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::examples::Example;
use crate::train::TrainError;
use crate::train::model::Batch;

/// The order of `n` sequences in `epoch` (0-based): a shuffle seeded by `seed` and `epoch` only, so a
/// resumed run sees exactly the order the interrupted one saw.
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(epoch));
    order.shuffle(&mut rng);
    order
}

/// Micro-batches in one epoch (the last may be smaller).
pub fn micro_batches_per_epoch(sequences: usize, batch_size: usize) -> usize {
    sequences.div_ceil(batch_size.max(1))
}

/// Pad `examples` to the longest and build the ids, loss mask and attention mask.
pub fn make_batch(
    examples: &[&Example],
    pad_id: u32,
    device: &Device,
) -> Result<Batch, TrainError> {
    let width = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let rows = examples.len();
    let mut ids = vec![pad_id; rows * width];
    let mut loss = vec![0f32; rows * width];
    let mut attention = vec![0f32; rows * width];
    for (b, ex) in examples.iter().enumerate() {
        for (t, (&id, &trained)) in ex.ids.iter().zip(&ex.trained).enumerate() {
            ids[b * width + t] = id;
            attention[b * width + t] = 1.0;
            loss[b * width + t] = if t > 0 && trained { 1.0 } else { 0.0 };
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (rows, width), device)?,
        loss_mask: Tensor::from_vec(loss, (rows, width), device)?,
        attention_mask: Tensor::from_vec(attention, (rows, width), device)?,
        tokens: examples.iter().map(|e| e.ids.len()).sum(),
        rows: examples.iter().map(|e| e.row).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation_fixed_by_seed_and_epoch() {
        let a = epoch_order(50, 3407, 0);
        assert_eq!(a, epoch_order(50, 3407, 0));
        assert_ne!(a, epoch_order(50, 3407, 1));
        assert_ne!(a, epoch_order(50, 1, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn batch_pads_and_masks_prompt_padding_and_position_zero() {
        let a = Example {
            ids: vec![1, 2, 3],
            trained: vec![false, false, true],
            row: 4,
        };
        let b = Example {
            ids: vec![5, 6],
            trained: vec![true, true],
            row: 9,
        };
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![5, 6, 0]]
        );
        assert_eq!(
            batch.loss_mask.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]
        );
        assert_eq!((batch.tokens, batch.rows.clone()), (5, vec![4, 9]));
        assert_eq!(micro_batches_per_epoch(5, 2), 3);
    }
}
