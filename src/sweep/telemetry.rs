//! Memory telemetry: process RSS, and GPU memory through NVML (loaded at run time, so a machine without an
//! NVIDIA driver simply reports none), sampled about once a second on a small thread of its own.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

use super::events::Telemetry;

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory of this process, MiB (0 where the platform cannot tell).
pub fn rss_mib() -> f64 {
    memory_stats::memory_stats().map_or(0.0, |m| m.physical_mem as f64 / MIB)
}

/// Samples memory for one device (`"cpu"`, `"cuda:N"`).
pub struct Sampler {
    gpu: Option<(Nvml, u32)>,
}

impl Sampler {
    pub fn new(device: &str) -> Self {
        let index = device
            .strip_prefix("cuda")
            .map(|rest| rest.trim_start_matches(':').parse().unwrap_or(0));
        let gpu = index.and_then(|i| Nvml::init().ok().map(|nvml| (nvml, i)));
        Sampler { gpu }
    }

    pub fn sample(&self) -> Telemetry {
        let mut t = Telemetry {
            rss_mib: rss_mib(),
            vram_used_mib: None,
            vram_total_mib: None,
            vram_process_mib: None,
        };
        if let Some((nvml, index)) = &self.gpu
            && let Ok(dev) = nvml.device_by_index(*index)
        {
            if let Ok(mem) = dev.memory_info() {
                t.vram_used_mib = Some(mem.used as f64 / MIB);
                t.vram_total_mib = Some(mem.total as f64 / MIB);
            }
            let pid = std::process::id();
            t.vram_process_mib = dev.running_compute_processes().ok().and_then(|procs| {
                procs
                    .iter()
                    .find(|p| p.pid == pid)
                    .and_then(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b as f64 / MIB),
                        UsedGpuMemory::Unavailable => None,
                    })
            });
        }
        t
    }
}

/// A thread calling `emit` with a fresh sample every `period` until dropped.
pub struct TelemetryThread {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TelemetryThread {
    pub fn spawn(
        device: &str,
        period: Duration,
        emit: impl Fn(Telemetry) + Send + 'static,
    ) -> std::io::Result<TelemetryThread> {
        let (stop, stopped) = mpsc::channel::<()>();
        let device = device.to_string();
        let handle = std::thread::Builder::new()
            .name("qlab-telemetry".into())
            .spawn(move || {
                let sampler = Sampler::new(&device);
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    emit(sampler.sample());
                }
            })?;
        Ok(TelemetryThread {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for TelemetryThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn cpu_sample_has_rss_and_no_vram() {
        let t = Sampler::new("cpu").sample();
        assert!(t.rss_mib > 1.0, "{t:?}");
        assert_eq!(t.vram_used_mib, None);
    }

    #[test]
    fn thread_samples_periodically_and_stops_on_drop() {
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        let t = TelemetryThread::spawn("cpu", Duration::from_millis(10), move |_| {
            *s.lock().unwrap() += 1
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(t);
        let n = *seen.lock().unwrap();
        assert!(n >= 2, "{n}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(*seen.lock().unwrap(), n);
    }
}
