//! Devices: opening one by name (`cpu`, `cuda`, `cuda:N`) and the dtype it computes in (bf16 on CUDA, f32
//! on the CPU; LoRA weights and optimizer state stay f32 everywhere); with the `cuda` feature, the CUDA
//! memory pool's settings and peak, and a VRAM sampler.

#[cfg(feature = "cuda")]
mod cuda_pool;
#[cfg(feature = "cuda")]
mod vram;
#[cfg(feature = "cuda")]
pub use cuda_pool::{allocated_peak, reset_allocated_peak};
#[cfg(feature = "cuda")]
pub use vram::VramPeak;

use candle_core::{DType, Device};

use crate::model::error::{ModelError, Result};

/// The dtype activations and dequantized frozen weights use on `device`.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Opens a device by name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.to_ascii_lowercase().as_str() {
        "cuda" | "gpu" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ModelError::Usage(format!(
                    "unknown device `{name}`; expected `cpu`, `cuda` or `cuda:N` (N = 0, 1, ...)"
                ))
            })?,
    };
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Usage(format!(
            "device `{name}` needs a qlab built with the `cuda` feature (cargo build --release --features cuda; see the README's CUDA section)"
        )));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        ModelError::Usage(format!("cannot open CUDA device {ordinal} (`{name}`): {e}"))
    })?;
    #[cfg(feature = "cuda")]
    cuda_pool::keep_freed_memory(&device)?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_refused_with_the_expected_forms() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(compute_dtype(&Device::Cpu), DType::F32);
        let err = parse_device("tpu:0").unwrap_err().to_string();
        assert!(err.contains("`cpu`, `cuda` or `cuda:N`"), "{err}");
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
