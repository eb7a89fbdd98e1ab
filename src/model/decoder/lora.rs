//! LoRA adapters on frozen linears: A Kaiming-uniform, B zero, scale alpha/r (or alpha/sqrt(r)), dropout.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::kernels::cpu::bf16::Precision;
use crate::model::kernels::{self, cpu};
use crate::model::quant::frozen::FrozenLinear;
use crate::model::target::Target;

/// What adapters to create.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub targets: Vec<Target>,
    pub rank: usize,
    pub alpha: f64,
    /// rsLoRA: scale alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    pub dropout: f64,
    /// Seed of the A initialisation.
    pub seed: u64,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// One adapter: `delta(x) = dropout(x) A^T B^T * scale`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in_features]`
    pub a: Var,
    /// `[out_features, r]`
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// A ~ Kaiming-uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) as PEFT does; B = 0.
    pub fn init(
        in_f: usize,
        out_f: usize,
        spec: &LoraSpec,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (in_f as f32).sqrt();
        let a: Vec<f32> = (0..spec.rank * in_f)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Ok(Self {
            a: Var::from_tensor(&Tensor::from_vec(a, (spec.rank, in_f), device)?)?,
            b: Var::zeros((out_f, spec.rank), DType::F32, device)?,
            scale: spec.scale(),
            dropout: spec.dropout,
        })
    }
}

impl LoraAdapter {
    /// A and B, tracked by autograd when gradients are wanted.
    fn operands(&self, grad: bool) -> (Tensor, Tensor) {
        if grad {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_detached_tensor(), self.b.as_detached_tensor())
        }
    }

    /// The seed of this call's dropout mask, when dropout is on.
    fn dropout_seed(&self, call: &LoraCall) -> Option<u64> {
        match call.dropout {
            Some((DropoutSeed(seed), site)) if self.dropout > 0.0 => Some(seed ^ site),
            _ => None,
        }
    }
}

/// Seeds the dropout masks of one forward pass, so a checkpointed recomputation sees the same masks.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeed(pub u64);

/// How one adapted projection is called: dropout site (training) and whether LoRA tensors are tracked.
#[derive(Debug, Clone, Copy)]
pub struct LoraCall<'a> {
    /// The step's dropout seed and this projection's site id (layer, target).
    pub dropout: Option<(DropoutSeed, u64)>,
    pub grad: bool,
    /// Frozen products saved by the checkpointed first pass, keyed by site, replayed by the recomputation.
    pub saved: Option<(&'a SavedProducts, u64)>,
    /// Generation: see [`kernels::generation_product`].
    pub generation: bool,
    /// The frozen product `x @ W^T` (bias included), computed already: generation's products of one input
    /// by several weights in one loop ([`kernels::generation_products`]).
    pub frozen: Option<&'a Tensor>,
    /// The dtype of the CPU op's products through the frozen weight.
    pub precision: Precision,
}

/// Frozen products `x @ W^T` of a checkpointed first pass. The recomputation of a block sees the same
/// inputs, so it reuses them instead of multiplying by the frozen weights again (a third fewer matmuls,
/// at the cost of keeping the projections' outputs).
#[derive(Debug, Default)]
pub struct SavedProducts {
    slots: std::cell::RefCell<std::collections::HashMap<u64, Tensor>>,
    /// true: store products; false: take them back.
    pub recording: std::cell::Cell<bool>,
}

impl SavedProducts {
    /// While recording: keeps `t` for `site`. Otherwise: takes back what was kept for `site`.
    pub fn exchange(&self, site: u64, t: Option<&Tensor>) -> Option<Tensor> {
        if self.recording.get() {
            if let Some(t) = t {
                self.slots.borrow_mut().insert(site, t.clone());
            }
            None
        } else {
            self.slots.borrow_mut().remove(&site)
        }
    }
}

/// A frozen linear with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    pub base: FrozenLinear,
    pub lora: Option<LoraAdapter>,
}

impl AdaptedLinear {
    /// Dropout masks derive from the call's seed and site, so a checkpointed recomputation sees the same.
    pub fn forward(&self, x: &Tensor, call: LoraCall) -> Result<Tensor> {
        if let Some(l) = &self.lora
            && cpu::applies(x)
            && !call.generation
        {
            return self.forward_cpu(x, l, call);
        }
        let Some(l) = &self.lora else {
            return self.frozen_forward(x, call);
        };
        if call.generation && cpu::applies(x) && l.dropout_seed(&call).is_none() {
            // Answering on the CPU: candle's products of the composition below, on this thread alone.
            let y = self.frozen_forward(x, call)?;
            let (a, b) = l.operands(false);
            return cpu::lora_delta::add_delta(&y, x, (&a, &b), l.scale);
        }
        let (a, b, mask) = Self::adapter_operands(x, l, call)?;
        if call.saved.is_none()
            && call.frozen.is_none()
            && let Some(y) = crate::model::kernels::fused_adapted(
                x,
                &self.base,
                (&a, &b, l.scale),
                mask.clone(),
            )?
        {
            return Ok(y);
        }
        let y = self.frozen_forward(x, call)?;
        let x = match &mask {
            Some(m) => x.mul(m)?,
            None => x.clone(),
        };
        let in_f = a.dim(1)?;
        let mut dims = x.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = b.dim(0)?;
        // f32 adapters on bf16 activations: the adapter product runs in the adapters' dtype.
        let x2 = x.reshape(((), in_f))?.to_dtype(a.dtype())?;
        // The scale applies to the rank-wide intermediate, not to the output-wide product.
        let delta = x2.matmul(&a.t()?)?.affine(l.scale, 0.0)?.matmul(&b.t()?)?;
        let dtype = y.dtype();
        y + delta.reshape(dims)?.to_dtype(dtype)?
    }

    /// Generation's adapted projections of one input `x`, each with its call (q, k and v; gate and up), finished
    /// together where a fused kernel serves them all (`kernels::fused_adapted_members`); None otherwise (one
    /// without an adapter, dropout, gradients, a replayed or given frozen product, or no such kernel).
    pub fn forward_members(
        linears: &[(&AdaptedLinear, LoraCall)],
        x: &Tensor,
    ) -> Result<Option<Vec<Tensor>>> {
        // Only a GPU has such a kernel: the CPU's answering takes its own path at no cost.
        if !x.device().is_cuda() {
            return Ok(None);
        }
        let mut operands = Vec::with_capacity(linears.len());
        for (linear, call) in linears {
            let Some(l) = &linear.lora else {
                return Ok(None);
            };
            let plain = call.saved.is_none() && call.frozen.is_none();
            if !call.generation || call.grad || !plain || l.dropout_seed(call).is_some() {
                return Ok(None);
            }
            operands.push((&linear.base, l.operands(false), l.scale));
        }
        let members: Vec<_> = operands
            .iter()
            .map(|(base, (a, b), scale)| (*base, (a, b, *scale)))
            .collect();
        crate::model::kernels::fused_adapted_members(x, &members)
    }

    /// Generation's frozen products of one input `x` to hand to these projections ([`LoraCall::frozen`]): one
    /// parallel loop on the CPU, q, k and v in one launch on a GPU (`kernels::generation_products`). None on a
    /// GPU where one of them has an adapter (only some targets adapted: [`Self::forward_members`] did not serve
    /// them): there each adapted projection's own few-row path adds the adapter's product in its frozen
    /// product's launch, which a handed-over product would turn into a composition of several.
    pub fn frozen_products(
        linears: &[(&AdaptedLinear, LoraCall)],
        x: &Tensor,
    ) -> Result<Option<Vec<Tensor>>> {
        if x.device().is_cuda() && linears.iter().any(|(l, _)| l.lora.is_some()) {
            return Ok(None);
        }
        let bases: Vec<&FrozenLinear> = linears.iter().map(|(l, _)| &l.base).collect();
        kernels::generation_products(&bases, x)
    }

    /// A and B (tracked when the call wants gradients) and the dropout mask for input `x`.
    fn adapter_operands(
        x: &Tensor,
        l: &LoraAdapter,
        call: LoraCall,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (a, b) = l.operands(call.grad);
        let mask = match l.dropout_seed(&call) {
            Some(seed) => Some(dropout_mask(x, l.dropout, seed)?),
            None => None,
        };
        Ok((a, b, mask))
    }

    /// The operands of the fused GPU block (`kernels::fused_block`) for input `x`.
    pub(crate) fn block_projection(
        &self,
        x: &Tensor,
        l: &LoraAdapter,
        call: LoraCall,
    ) -> Result<crate::model::kernels::BlockProjection> {
        let (a, b, dropout) = Self::adapter_operands(x, l, call)?;
        Ok(crate::model::kernels::BlockProjection {
            base: self.base.clone(),
            a,
            b,
            scale: l.scale,
            dropout,
        })
    }

    /// The frozen product, replayed from the checkpointed first pass when it was saved.
    fn frozen_forward(&self, x: &Tensor, call: LoraCall) -> Result<Tensor> {
        if let Some(y) = call.frozen {
            return Ok(y.clone());
        }
        match call.saved {
            Some((saved, site)) if saved.recording.get() => {
                let (y, w) = self.base.product(x)?;
                saved.slots.borrow_mut().insert(site, y.clone());
                self.base.attach(x, y, w)
            }
            Some((saved, site)) => match saved.slots.borrow_mut().remove(&site) {
                Some(y) => self.base.attach(x, y, None),
                None => self.base.forward(x),
            },
            None if call.generation => kernels::generation_product(&self.base, x),
            None => self.base.forward(x),
        }
    }

    /// CPU f32: the frozen product (saved or computed) and the adapter as one op with a closed-form
    /// backward (`cpu::adapted_linear`), the same dropout masks as [`Self::forward`]'s composition.
    fn forward_cpu(&self, x: &Tensor, l: &LoraAdapter, call: LoraCall) -> Result<Tensor> {
        let y = cpu::adapted_linear::adapted_linear(x, self.cpu_call(x, l, call)?)?;
        match &self.base.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// The operands of the CPU op for input `x`: the frozen product computed now to be saved, or replayed;
    /// otherwise none (the op computes it into its own output).
    pub(crate) fn cpu_call(
        &self,
        x: &Tensor,
        l: &LoraAdapter,
        call: LoraCall,
    ) -> Result<cpu::adapted_linear::AdapterCall> {
        let (product, dequantized) = match call.saved {
            Some((saved, site)) if saved.recording.get() => {
                let (y, w) = match call.precision {
                    Precision::F32 => self.base.product(x)?,
                    p => cpu::adapted_linear::frozen_product_of(&self.base.weight, x, p)?,
                };
                saved.slots.borrow_mut().insert(site, y.clone());
                (Some(y), w)
            }
            Some((saved, site)) => (saved.slots.borrow_mut().remove(&site), None),
            None => (None, None),
        };
        let (a, b) = l.operands(call.grad);
        let mask = l
            .dropout_seed(&call)
            .map(|seed| dropout_factors(x.elem_count(), l.dropout, seed));
        let frozen = cpu::adapted_linear::FrozenPart {
            product,
            weight: self.base.weight.clone(),
            dequantized,
        };
        Ok(cpu::adapted_linear::AdapterCall {
            frozen,
            a,
            b,
            scale: l.scale,
            mask,
            precision: call.precision,
        })
    }

    /// Folds the adapter into a dense f32 weight (inference fast path).
    pub fn merge(&mut self) -> Result<()> {
        let Some(l) = self.lora.take() else {
            return Ok(());
        };
        let dev = l.a.device().clone();
        let w = self.base.weight.dequantize(&dev)?;
        let delta =
            l.b.as_tensor()
                .matmul(l.a.as_tensor())?
                .affine(l.scale, 0.0)?;
        self.base.weight =
            crate::model::quant::frozen::FrozenWeight::Dense((&w + delta.to_dtype(w.dtype())?)?);
        Ok(())
    }
}

/// Inverted dropout's mask for `x` (0 or 1 / (1 - p), in x's dtype and on its device), seeded.
fn dropout_mask(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let mask = dropout_factors(x.elem_count(), p, seed);
    Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// `len` inverted-dropout factors (0 with probability `p`, else `1 / (1 - p)`) drawn from `seed`.
fn dropout_factors(len: usize, p: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..len)
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                keep as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_both_spellings() {
        assert_eq!(Target::parse("q"), Some(Target::Q));
        assert_eq!(Target::parse("down_proj"), Some(Target::Down));
        assert_eq!(Target::parse("lm_head"), None);
    }

    #[test]
    fn init_is_seeded_and_b_is_zero() {
        let spec = LoraSpec {
            targets: vec![Target::Q],
            rank: 4,
            alpha: 8.0,
            rslora: true,
            dropout: 0.0,
            seed: 1,
        };
        let a1 = LoraAdapter::init(16, 8, &spec, 7, &Device::Cpu).unwrap();
        let a2 = LoraAdapter::init(16, 8, &spec, 7, &Device::Cpu).unwrap();
        let v1 =
            a1.a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        assert_eq!(
            v1,
            a2.a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert!(v1.iter().all(|v| v.abs() <= 0.25) && v1.iter().any(|v| *v != 0.0));
        assert_eq!(
            a1.b.as_tensor()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert_eq!(spec.scale(), 4.0);
    }
}
