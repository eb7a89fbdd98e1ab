//! The allocator settings qlab's binary runs with (mimalloc), in one place so that the benchmarks measure the
//! program as it ships.

/// mimalloc's `mi_option_purge_delay` (libmimalloc-sys names no constant for it; 15 in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the OS: a training step frees and reallocates the same large buffers, and
/// re-faulting them (the kernel zeroing each page) cost ~8% of a CPU step; peak RSS grows by ~15%. An explicit
/// MIMALLOC_PURGE_DELAY in the environment still wins.
/// Call once at start-up, before any other thread exists (mimalloc must be the global allocator).
pub fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: an option write at start-up, before other threads allocate.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
