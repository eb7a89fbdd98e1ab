//! The gated feed-forward product `act(gate) * up` (SwiGLU with silu, GeGLU with tanh gelu) in one sweep,
//! with its backward pass.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{cpu_slice, exp, simd, storage_slice};
use crate::model::config::Activation;
use crate::model::device::{two_written_in_parallel, written_in_parallel};

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// `sqrt(2 / pi)` of the tanh approximation of gelu.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// silu and its derivative at `g`.
#[inline(always)]
fn silu(g: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp(-g));
    (g * s, s * (1.0 + g * (1.0 - s)))
}

/// gelu (tanh approximation) and its derivative at `g`.
#[inline(always)]
fn gelu_tanh(g: f32) -> (f32, f32) {
    let u = GELU_C * (g + GELU_A * g * g * g);
    let th = u.tanh();
    let du = GELU_C * (1.0 + 3.0 * GELU_A * g * g);
    (
        0.5 * g * (1.0 + th),
        0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * du,
    )
}

pub(super) struct GatedProduct(pub(super) Activation);

/// `act(gate) * up`, written into a new vector without zero-filling it first.
fn forward_with(act: impl Fn(f32) -> (f32, f32) + Sync, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let n = gate.len();
    assert_eq!(up.len(), n, "gate and up of different lengths");
    let write = |i: usize, o: &mut [MaybeUninit<f32>]| {
        let at = i * CHUNK..i * CHUNK + o.len();
        let (g, u) = (&gate[at.clone()], &up[at]);
        simd(
            #[inline(always)]
            || {
                for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                    o.write(act(*g).0 * u);
                }
            },
        )
    };
    // SAFETY: each chunk is written whole, from the slices of gate and up of its length.
    unsafe { written_in_parallel(n, CHUNK, write) }
}

/// `d gate = dy * up * act'(gate)`, `d up = dy * act(gate)`, written into new vectors without zero-filling
/// them first.
fn backward_with(
    act: impl Fn(f32) -> (f32, f32) + Sync,
    gate: &[f32],
    up: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let n = gate.len();
    assert!(
        up.len() == n && dy.len() == n,
        "gate, up and dy of different lengths"
    );
    let write = |i: usize, dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]| {
        let at = i * CHUNK..i * CHUNK + dg.len();
        let (g, u, dy) = (&gate[at.clone()], &up[at.clone()], &dy[at]);
        simd(
            #[inline(always)]
            || {
                for ((((dg, du), g), u), dy) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dy) {
                    let (a, da) = act(*g);
                    dg.write(dy * u * da);
                    du.write(dy * a);
                }
            },
        )
    };
    // SAFETY: both chunks are written whole, from the slices of gate, up and dy of their length.
    unsafe { two_written_in_parallel(n, CHUNK, write) }
}

impl GatedProduct {
    pub(super) fn forward(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        // One sweep compiled per activation: a `match` inside the loop (one arm calling libm's `tanhf`)
        // keeps the whole loop scalar.
        match self.0 {
            Activation::Silu => forward_with(silu, gate, up),
            Activation::GeluTanh => forward_with(gelu_tanh, gate, up),
        }
    }

    /// `d gate = dy * up * act'(gate)`, `d up = dy * act(gate)`.
    pub(super) fn backward(&self, gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        match self.0 {
            Activation::Silu => backward_with(silu, gate, up, dy),
            Activation::GeluTanh => backward_with(gelu_tanh, gate, up, dy),
        }
    }
}

impl CustomOp2 for GatedProduct {
    fn name(&self) -> &'static str {
        "gated-product"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            candle_core::bail!(
                "gated product: gate {:?} and up {:?} differ",
                gl.shape(),
                ul.shape()
            )
        }
        let out = self.forward(
            cpu_slice(g, gl, self.name())?,
            cpu_slice(u, ul, self.name())?,
        );
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (dg, du) = {
            let name = self.name();
            let (gs, gl) = gate.storage_and_layout();
            let (us, ul) = up.storage_and_layout();
            let (ds, dl) = grad.storage_and_layout();
            self.backward(
                storage_slice(&gs, gl, name)?,
                storage_slice(&us, ul, name)?,
                storage_slice(&ds, dl, name)?,
            )
        };
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// `act(gate) * up`, differentiable in both. CPU f32 only (see [`super::applies`]).
pub fn gated_product(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2(&up.contiguous()?, GatedProduct(activation))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::super::test_util::{random, rel_err};
    use super::*;

    #[test]
    fn matches_composition_for_both_activations() {
        let up0 = random(&[5, 33], 2);
        let w = random(&[5, 33], 3);
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let gate = Var::from_tensor(&random(&[5, 33], 1).affine(4.0, 0.0).unwrap()).unwrap();
            let up = Var::from_tensor(&up0).unwrap();
            let fused = gated_product(&gate, &up, activation).unwrap();
            let a = match activation {
                Activation::Silu => gate.silu().unwrap(),
                Activation::GeluTanh => gate.gelu().unwrap(),
            };
            let refr = (a * up.as_tensor()).unwrap();
            assert!(rel_err(&fused, &refr) < 1e-5, "{activation:?}");
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&gate, &up] {
                let e = rel_err(gf.get(x).unwrap(), gr.get(x).unwrap());
                assert!(e < 1e-5, "{activation:?}: gradient relative error {e}");
            }
        }
    }
}
