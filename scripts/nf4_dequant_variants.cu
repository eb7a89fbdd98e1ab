// Variants of nf4.cu's nf4_dequant16_bf16 for scripts/nf4_dequant_bench.py (not used by qlab). nf4.cu is included, so
// the committed kernel itself is the baseline the variants are compared with ("base16" in the bench's output):
//   w16, w32     N = 16 or 32 elements a thread with 32-bit row arithmetic, the quant map read through the cache;
//   w16s, w32s   the same with the quant map in shared memory;
//   c16, c32     G = 2 or 4 groups of 8 elements a thread, laid out so that each store instruction of a warp writes
//                512 contiguous bytes (group g of lane l: elements 256 g + 8 l of the warp's span).
// On H100s (2026-12-07, bench/results/h100-dequant-2026-12-07.txt) w16 to w32s were slower than base16 or equal to it,
// and c16 and c32 tie it in blocks of 256. Build: nvcc -ptx -arch=compute_80 -fmad=false -o variants.ptx THIS
#include "../src/model/kernels/cuda/nf4.cu"

// Element e of rows of cols values: its row and column, in 32-bit arithmetic where both fit.
__device__ __forceinline__ void row_col(size_t e, size_t cols, size_t *row, size_t *col) {
  if (e <= 0xffffffffull && cols <= 0xffffffffull) {
    uint32_t e32 = (uint32_t)e, c32 = (uint32_t)cols, r = e32 / c32;
    *row = r;
    *col = e32 - r * c32;
  } else {
    *row = e / cols;
    *col = e % cols;
  }
}

// BYTES bytes of codes (4, 8 or 16: one aligned load) decoded with scale s into 2 BYTES bf16 values.
template <int BYTES>
__device__ __forceinline__ void decode(const uint8_t *codes, const float *qmap, float s, __nv_bfloat162 *v) {
  struct alignas(BYTES) Raw { uint8_t b[BYTES]; };
  Raw raw = *reinterpret_cast<const Raw *>(codes);
#pragma unroll
  for (int k = 0; k < BYTES; k++) v[k] = __floats2bfloat162_rn(qmap[raw.b[k] >> 4] * s, qmap[raw.b[k] & 0x0f] * s);
}

// N consecutive elements per thread, N / 8 16-byte stores (start and cols multiples of N, aligned codes and rows).
template <int N, bool SMEM>
__device__ __forceinline__ void wide(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                     size_t start, size_t pairs, __nv_bfloat16 *out, size_t cols, size_t ld) {
  __shared__ float qmap_s[16];
  const float *qmap = tables;
  if (SMEM) {
    if (threadIdx.x < 16) qmap_s[threadIdx.x] = tables[threadIdx.x];
    __syncthreads();
    qmap = qmap_s;
  }
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if ((N / 2) * t >= pairs) return;
  size_t i = start + N * t, row, col;
  row_col(N * t, cols, &row, &col);
  __nv_bfloat162 v[N / 2];
  decode<N / 2>(codes + i / 2, qmap, block_scale(absmax_q, tables, i / NF4_BLOCK), v);
  uint4 *o = reinterpret_cast<uint4 *>(out + row * ld + col);
#pragma unroll
  for (int k = 0; k < N / 8; k++) o[k] = *reinterpret_cast<const uint4 *>(&v[4 * k]);
}

// G groups of 8 consecutive elements per thread (one 4-byte load of codes, one 16-byte store each), the warp's groups
// side by side: group g of lane l covers elements [w + 256 g + 8 l, + 8) of the warp's span of 256 G from w. Each
// group finds its own row (cols and start multiples of 8).
template <int G>
__device__ __forceinline__ void coalesced(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                          size_t start, size_t pairs, __nv_bfloat16 *out, size_t cols, size_t ld) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t count = 2 * pairs, warp_base = (t / 32) * (256 * G);
#pragma unroll
  for (int g = 0; g < G; g++) {
    size_t e = warp_base + 256 * g + 8 * (threadIdx.x % 32), row, col;
    if (e >= count) return;
    size_t i = start + e;
    __nv_bfloat162 v[4];
    decode<4>(codes + i / 2, tables, block_scale(absmax_q, tables, i / NF4_BLOCK), v);
    row_col(e, cols, &row, &col);
    *reinterpret_cast<uint4 *>(out + row * ld + col) = *reinterpret_cast<const uint4 *>(&v[0]);
  }
}

#define ARGS const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld
extern "C" __global__ void w16(ARGS) { wide<16, false>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w16s(ARGS) { wide<16, true>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w32(ARGS) { wide<32, false>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w32s(ARGS) { wide<32, true>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void c16(ARGS) { coalesced<2>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void c32(ARGS) { coalesced<4>(c, a, t, s, p, o, cols, ld); }
