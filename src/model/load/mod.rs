//! Entry point for loading a model from disk: a safetensors directory, a bnb-4bit directory or a .gguf file.

pub mod bench_model;
pub mod builder;
pub mod gguf;
pub mod peft;
pub mod presets;
pub mod safetensors;

use std::path::Path;

use candle_core::Device;

use self::builder::build_decoder;
use self::gguf::GgufFile;
use self::safetensors::{SafetensorsFiles, checkpoint_files};
use crate::model::config::ModelConfig;
use crate::model::decoder::Decoder;
use crate::model::error::{ModelError, Result};
use crate::model::quant::weights::Quant;

fn is_pickle(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("bin" | "pt" | "pth" | "pkl" | "ckpt")
    )
}

/// The model's dimensions as its files state them (a GGUF header, or `config.json` beside safetensors),
/// without reading any weight: what a preflight check needs.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    if path.is_file() {
        if is_pickle(path) {
            return Err(ModelError::PickleRefused {
                path: path.to_path_buf(),
            });
        }
        if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            let dir = path.parent().unwrap_or(Path::new("."));
            return sane(path, ModelConfig::from_hf_file(&dir.join("config.json"))?);
        }
        return sane(path, GgufFile::open(path)?.config()?);
    }
    sane(path, ModelConfig::from_hf_file(&path.join("config.json"))?)
}

/// `cfg`, unless its dimensions belong to no model.
fn sane(path: &Path, cfg: ModelConfig) -> Result<ModelConfig> {
    match cfg.absurd() {
        Some(why) => Err(ModelError::invalid(path, why)),
        None => Ok(cfg),
    }
}

/// Loads a model: a directory with `config.json` + safetensors (bnb-4bit weights are kept as stored;
/// other weights are stored per `quant`), or a `.gguf` file (tensors kept in their GGUF types).
pub fn load_model(path: &Path, quant: Quant, device: &Device) -> Result<Decoder> {
    if path.is_file() {
        if is_pickle(path) {
            return Err(ModelError::PickleRefused {
                path: path.to_path_buf(),
            });
        }
        if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            let cfg = read_config(path)?;
            let files = SafetensorsFiles::open(vec![path.to_path_buf()])?;
            return build_decoder(cfg, &files, quant, device);
        }
        let gguf = GgufFile::open(path)?;
        let cfg = sane(path, gguf.config()?)?;
        return build_decoder(cfg, &gguf, quant, device);
    }
    if !path.is_dir() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let files = checkpoint_files(path)?;
    let cfg = read_config(path)?;
    let st = SafetensorsFiles::open(files)?;
    build_decoder(cfg, &st, quant, device)
}
