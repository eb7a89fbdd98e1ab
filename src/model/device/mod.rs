//! Devices: opening the one a config names (`DeviceSpec`: `auto`, `cpu`, `cuda:N`) and the dtype it computes in (bf16 on CUDA, f32
//! on the CPU; LoRA weights and optimizer state stay f32 everywhere); with the `cuda` feature, the CUDA
//! memory pool's settings and peak, a VRAM sampler, and a step's timeline of host and device; the process's peak RSS on any build; and CPU
//! helpers: SIMD dispatch, new vectors written in parallel, and decoding's loops on a spinning pool.

#[cfg(feature = "cuda")]
mod cuda_pool;
mod rss;
mod simd;
mod spinning;
pub mod timeline;
#[cfg(feature = "cuda")]
mod vram;
mod written;
#[cfg(feature = "cuda")]
pub use cuda_pool::{allocated_peak, reset_allocated_peak};
#[cfg(feature = "cuda")]
pub use vram::VramPeak;

pub use rss::peak_rss_mib;
pub(crate) use simd::simd;
pub(crate) use spinning::{alone, for_each_chunk_mut, for_each_index};
pub(crate) use written::{two_written_in_parallel, written_in_parallel};

use candle_core::{DType, Device};

use crate::config::DeviceSpec;
use crate::model::error::{ModelError, Result};

/// The dtype activations and dequantized frozen weights use on `device`.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The device's total memory in bytes; None on the CPU (or when the driver cannot say).
pub fn total_memory(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(_, total)| total as u64),
        _ => None,
    }
}

/// This machine's memory in bytes (Linux `/proc/meminfo`, read once: every GPU training step asks); None where
/// it cannot be read.
pub fn host_memory_bytes() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib << 10)
    })
}

/// The device `auto` stands for in this build: the first GPU when qlab has CUDA, else the CPU; other
/// choices are kept.
pub fn resolve(spec: DeviceSpec) -> DeviceSpec {
    match spec {
        DeviceSpec::Auto if candle_core::utils::cuda_is_available() => DeviceSpec::Cuda(0),
        DeviceSpec::Auto => DeviceSpec::Cpu,
        other => other,
    }
}

/// Opens the device a config or command line names (`auto` as [`resolve`] says): the one conversion from
/// [`DeviceSpec`] to candle's device.
impl TryFrom<DeviceSpec> for Device {
    type Error = ModelError;

    fn try_from(spec: DeviceSpec) -> Result<Device> {
        let ordinal = match resolve(spec) {
            DeviceSpec::Cuda(n) => n,
            _ => return Ok(Device::Cpu),
        };
        if !cfg!(feature = "cuda") {
            return Err(ModelError::Usage(format!(
                "device `{spec}` needs a qlab built with the `cuda` feature (cargo build --release --features cuda; see the README's CUDA section)"
            )));
        }
        let device = Device::new_cuda(ordinal).map_err(|e| {
            ModelError::Usage(format!("cannot open CUDA device {ordinal} (`{spec}`): {e}"))
        })?;
        #[cfg(feature = "cuda")]
        cuda_pool::keep_freed_memory(&device)?;
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_without_a_gpu_open_the_cpu() {
        assert!(Device::try_from(DeviceSpec::Cpu).unwrap().is_cpu());
        assert_eq!(compute_dtype(&Device::Cpu), DType::F32);
        if !candle_core::utils::cuda_is_available() {
            assert_eq!(resolve(DeviceSpec::Auto), DeviceSpec::Cpu);
            assert!(Device::try_from(DeviceSpec::Auto).unwrap().is_cpu());
        }
        assert_eq!(resolve(DeviceSpec::Cuda(1)), DeviceSpec::Cuda(1));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let err = Device::try_from(DeviceSpec::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(err.contains("`cuda:0`"), "{err}");
    }
}
