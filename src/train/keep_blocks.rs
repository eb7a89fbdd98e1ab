//! Which blocks a checkpointed CPU step keeps whole from its forward to its backward (the fused block's
//! intermediates: no recomputation) instead of checkpointing them: as many of the last blocks as fit in a
//! memory budget. The last ones, because the backward reaches them first and frees each before it
//! recomputes any checkpointed block.

use candle_core::{Tensor, Var};

use crate::model::decoder::{Block, BlockContext, Decoder};
use crate::model::error::Result;
use crate::model::target::Target;

/// How much memory the blocks of a checkpointed step may hold between forward and backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepBlocks {
    /// On the CPU, what checkpointing every block would hold: every block is kept when keeping costs no
    /// more than checkpointing (frozen products saved, adapter rank well under the width, no dropout);
    /// on other devices, none.
    #[default]
    Auto,
    /// At most this many bytes for the blocks' inputs and kept intermediates together (CPU).
    Budget(usize),
}

/// Bytes one block holds from its forward to its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockBytes {
    /// Kept whole: its input and the fused block's kept intermediates.
    pub kept: usize,
    /// Checkpointed: its input, and with saved frozen products those and the attention output.
    pub checkpointed: usize,
}

impl BlockBytes {
    /// The f32 activations of `tokens` positions through `blk`. None when the fused CPU block does not
    /// serve it (the only one whose kept intermediates this counts: `kernels::cpu::block`'s `Saved`).
    pub fn of(blk: &Block, tokens: usize, save_frozen_products: bool) -> Option<Self> {
        if !blk.is_llama_style() {
            return None;
        }
        let dims = |t: Target| blk.linear(t).base.weight.dims2().ok();
        let (mut outputs, mut ranks, mut masked) = (0, 0, 0);
        for t in Target::ALL {
            let lin = blk.linear(t);
            let (out, inp) = lin.base.weight.dims2().ok()?;
            let lora = lin.lora.as_ref()?;
            outputs += out;
            ranks += lora.a.dims().first().copied()?;
            // Dropout: one f32 factor per element of the projection's input.
            if lora.dropout > 0.0 {
                masked += inp;
            }
        }
        let ((q, width), (k, _), (v, _)) = (dims(Target::Q)?, dims(Target::K)?, dims(Target::V)?);
        let (_, attention) = dims(Target::O)?;
        let ((gate, _), (up, _)) = (dims(Target::Gate)?, dims(Target::Up)?);
        // Input, attention output, rotated queries and keys, values, residual after attention, gate and up
        // products, each adapter's `x A^T`, dropout masks.
        let kept = width + attention + q + k + v + width + gate + up + ranks + masked;
        let checkpointed = width
            + match save_frozen_products {
                true => outputs + attention,
                false => 0,
            };
        let f32s = |n: usize| n * tokens * std::mem::size_of::<f32>();
        Some(Self {
            kept: f32s(kept),
            checkpointed: f32s(checkpointed),
        })
    }
}

/// How many of the last `blocks` to keep whole so that all of them together hold at most `budget` bytes.
/// A block that costs no more kept than checkpointed is kept whatever the budget; the kept blocks are a
/// run at the end.
pub fn kept_suffix(blocks: &[BlockBytes], budget: usize) -> usize {
    let mut total: usize = blocks.iter().map(|b| b.checkpointed).sum();
    let mut kept = 0;
    for b in blocks.iter().rev() {
        let extra = b.kept.saturating_sub(b.checkpointed);
        if extra > 0 && total + extra > budget {
            break;
        }
        total = total + b.kept - b.checkpointed;
        kept += 1;
    }
    kept
}

impl Decoder {
    /// How many of the last blocks a checkpointed step over `tokens` positions keeps whole.
    pub fn kept_blocks(
        &self,
        tokens: usize,
        keep: KeepBlocks,
        save_frozen_products: bool,
    ) -> usize {
        if !self.device.is_cpu() {
            return 0;
        }
        let bytes: Option<Vec<BlockBytes>> = (self.blocks.iter())
            .map(|b| BlockBytes::of(b, tokens, save_frozen_products))
            .collect();
        let Some(bytes) = bytes else {
            return 0;
        };
        let budget = match keep {
            KeepBlocks::Auto => bytes.iter().map(|b| b.checkpointed).sum(),
            KeepBlocks::Budget(budget) => budget,
        };
        kept_suffix(&bytes, budget)
    }

    /// Blocks `first..` of a checkpointed step's forward, kept whole: one graph from their input as a Var,
    /// run with gradients (the checkpointed first pass runs without), neither saving frozen products for a
    /// recomputation nor replaying any. Chained rather than each from a Var of its own: a Var is a copy,
    /// and the graph holds each block's output anyway. Returns that Var and the last output.
    pub(crate) fn forward_kept(
        &self,
        first: usize,
        x: &Tensor,
        ctx: &mut BlockContext,
    ) -> Result<(Var, Tensor)> {
        let grad = std::mem::replace(&mut ctx.grad, true);
        let saved = ctx.saved.take();
        let run = |ctx: &BlockContext| -> Result<(Var, Tensor)> {
            let xin = Var::from_tensor(x)?;
            let mut out = xin.as_tensor().clone();
            for i in first..self.blocks.len() {
                out = self.block_forward(i, &out, ctx, None)?;
            }
            Ok((xin, out))
        };
        let kept = run(ctx);
        (ctx.grad, ctx.saved) = (grad, saved);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::presets::preset;
    use crate::model::test_support::nf4_decoder_with_lora;

    const fn bytes(kept: usize, checkpointed: usize) -> BlockBytes {
        BlockBytes { kept, checkpointed }
    }

    #[test]
    fn keeps_the_last_blocks_that_fit() {
        let blocks = [bytes(10, 4); 5];
        // Checkpointing all holds 20; each kept block adds 6.
        assert_eq!(kept_suffix(&blocks, 0), 0);
        assert_eq!(kept_suffix(&blocks, 20), 0);
        assert_eq!(kept_suffix(&blocks, 25), 0);
        assert_eq!(kept_suffix(&blocks, 26), 1);
        assert_eq!(kept_suffix(&blocks, 38), 3);
        assert_eq!(kept_suffix(&blocks, 50), 5);
        assert_eq!(kept_suffix(&blocks, usize::MAX), 5);
    }

    #[test]
    fn blocks_cheaper_kept_are_always_kept_and_the_run_stops_at_the_first_misfit() {
        assert_eq!(kept_suffix(&[bytes(3, 4); 4], 0), 4);
        // From the end: cheaper (kept), too dear for the budget (stop), cheaper again (not reached).
        let blocks = [bytes(1, 4), bytes(100, 4), bytes(3, 4)];
        assert_eq!(kept_suffix(&blocks, 12), 1);
        assert_eq!(kept_suffix(&blocks, 12 - 1 + 96), 3);
    }

    fn decoder(dropout: f64, rank: usize) -> Decoder {
        let (mut cfg, _) = preset("smollm2-135m").unwrap();
        cfg.num_layers = 3;
        cfg.layer_windows = vec![None; 3];
        cfg.vocab_size = 64;
        nf4_decoder_with_lora(cfg, 1, (rank, 16.0, dropout))
    }

    #[test]
    fn counts_the_fused_blocks_state_at_smollm2_widths() {
        let dec = decoder(0.0, 16);
        // d 576, 9 x 64 query heads, 3 x 64 key-value heads, feed-forward 1536.
        let (d, kv, ff) = (576, 192, 1536);
        let outputs = d + kv + kv + d + ff + ff + d;
        let b = BlockBytes::of(&dec.blocks[0], 10, true).unwrap();
        assert_eq!(b.kept, 40 * (d + d + d + kv + kv + d + ff + ff + 7 * 16));
        assert_eq!(b.checkpointed, 40 * (d + outputs + d));
        assert!(b.kept < b.checkpointed);
        let b = BlockBytes::of(&dec.blocks[0], 10, false).unwrap();
        assert_eq!(b.checkpointed, 40 * d);
        // Dropout keeps one factor per input element of each projection.
        let masked = BlockBytes::of(&decoder(0.1, 16).blocks[0], 10, true).unwrap();
        let inputs = d + d + d + d + d + d + ff;
        assert_eq!(masked.kept, b.kept + 40 * inputs);
    }

    #[test]
    fn auto_keeps_all_blocks_only_where_keeping_costs_no_more() {
        let dec = decoder(0.0, 16);
        assert_eq!(dec.kept_blocks(1024, KeepBlocks::Auto, true), 3);
        assert_eq!(dec.kept_blocks(1024, KeepBlocks::Auto, false), 0);
        assert_eq!(
            decoder(0.1, 16).kept_blocks(1024, KeepBlocks::Auto, true),
            0
        );
        let one = BlockBytes::of(&dec.blocks[0], 1024, false).unwrap();
        let budget = 3 * one.checkpointed + 2 * (one.kept - one.checkpointed);
        assert_eq!(dec.kept_blocks(1024, KeepBlocks::Budget(budget), false), 2);
        assert_eq!(
            dec.kept_blocks(1024, KeepBlocks::Budget(budget - 1), false),
            1
        );
    }

    #[test]
    fn blocks_without_adapters_are_not_kept() {
        let mut dec = decoder(0.0, 16);
        dec.blocks[2].down.lora = None;
        assert!(BlockBytes::of(&dec.blocks[2], 8, true).is_none());
        assert_eq!(dec.kept_blocks(8, KeepBlocks::Budget(usize::MAX), true), 0);
    }
}
