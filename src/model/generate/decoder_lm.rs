//! qlab's own decoder (frozen quantized base, LoRA applied unmerged or merged) behind [`CausalLm`], with its
//! KV cache; left-padded rows get positions counted from their first real token, as transformers does.

use candle_core::{Device, Tensor};

use super::{CausalLm, Next};
use crate::model::decoder::{Decoder, KvCache, Positions};

pub struct DecoderLm {
    decoder: Decoder,
    cache: KvCache,
}

impl DecoderLm {
    pub fn new(decoder: Decoder) -> Self {
        let cache = KvCache::new(decoder.blocks.len());
        DecoderLm { decoder, cache }
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// For swapping adapters between stages (the cache is dropped on the next prompt anyway).
    pub fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    pub fn into_decoder(self) -> Decoder {
        self.decoder
    }

    /// The merged fast path: fold the LoRA adapters into dense weights (faster decoding, more memory;
    /// adapters can no longer be swapped).
    pub fn merge_adapter(&mut self) -> candle_core::Result<()> {
        self.decoder.merge_lora()
    }

    /// The new tokens' positions (a step at offset 0 starts afresh: the cache is cleared).
    fn positions(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Positions> {
        if offset == 0 {
            self.cache.clear();
        }
        match attend {
            Some(mask) => positions(mask, offset, ids.dim(1)?),
            None => Ok(Positions::From(offset)),
        }
    }
}

/// Position of each new token = number of real tokens before it in its row.
fn positions(attend: &Tensor, offset: usize, seq: usize) -> candle_core::Result<Positions> {
    let rows = attend.to_vec2::<u8>()?;
    let mut flat = Vec::with_capacity(rows.len() * seq);
    for row in &rows {
        let before: u32 = row[..offset].iter().map(|&a| a as u32).sum();
        let mut seen = before;
        for &a in &row[offset..offset + seq] {
            flat.push(seen);
            seen += a as u32;
        }
    }
    Ok(Positions::PerRow(Tensor::from_vec(
        flat,
        (rows.len(), seq),
        attend.device(),
    )?))
}

impl CausalLm for DecoderLm {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let pos = self.positions(ids, offset, attend)?;
        self.decoder
            .forward_last(ids, &pos, attend, Some(&mut self.cache))
            .map_err(candle_core::Error::wrap)
    }

    fn forward_greedy(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Next> {
        let pos = self.positions(ids, offset, attend)?;
        (self.decoder)
            .forward_next(ids, &pos, attend, Some(&mut self.cache), true)
            .map_err(candle_core::Error::wrap)
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
    }

    fn runs_in_pool(&self) -> bool {
        true
    }

    fn device(&self) -> &Device {
        &self.decoder.device
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::model::generate::{GenerateOptions, Sampling, generate};
    use crate::model::{Quant, load_model};

    const FAMILIES: [&str; 5] = ["llama", "mistral", "qwen2", "gemma", "gemma2"];

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    /// The fixture's greedy prompt (row `greedy_prompt_row` from `greedy_prompt_from`) and HF's continuation.
    fn hf_greedy(dir: &Path) -> (Vec<u32>, Vec<u32>) {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let ids = tensors["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap();
        let row = meta["greedy_prompt_row"].as_u64().unwrap() as usize;
        let from = meta["greedy_prompt_from"].as_u64().unwrap() as usize;
        let want = meta["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        (ids[row][from..].to_vec(), want)
    }

    fn greedy(n: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: n,
            sampling: Sampling::Greedy,
            stop_ids: vec![],
            pad_id: 0,
        }
    }

    #[test]
    fn generation_reproduces_hf_greedy_for_every_family_alone_and_left_padded() {
        for fam in FAMILIES {
            let dir = fixture(fam);
            let (prompt, want) = hf_greedy(&dir);
            let mut lm = DecoderLm::new(load_model(&dir, Quant::None, &Device::Cpu).unwrap());
            let (alone, _) = generate(
                &mut lm,
                std::slice::from_ref(&prompt),
                &greedy(want.len()),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(alone[0].ids, want, "{fam} alone");
            let longer: Vec<u32> = [&prompt[..], &prompt[..]].concat();
            let (batch, _) = generate(
                &mut lm,
                &[longer.clone(), prompt.clone()],
                &greedy(want.len()),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(
                batch[1].ids, want,
                "{fam}: left-padded row differs from the prompt alone"
            );
            let (longer_alone, _) =
                generate(&mut lm, &[longer], &greedy(want.len()), &mut |_| {}).unwrap();
            assert_eq!(
                batch[0].ids, longer_alone[0].ids,
                "{fam}: unpadded row of a batch"
            );
        }
    }

    /// Answers long enough to outgrow the KV cache's first buffers, in a left-padded batch and then alone:
    /// the same tokens, and the cache starts afresh for each generation.
    #[test]
    fn a_padded_batch_that_outgrows_the_cache_answers_as_each_row_alone() {
        let dir = fixture("llama");
        let (prompt, _) = hf_greedy(&dir);
        let mut lm = DecoderLm::new(load_model(&dir, Quant::None, &Device::Cpu).unwrap());
        let longer: Vec<u32> = [&prompt[..], &prompt[..]].concat();
        let n = 80;
        let (longer_len, prompt_len) = (longer.len(), prompt.len());
        let (batch, _) = generate(
            &mut lm,
            &[longer.clone(), prompt.clone()],
            &greedy(n),
            &mut |_| {},
        )
        .unwrap();
        let grown = lm.cache.capacity();
        assert!(grown >= longer.len() + n, "capacity {grown}");
        for (row, alone) in [longer, prompt].into_iter().enumerate() {
            let (want, _) = generate(&mut lm, &[alone], &greedy(n), &mut |_| {}).unwrap();
            assert_eq!(batch[row].ids.len(), n);
            assert_eq!(batch[row].ids, want[0].ids, "row {row}");
            // The last token is never fed back: the cache holds the row's prompt and the rest.
            assert_eq!(lm.cache.len(), [longer_len, prompt_len][row] + n - 1);
        }
    }

    #[test]
    fn an_adapter_generates_the_same_unmerged_and_merged() {
        let dir = fixture("llama");
        let (prompt, base_ids) = hf_greedy(&dir);
        let mut decoder = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
        decoder.load_peft(&dir.join("adapter")).unwrap();
        let mut lm = DecoderLm::new(decoder);
        let (unmerged, _) = generate(
            &mut lm,
            std::slice::from_ref(&prompt),
            &greedy(12),
            &mut |_| {},
        )
        .unwrap();
        lm.merge_adapter().unwrap();
        let (merged, _) = generate(&mut lm, &[prompt], &greedy(12), &mut |_| {}).unwrap();
        assert_eq!(unmerged[0].ids, merged[0].ids);
        assert_ne!(
            unmerged[0].ids[..base_ids.len()],
            base_ids[..],
            "the adapter changes the continuation"
        );
    }

    #[test]
    fn padded_rows_count_positions_from_their_first_real_token() {
        let attend = Tensor::new(&[[0u8, 0, 1, 1, 1], [1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let Positions::PerRow(p) = positions(&attend, 3, 2).unwrap() else {
            panic!("per-row positions expected")
        };
        assert_eq!(p.to_vec2::<u32>().unwrap(), vec![vec![1, 2], vec![3, 4]]);
        let Positions::PerRow(p) = positions(&attend.narrow(1, 0, 3).unwrap(), 0, 3).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            p.to_vec2::<u32>().unwrap(),
            vec![vec![0, 0, 0], vec![0, 1, 2]]
        );
    }
}
