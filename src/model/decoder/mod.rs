//! The decoder: one implementation for llama, mistral, qwen2, gemma and gemma2, with per-family switches.

mod kv_cache;
pub mod layers;
pub mod lora;

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Result, Tensor};

pub use self::kv_cache::KvCache;
use self::layers::{RmsNorm, apply_rope, apply_rope_no_grad, mask_rows, rope_tables, softcap};
use self::lora::{AdaptedLinear, DropoutSeed, LoraAdapter, LoraCall, SavedProducts};
use crate::model::config::{Activation, ModelConfig};
use crate::model::kernels::cpu::bf16::Precision;
use crate::model::kernels::cpu::bf16::linear::PackedWeight;
use crate::model::kernels::mask::AttentionMask;
use crate::model::kernels::{self, cpu};
use crate::model::quant::frozen::{FrozenLinear, FrozenWeight};
use crate::model::target::Target;

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub input_norm: RmsNorm,
    /// Gemma 2 only: norm of the attention output before the residual add.
    pub post_attn_norm: Option<RmsNorm>,
    pub pre_ff_norm: RmsNorm,
    /// Gemma 2 only: norm of the feed-forward output before the residual add.
    pub post_ff_norm: Option<RmsNorm>,
    pub q: AdaptedLinear,
    pub k: AdaptedLinear,
    pub v: AdaptedLinear,
    pub o: AdaptedLinear,
    pub gate: AdaptedLinear,
    pub up: AdaptedLinear,
    pub down: AdaptedLinear,
}

impl Block {
    /// Pre-norms only, every projection adapted, no biases: what the fused blocks (`cpu::block`,
    /// `kernels::fused_block`) compute.
    pub fn is_llama_style(&self) -> bool {
        self.post_attn_norm.is_none()
            && self.post_ff_norm.is_none()
            && Target::ALL.iter().all(|&t| {
                let l = self.linear(t);
                l.lora.is_some() && l.base.bias.is_none()
            })
    }

    pub fn linear(&self, t: Target) -> &AdaptedLinear {
        match t {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }

    pub fn linear_mut(&mut self, t: Target) -> &mut AdaptedLinear {
        match t {
            Target::Q => &mut self.q,
            Target::K => &mut self.k,
            Target::V => &mut self.v,
            Target::O => &mut self.o,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }
}

/// A block's input gradient and each adapter's `(target, dA, dB)` ([`Decoder::block_backward`]).
pub type BlockGrads = (Tensor, Vec<(Target, Tensor, Tensor)>);

/// Per-forward inputs shared by all blocks: rope tables and masks.
pub struct BlockContext {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Keys seen by full-attention layers and, when some layer slides, through the window.
    pub full_mask: AttentionMask,
    pub window_mask: Option<AttentionMask>,
    /// Set during training: seeds LoRA dropout.
    pub dropout: Option<DropoutSeed>,
    /// Whether LoRA tensors take part in autograd (false: inference and checkpointed first pass).
    pub grad: bool,
    /// Frozen products shared between the checkpointed first pass and the recomputation.
    pub saved: Option<SavedProducts>,
    /// Checkpointing's recomputation: a block's output is only the node its gradient is handed to, never
    /// read, so a fused GPU block skips its last frozen product (`BlockParts::output_unread`).
    pub output_unread: bool,
    /// Generation (decoding with a cache): GGUF weights may multiply in quantized form.
    pub generation: bool,
    /// The dtype of the CPU's products through the frozen weights (training; f32 otherwise).
    pub precision: Precision,
    /// Checkpointing on a GPU: where the first pass leaves each block's attention half for the
    /// recomputation (`BlockParts::halves`).
    pub halves: Option<kernels::AttentionHalves>,
}

/// Key of block `i`'s attention output among the saved products (beside the projections' `i << 8 | target`).
fn site_id_attention(i: usize) -> u64 {
    (i as u64) << 8 | 0xff
}

/// `call` with product `j` of `products` (when there are any) as its frozen product.
fn given<'a>(call: LoraCall<'a>, products: &'a Option<Vec<Tensor>>, j: usize) -> LoraCall<'a> {
    LoraCall {
        frozen: products.as_ref().and_then(|ys| ys.get(j)),
        ..call
    }
}

/// Positions of the new tokens: consecutive from a start, or given per row (left-padded batches).
#[derive(Debug, Clone)]
pub enum Positions {
    From(usize),
    /// `[b, t]` integer positions.
    PerRow(Tensor),
}

/// What a generation step hands back for choosing the next tokens.
pub enum Next {
    /// The last positions' logits `[b, vocab]`.
    Logits(Tensor),
    /// Each row's greedy id, where the head found them without the logits.
    Greedy(Vec<u32>),
}

/// A decoder with frozen (quantized) weights and optional LoRA adapters.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: ModelConfig,
    pub embed: FrozenWeight,
    pub blocks: Vec<Block>,
    pub final_norm: RmsNorm,
    pub head: FrozenLinear,
    pub device: Device,
    /// The head's weight packed for bf16 products, made by the first CPU training step that multiplies in
    /// bf16 (`train::step`) and kept: it is frozen, and packing it each step would cost a dequantization
    /// and a transient copy at the step's peak.
    pub bf16_head: OnceLock<Arc<PackedWeight>>,
}

impl Decoder {
    /// Token embeddings `[b, t, d]` (f32, constant), scaled for Gemma.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let d = self.config.hidden_size;
        let x = match &self.embed {
            // The table waits in host memory (load::builder::embedding_device): gathered there in parallel, on
            // a GPU straight into page-locked staging memory.
            FrozenWeight::Dense(w) if w.device().is_cpu() && !self.device.is_cpu() => {
                let ids = flat.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
                match crate::model::kernels::host_rows_to_device(w, &ids, &self.device)? {
                    Some(x) => x,
                    None => match crate::model::kernels::cpu::gather::rows(w, &ids)? {
                        Some(x) => x,
                        None => w.index_select(&flat.to_device(w.device())?, 0)?,
                    }
                    .to_device(&self.device)?,
                }
            }
            FrozenWeight::Dense(w) => w.index_select(&flat, 0)?,
            FrozenWeight::Ggml(q) => q
                .embedding(&flat.to_device(&q.device())?)?
                .to_device(&self.device)?,
            _ => {
                let rows = flat
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|i| self.embed.dequantize_rows(i as usize, 1, &self.device))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        let x = x
            .reshape((b, t, d))?
            .to_dtype(crate::model::device::compute_dtype(&self.device))?;
        if self.config.scale_embeddings {
            x * (d as f64).sqrt()
        } else {
            Ok(x)
        }
    }

    /// Builds rope tables and masks for new tokens `[b, t]` after `past` cached positions.
    pub fn context(
        &self,
        b: usize,
        t: usize,
        past: usize,
        positions: &Positions,
        key_mask: Option<&Tensor>,
    ) -> Result<BlockContext> {
        let pos: Vec<Vec<u32>> = match positions {
            Positions::From(s) => vec![(*s as u32..(*s + t) as u32).collect(); b],
            Positions::PerRow(p) => p.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?,
        };
        let (cos, sin) = rope_tables(&self.config, &pos, &self.device)?;
        let valid = match key_mask {
            Some(m) => mask_rows(m)?,
            None => vec![vec![true; past + t]; b],
        };
        if valid.len() != b || valid.iter().any(|r| r.len() != past + t) {
            candle_core::bail!(
                "key mask must be [batch, cached + new] = [{b}, {}]",
                past + t
            )
        }
        let dtype = crate::model::device::compute_dtype(&self.device);
        let full_mask = AttentionMask::new(valid, (past, t), None, &self.device, dtype)?;
        let window = self.config.layer_windows.iter().flatten().next().copied();
        let window_mask = window.map(|w| full_mask.windowed(w)).transpose()?;
        Ok(BlockContext {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            full_mask,
            window_mask,
            dropout: None,
            grad: false,
            saved: None,
            output_unread: false,
            generation: false,
            precision: Precision::F32,
            halves: None,
        })
    }

    /// Runs block `i` on `x` `[b, t, d]`; appends to `cache` (its layer `i`) when given.
    pub fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let llama_style = self.blocks[i].is_llama_style();
        // CPU f32 without a cache (training, evaluation): the whole block as one op (`cpu::block`).
        if cpu::applies(x) && !ctx.generation && cache.is_none() && llama_style {
            return self.block_forward_fused(i, x, ctx);
        }
        // CUDA bf16 without a cache (training, evaluation): the whole block through `kernels::fused_block`.
        if !ctx.generation
            && cache.is_none()
            && ctx.saved.is_none()
            && llama_style
            && let Some(y) = self.block_forward_cuda(i, x, ctx)?
        {
            return Ok(y);
        }
        self.block_forward_composed(i, x, ctx, cache)
    }

    /// [`Self::block_forward`] through `kernels::fused_block`, when it serves `x`.
    fn block_forward_cuda(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
    ) -> Result<Option<Tensor>> {
        self.with_block_parts(i, x, ctx, |parts| {
            crate::model::kernels::fused_block(x, parts)
        })
    }

    /// Checkpointing's recomputation of block `i` on `x` and its backward in one call, outside candle's
    /// autograd, where the fused CUDA block serves it (`kernels::fused_block_backward`): the input's gradient
    /// for the output's gradient `g`, and each adapter's `(target, dA, dB)`. None where it does not serve
    /// (the caller then backpropagates through [`Self::block_forward`]); `ctx` must want gradients for an
    /// unread output.
    pub fn block_backward(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        g: &Tensor,
    ) -> Result<Option<BlockGrads>> {
        if !(ctx.grad && ctx.output_unread)
            || ctx.generation
            || ctx.saved.is_some()
            || !self.blocks[i].is_llama_style()
        {
            return Ok(None);
        }
        let done = self.with_block_parts(i, x, ctx, |parts| {
            crate::model::kernels::fused_block_backward(x, parts, g)
        })?;
        Ok(done.map(|(dx, grads)| {
            let adapters = Target::ALL
                .into_iter()
                .zip(grads)
                .map(|(t, (da, db))| (t, da, db))
                .collect();
            (dx, adapters)
        }))
    }

    /// Runs `f` on block `i`'s parts for the fused CUDA block (`kernels::BlockParts`).
    fn with_block_parts<R>(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        f: impl FnOnce(crate::model::kernels::BlockParts) -> Result<R>,
    ) -> Result<R> {
        let cfg = &self.config;
        let blk = &self.blocks[i];
        let projection = |index: usize, input: &Tensor| {
            let (lin, l, call) = self.fused_projection(i, index, ctx)?;
            lin.block_projection(input, l, call)
        };
        let parts = crate::model::kernels::BlockParts {
            norms: [
                (&blk.input_norm.weight, blk.input_norm.eps),
                (&blk.pre_ff_norm.weight, blk.pre_ff_norm.eps),
            ],
            projection: &projection,
            heads: (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim),
            rope: (&ctx.cos, &ctx.sin, cfg.rope_interleaved),
            mask: self.layer_mask(i, ctx),
            attention: (cfg.query_pre_attn_scalar.powf(-0.5), cfg.attn_logit_softcap),
            activation: cfg.activation,
            grad: ctx.grad || x.track_op(),
            output_unread: ctx.output_unread,
            halves: ctx.halves.as_ref().map(|h| (h, i)),
        };
        f(parts)
    }

    /// Projection `index` (in `Target::ALL`'s order) of block `i`, its adapter, and how a fused block
    /// calls it (dropout site, gradients, saved products).
    fn fused_projection<'a>(
        &'a self,
        i: usize,
        index: usize,
        ctx: &'a BlockContext,
    ) -> Result<(&'a AdaptedLinear, &'a LoraAdapter, LoraCall<'a>)> {
        let t = Target::ALL[index];
        let lin = self.blocks[i].linear(t);
        let l = lin
            .lora
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg(format!("block {i}: {t:?} has no adapter")))?;
        let site = (i as u64) << 8 | t as u64;
        let call = LoraCall {
            dropout: ctx.dropout.map(|s| (s, site)),
            grad: ctx.grad,
            saved: ctx.saved.as_ref().map(|s| (s, site)),
            generation: false,
            frozen: None,
            precision: ctx.precision,
        };
        Ok((lin, l, call))
    }

    /// The keys block `i` sees: through the sliding window when the layer slides.
    fn layer_mask<'a>(&self, i: usize, ctx: &'a BlockContext) -> &'a AttentionMask {
        match self.config.layer_windows.get(i).copied().flatten() {
            Some(_) => ctx.window_mask.as_ref().unwrap_or(&ctx.full_mask),
            None => &ctx.full_mask,
        }
    }

    /// [`Self::block_forward`] through `cpu::block` (llama-style blocks, CPU f32).
    fn block_forward_fused(&self, i: usize, x: &Tensor, ctx: &BlockContext) -> Result<Tensor> {
        let cfg = &self.config;
        let blk = &self.blocks[i];
        let linear = |index: usize, input: &Tensor| {
            let (lin, l, call) = self.fused_projection(i, index, ctx)?;
            lin.cpu_call(input, l, call)
        };
        let mask = self.layer_mask(i, ctx).dense()?;
        let saved = ctx.saved.as_ref();
        let recording = saved.is_some_and(|s| s.recording.get());
        let known_attention = match saved {
            Some(s) if !recording => s.exchange(site_id_attention(i), None),
            _ => None,
        };
        let parts = cpu::block::BlockParts {
            input_norm: (&blk.input_norm.weight, blk.input_norm.eps),
            pre_ff_norm: (&blk.pre_ff_norm.weight, blk.pre_ff_norm.eps),
            linear: &linear,
            heads: (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim),
            rope: (&ctx.cos, &ctx.sin, cfg.rope_interleaved),
            mask: &mask,
            attention: (cfg.query_pre_attn_scalar.powf(-0.5), cfg.attn_logit_softcap),
            known_attention,
            grad: ctx.grad || x.track_op(),
            keep_attention: recording,
            activation: cfg.activation,
        };
        let (out, attention) = cpu::block::block(x, parts)?;
        if let (Some(s), Some(a)) = (saved, attention) {
            s.exchange(site_id_attention(i), Some(&a));
        }
        Ok(out)
    }

    /// [`Self::block_forward`] as a composition of candle ops and the fused CPU kernels.
    pub(crate) fn block_forward_composed(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let blk = &self.blocks[i];
        let site_id = |t: Target| (i as u64) << 8 | t as u64;
        let site = |t: Target| LoraCall {
            dropout: ctx.dropout.map(|s| (s, site_id(t))),
            grad: ctx.grad,
            saved: ctx.saved.as_ref().map(|s| (s, site_id(t))),
            generation: ctx.generation,
            frozen: None,
            precision: ctx.precision,
        };
        // Projections of one input (q, k and v; gate and up). Generation: finished together where a fused kernel
        // serves them all (a GPU's few rows), or else each handed its frozen product where those are computed
        // together (`AdaptedLinear::frozen_products`).
        let together =
            |linears: &[(&AdaptedLinear, LoraCall)], x: &Tensor| -> Result<Vec<Tensor>> {
                if !ctx.generation {
                    return linears
                        .iter()
                        .map(|(l, call)| l.forward(x, *call))
                        .collect();
                }
                if let Some(ys) = AdaptedLinear::forward_members(linears, x)? {
                    return Ok(ys);
                }
                let products = AdaptedLinear::frozen_products(linears, x)?;
                let each = linears.iter().enumerate();
                each.map(|(j, (l, call))| l.forward(x, given(*call, &products, j)))
                    .collect()
            };
        let (b, t, _) = x.dims3()?;
        let (h, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        // No gradient is needed (generation, the checkpointed first pass): candle's fused kernels, which
        // have no backward, replace the differentiable compositions.
        let fused = !ctx.grad && !x.track_op();
        // f32 on the CPU: custom kernels with hand-written backward passes; the attention and gated product
        // ones also serve the no-gradient passes, generation included (no score tensor, and attention reads
        // the KV cache's buffers in place).
        let cpu = cpu::applies(x);
        let cpu_grad = cpu && !fused;
        let norm = |n: &RmsNorm, x: &Tensor| {
            if fused {
                n.forward_no_grad(x)
            } else if cpu_grad {
                cpu::rms_norm::rms_norm(x, &n.weight, n.eps)
            } else {
                n.forward(x)
            }
        };
        let hn = norm(&blk.input_norm, x)?;
        let qkv = [
            (&blk.q, site(Target::Q)),
            (&blk.k, site(Target::K)),
            (&blk.v, site(Target::V)),
        ];
        let qkv = together(&qkv, &hn)?;
        let [q, k, v] = qkv.as_slice() else {
            candle_core::bail!("block {i}: {} outputs for q, k and v", qkv.len())
        };
        let rope = if fused {
            apply_rope_no_grad
        } else if cpu_grad {
            cpu::rope::rope
        } else {
            apply_rope
        };
        // [b, t, n * hd] -> [b, n, t, hd], rotated for queries and keys: one fused node on CUDA.
        let split = |x: &Tensor, n: usize, rotary: bool| -> Result<Tensor> {
            let tables = rotary.then_some((&ctx.cos, &ctx.sin, cfg.rope_interleaved));
            if let Some(y) = crate::model::kernels::fused_split_heads(x, n, hd, tables)? {
                return Ok(y);
            }
            let y = x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?;
            match rotary {
                true => rope(&y, &ctx.cos, &ctx.sin, cfg.rope_interleaved),
                false => Ok(y),
            }
        };
        let q = split(q, h, true)?;
        let (k, v) = (split(k, kvh, true)?, split(v, kvh, false)?);
        let (k, v) = match cache {
            Some(cache) => cache.append(i, &k, &v)?,
            None => (k, v),
        };
        let mask = self.layer_mask(i, ctx);
        let scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let attn = if cpu {
            // Checkpointed training: the recomputation replays the first pass's attention output.
            let saved = ctx.saved.as_ref();
            let known = saved.and_then(|s| s.exchange(site_id_attention(i), None));
            let softcap = cfg.attn_logit_softcap;
            let attn =
                cpu::attention::attention(&q, &k, &v, &mask.dense()?, (scale, softcap), known)?;
            if let Some(s) = saved {
                s.exchange(site_id_attention(i), Some(&attn));
            }
            attn.transpose(1, 2)?.reshape((b, t, h * hd))?
        } else if let Some(attn) = crate::model::kernels::fused_attention(
            &q,
            &k,
            &v,
            mask,
            (scale, cfg.attn_logit_softcap),
        )? {
            attn
        } else {
            let total = k.dim(2)?;
            let rep = h / kvh;
            // Grouped-query attention without repeating k/v: fold the query groups into the rows.
            // The scale applied to the queries: a pass over [b, h, t, d] instead of the scores.
            let qg = (q * scale)?.reshape((b, kvh, rep * t, hd))?;
            let scores = qg.matmul(&k.t()?)?;
            let scores = softcap(&scores, cfg.attn_logit_softcap)?;
            let scores = scores
                .reshape((b, h, t, total))?
                .broadcast_add(&mask.dense()?)?;
            // The fused kernel forward; with a gradient, the closed-form backward.
            let probs = crate::model::autograd::attach::softmax_last_dim(&scores)?;
            let probs = probs.reshape((b, kvh, rep * t, total))?;
            let attn = probs.matmul(&v)?.reshape((b, h, t, hd))?;
            attn.transpose(1, 2)?.reshape((b, t, h * hd))?
        };
        let attn = blk.o.forward(&attn, site(Target::O))?;
        let attn = match &blk.post_attn_norm {
            Some(n) => norm(n, &attn)?,
            None => attn,
        };
        let x = (x + attn)?;
        let hn = norm(&blk.pre_ff_norm, &x)?;
        let gate_up = [(&blk.gate, site(Target::Gate)), (&blk.up, site(Target::Up))];
        let gate_up = together(&gate_up, &hn)?;
        let [gate, up] = gate_up.as_slice() else {
            candle_core::bail!("block {i}: {} outputs for gate and up", gate_up.len())
        };
        let gated = if cpu {
            cpu::gated::gated_product(gate, up, cfg.activation)?
        } else if let Some(gated) = crate::model::kernels::fused_gated(gate, up, cfg.activation)? {
            gated
        } else {
            let gate = match cfg.activation {
                Activation::Silu => gate.silu()?,
                Activation::GeluTanh => gate.gelu()?,
            };
            (gate * up)?
        };
        let ff = blk.down.forward(&gated, site(Target::Down))?;
        let ff = match &blk.post_ff_norm {
            Some(n) => norm(n, &ff)?,
            None => ff,
        };
        x + ff
    }

    /// Final norm, vocabulary head and final soft-capping: `[.., d]` -> `[.., vocab]`.
    pub fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        self.head_logits_with(&self.head, h)
    }

    /// [`Self::head_logits`] through `head` (this decoder's head, or a copy with its weight dequantized:
    /// `FrozenLinear::dequantized`).
    pub fn head_logits_with(&self, head: &FrozenLinear, h: &Tensor) -> Result<Tensor> {
        let h = self.final_norm.forward(h)?;
        softcap(&head.forward(&h)?, self.config.final_logit_softcap)
    }

    /// The vocabulary loss `[rows]` of `targets` (and their copy `on_device`) for hidden rows `h` `[rows, d]`
    /// through `head`, as one autograd edge from `h` (`kernels::fused_head_nll`): the fused GPU path, where no
    /// logits-sized gradient passes through candle. None where it does not serve: a bias or a soft-capped head,
    /// or logits that the fused kernels do not take (the caller then goes through [`Self::head_logits_with`]).
    pub fn head_nll_fused(
        &self,
        head: &FrozenLinear,
        h: &Tensor,
        targets: &[u32],
        on_device: &Tensor,
    ) -> Result<Option<Tensor>> {
        let bf16_on_gpu = h.device().is_cuda() && h.dtype() == candle_core::DType::BF16;
        if head.bias.is_some() || self.config.final_logit_softcap.is_some() || !bf16_on_gpu {
            return Ok(None);
        }
        let hn = self.final_norm.forward(h)?;
        let (logits, dequantized) = head.product(&hn)?;
        kernels::fused_head_nll(&hn, &logits, &head.weight, dequantized, targets, on_device)
    }

    /// [`Self::head_logits`] through the head's weight packed for bf16 products ([`Self::bf16_head`]).
    pub fn head_logits_bf16(&self, head: &Arc<PackedWeight>, h: &Tensor) -> Result<Tensor> {
        let h = self.final_norm.forward(h)?;
        let y = cpu::bf16::linear::linear(&h, head)?;
        let y = match &self.head.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        softcap(&y, self.config.final_logit_softcap)
    }

    /// The head's weight packed for bf16 products on the CPU, packed on first use and kept; None when it is
    /// too large to dequantize at once (`FrozenWeight::dequantize_whole`).
    pub fn bf16_head(&self) -> Result<Option<Arc<PackedWeight>>> {
        if let Some(p) = self.bf16_head.get() {
            return Ok(Some(p.clone()));
        }
        let Some(w) = self.head.weight.dequantize_whole(&Device::Cpu)? else {
            return Ok(None);
        };
        let (out, inp) = w.dims2()?;
        let values = w
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let packed = Arc::new(PackedWeight::new(&values, out, inp));
        Ok(Some(self.bf16_head.get_or_init(|| packed).clone()))
    }

    /// Hidden states after the last block `[b, t, d]` (before the final norm); `generation` lets GGUF
    /// weights multiply in quantized form (see `kernels::generation_product`).
    fn hidden(
        &self,
        ids: &Tensor,
        positions: &Positions,
        key_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        generation: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut ctx = self.context(b, t, past, positions, key_mask)?;
        ctx.generation = generation;
        let mut x = self.embed(ids)?;
        if let Some(c) = cache.as_mut() {
            c.ensure_layers(self.blocks.len());
        }
        for i in 0..self.blocks.len() {
            x = self.block_forward(i, &x, &ctx, cache.as_deref_mut())?;
        }
        Ok(x)
    }

    /// Logits `[b, t, vocab]` for new tokens `ids` `[b, t]` (u32).
    ///
    /// `positions`: where the new tokens sit (`Positions::From(cache.len())` for unpadded batches);
    /// `key_mask`: `[b, cached + t]`, 1 for real tokens and 0 for padding (None: all real);
    /// `cache`: appended with the new keys and values when given.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Positions,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, positions, key_mask, cache, false)?;
        self.head_logits(&h)
    }

    /// Logits of the last position only `[b, vocab]` (generation: skips the head for the prompt; GGUF
    /// weights multiply in quantized form when decoding on the CPU).
    pub fn forward_last(
        &self,
        ids: &Tensor,
        positions: &Positions,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.last_hidden(ids, positions, key_mask, cache)?;
        self.last_logits(&h)
    }

    /// [`Self::forward_last`], or with `greedy` each row's greedy id (its first largest logit) where the head
    /// finds it without every logit in full (`kernels::generation_greedy`; not with a final soft-cap, whose
    /// rounding can tie logits that differ).
    pub fn forward_next(
        &self,
        ids: &Tensor,
        positions: &Positions,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        greedy: bool,
    ) -> Result<Next> {
        let h = self.last_hidden(ids, positions, key_mask, cache)?;
        if greedy
            && self.config.final_logit_softcap.is_none()
            && let Some(ids) = kernels::generation_greedy(&self.head, &h)?
        {
            return Ok(Next::Greedy(ids));
        }
        self.last_logits(&h).map(Next::Logits)
    }

    /// Whether a batch's rows can be decoded apart, each group on a thread of its own
    /// (`generate::DecoderLm`): on the CPU, with every product of generation off candle's barrier pool
    /// (`cpu::decode::off_candles_pool`: not with K-quant weights candle's tile kernels do not take).
    pub fn rows_decode_apart(&self) -> bool {
        let linears = (self.blocks.iter()).flat_map(|b| Target::ALL.map(|t| &b.linear(t).base));
        self.device.is_cpu()
            && std::iter::once(&self.head)
                .chain(linears)
                .all(cpu::decode::off_candles_pool)
    }

    /// The last position's final-normed hidden state `[b, 1, d]`.
    fn last_hidden(
        &self,
        ids: &Tensor,
        positions: &Positions,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, positions, key_mask, cache, true)?;
        let t = h.dim(1)?;
        self.final_norm.forward_no_grad(&h.narrow(1, t - 1, 1)?)
    }

    /// Logits `[b, vocab]` of last positions' hidden states `h` `[b, 1, d]`.
    fn last_logits(&self, h: &Tensor) -> Result<Tensor> {
        let logits = kernels::generation_product(&self.head, h)?;
        softcap(&logits, self.config.final_logit_softcap)?.squeeze(1)
    }

    /// Folds every LoRA adapter into dense f32 weights (faster generation, more memory).
    pub fn merge_lora(&mut self) -> Result<()> {
        for blk in &mut self.blocks {
            for t in Target::ALL {
                blk.linear_mut(t).merge()?;
            }
        }
        Ok(())
    }

    /// Bytes of the frozen projection weights (q, k, v, o, gate, up, down) and their parameter count.
    pub fn projection_storage(&self) -> (usize, usize) {
        let mut bytes = 0;
        let mut params = 0;
        for blk in &self.blocks {
            for t in Target::ALL {
                let w = &blk.linear(t).base.weight;
                bytes += w.storage_bytes();
                params += w.dims2().map(|(a, b)| a * b).unwrap_or(0);
            }
        }
        (bytes, params)
    }
}
