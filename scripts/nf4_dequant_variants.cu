// Variants of nf4.cu's nf4_dequant16_bf16 for scripts/nf4_dequant_bench.py (not used by qlab): the committed kernel
// (base16), and N = 16 or 32 elements per thread with 32-bit row arithmetic, the quant map read through the cache
// (w16, w32) or from shared memory (w16s, w32s); c16 and c32: G = 2 or 4 groups of 8 elements a thread, laid out so
// that each store instruction of a warp writes 512 contiguous bytes (group g of lane l: elements 256 g + 8 l of the
// warp's span). On an H100 (2026-12-07) w16 to w32s were slower than base16 or equal to it
// (bench/results/h100-dequant-2026-12-07.txt); c16 and c32 were not run yet. Build: nvcc -ptx -arch=compute_80 -fmad=false -o variants.ptx THIS
#include <cuda_bf16.h>
#include <stdint.h>
#define NF4_BLOCK 64
#define NESTED_BLOCK 256
#define TABLE_OFFSET 272
#define TABLE_NESTED 273
__device__ __forceinline__ float block_scale(const uint8_t *absmax_q, const float *tables, size_t block) {
  return tables[16 + absmax_q[block]] * tables[TABLE_NESTED + block / NESTED_BLOCK] + tables[TABLE_OFFSET];
}
// base16: nf4.cu's nf4_dequant16_bf16 as of 2026-12-07
extern "C" __global__ void base16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                              size_t start, size_t pairs, __nv_bfloat16 *out, size_t cols,
                                            size_t ld) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (8 * t >= pairs) return;
  size_t i = start + 16 * t, e = 16 * t;
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  __nv_bfloat162 *o2 = reinterpret_cast<__nv_bfloat162 *>(out + (e / cols) * ld + e % cols);
  if ((((uintptr_t)codes) & 7) != 0 || (((uintptr_t)o2) & 15) != 0) {
    for (int k = 0; k < 8; k++) {
      uint8_t byte = codes[i / 2 + k];
      o2[k] = __floats2bfloat162_rn(tables[byte >> 4] * s, tables[byte & 0x0f] * s);
    }
    return;
  }
  uint2 raw = *reinterpret_cast<const uint2 *>(codes + i / 2);
  const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
  __nv_bfloat162 v[8];
#pragma unroll
  for (int k = 0; k < 8; k++) v[k] = __floats2bfloat162_rn(tables[bytes[k] >> 4] * s, tables[bytes[k] & 0x0f] * s);
  uint4 *o = reinterpret_cast<uint4 *>(o2);
  o[0] = *reinterpret_cast<const uint4 *>(&v[0]);
  o[1] = *reinterpret_cast<const uint4 *>(&v[4]);
}
// N elements per thread (N = 16 or 32), codes loaded as N/2 bytes, 32-bit row math when the span allows,
// the quant map in shared memory (SMEM) or read through the cache.
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
  size_t i = start + N * t, e = N * t;
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  size_t row, col;
  if (e < 0xffffffffull && cols < 0xffffffffull) {
    uint32_t e32 = (uint32_t)e, c32 = (uint32_t)cols;
    uint32_t r = e32 / c32;
    row = r; col = e32 - r * c32;
  } else {
    row = e / cols; col = e % cols;
  }
  __nv_bfloat162 v[N / 2];
  if (N == 32) {
    uint4 raw = *reinterpret_cast<const uint4 *>(codes + i / 2);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
#pragma unroll
    for (int k = 0; k < N / 2; k++) v[k] = __floats2bfloat162_rn(qmap[bytes[k] >> 4] * s, qmap[bytes[k] & 0x0f] * s);
  } else {
    uint2 raw = *reinterpret_cast<const uint2 *>(codes + i / 2);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
#pragma unroll
    for (int k = 0; k < N / 2; k++) v[k] = __floats2bfloat162_rn(qmap[bytes[k] >> 4] * s, qmap[bytes[k] & 0x0f] * s);
  }
  uint4 *o = reinterpret_cast<uint4 *>(out + row * ld + col);
#pragma unroll
  for (int k = 0; k < N / 8; k++) o[k] = *reinterpret_cast<const uint4 *>(&v[4 * k]);
}
extern "C" __global__ void w16(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { wide<16, false>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w16s(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { wide<16, true>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w32(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { wide<32, false>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void w32s(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { wide<32, true>(c, a, t, s, p, o, cols, ld); }

// G groups of 8 consecutive elements per thread (one 4-byte load of codes, one 16-byte store each), the warp's groups
// side by side: group g of lane l covers elements [w + 256 g + 8 l, + 8) of the warp's span of 256 G from w. Rows of
// cols values, ld apart: each group finds its own row (cols a multiple of 8, start a multiple of 8).
template <int G>
__device__ __forceinline__ void coalesced(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                          size_t start, size_t pairs, __nv_bfloat16 *out, size_t cols, size_t ld) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t count = 2 * pairs, warp_base = (t / 32) * (256 * G);
  unsigned lane = threadIdx.x % 32;
#pragma unroll
  for (int g = 0; g < G; g++) {
    size_t e = warp_base + 256 * g + 8 * lane;
    if (e >= count) return;
    size_t i = start + e;
    float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
    uint32_t raw = *reinterpret_cast<const uint32_t *>(codes + i / 2);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
    __nv_bfloat162 v[4];
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = __floats2bfloat162_rn(tables[bytes[k] >> 4] * s, tables[bytes[k] & 0x0f] * s);
    size_t row, col;
    if (e <= 0xffffffffull && cols <= 0xffffffffull) {
      uint32_t e32 = (uint32_t)e, c32 = (uint32_t)cols, r = e32 / c32;
      row = r;
      col = e32 - r * c32;
    } else {
      row = e / cols;
      col = e % cols;
    }
    *reinterpret_cast<uint4 *>(out + row * ld + col) = *reinterpret_cast<const uint4 *>(&v[0]);
  }
}
extern "C" __global__ void c16(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { coalesced<2>(c, a, t, s, p, o, cols, ld); }
extern "C" __global__ void c32(const uint8_t *c, const uint8_t *a, const float *t, size_t s, size_t p, __nv_bfloat16 *o, size_t cols, size_t ld) { coalesced<4>(c, a, t, s, p, o, cols, ld); }
