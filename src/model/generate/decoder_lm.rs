//! qlab's own decoder (frozen quantized base, LoRA applied unmerged or merged) behind [`CausalLm`], with its
//! KV cache; left-padded rows get positions counted from their first real token, as transformers does. On the
//! CPU a batch's rows decode in groups, one per thread.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::{CausalLm, Next};
use crate::model::decoder::{Decoder, KvCache, Positions};
use crate::model::device::alone;

pub struct DecoderLm {
    decoder: Decoder,
    /// One cache per group of rows, the first serving a batch that is not split.
    caches: Vec<KvCache>,
    /// The current generation's rows in groups, each decoded on a thread of its own when there are
    /// several (see [`groups`]); set at its prompt.
    groups: Vec<Range<usize>>,
    /// Whether the decoder's rows may decode apart (`Decoder::rows_decode_apart`).
    apart: bool,
}

impl DecoderLm {
    pub fn new(decoder: Decoder) -> Self {
        DecoderLm {
            caches: vec![KvCache::new(decoder.blocks.len())],
            apart: decoder.rows_decode_apart(),
            decoder,
            groups: Vec::new(),
        }
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
            // The threads of the rayon pool the generation runs on.
            let threads = if self.apart {
                rayon::current_num_threads()
            } else {
                1
            };
            self.groups = groups(ids.dim(0)?, threads);
            let layers = self.decoder.blocks.len();
            self.caches
                .resize_with(self.groups.len().max(1), || KvCache::new(layers));
            self.caches.iter_mut().for_each(KvCache::clear);
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

impl DecoderLm {
    /// `step` for each group of rows with the group's cache, the groups on threads of their own when the
    /// batch is split (each group's parallel loops then run on its thread alone): the results in the
    /// groups' order.
    fn in_groups<T: Send>(
        &mut self,
        (ids, offset, attend): (&Tensor, usize, Option<&Tensor>),
        step: impl Fn(&Decoder, Part, &mut KvCache) -> candle_core::Result<T> + Sync,
    ) -> candle_core::Result<Vec<T>> {
        let pos = self.positions(ids, offset, attend)?;
        let decoder = &self.decoder;
        if self.groups.len() <= 1 {
            return Ok(vec![step(
                decoder,
                (ids, &pos, attend),
                &mut self.caches[0],
            )?]);
        }
        let parts = (self.groups.iter())
            .map(|rows| {
                let rows_of = |t: &Tensor| t.narrow(0, rows.start, rows.len());
                let pos = match &pos {
                    Positions::From(p) => Positions::From(*p),
                    Positions::PerRow(t) => Positions::PerRow(rows_of(t)?),
                };
                Ok((rows_of(ids)?, pos, attend.map(rows_of).transpose()?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut results: Vec<Option<candle_core::Result<T>>> = parts.iter().map(|_| None).collect();
        let step = &step;
        rayon::scope(|s| {
            for ((part, cache), out) in parts.iter().zip(&mut self.caches).zip(&mut results) {
                s.spawn(move |_| {
                    let part = (&part.0, &part.1, part.2.as_ref());
                    *out = Some(alone(|| step(decoder, part, cache)));
                });
            }
        });
        (results.into_iter())
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(candle_core::Error::Msg(
                        "a group of rows was not run".into(),
                    ))
                })
            })
            .collect()
    }
}

/// A group's new tokens, their positions and its key mask.
type Part<'a> = (&'a Tensor, &'a Positions, Option<&'a Tensor>);

/// Rows each thread of a split batch takes at least.
const LEAST_ROWS: usize = 2;

/// A batch of `batch` rows in consecutive groups of near-equal size: one per thread when `threads` threads
/// can take [`LEAST_ROWS`] rows each, else one. Every thread then reads the whole model, in step with the
/// others (the same layer at about the same time, so that a weight one thread brought in serves the
/// others from the shared cache), and does its rows' work between the products itself: one product after
/// another instead of all threads meeting at every product, norm and attention of the step. Demo model on
/// 2 threads: batch 10 decodes 28% faster, batch 4 19% (bench/results/cpu-amd-2026-12-06.txt section 8).
fn groups(batch: usize, threads: usize) -> Vec<Range<usize>> {
    let n = match threads > 1 && batch >= threads * LEAST_ROWS {
        true => threads,
        false => 1,
    };
    (0..n).map(|g| batch * g / n..batch * (g + 1) / n).collect()
}

impl CausalLm for DecoderLm {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let logits = self.in_groups((ids, offset, attend), |d, (ids, pos, attend), cache| {
            (d.forward_last(ids, pos, attend, Some(cache))).map_err(candle_core::Error::wrap)
        })?;
        Tensor::cat(&logits, 0)
    }

    fn forward_greedy(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Next> {
        let nexts = self.in_groups((ids, offset, attend), |d, (ids, pos, attend), cache| {
            (d.forward_next(ids, pos, attend, Some(cache), true)).map_err(candle_core::Error::wrap)
        })?;
        if nexts.len() == 1 {
            return Ok(nexts.into_iter().next().expect("one group"));
        }
        // A group whose head gave its logits (a row's logits too close to tell) has its ids picked from them.
        let mut all = Vec::new();
        for next in nexts {
            match next {
                Next::Greedy(ids) => all.extend(ids),
                Next::Logits(logits) => {
                    let logits = logits.to_dtype(candle_core::DType::F32)?.contiguous()?;
                    match super::greedy::ids(&logits)? {
                        Some(ids) => all.extend(ids),
                        None => candle_core::bail!(
                            "greedy ids of a group's logits on {:?}",
                            logits.device()
                        ),
                    }
                }
            }
        }
        Ok(Next::Greedy(all))
    }

    fn clear_cache(&mut self) {
        self.caches.iter_mut().for_each(KvCache::clear);
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
        let grown = lm.caches[0].capacity();
        assert!(grown >= longer.len() + n, "capacity {grown}");
        for (row, alone) in [longer, prompt].into_iter().enumerate() {
            let (want, _) = generate(&mut lm, &[alone], &greedy(n), &mut |_| {}).unwrap();
            assert_eq!(batch[row].ids.len(), n);
            assert_eq!(batch[row].ids, want[0].ids, "row {row}");
            // The last token is never fed back: the cache holds the row's prompt and the rest.
            assert_eq!(lm.caches[0].len(), [longer_len, prompt_len][row] + n - 1);
        }
    }

    #[test]
    fn a_batch_splits_into_one_group_per_thread_of_at_least_two_rows() {
        assert_eq!(groups(10, 2), vec![0..5, 5..10]);
        assert_eq!(groups(4, 2), vec![0..2, 2..4]);
        assert_eq!(groups(7, 3), vec![0..2, 2..4, 4..7]);
        assert_eq!(groups(3, 2), vec![0..3], "a thread would get one row");
        assert_eq!(groups(10, 1), vec![0..10]);
        assert_eq!(groups(10, 8), vec![0..10], "threads that would get one row");
    }

    /// Prompts of different lengths (a left-padded batch), as a question set's.
    fn question_set(prompt: &[u32], rows: usize) -> Vec<Vec<u32>> {
        (0..rows)
            .map(|r| {
                prompt
                    .iter()
                    .cycle()
                    .skip(r)
                    .take(prompt.len() + 2 * r)
                    .copied()
                    .collect()
            })
            .collect()
    }

    /// `lm` answering `prompts` whole (on a pool of one thread), then split between two threads (a pool of
    /// two): the same tokens, and the prompts' last logits (what sampling draws from) within `tolerance` of
    /// each other (0: the same bits; dense products by candle round a row by how many rows they multiply at
    /// once).
    fn split_answers_as_whole(
        lm: &mut DecoderLm,
        prompts: &[Vec<u32>],
        (new, tolerance): (usize, f32),
        what: &str,
    ) {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        // Left-padded as generation pads them.
        use super::super::padded;
        let ids: Vec<u32> = (prompts.iter())
            .flat_map(|p| padded(p, &[0], p.len(), width))
            .collect();
        let attend: Vec<u8> = (prompts.iter())
            .flat_map(|p| padded(&[1], &[0], p.len(), width))
            .collect();
        let ids = Tensor::from_vec(ids, (prompts.len(), width), &Device::Cpu).unwrap();
        let attend = Tensor::from_vec(attend, (prompts.len(), width), &Device::Cpu).unwrap();
        let run = |lm: &mut DecoderLm, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (answers, _) = generate(lm, prompts, &greedy(new), &mut |_| {}).unwrap();
                assert_eq!(lm.groups.len(), threads, "{what}: groups");
                let logits = lm.forward(&ids, 0, Some(&attend)).unwrap();
                (
                    answers,
                    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
        };
        let (whole, whole_logits) = run(lm, 1);
        let (split, split_logits) = run(lm, 2);
        assert!(
            whole.iter().all(|a| a.ids.len() == new),
            "{what}: {whole:?}"
        );
        assert_eq!(split, whole, "{what}: answers");
        let most = (split_logits.iter().zip(&whole_logits))
            .map(|(a, b)| match tolerance {
                0.0 => (a.to_bits() != b.to_bits()) as u8 as f32,
                _ => (a - b).abs(),
            })
            .fold(0f32, f32::max);
        assert!(most <= tolerance, "{what}: logits differ by {most}");
    }

    /// The llama fixture with its PEFT adapter, unmerged.
    fn llama_with_adapter(dir: &Path) -> DecoderLm {
        let mut decoder = load_model(dir, Quant::None, &Device::Cpu).unwrap();
        decoder.load_peft(&dir.join("adapter")).unwrap();
        DecoderLm::new(decoder)
    }

    #[test]
    fn a_batch_split_between_threads_answers_as_it_does_whole() {
        let dir = fixture("llama");
        let (prompt, _) = hf_greedy(&dir);
        let mut lm = llama_with_adapter(&dir);
        split_answers_as_whole(
            &mut lm,
            &question_set(&prompt, 5),
            (40, 1e-4),
            "llama fixture",
        );
        // The demo model: GGUF weights multiplied in quantized form, a Q8_0 head's greedy choice.
        let Some(path) = crate::model::test_support::demo_model_path() else {
            eprintln!("skipped the demo model: not available");
            return;
        };
        let tok = crate::model::text::tokenizer::Tokenizer::load(&path).unwrap();
        let prompt = tok
            .encode("Question: what is 12 * 7? Answer:", false)
            .unwrap();
        let mut lm = super::super::open_model(&path, Quant::None, None, &Device::Cpu).unwrap();
        split_answers_as_whole(&mut lm, &question_set(&prompt, 4), (24, 0.0), "demo model");
    }

    /// A K-quant model (Q4_K projections, a Q8_0 table as its head: the products candle multiplies by its
    /// tile kernels on an AVX-512 VNNI CPU, which qdot's copies of them run in each group) splits where they
    /// serve, with the same bits.
    #[test]
    fn a_k_quant_batch_split_between_threads_answers_as_it_does_whole() {
        use crate::model::load::builder::build_decoder;
        use crate::model::load::presets::{RandomWeights, preset};
        use candle_core::quantized::GgmlDType;
        let (mut cfg, _) = preset("smollm2-135m").unwrap();
        (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) = (256, 512, 96);
        (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) = (4, 2, 64);
        cfg.num_layers = 2;
        cfg.layer_windows = vec![None; 2];
        let src = RandomWeights {
            config: cfg.clone(),
            seed: 5,
            embed_q8_0: true,
        };
        let decoder = build_decoder(cfg, &src, Quant::Ggml(GgmlDType::Q4K), &Device::Cpu).unwrap();
        if !decoder.rows_decode_apart() {
            eprintln!(
                "skipped: candle's tile kernels do not serve on this CPU, so the batch stays whole"
            );
            return;
        }
        let mut lm = DecoderLm::new(decoder);
        let prompt = [3, 14, 15, 92, 65, 35, 8, 9, 79];
        split_answers_as_whole(
            &mut lm,
            &question_set(&prompt, 4),
            (16, 0.0),
            "K-quant model",
        );
    }

    #[test]
    fn an_adapter_generates_the_same_unmerged_and_merged() {
        let dir = fixture("llama");
        let (prompt, base_ids) = hf_greedy(&dir);
        let mut lm = llama_with_adapter(&dir);
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
