//! The CPU's counterpart of the VRAM peak: this process's peak resident memory, as benchmarks report it.

/// Peak resident memory of this process since it started, in MiB (NaN if the system will not say).
pub fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        f64::NAN
    }
}
