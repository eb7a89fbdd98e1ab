//! Peak GPU memory of a stretch of work: a thread samples the device's used memory (cuMemGetInfo) every
//! millisecond; the peak is reported above the level at the start (so the CUDA context and cuBLAS
//! workspace, present before the model, are not counted; memory the allocator keeps cached is).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;

/// Samples device memory until `finish`.
pub struct VramPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    base: usize,
    handle: Option<JoinHandle<()>>,
}

impl VramPeak {
    /// Starts sampling on a CUDA device; None on the CPU.
    pub fn start(device: &Device) -> candle_core::Result<Option<Self>> {
        let Device::Cuda(dev) = device else {
            return Ok(None);
        };
        let ctx = dev.cuda_stream().context().clone();
        let used = |c: &cudarc::driver::CudaContext| -> usize {
            c.mem_get_info()
                .map(|(free, total)| total - free)
                .unwrap_or(0)
        };
        let base = used(&ctx);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(base));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(used(&ctx), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            p.fetch_max(used(&ctx), Ordering::Relaxed);
        });
        Ok(Some(Self {
            stop,
            peak,
            base,
            handle: Some(handle),
        }))
    }

    /// Stops sampling; returns the peak above the starting level, in bytes.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}
