//! Runtime dispatch of vectorisable loops to the widest x86 instructions this CPU has (AVX-512, else AVX2
//! and FMA), shared by the CPU kernels and the CPU dequantization of quantized weights.

/// Runs `f` compiled for AVX-512 (16 floats wide) or AVX2 and FMA (8 wide), whichever the CPU has. The
/// build targets baseline x86-64 (SSE2), so the kernels' loops, inlined into `f`, would otherwise be
/// vectorised 4 floats wide at most. Each parallel task wraps its own body (rayon calls task closures
/// through pointers, so they are not inlined here). Rust never contracts `a * b + c` into an FMA on its own
/// and the reductions keep `LANES` explicit partial sums, so results do not depend on the path taken.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU supports the features `avx512` is compiled for (checked just above; AVX-512F
            // implies AVX2 and FMA).
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `avx2` is compiled for (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}
