//! Where a GPU training step waits (`qlab bench train --timeline`): each mark records the host's clock and a
//! CUDA event at the same point of the stream. After the step synchronises, a mark whose device time is
//! well past its host time had work queued behind it (the device was the bottleneck); one whose device
//! time equals its host time found the device idle, waiting for the host. Off (and free) unless enabled;
//! a no-op on the CPU and in builds without CUDA.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use serde::Serialize;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// One mark of a step: milliseconds from the step's first mark, on the host's clock and on the device's.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub label: String,
    pub host_ms: f64,
    pub device_ms: f64,
}

/// Marking, on for the whole process while it lives (when `on`); dropping it turns marking off again.
pub struct Recording(());

/// Starts marking when `on`; it stops when the returned [`Recording`] is dropped.
pub fn record(on: bool) -> Recording {
    ENABLED.store(on, Ordering::Relaxed);
    Recording(())
}

impl Drop for Recording {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        let _ = take();
    }
}

#[cfg(feature = "cuda")]
mod recorded {
    use std::sync::Mutex;
    use std::time::Instant;

    use cudarc::driver::CudaEvent;

    pub static MARKS: Mutex<Vec<(String, Instant, CudaEvent)>> = Mutex::new(Vec::new());
}

/// Records `label` now, on the host and on `device`'s stream (CUDA only, when enabled).
pub fn mark(device: &Device, label: impl FnOnce() -> String) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use cudarc::driver::sys::CUevent_flags;
        let event = dev
            .cuda_stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
        if let (Ok(event), Ok(mut marks)) = (event, recorded::MARKS.lock()) {
            marks.push((label(), std::time::Instant::now(), event));
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (device, label);
}

/// The marks recorded since the last call, timed from the first; call it after synchronising the device.
pub fn take() -> Vec<Mark> {
    #[cfg(feature = "cuda")]
    {
        let marks = match recorded::MARKS.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return Vec::new(),
        };
        let Some((_, host0, event0)) = marks.first() else {
            return Vec::new();
        };
        marks
            .iter()
            .map(|(label, host, event)| Mark {
                label: label.clone(),
                host_ms: host.duration_since(*host0).as_secs_f64() * 1e3,
                device_ms: event0.elapsed_ms(event).map_or(f64::NAN, f64::from),
            })
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}
