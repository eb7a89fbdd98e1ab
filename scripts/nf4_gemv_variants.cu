// Variants of nf4.cu's few-row products for scripts/nf4_gemv_bench.py (not used by qlab). nf4.cu is included, so
// its kernels (nf4_gemv_mma{G} and nf4_gemv_lut{G}_{WIDE}) are the baseline the variants are compared with
// (measured on an H100: bench/results/h100-gemv-variants-2026-12-07.txt, where the lut kernels were still variants
// here, with two more parameters: a second block in flight, no faster, is at f8b690b; h100-gemv-lut-2026-12-07.txt,
// this file as it is).
//   mmap{G}: nf4_gemv_mma after asking L2 for the block's whole share of the weight (prefetch_features).
//   lutp{G}_{WIDE}: nf4_gemv_lut after the same prefetch.
//   lut{G}_{WIDE}_r64: nf4_gemv_lut capped at 64 registers (what the compiler picks unasked for lut2_0), which
//   moves the next block's loads after the multiplications.
// Build: nvcc -ptx -arch=compute_80 -fmad=false -o variants.ptx THIS
#include "../src/model/kernels/cuda/nf4.cu"

// Asks L2 for the block's whole share of the weight up front (its codes and absmax codes: 16 G features' rows,
// contiguous), one 128-byte line a thread at a time, so that memory streams at full speed however the loop below
// waits on its own loads; those then find the lines in L2.
__device__ __forceinline__ void prefetch_lines(const uint8_t *start, size_t bytes) {
  const uint8_t *line = reinterpret_cast<const uint8_t *>((uintptr_t)start & ~(uintptr_t)127);
  const size_t span = bytes + (start - line);
  for (size_t off = 128 * (size_t)threadIdx.x; off < span; off += 128 * (size_t)blockDim.x)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(line + off));
}

template <int G>
__device__ __forceinline__ void prefetch_features(const uint8_t *codes, const uint8_t *absmax_q, size_t n, size_t k) {
  const size_t j0 = (size_t)blockIdx.x * (16 * G), features = min((size_t)(16 * G), n - j0);
  prefetch_lines(codes + j0 * (k / 2), features * (k / 2));
  prefetch_lines(absmax_q + j0 * (k / NF4_BLOCK), features * (k / NF4_BLOCK));
}

// The committed kernel after the prefetch.
#define NF4_GEMV_MMA_PREFETCH(G, THREADS)                                                                      \
  extern "C" __global__ void __launch_bounds__(THREADS)                                                        \
      nf4_gemv_mmap##G(const uint8_t *codes, const uint8_t *absmax_q, const float *tables, const __nv_bfloat16 *x, \
                       __nv_bfloat16 *y, size_t n, size_t k, int rows, const GemvAdd add) {                    \
    prefetch_features<G>(codes, absmax_q, n, k);                                                               \
    nf4_gemv_mma<G>(codes, absmax_q, tables, x, y, n, k, rows, add);                                           \
  }
NF4_GEMV_MMA_PREFETCH(1, 512)
NF4_GEMV_MMA_PREFETCH(2, 512)

// nf4.cu's lut kernel after the prefetch, and capped at 64 registers.
#define NF4_GEMV_LUT_VARIANTS(G, WIDE)                                                                         \
  extern "C" __global__ void __maxnreg__(128)                                                                  \
      nf4_gemv_lutp##G##_##WIDE(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,            \
                                const __nv_bfloat16 *x, __nv_bfloat16 *y, size_t n, size_t k, int rows,        \
                                const GemvAdd add) {                                                           \
    prefetch_features<G>(codes, absmax_q, n, k);                                                               \
    nf4_gemv_lut<G, WIDE>(codes, absmax_q, tables, x, y, n, k, rows, add);                                     \
  }                                                                                                            \
  NF4_GEMV_LUT_KERNEL(nf4_gemv_lut##G##_##WIDE##_r64, G, WIDE, 64)
NF4_GEMV_LUT_VARIANTS(1, 0)
NF4_GEMV_LUT_VARIANTS(1, 1)
NF4_GEMV_LUT_VARIANTS(2, 0)
NF4_GEMV_LUT_VARIANTS(2, 1)
