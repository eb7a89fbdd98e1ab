//! AdamW (decoupled weight decay, as PyTorch's) whose moments and step count can be saved to and restored
//! from safetensors, so that a resumed run continues exactly; plus clipping by global gradient norm.

use std::borrow::Cow;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use safetensors::{Dtype, View};

use super::TrainError;
use crate::train::adamw::{AdamWStep, adamw_update, zero_moments};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// AdamW state for a fixed, ordered list of named parameters.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    /// Per parameter, its first and second moments stacked `[2, ..]` (see `model::adamw`).
    moments: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Result<Self, TrainError> {
        Ok(AdamW {
            config,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            moments: params
                .iter()
                .map(|(_, v)| zero_moments(v.as_tensor()))
                .collect::<Result<_, _>>()?,
            step: 0,
        })
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Counts a step and gives its constants at learning rate `lr`.
    fn next_update(&mut self, lr: f64) -> AdamWStep {
        self.step += 1;
        let c = self.config;
        AdamWStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            t: self.step as i32,
        }
    }

    /// One update of every parameter with its gradient (same order as at construction) at learning rate `lr`.
    fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &[Tensor],
        lr: f64,
    ) -> Result<(), TrainError> {
        let update = self.next_update(lr);
        for ((_, var), (g, moments)) in params.iter().zip(grads.iter().zip(&self.moments)) {
            adamw_update(var.as_tensor(), g, moments, &update)?;
        }
        Ok(())
    }

    /// One update from gradients summed over `micro` micro-batches (same order as at construction): their
    /// mean, clipped to a global norm of `max_norm`, steps every parameter at `lr`. Returns the mean's
    /// global norm before clipping; where it is not finite, nothing is updated and the step is not counted.
    /// On CUDA the whole update is a few multi-tensor launches and one read of the norm.
    pub fn step_summed(
        &mut self,
        params: &[(String, Var)],
        sums: Vec<Tensor>,
        micro: usize,
        max_norm: Option<f64>,
        lr: f64,
    ) -> Result<f64, TrainError> {
        let micro = micro.max(1) as f64;
        #[cfg(feature = "cuda")]
        if sums.first().is_some_and(|g| g.device().is_cuda()) {
            return self.step_summed_cuda(params, sums, micro, max_norm, lr);
        }
        let mut grads = sums
            .iter()
            .map(|g| g / micro)
            .collect::<Result<Vec<_>, _>>()?;
        let norm = clip_grad_norm(&mut grads, max_norm)?;
        if norm.is_finite() {
            self.step(params, &grads, lr)?;
        }
        Ok(norm)
    }

    #[cfg(feature = "cuda")]
    fn step_summed_cuda(
        &mut self,
        params: &[(String, Var)],
        sums: Vec<Tensor>,
        micro: f64,
        max_norm: Option<f64>,
        lr: f64,
    ) -> Result<f64, TrainError> {
        use crate::model::kernels::cuda::multi_tensor;
        let sums = contiguous(sums)?;
        let sumsq = multi_tensor::sum_of_squares(&sums)?;
        let update = self.next_update(lr);
        let constants = multi_tensor::AdamWConstants {
            betas: (update.beta1 as f32, update.beta2 as f32),
            step: update.constants(),
            inv_micro: 1.0 / micro,
            max_norm,
        };
        let tensors: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        multi_tensor::adamw(&tensors, &sums, &self.moments, &sumsq, &constants)?;
        let norm = multi_tensor::read(&sumsq)?.sqrt() / micro;
        if !norm.is_finite() {
            self.step -= 1;
        }
        Ok(norm)
    }

    /// The state as safetensors bytes: `m.<name>`, `v.<name>` and the step count in the metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, TrainError> {
        let mut views = Vec::with_capacity(self.names.len() * 2);
        for (name, moments) in self.names.iter().zip(&self.moments) {
            views.push((format!("m.{name}"), F32View::new(&moments.get(0)?)?));
            views.push((format!("v.{name}"), F32View::new(&moments.get(1)?)?));
        }
        let meta = HashMap::from([("step".to_string(), self.step.to_string())]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| TrainError::State(format!("optimizer state: {e}")))
    }

    /// Restore state written by [`Self::to_safetensors`] for the same parameters.
    pub fn from_safetensors(
        bytes: &[u8],
        params: &[(String, Var)],
        config: AdamWConfig,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let bad = |what: String| TrainError::State(format!("optimizer state: {what}"));
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step count".to_string()))?;
        let mut tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        let mut take = |key: String, var: &Var| -> Result<Tensor, TrainError> {
            let t = tensors
                .remove(&key)
                .ok_or_else(|| bad(format!("missing {key}")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "{key} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            Ok(t)
        };
        let mut moments = Vec::new();
        for (name, var) in params {
            let (m, v) = (
                take(format!("m.{name}"), var)?,
                take(format!("v.{name}"), var)?,
            );
            moments.push(Tensor::stack(&[m, v], 0)?.to_dtype(DType::F32)?);
        }
        Ok(AdamW {
            config,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            moments,
            step,
        })
    }
}

/// Adds a micro-batch's gradients `grads` to the running `sums` (same order); on CUDA in place, in a few
/// multi-tensor launches.
pub fn accumulate(sums: Vec<Tensor>, grads: Vec<Tensor>) -> Result<Vec<Tensor>, TrainError> {
    #[cfg(feature = "cuda")]
    if sums.first().is_some_and(|g| g.device().is_cuda()) {
        let sums = contiguous(sums)?;
        crate::model::kernels::cuda::multi_tensor::add_into(&sums, &contiguous(grads)?)?;
        return Ok(sums);
    }
    Ok(sums
        .iter()
        .zip(&grads)
        .map(|(a, g)| a + g)
        .collect::<Result<_, _>>()?)
}

/// The tensors, each contiguous (copied only where it is not).
#[cfg(feature = "cuda")]
fn contiguous(ts: Vec<Tensor>) -> Result<Vec<Tensor>, TrainError> {
    Ok(ts
        .into_iter()
        .map(|t| t.contiguous())
        .collect::<Result<_, _>>()?)
}

/// Scale `grads` so that their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> Result<f64, TrainError> {
    // One transfer for all the tensors' sums (each `to_scalar` waits for the device).
    let sums = grads
        .iter()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64))
        .collect::<Result<Vec<_>, _>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let norm = Tensor::stack(&sums, 0)?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt();
    if let Some(max) = max_norm
        && norm > max
    {
        let scale = max / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// An f32 tensor's bytes, viewable by the safetensors crate.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(t: &Tensor) -> Result<Self, TrainError> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(F32View {
            shape: t.dims().to_vec(),
            bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(values: &[f32]) -> Vec<(String, Var)> {
        vec![(
            "w".to_string(),
            Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap(),
        )]
    }

    #[test]
    fn first_step_matches_the_adamw_formula() {
        let p = param(&[1.0, -2.0]);
        let mut opt = AdamW::new(&p, AdamWConfig::with_weight_decay(0.1)).unwrap();
        let g = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap();
        opt.step(&p, &[g], 0.01).unwrap();
        let got = p[0].1.as_tensor().to_vec1::<f32>().unwrap();
        // m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps), after decay by (1 - lr*wd).
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn saved_state_resumes_bitwise() {
        let cfg = AdamWConfig::with_weight_decay(0.01);
        let grads = |k: f32| vec![Tensor::new(&[0.3f32 * k, -0.7, 0.1], &Device::Cpu).unwrap()];
        let a = param(&[0.1, 0.2, 0.3]);
        let mut opt_a = AdamW::new(&a, cfg).unwrap();
        for k in 0..3 {
            opt_a.step(&a, &grads(k as f32), 1e-2).unwrap();
        }
        let b = param(&[0.1, 0.2, 0.3]);
        let mut opt_b = AdamW::new(&b, cfg).unwrap();
        opt_b.step(&b, &grads(0.0), 1e-2).unwrap();
        let bytes = opt_b.to_safetensors().unwrap();
        let mut opt_b = AdamW::from_safetensors(&bytes, &b, cfg, &Device::Cpu).unwrap();
        assert_eq!(opt_b.steps_taken(), 1);
        for k in 1..3 {
            opt_b.step(&b, &grads(k as f32), 1e-2).unwrap();
        }
        assert_eq!(
            a[0].1.as_tensor().to_vec1::<f32>().unwrap(),
            b[0].1.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        assert_eq!(clip_grad_norm(&mut g, Some(1.0)).unwrap(), 5.0);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5,
            "{v:?}"
        );
        let mut h = vec![Tensor::new(&[0.3f32, 0.4], &Device::Cpu).unwrap()];
        clip_grad_norm(&mut h, Some(1.0)).unwrap();
        assert_eq!(h[0].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
    }

    #[test]
    fn state_for_other_parameters_is_refused() {
        let a = param(&[0.1, 0.2]);
        let bytes = AdamW::new(&a, AdamWConfig::with_weight_decay(0.0))
            .unwrap()
            .to_safetensors()
            .unwrap();
        let other = param(&[0.1, 0.2, 0.3]);
        let err = AdamW::from_safetensors(
            &bytes,
            &other,
            AdamWConfig::with_weight_decay(0.0),
            &Device::Cpu,
        );
        assert!(err.unwrap_err().to_string().contains("shape"));
    }
}
