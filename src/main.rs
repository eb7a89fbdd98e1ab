//! The `qlab` binary: command-line parsing and wiring; all work lives in the library.

mod cli;

use mimalloc::MiMalloc;

// glibc keeps freed memory; mimalloc returns it, so RSS figures mean what they say.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc's `mi_option_purge_delay` (libmimalloc-sys names no constant for it; 15 in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Never hand freed pages back to the OS: a training step frees and reallocates the same large
    // buffers, and re-faulting them (the kernel zeroing each page) cost ~8% of a CPU step; peak RSS
    // grows by ~15%. An explicit MIMALLOC_PURGE_DELAY in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called once at start-up, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    cli::main()
}
