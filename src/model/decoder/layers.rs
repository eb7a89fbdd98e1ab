//! Differentiable building blocks of the decoder: RMSNorm, rotary embeddings, soft-capping, key masks.
//! Only ops with a correct backward are used (see CANDLE-NOTES: fused candle ops cut the graph).

use candle_core::{D, DType, Device, Result, Tensor};

use crate::model::autograd::attach::{Backward, attach};
use crate::model::config::ModelConfig;

/// RMSNorm with its effective weight (Gemma's 1 + w already folded in at load).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// Computed in f32 whatever the activations' dtype, returned in that dtype; one fused kernel each way on
    /// CUDA and on the CPU in f32 (`kernels::cpu::rms_norm`: the composition below is about fifteen candle
    /// ops, forward and backward, each a parallel sweep of its own).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::model::kernels::fused_rms_norm(x, &self.weight, self.eps)? {
            return Ok(y);
        }
        if crate::model::kernels::cpu::applies(x) {
            return crate::model::kernels::cpu::rms_norm::rms_norm(x, &self.weight, self.eps);
        }
        let xf = x.to_dtype(DType::F32)?;
        let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.to_dtype(x.dtype())
    }

    /// The same through candle's fused kernel, which has no backward: only for passes that need no gradient
    /// (generation, the checkpointed first pass). On CUDA, this crate's bf16 kernel (no casts).
    pub fn forward_no_grad(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::model::kernels::fused_rms_norm(&x.detach(), &self.weight, self.eps)?
        {
            return Ok(y);
        }
        if crate::model::kernels::cpu::applies(x)
            && crate::model::kernels::cpu::applies(&self.weight)
        {
            return crate::model::kernels::cpu::rms_norm::rms_norm_no_grad(
                x,
                &self.weight,
                self.eps,
            );
        }
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::ops::rms_norm(&xf, &self.weight, self.eps as f32)?.to_dtype(x.dtype())
    }
}

/// Inverse rotary frequencies, with Llama 3.1 scaling or GGUF frequency factors applied.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let mut inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    if let Some(s) = cfg.rope_scaling {
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        for f in inv.iter_mut() {
            let freq = *f as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            *f = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * freq / s.factor + smooth * freq
            } as f32;
        }
    }
    if let Some(factors) = &cfg.rope_freq_factors {
        for (f, k) in inv.iter_mut().zip(factors) {
            *f /= k;
        }
    }
    inv
}

/// cos and sin tables `[b, 1, t, head_dim / 2]` for the given positions `[b, t]`.
pub fn rope_tables(
    cfg: &ModelConfig,
    positions: &[Vec<u32>],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv = inv_freq(cfg);
    let b = positions.len();
    let t = positions.first().map_or(0, Vec::len);
    let half = inv.len();
    let mut cos = Vec::with_capacity(b * t * half);
    let mut sin = Vec::with_capacity(b * t * half);
    for row in positions {
        for &p in row {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (b, 1, t, half), device)?,
        Tensor::from_vec(sin, (b, 1, t, half), device)?,
    ))
}

/// Applies rotary embeddings to `x` `[b, h, t, d]`: half split (HF) or interleaved pairs (GGUF llama).
/// candle's fused kernel forward; the backward rotates the gradient back (the same kernel with `-sin`).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let y = apply_rope_no_grad(&x.detach().contiguous()?, cos, sin, interleaved)?;
    attach(
        x,
        y,
        RopeBackward {
            cos: cos.clone(),
            neg_sin: sin.neg()?,
            interleaved,
        },
    )
}

/// A rotation's gradient is the inverse rotation of the output's gradient.
struct RopeBackward {
    cos: Tensor,
    neg_sin: Tensor,
    interleaved: bool,
}

impl Backward for RopeBackward {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn grad(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        apply_rope_no_grad(
            &grad_y.contiguous()?,
            &self.cos,
            &self.neg_sin,
            self.interleaved,
        )
    }
}

/// [`apply_rope`] through candle's fused kernels, which have no backward: only for passes that need no
/// gradient. `x` must be contiguous.
pub fn apply_rope_no_grad(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    let (cos, sin) = (cos.squeeze(1)?, sin.squeeze(1)?);
    if interleaved {
        candle_nn::rotary_emb::rope_i(x, &cos, &sin)
    } else {
        candle_nn::rotary_emb::rope(x, &cos, &sin)
    }
}

/// Tanh soft-capping `cap * tanh(x / cap)` (Gemma 2).
pub fn softcap(x: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => (x / c)?.tanh()? * c,
        None => Ok(x.clone()),
    }
}

/// Reads a `[b, n]` 0/1 mask (any integer or float dtype) into rows of booleans.
pub fn mask_rows(mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0.0).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::model::test_support::max_abs_diff;

    /// On the CPU in f32, the fused kernel: the composition's values and input gradient.
    #[test]
    fn rms_norm_on_the_cpu_matches_the_composition() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 24), &dev).unwrap()).unwrap();
        let norm = RmsNorm {
            weight: Tensor::randn(0f32, 1.0, 24, &dev).unwrap(),
            eps: 1e-5,
        };
        let probe = Tensor::randn(0f32, 1.0, (3, 5, 24), &dev).unwrap();
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = (x.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()))
            .unwrap()
            .broadcast_mul(&norm.weight)
            .unwrap();
        let fused = norm.forward(&x).unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let grad = |y: Tensor| {
            let store = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            store.get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_abs_diff(&grad(fused), &grad(composed)) < 1e-5);
    }
}
