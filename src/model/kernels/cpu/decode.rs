//! Generation's frozen products on the CPU: prompts' and decoding's rows times a GGUF weight multiplied in the
//! weight's quantized form, with no dequantized copy of the weight (activations rounded to 8 bits, as
//! llama.cpp does): Q4_1, Q5_0, Q8_0, and the Q4_K and Q6_K that candle multiplies by its tile kernels by
//! [`super::qdot`], every other GGUF type by candle's kernels.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

use super::qdot;
use crate::model::quant::{FrozenLinear, FrozenWeight};

/// `linear(x)` through a quantized product when it serves (a GGUF weight, a CPU tensor outside any
/// autograd graph); None otherwise. Prompts take it too: at a question set's prefill (10 rows of 128
/// tokens) it is 1.45x faster than dequantizing the weight and a dense f32 product (demo model; 1.6x on
/// Qwen2-0.5B Q4_K_M, bench/results/cpu-decode-intel-2026-12-05.txt), and it rounds as candle's `QMatMul`.
pub fn product(linear: &FrozenLinear, x: &Tensor) -> Result<Option<Tensor>> {
    let FrozenWeight::Ggml(q) = &linear.weight else {
        return Ok(None);
    };
    if !x.device().is_cpu() || x.track_op() {
        return Ok(None);
    }
    if let Some(mut ys) = products(&[linear], x)? {
        return Ok(ys.pop());
    }
    // A type `qdot` does not serve (Q4_K, Q6_K ...): candle's own quantized product.
    let (out, inp) = q.shape().dims2()?;
    let x2 = x.reshape((x.elem_count() / inp.max(1), inp))?;
    let y = QMatMul::from_arc(q.clone())?.forward(&x2)?;
    attached(linear, x, y, out).map(Some)
}

/// [`product`] of one input by several linears in one parallel loop ([`qdot::matmul`]: a block's
/// q, k and v; its gate and up), the same bits as one [`product`] each; None when that does not serve them
/// all (another weight type or device, weights of different types), and each is then multiplied alone.
pub fn products(linears: &[&FrozenLinear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
    let weights: Option<Vec<_>> = (linears.iter())
        .map(|l| match &l.weight {
            FrozenWeight::Ggml(q) => Some(q.clone()),
            _ => None,
        })
        .collect();
    let Some(weights) = weights else {
        return Ok(None);
    };
    if !x.device().is_cpu() || x.track_op() || candle_only() || weights.is_empty() {
        return Ok(None);
    }
    let inp = weights[0].shape().dims2()?.1;
    let x2 = x.reshape((x.elem_count() / inp.max(1), inp))?;
    let Some(ys) = qdot::matmul(&x2, &weights)? else {
        return Ok(None);
    };
    (linears.iter().zip(ys))
        .map(|(l, y)| attached(l, x, y, l.out_features()))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Each row's greedy id (the first largest output) of `linear(x)` for `x` `[rows, 1, in]` or `[rows, in]`,
/// found without every output in full ([`qdot::greedy`]: a Q8_0 vocabulary head without bias); None when
/// that does not serve, and the outputs are then computed.
pub fn greedy(linear: &FrozenLinear, x: &Tensor) -> Result<Option<Vec<u32>>> {
    let FrozenWeight::Ggml(q) = &linear.weight else {
        return Ok(None);
    };
    if !x.device().is_cpu() || x.track_op() || candle_only() || linear.bias.is_some() {
        return Ok(None);
    }
    let inp = q.shape().dims2()?.1;
    let rows = x.elem_count() / inp.max(1);
    if x.dims().first() != Some(&rows) {
        return Ok(None);
    }
    qdot::greedy(&x.reshape((rows, inp))?, q)
}

/// Whether generation's products by `linear` on the CPU stay off candle's barrier pool, whose one call at a
/// time would queue the threads of a batch split between them (`generate::DecoderLm`): a weight
/// [`qdot`] serves at two rows or more (a split's groups have at least two), or one that is not GGUF
/// (candle's dense products run on rayon, which nests). Other GGUF types (Q5_K, Q2_K, Q3_K, K-quants of
/// widths candle does not tile, Q4_K on a CPU with AMX) go through candle's quantized kernels, on that pool,
/// at every product. (candle's
/// elementwise ops take that pool too for a long prompt's rows, a few times a prompt: the groups then queue
/// there briefly, none waiting on another's progress.)
pub fn off_candles_pool(linear: &FrozenLinear) -> bool {
    match &linear.weight {
        FrozenWeight::Ggml(q) => qdot::serves(q),
        _ => true,
    }
}

/// `y` `[rows, out]` shaped as `x` with `out` last, connected to `x` and with the bias added.
fn attached(linear: &FrozenLinear, x: &Tensor, y: Tensor, out: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    linear.attach(x, y.reshape(dims)?, None)
}

#[cfg(test)]
thread_local! {
    /// Tests: candle's `QMatMul` for every GGUF weight multiplied on this thread (the kernels' reference).
    static CANDLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn candle_only() -> bool {
    #[cfg(test)]
    return CANDLE_ONLY.get();
    #[cfg(not(test))]
    false
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::CANDLE_ONLY;
    use crate::model::Quant;
    use crate::model::generate::{CausalLm, GenerateOptions, Sampling, generate, open_model};
    use crate::model::text::chat::{ChatTemplate, Message};
    use crate::model::text::tokenizer::Tokenizer;

    /// The demo model (Q4_1 projections, Q8_0 head) answers chat questions, as a padded batch, with the
    /// same tokens through the quantized products and the head's greedy choice as through candle's
    /// `QMatMul` and the argmax of its logits, and a prompt's logits are the same to the bit.
    #[test]
    fn the_demo_models_greedy_answers_are_candles_token_for_token() {
        let Some(path) = crate::model::test_support::demo_model_path() else {
            eprintln!("skipped: the demo model is not available");
            return;
        };
        let tok = Tokenizer::load(&path).unwrap();
        let chat = ChatTemplate::from_tokenizer(&tok).unwrap();
        let prompts: Vec<Vec<u32>> = ["What is 12 * 7?", "Name three colours of the rainbow."]
            .iter()
            .map(|q| {
                let text = chat.render(&[Message::user(*q)], true).unwrap();
                tok.encode(&text, false).unwrap()
            })
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 40,
            sampling: Sampling::Greedy,
            stop_ids: tok.stop_ids().to_vec(),
            pad_id: tok.pad_id(),
        };
        let mut model = open_model(&path, Quant::None, None, &Device::Cpu).unwrap();
        // One prompt's forward pass (every product a quantized one, as in the batch's prefill below).
        let ids = Tensor::new(prompts[0].as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .unwrap();
        let mut logits = |candle_only: bool| -> Vec<u32> {
            CANDLE_ONLY.set(candle_only);
            let l = model.forward(&ids, 0, None).and_then(|l| l.flatten_all());
            CANDLE_ONLY.set(false);
            let l = l.and_then(|l| l.to_vec1::<f32>()).unwrap();
            l.iter().map(|v| v.to_bits()).collect()
        };
        let (ours_logits, candle_logits) = (logits(false), logits(true));
        assert!(
            ours_logits == candle_logits,
            "the logits differ in their bits"
        );
        let ours = generate(&mut model, &prompts, &opts, &mut |_| {})
            .unwrap()
            .0;
        CANDLE_ONLY.set(true);
        let candle = generate(&mut model, &prompts, &opts, &mut |_| {})
            .unwrap()
            .0;
        CANDLE_ONLY.set(false);
        assert!(ours.iter().all(|g| g.ids.len() > 2), "{ours:?}");
        assert_eq!(ours, candle);
    }
}
