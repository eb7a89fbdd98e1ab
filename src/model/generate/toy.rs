//! A toy decoder for tests: its next token is a known function of the attended history, and it keeps a
//! real per-row cache that must agree with `offset`, so a loop that forgets the cache or mis-counts fails.

use candle_core::{Device, Tensor};

use super::CausalLm;

pub(crate) const VOCAB: u32 = 16;

/// Next-token rule of the toy model: depends on every attended token and on nothing padded.
pub(crate) fn toy_next(history: &[u32]) -> u32 {
    let sum: u32 = history.iter().sum();
    (sum * 7 + history.len() as u32 + 1) % VOCAB
}

pub(crate) struct ToyLm {
    cache: Vec<Vec<(u32, bool)>>,
    device: Device,
}

impl ToyLm {
    pub(crate) fn new() -> Self {
        ToyLm {
            cache: Vec::new(),
            device: Device::Cpu,
        }
    }
}

impl CausalLm for ToyLm {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let ids = ids.to_vec2::<u32>()?;
        let (batch, seq) = (ids.len(), ids[0].len());
        if offset == 0 {
            self.cache = vec![Vec::new(); batch];
        }
        if self.cache.iter().any(|c| c.len() != offset) {
            candle_core::bail!("offset {offset} does not match the cache");
        }
        let attend = match attend {
            Some(a) => a.to_vec2::<u8>()?,
            None => vec![vec![1; offset + seq]; batch],
        };
        let mut logits = Vec::new();
        for (row, row_ids) in ids.iter().enumerate() {
            for (i, &id) in row_ids.iter().enumerate() {
                self.cache[row].push((id, attend[row][offset + i] == 1));
            }
            let history: Vec<u32> = self.cache[row]
                .iter()
                .filter(|(_, a)| *a)
                .map(|(t, _)| *t)
                .collect();
            let target = toy_next(&history) as f32;
            logits.extend((0..VOCAB).map(|v| -2.0 * (v as f32 - target).abs()));
        }
        Tensor::from_vec(logits, (batch, VOCAB as usize), &self.device)
    }
    fn clear_cache(&mut self) {
        self.cache.clear();
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
