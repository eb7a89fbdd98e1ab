//! Hugging Face checkpoints in safetensors (single file or sharded with an index), including
//! bitsandbytes 4-bit checkpoints (unsloth `*-bnb-4bit`), whose NF4 weights are taken as stored.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::model::error::{ModelError, Result};
use crate::model::quant::frozen::FrozenWeight;
use crate::model::quant::nf4::Nf4Tensor;
use crate::model::quant::weights::{Quant, TensorSource};

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The safetensors files of one checkpoint, memory-mapped while the model is built.
pub struct SafetensorsFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

fn to_dtype(path: &Path, name: &str, d: Dtype) -> Result<DType> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        Dtype::F64 => DType::F64,
        other => {
            return Err(ModelError::invalid(
                path,
                format!("tensor `{name}` has unsupported dtype {other:?}"),
            ));
        }
    })
}

impl SafetensorsFiles {
    /// Opens and validates the given files (headers, offsets, file lengths).
    pub fn open(paths: Vec<PathBuf>) -> Result<Self> {
        let mut maps = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is opened read-only and only read while the model is built.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::corrupt(path, format!("not a valid safetensors file ({e})"))
            })?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                entries.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype: to_dtype(path, &name, view.dtype())?,
                        shape: view.shape().to_vec(),
                        start,
                        end: start + view.data().len(),
                    },
                );
            }
            maps.push(map);
        }
        Ok(Self {
            paths,
            maps,
            entries,
        })
    }

    /// Whether the checkpoint stores bitsandbytes 4-bit weights.
    pub fn is_bnb_4bit(&self) -> bool {
        self.entries
            .keys()
            .any(|k| k.ends_with(".quant_state.bitsandbytes__nf4"))
    }

    fn raw(&self, name: &str, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.file_of(name),
                name: name.to_string(),
            })?;
        let bytes = &self.maps[e.file][e.start..e.end];
        Ok(Tensor::from_raw_buffer(bytes, e.dtype, &e.shape, device)?)
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .get(name)
            .map(|e| &self.maps[e.file][e.start..e.end])
    }

    fn f32s(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .raw(name, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Builds an NF4 tensor from bitsandbytes' packed weight and quant-state tensors.
    fn bnb_nf4(&self, name: &str) -> Result<Option<Nf4Tensor>> {
        let Some(state) = self.bytes(&format!("{name}.quant_state.bitsandbytes__nf4")) else {
            return Ok(None);
        };
        let path = self.file_of(name);
        let bad = |what: String| {
            ModelError::invalid(&path, format!("bitsandbytes weight `{name}`: {what}"))
        };
        let json: serde_json::Value = serde_json::from_slice(state)
            .map_err(|e| bad(format!("quant_state is not JSON ({e})")))?;
        let dims: Vec<usize> = json["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            })
            .ok_or_else(|| bad("quant_state has no shape".into()))?;
        if json["quant_type"].as_str() != Some("nf4") || json["blocksize"].as_u64() != Some(64) {
            return Err(bad(format!(
                "expected quant_type nf4 with blocksize 64, got {json}"
            )));
        }
        let offset = json["nested_offset"].as_f64().ok_or_else(|| {
            bad("only double-quantized (nested) checkpoints are supported".into())
        })?;
        if json["nested_blocksize"].as_u64() != Some(256) {
            return Err(bad("expected nested_blocksize 256".into()));
        }
        let codes = self
            .bytes(name)
            .ok_or_else(|| bad("missing packed weight".into()))?
            .to_vec();
        let absmax_q = self
            .bytes(&format!("{name}.absmax"))
            .ok_or_else(|| bad("missing absmax".into()))?
            .to_vec();
        let quant_map = self.f32s(&format!("{name}.quant_map"))?;
        let nested_absmax = self.f32s(&format!("{name}.nested_absmax"))?;
        let absmax_code = self.f32s(&format!("{name}.nested_quant_map"))?;
        let n: usize = dims.iter().product();
        let blocks = n.div_ceil(64);
        if codes.len() != n.div_ceil(2)
            || absmax_q.len() != blocks
            || quant_map.len() != 16
            || absmax_code.len() != 256
            || nested_absmax.len() != blocks.div_ceil(256)
        {
            return Err(bad(format!("array sizes do not fit shape {dims:?}")));
        }
        let mut qm = [0f32; 16];
        qm.copy_from_slice(&quant_map);
        Ok(Some(Nf4Tensor {
            dims,
            codes,
            quant_map: qm,
            absmax_q,
            absmax_code,
            nested_absmax,
            absmax_offset: offset as f32,
        }))
    }
}

impl TensorSource for SafetensorsFiles {
    fn file_of(&self, name: &str) -> PathBuf {
        match self.entries.get(name) {
            Some(e) => self.paths[e.file].clone(),
            None => self.paths.first().cloned().unwrap_or_default(),
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(state) = self.bytes(&format!("{name}.quant_state.bitsandbytes__nf4")) {
            let json: serde_json::Value = serde_json::from_slice(state).ok()?;
            return json["shape"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            });
        }
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn dense(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.raw(name, device)?.to_dtype(DType::F32)?)
    }

    fn frozen(&self, name: &str, quant: Quant, device: &Device) -> Result<FrozenWeight> {
        if let Some(nf4) = self.bnb_nf4(name)? {
            return Ok(FrozenWeight::Nf4(Arc::new(nf4)));
        }
        let w = self.raw(name, device)?;
        quant.apply(w, &self.file_of(name), name)
    }

    fn embedding(&self, name: &str, device: &Device) -> Result<FrozenWeight> {
        Ok(FrozenWeight::Dense(self.raw(name, device)?))
    }
}

/// The safetensors files of a checkpoint directory: `model.safetensors.index.json` shards or every `*.safetensors`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = crate::model::error::read_capped(&index, "safetensors index")?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&index, e))?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::invalid(&index, "no `weight_map` object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let mut pickles = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("safetensors") if !p.ends_with("adapter_model.safetensors") => files.push(p),
            Some("bin" | "pt" | "pth" | "pkl") => pickles.push(p),
            _ => {}
        }
    }
    files.sort();
    if files.is_empty() {
        return match pickles.into_iter().next() {
            Some(path) => Err(ModelError::PickleRefused { path }),
            None => Err(ModelError::invalid(
                dir,
                "no *.safetensors weights in this directory",
            )),
        };
    }
    Ok(files)
}
