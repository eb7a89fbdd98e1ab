//! Which keys each query of an attention call sees (causal after the cached positions, padded keys, an
//! optional sliding window), kept as that description: the CUDA flash kernels compute it on the fly from
//! the keys' flags, and the additive dense mask the other paths read is built only when one asks for it
//! (at 16k tokens it would be a 512 MiB tensor per call).

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor};

/// The keys seen by `t` new queries after `past` cached positions, for each row of a batch.
#[derive(Debug)]
pub struct AttentionMask {
    /// `[b][past + t]`: whether key j is a real token.
    valid: Vec<Vec<bool>>,
    past: usize,
    t: usize,
    window: Option<usize>,
    device: Device,
    /// The dtype of the dense mask (the compute dtype).
    dtype: DType,
    dense: OnceLock<Tensor>,
    flags: OnceLock<Tensor>,
}

impl AttentionMask {
    /// `valid[b][j]`: whether key j (cache index) of row b is a real token; every row holds `past + t`.
    pub fn new(
        valid: Vec<Vec<bool>>,
        (past, t): (usize, usize),
        window: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if valid.iter().any(|r| r.len() != past + t) {
            candle_core::bail!("key mask rows must hold cached + new = {} keys", past + t)
        }
        Ok(Self {
            valid,
            past,
            t,
            window,
            device: device.clone(),
            dtype,
            dense: OnceLock::new(),
            flags: OnceLock::new(),
        })
    }

    /// The same keys seen through a sliding window of `window` positions.
    pub fn windowed(&self, window: usize) -> Result<Self> {
        Self::new(
            self.valid.clone(),
            (self.past, self.t),
            Some(window),
            &self.device,
            self.dtype,
        )
    }

    /// Cached positions before the new queries.
    pub fn past(&self) -> usize {
        self.past
    }

    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// The additive mask `[b, 1, t, past + t]` in the compute dtype. Below f32 it is halved first: f32::MIN
    /// would round to -inf in bf16, and a fully padded query's row would be NaN.
    pub fn dense(&self) -> Result<Tensor> {
        if let Some(m) = self.dense.get() {
            return Ok(m.clone());
        }
        let m = additive_mask(&self.valid, self.past, self.t, self.window, &self.device)?;
        let m = match self.dtype {
            DType::F32 => m,
            dtype => (m * 0.5)?.to_dtype(dtype)?,
        };
        Ok(self.dense.get_or_init(|| m).clone())
    }

    /// The keys' flags `[b, past + t]` (u8, 1 for a real token) on the device.
    pub fn flags(&self) -> Result<Tensor> {
        if let Some(f) = self.flags.get() {
            return Ok(f.clone());
        }
        let b = self.valid.len();
        let flat: Vec<u8> = self.valid.iter().flatten().map(|&v| v as u8).collect();
        let f = Tensor::from_vec(flat, (b, self.past + self.t), &self.device)?;
        Ok(self.flags.get_or_init(|| f).clone())
    }
}

/// Additive attention mask `[b, 1, t, past + t]` (f32): causal, padded keys and (optionally) a sliding
/// window. `key_valid[b][j]` says whether key j (cache index) is a real token.
pub fn additive_mask(
    key_valid: &[Vec<bool>],
    past: usize,
    t: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = key_valid.len();
    let total = past + t;
    let mut m = vec![f32::MIN; b * t * total];
    // Each row opens its causal (and windowed) span with one fill, then closes the padded keys inside it:
    // a training batch's mask has millions of entries.
    for (bi, valid) in key_valid.iter().enumerate() {
        let padded: Vec<usize> = (0..total).filter(|&j| !valid[j]).collect();
        for (i, row) in m[bi * t * total..(bi + 1) * t * total]
            .chunks_exact_mut(total)
            .enumerate()
        {
            let q = past + i;
            let start = window.map_or(0, |w| (q + 1).saturating_sub(w.max(1)));
            row[start..=q].fill(0.0);
            for &j in padded.iter().filter(|&&j| (start..=q).contains(&j)) {
                row[j] = f32::MIN;
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, total), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_padded_and_windowed() {
        let dev = Device::Cpu;
        let m = additive_mask(&[vec![false, true, true, true]], 0, 4, Some(2), &dev).unwrap();
        let m = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let allowed: Vec<bool> = m.iter().map(|v| *v == 0.0).collect();
        // row 3 (query 3): keys 2, 3 inside the window of 2; key 0 is padding.
        assert_eq!(&allowed[12..16], &[false, false, true, true]);
        // row 1: key 0 padded, key 1 itself.
        assert_eq!(&allowed[4..8], &[false, true, false, false]);
    }

    #[test]
    fn the_dense_mask_is_built_once_and_halved_below_f32() {
        let valid = vec![vec![true, true, false], vec![true; 3]];
        let m = AttentionMask::new(valid, (1, 2), None, &Device::Cpu, DType::BF16).unwrap();
        let a = m.dense().unwrap();
        assert_eq!(a.dims(), &[2, 1, 2, 3]);
        assert_eq!(a.dtype(), DType::BF16);
        let v = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        let v = v.to_vec1::<f32>().unwrap();
        assert_eq!(v[0], 0.0);
        assert!(v[2] < -1e37 && v[2].is_finite(), "{}", v[2]);
        assert_eq!(a.id(), m.dense().unwrap().id());
        let f = m.flags().unwrap().to_vec2::<u8>().unwrap();
        assert_eq!(f, vec![vec![1, 1, 0], vec![1, 1, 1]]);
        assert!(
            AttentionMask::new(vec![vec![true]], (1, 2), None, &Device::Cpu, DType::F32).is_err()
        );
    }
}
