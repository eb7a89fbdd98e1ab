//! Text generation over any causal decoder with a KV cache: a batch of prompts at once (left padding with
//! a key mask), greedy or seeded sampling (temperature, top-p), stop on EOS / end-of-turn, a callback per token.

mod candle_quantized;
mod decoder_lm;
mod greedy;
mod open;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod toy;

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};

pub use crate::model::decoder::Next;
pub use candle_quantized::{CandleQuantizedLlama, CandleQuantizedQwen2};
pub use decoder_lm::DecoderLm;
pub use open::{OpenError, open_model};

/// What generation needs from a decoder.
pub trait CausalLm: Send {
    /// Feed `ids` (batch, seq; u32) at positions `offset..offset + seq`, after the `offset` positions already
    /// in the KV cache (`offset == 0` starts afresh). `attend` (batch, offset + seq; u8) is 1 for real tokens
    /// and 0 for left padding, which no query may attend to; `None` when nothing is padded.
    /// Returns the logits of the last position: (batch, vocab).
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor>;

    /// [`Self::forward`] when the next tokens are chosen greedily: an engine whose head finds each row's
    /// greedy id (its first largest logit) without every logit in full hands back the ids instead.
    fn forward_greedy(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Next> {
        self.forward(ids, offset, attend).map(Next::Logits)
    }

    /// Forget the KV cache's positions (qlab's decoder keeps its buffers for the next prompt of the same batch
    /// size).
    fn clear_cache(&mut self);

    /// Whether forward passes on the CPU should run on one of rayon's threads (qlab's kernels, whose
    /// parallel loops then start from inside the pool); other engines run on the calling thread.
    fn runs_in_pool(&self) -> bool {
        false
    }

    fn device(&self) -> &Device;
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax sampling at `temperature`, restricted to the top-`top_p` probability mass when given.
    Sample {
        temperature: f64,
        top_p: Option<f64>,
        seed: u64,
    },
}

/// Settings shared by every prompt of a batch (identical for base and fine-tuned answers).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Ids that end a sequence (not included in its output).
    pub stop_ids: Vec<u32>,
    /// Id fed at padding positions (masked out, so any valid id).
    pub pad_id: u32,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` were produced.
    Length,
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids, without the stop id.
    pub ids: Vec<u32>,
    pub finish: Finish,
}

/// Timing of a batch: prompt processing, then token-by-token decoding.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Decode steps run (each produced one token per unfinished row).
    pub decode_steps: usize,
}

impl GenerateStats {
    /// New tokens per second over prefill + decode, as a user waiting for the answer sees it.
    pub fn tokens_per_s(&self) -> f64 {
        self.new_tokens as f64 / (self.prefill_s + self.decode_s).max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt {0} is empty: a prompt needs at least one token")]
    EmptyPrompt(usize),
    #[error("no prompts given")]
    NoPrompts,
    #[error("model forward failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// What the streaming callback hears, as soon as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenEvent<'a> {
    /// Row `row` of the batch produced token `id`.
    Token { row: usize, id: u32 },
    /// Row `row` is complete; `ids` is its whole continuation.
    Done {
        row: usize,
        ids: &'a [u32],
        finish: Finish,
    },
}

/// Generate a continuation for each prompt; `on_event` sees each new (non-stop) token as it is chosen and
/// each row as soon as it ends.
pub fn generate(
    model: &mut dyn CausalLm,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_event: &mut dyn FnMut(GenEvent),
) -> Result<(Vec<Generation>, GenerateStats), GenerateError> {
    if prompts.is_empty() {
        return Err(GenerateError::NoPrompts);
    }
    if let Some(row) = prompts.iter().position(Vec::is_empty) {
        return Err(GenerateError::EmptyPrompt(row));
    }
    let device = model.device().clone();
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut attend: Vec<Vec<u8>> = prompts
        .iter()
        .map(|p| padded(&[1], &[0], p.len(), width))
        .collect();
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| padded(p, &[opts.pad_id], p.len(), width))
        .collect();
    let padding = prompts.iter().any(|p| p.len() < width);
    let mask = |attend: &[Vec<u8>]| -> candle_core::Result<Option<Tensor>> {
        if !padding {
            return Ok(None);
        }
        let flat: Vec<u8> = attend.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (batch, attend[0].len()), &device).map(Some)
    };
    model.clear_cache();
    let mut stats = GenerateStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let start = Instant::now();
    let greedy = opts.sampling == Sampling::Greedy;
    let mut next = forward_in_pool(
        model,
        (&Tensor::from_vec(ids, (batch, width), &device)?, 0),
        mask(&attend)?.as_ref(),
        greedy,
    )?;
    stats.prefill_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut samplers: Vec<LogitsProcessor> = (0..batch).map(|_| sampler(&opts.sampling)).collect();
    let mut out: Vec<Generation> = vec![
        Generation {
            ids: Vec::new(),
            finish: Finish::Length
        };
        batch
    ];
    let mut done = vec![false; batch];
    if opts.max_new_tokens == 0 {
        done.fill(true);
        (0..batch).for_each(|row| {
            on_event(GenEvent::Done {
                row,
                ids: &[],
                finish: Finish::Length,
            })
        });
    }
    let mut offset = width;
    loop {
        // Each row's id straight from the model or its logits when greedy, else the logits to sample from.
        let choice = match next {
            Next::Greedy(ids) => Next::Greedy(ids),
            Next::Logits(logits) => {
                let logits = logits.to_dtype(candle_core::DType::F32)?;
                match greedy.then(|| greedy::ids(&logits)).transpose()?.flatten() {
                    Some(ids) => Next::Greedy(ids),
                    // Sampled rows read their logits on the host: one copy of the batch, not one a row.
                    None => Next::Logits(logits.to_device(&Device::Cpu)?),
                }
            }
        };
        let mut chosen = vec![opts.pad_id; batch];
        for row in 0..batch {
            if done[row] {
                continue;
            }
            let id = match &choice {
                Next::Greedy(ids) => ids[row],
                Next::Logits(logits) => samplers[row].sample(&logits.get(row)?)?,
            };
            chosen[row] = id;
            if opts.stop_ids.contains(&id) {
                out[row].finish = Finish::Stop;
                done[row] = true;
            } else {
                out[row].ids.push(id);
                stats.new_tokens += 1;
                on_event(GenEvent::Token { row, id });
                done[row] = out[row].ids.len() >= opts.max_new_tokens;
            }
            if done[row] {
                on_event(GenEvent::Done {
                    row,
                    ids: &out[row].ids,
                    finish: out[row].finish,
                });
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        attend.iter_mut().for_each(|a| a.push(1));
        let step = Tensor::from_vec(chosen, (batch, 1), &device)?;
        next = forward_in_pool(model, (&step, offset), mask(&attend)?.as_ref(), greedy)?;
        offset += 1;
        stats.decode_steps += 1;
    }
    stats.decode_s = decode_start.elapsed().as_secs_f64();
    Ok((out, stats))
}

/// `model.forward`, on the CPU run on one of rayon's threads when the model asks for it (see
/// [`CausalLm::runs_in_pool`]): the products' parallel loops then start from
/// inside the pool (the calling thread takes part, the other threads steal) instead of each one waking the
/// pool from outside and sleeping until it is done, which costs more than a small product at batch 1.
fn forward_in_pool(
    model: &mut dyn CausalLm,
    (ids, offset): (&Tensor, usize),
    attend: Option<&Tensor>,
    greedy: bool,
) -> candle_core::Result<Next> {
    let in_pool = ids.device().is_cpu() && model.runs_in_pool();
    let mut forward = || match greedy {
        true => model.forward_greedy(ids, offset, attend),
        false => model.forward(ids, offset, attend).map(Next::Logits),
    };
    match in_pool {
        true => rayon::scope(|_| forward()),
        false => forward(),
    }
}

/// `values` left-padded with `pad` to `width` (`values` is repeated when it has one element).
fn padded<T: Copy>(values: &[T], pad: &[T], len: usize, width: usize) -> Vec<T> {
    let body = (0..len).map(|i| {
        if values.len() == 1 {
            values[0]
        } else {
            values[i]
        }
    });
    std::iter::repeat_n(pad[0], width - len)
        .chain(body)
        .collect()
}

fn sampler(sampling: &Sampling) -> LogitsProcessor {
    match *sampling {
        Sampling::Greedy => LogitsProcessor::from_sampling(0, CandleSampling::ArgMax),
        Sampling::Sample {
            temperature,
            top_p: Some(p),
            seed,
        } => LogitsProcessor::from_sampling(seed, CandleSampling::TopP { p, temperature }),
        Sampling::Sample {
            temperature,
            top_p: None,
            seed,
        } => LogitsProcessor::from_sampling(seed, CandleSampling::All { temperature }),
    }
}
