//! Frozen base weights kept quantized in memory, and the linear layer whose backward never builds a dense dW.
//!
//! Forward computes `y = x.detach() @ dequant(W)^T` outside the autograd graph, then attaches `y` to `x`
//! (`attach`) with a backward that returns only `grad_x = grad_y @ dequant(W)`.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::nf4::Nf4Tensor;
use crate::model::autograd::attach::{Backward, attach};

/// Above this many elements a weight is dequantized and multiplied in row chunks (vocabulary heads).
const CHUNK_ELEMS: usize = 1 << 25;

/// The same on a GPU, where the MLP weights of 7-9B models (up to ~60M elements) are dequantized whole to
/// bf16: the backward then reuses the forward's copy, and no partial products are concatenated or summed.
#[cfg(feature = "cuda")]
const GPU_CHUNK_ELEMS: usize = 1 << 27;

/// A frozen weight `[out_features, in_features]`, kept as loaded.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// Unquantized (f32 / bf16 / f16 as stored).
    Dense(Tensor),
    /// A GGUF block-quantized tensor (Q4_0, Q4_1, Q8_0, K-quants ...).
    Ggml(Arc<QTensor>),
    /// NF4 with double quantization.
    Nf4(Arc<Nf4Tensor>),
    /// cuda hook: NF4 resident on a CUDA device (same layout), dequantized there by a kernel.
    #[cfg(feature = "cuda")]
    Nf4Cuda(Arc<super::Nf4Cuda>),
}

impl FrozenWeight {
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Self::Dense(t) => t.dims2(),
            Self::Ggml(q) => q.shape().dims2(),
            Self::Nf4(n) => match n.dims.as_slice() {
                [a, b] => Ok((*a, *b)),
                d => candle_core::bail!("nf4 weight must be 2-d, got {d:?}"),
            },
            #[cfg(feature = "cuda")]
            Self::Nf4Cuda(n) => match n.dims.as_slice() {
                [a, b] => Ok((*a, *b)),
                d => candle_core::bail!("nf4 weight must be 2-d, got {d:?}"),
            },
        }
    }

    /// Bytes this weight occupies in memory.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Self::Ggml(q) => q.storage_size_in_bytes(),
            Self::Nf4(n) => n.storage_bytes(),
            #[cfg(feature = "cuda")]
            Self::Nf4Cuda(n) => n.storage_bytes(),
        }
    }

    /// A short name of the storage type ("nf4", "q4_1", "f32" ...).
    pub fn kind(&self) -> String {
        match self {
            Self::Dense(t) => format!("{:?}", t.dtype()).to_lowercase(),
            Self::Ggml(q) => format!("{:?}", q.dtype()).to_lowercase(),
            Self::Nf4(_) => "nf4".into(),
            #[cfg(feature = "cuda")]
            Self::Nf4Cuda(_) => "nf4".into(),
        }
    }

    /// The whole weight in the device's compute dtype.
    pub fn dequantize(&self, device: &Device) -> candle_core::Result<Tensor> {
        let (rows, _) = self.dims2()?;
        self.dequantize_rows(0, rows, device)
    }

    /// Rows `[start, start + len)` as a tensor `[len, in_features]` in the device's compute dtype
    /// (f32 on the CPU, bf16 on CUDA: `device::compute_dtype`).
    pub fn dequantize_rows(
        &self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (rows, cols) = self.dims2()?;
        let compute = crate::model::device::compute_dtype(device);
        match self {
            Self::Dense(t) => {
                let t = if start == 0 && len == rows {
                    t.clone()
                } else {
                    t.narrow(0, start, len)?
                };
                t.to_dtype(compute)
            }
            #[cfg(feature = "cuda")]
            Self::Nf4Cuda(n) => n.dequantize_rows(start, len, compute),
            #[cfg(feature = "cuda")]
            Self::Nf4(n) if device.is_cuda() => {
                super::Nf4Cuda::upload(n, device)?.dequantize_rows(start, len, compute)
            }
            Self::Nf4(n) => {
                let mut buf = vec![0f32; len * cols];
                n.dequantize_rows_into(start, &mut buf);
                Tensor::from_vec(buf, (len, cols), device)
            }
            Self::Ggml(q) if start == 0 && len == rows && !fast_f32(q, device) => {
                q.dequantize(device)?.to_dtype(compute)
            }
            Self::Ggml(q) => {
                let dtype = q.dtype();
                let row_bytes = cols / dtype.block_size() * dtype.type_size();
                let data = q.data()?;
                let slice = &data[start * row_bytes..(start + len) * row_bytes];
                if fast_f32(q, device)
                    && let Some(values) = super::dequant::dequantize(dtype, slice)
                {
                    return Tensor::from_vec(values, (len, cols), device);
                }
                let storage = QStorage::from_data(Cow::Borrowed(slice), &q.device(), dtype)?;
                QTensor::new(storage, (len, cols))?
                    .dequantize(device)?
                    .to_dtype(compute)
            }
        }
    }

    /// Quantizes an f32/bf16 weight to a GGUF type.
    pub fn quantize_ggml(w: &Tensor, dtype: GgmlDType) -> candle_core::Result<Self> {
        Ok(Self::Ggml(Arc::new(QTensor::quantize(
            &w.to_dtype(DType::F32)?,
            dtype,
        )?)))
    }

    /// Quantizes an f32/bf16 weight to NF4 with double quantization.
    pub fn quantize_nf4(w: &Tensor) -> candle_core::Result<Self> {
        #[cfg(feature = "cuda")]
        if w.device().is_cuda() {
            return Ok(Self::Nf4Cuda(Arc::new(super::Nf4Cuda::quantize(w)?)));
        }
        let dims = w.dims().to_vec();
        let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::Nf4(Arc::new(Nf4Tensor::quantize(&values, dims))))
    }

    /// The whole weight in the device's compute dtype when it is small enough to dequantize at once.
    pub fn dequantize_whole(&self, device: &Device) -> candle_core::Result<Option<Tensor>> {
        match self.row_chunks()?.len() {
            1 => self.dequantize(device).map(Some),
            _ => Ok(None),
        }
    }

    /// Whole weights of one width one under the other, `[sum of rows, in]` in the device's compute dtype (the
    /// weight of projections that share an input), when each is small enough to dequantize at once; with `tail`
    /// (`[sum of rows, c]`), each row continues with the tail's: `[sum of rows, in + c]`. NF4 weights on a GPU are
    /// dequantized straight into their rows of the result; others are concatenated.
    pub fn dequantize_stacked(
        weights: &[&Self],
        device: &Device,
        tail: Option<&Tensor>,
    ) -> candle_core::Result<Option<Tensor>> {
        for w in weights {
            if w.row_chunks()?.len() != 1 {
                return Ok(None);
            }
        }
        #[cfg(feature = "cuda")]
        {
            let nf4: Vec<_> = weights
                .iter()
                .filter_map(|w| match w {
                    Self::Nf4Cuda(n) => Some(n.as_ref()),
                    _ => None,
                })
                .collect();
            let several = weights.len() > 1 || tail.is_some();
            if several && nf4.len() == weights.len() && device.is_cuda() {
                return super::nf4_cuda::dequantize_stacked(&nf4, tail).map(Some);
            }
        }
        let mut parts = weights
            .iter()
            .map(|w| w.dequantize(device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let stacked = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        match tail {
            Some(t) => {
                let t = t.to_dtype(stacked.dtype())?;
                Tensor::cat(&[stacked, t], 1).map(Some)
            }
            None => Ok(Some(stacked)),
        }
    }

    /// Row chunks `(start, len)` small enough to dequantize at once.
    pub(crate) fn row_chunks(&self) -> candle_core::Result<Vec<(usize, usize)>> {
        let (rows, cols) = self.dims2()?;
        let limit = match self {
            #[cfg(feature = "cuda")]
            Self::Nf4Cuda(_) => GPU_CHUNK_ELEMS,
            // Already in the compute dtype: chunks would only add copies and sums.
            Self::Dense(t) if t.dtype() == crate::model::device::compute_dtype(t.device()) => {
                usize::MAX
            }
            _ => CHUNK_ELEMS,
        };
        let per = (limit / cols.max(1)).max(1);
        Ok((0..rows)
            .step_by(per)
            .map(|s| (s, per.min(rows - s)))
            .collect())
    }

    /// `x @ W^T` for a 2-d `x` `[m, in]`, without autograd.
    pub fn matmul_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let chunks = self.row_chunks()?;
        let dev = x.device();
        if chunks.len() == 1 {
            return x.matmul(&self.dequantize(dev)?.t()?);
        }
        let parts = chunks
            .iter()
            .map(|&(s, l)| x.matmul(&self.dequantize_rows(s, l, dev)?.t()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    /// `g @ W` for a 2-d `g` `[m, out]`, without autograd.
    pub fn matmul(&self, g: &Tensor) -> candle_core::Result<Tensor> {
        let dev = g.device();
        let mut acc: Option<Tensor> = None;
        for (s, l) in self.row_chunks()? {
            // contiguous: cuBLAS (CUDA) takes no row stride other than the width.
            let part = g
                .narrow(1, s, l)?
                .contiguous()?
                .matmul(&self.dequantize_rows(s, l, dev)?)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("empty frozen weight".into()))
    }
}

/// Whether `quant::dequant` converts `q` for `device`: both on the CPU (compute dtype f32), a type it
/// knows.
fn fast_f32(q: &QTensor, device: &Device) -> bool {
    device.is_cpu() && q.device().is_cpu() && super::dequant::converts(q.dtype())
}

/// The backward of a frozen product `y = x @ W^T`: `grad_x = grad_y @ W` only, never a dense dW.
/// Holds the dequantized weight of the forward (when it was small enough to dequantize whole) so the
/// backward, which follows within the same checkpointed block, does not dequantize again.
struct FrozenMatmulBackward {
    weight: FrozenWeight,
    dequantized: Option<Tensor>,
}

impl Backward for FrozenMatmulBackward {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn grad(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Tensor> {
        let out = grad_y.dim(candle_core::D::Minus1)?;
        let g2 = grad_y.reshape(((), out))?.contiguous()?;
        let gx = match &self.dequantized {
            Some(w) => g2.matmul(w)?,
            None => self.weight.matmul(&g2)?,
        };
        gx.reshape(x.shape())
    }
}

/// A frozen linear layer `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    pub weight: FrozenWeight,
    pub bias: Option<Tensor>,
}

impl FrozenLinear {
    pub fn new(weight: FrozenWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims2().map(|d| d.0).unwrap_or(0)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (y, dequantized) = self.product(x)?;
        self.attach(x, y, dequantized)
    }

    /// This layer with its weight dequantized whole to the compute dtype of `device`, for a run of products
    /// that would each dequantize it again (a vocabulary head applied chunk by chunk); None when the weight
    /// is in that dtype already or too large to dequantize at once.
    pub fn dequantized(&self, device: &Device) -> candle_core::Result<Option<Self>> {
        if let FrozenWeight::Dense(w) = &self.weight
            && w.dtype() == crate::model::device::compute_dtype(device)
        {
            return Ok(None);
        }
        Ok(self.weight.dequantize_whole(device)?.map(|w| Self {
            weight: FrozenWeight::Dense(w),
            bias: self.bias.clone(),
        }))
    }

    /// `x @ W^T` without bias or autograd, and the dequantized weight when it was dequantized whole.
    pub fn product(&self, x: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (_, inp) = self.weight.dims2()?;
        let mut out_dims = x.dims().to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_features();
        let x2 = x.detach().reshape(((), inp))?;
        let (y, dequantized) = match self.weight.dequantize_whole(x.device())? {
            Some(w) => (x2.matmul(&w.t()?)?, Some(w)),
            None => (self.weight.matmul_t(&x2)?, None),
        };
        Ok((y.reshape(out_dims)?, dequantized))
    }

    /// Connects a product `y = x @ W^T` (computed now or saved from an identical earlier pass) to `x`'s
    /// graph and adds the bias.
    pub fn attach(
        &self,
        x: &Tensor,
        y: Tensor,
        dequantized: Option<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let y = attach(
            x,
            y,
            FrozenMatmulBackward {
                weight: self.weight.clone(),
                dequantized,
            },
        )?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::max_abs_diff;
    use candle_core::Var;

    #[test]
    fn backward_matches_dense_and_gives_no_weight_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 64), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap()).unwrap();
        for weight in [
            FrozenWeight::Dense(w.clone()),
            FrozenWeight::quantize_nf4(&w).unwrap(),
            FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0).unwrap(),
        ] {
            let deq = weight.dequantize(&dev).unwrap();
            let lin = FrozenLinear::new(weight, None);
            let y = lin.forward(x.as_tensor()).unwrap();
            let dense = x.as_tensor().broadcast_matmul(&deq.t().unwrap()).unwrap();
            let diff = max_abs_diff(&y, &dense);
            assert!(diff < 1e-4, "forward diff {diff}");
            let gy = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gd = dense.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let a = gy.get(x.as_tensor()).unwrap();
            let b = gd.get(x.as_tensor()).unwrap();
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-3, "grad diff {diff}");
            assert!(gy.get(&deq).is_none());
        }
    }

    #[test]
    fn a_dequantized_copy_gives_the_same_products() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 32), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 32), &dev).unwrap();
        let q = FrozenLinear::new(
            FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0).unwrap(),
            None,
        );
        let dense = q.dequantized(&dev).unwrap().unwrap();
        assert!(matches!(&dense.weight, FrozenWeight::Dense(t) if t.dtype() == DType::F32));
        let (a, b) = (q.forward(&x).unwrap(), dense.forward(&x).unwrap());
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        assert!(dense.dequantized(&dev).unwrap().is_none());
    }

    #[test]
    fn chunked_rows_match_whole_weight() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 32), &dev).unwrap();
        let q = FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0).unwrap();
        let whole = q.dequantize(&dev).unwrap();
        let rows = q.dequantize_rows(10, 20, &dev).unwrap();
        assert_eq!(max_abs_diff(&whole.narrow(0, 10, 20).unwrap(), &rows), 0.0);
        // The same through candle's own dequantization (which `quant::dequant` replaces on the CPU).
        let FrozenWeight::Ggml(qt) = &q else {
            unreachable!()
        };
        let candle = qt.dequantize(&dev).unwrap();
        assert_eq!(max_abs_diff(&whole, &candle), 0.0);
    }
}
