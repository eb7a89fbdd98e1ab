//! Keeps freed GPU memory in CUDA's stream-ordered memory pool instead of handing it back to the driver at
//! every synchronisation (the pool's default release threshold is 0): a training step frees and allocates
//! gigabytes thousands of times, and remapping them each time costs more than the products themselves.

use std::ffi::c_void;

use candle_core::Device;
use cudarc::driver::result as driver;
use cudarc::driver::sys::CUmemPool_attribute;

/// Sets the release threshold of `device`'s default memory pool to "never"; no-op on the CPU.
pub fn keep_freed_memory(device: &Device) -> candle_core::Result<()> {
    let Device::Cuda(dev) = device else {
        return Ok(());
    };
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    let mut threshold = u64::MAX;
    // SAFETY: the device comes from a live context bound to this thread, and the attribute takes a u64.
    unsafe {
        let pool = driver::device::get_default_mem_pool(ctx.cu_device())
            .map_err(candle_core::Error::wrap)?;
        driver::mem_pool::set_attribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast::<c_void>(),
        )
        .map_err(candle_core::Error::wrap)?;
    }
    Ok(())
}
