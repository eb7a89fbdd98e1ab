//! Keeps freed GPU memory in CUDA's stream-ordered memory pool instead of handing it back to the driver at
//! every synchronisation (the pool's default release threshold is 0): a training step frees and allocates
//! gigabytes thousands of times, and remapping them each time costs more than the products themselves.

use std::ffi::c_void;

use candle_core::Device;
use cudarc::driver::result as driver;
use cudarc::driver::sys::CUmemPool_attribute;

/// Sets the release threshold of `device`'s default memory pool to "never"; no-op on the CPU.
pub fn keep_freed_memory(device: &Device) -> candle_core::Result<()> {
    pool_attribute(
        device,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        Some(u64::MAX),
    )
    .map(|_| ())
}

/// The most memory the pool's allocations held at once since the last [`reset_allocated_peak`] (what
/// PyTorch calls `max_memory_allocated`: live tensors only, no cache, no context); None on the CPU.
pub fn allocated_peak(device: &Device) -> candle_core::Result<Option<u64>> {
    pool_attribute(
        device,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        None,
    )
}

/// Starts a new [`allocated_peak`] measurement from the memory in use now.
pub fn reset_allocated_peak(device: &Device) -> candle_core::Result<()> {
    pool_attribute(
        device,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        Some(0),
    )
    .map(|_| ())
}

/// Sets (`Some`) or reads (`None`) a u64 attribute of `device`'s default memory pool.
fn pool_attribute(
    device: &Device,
    attribute: CUmemPool_attribute,
    set: Option<u64>,
) -> candle_core::Result<Option<u64>> {
    let Device::Cuda(dev) = device else {
        return Ok(None);
    };
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    let mut value = set.unwrap_or(0);
    let ptr = (&mut value as *mut u64).cast::<c_void>();
    // SAFETY: the device comes from a live context bound to this thread; both attributes used here
    // (release threshold, used-memory high watermark) are u64.
    unsafe {
        let pool = driver::device::get_default_mem_pool(ctx.cu_device())
            .map_err(candle_core::Error::wrap)?;
        match set {
            Some(_) => driver::mem_pool::set_attribute(pool, attribute, ptr),
            None => driver::mem_pool::get_attribute(pool, attribute, ptr),
        }
        .map_err(candle_core::Error::wrap)?;
    }
    Ok(Some(value))
}
