// NF4 (double-quantized) kernels for qlab, layout of src/model/nf4.rs: two 4-bit codes per byte, the first
// element in the high nibble; blocks of 64 elements share an absmax stored as
// absmax_code[absmax_q[b]] * nested[b / 256] + offset.
// `tables` = quant_map[16] ++ absmax_code[256] ++ [offset] ++ nested[...].
// Regenerate nf4.ptx with scripts/build-cuda.sh (nvcc -ptx -arch=compute_80 -fmad=false).
#include <cuda_bf16.h>
#include <stdint.h>

#define NF4_BLOCK 64
#define NESTED_BLOCK 256
#define TABLE_OFFSET 272
#define TABLE_NESTED 273

__device__ __forceinline__ float block_scale(const uint8_t *absmax_q, const float *tables, size_t block) {
  return tables[16 + absmax_q[block]] * tables[TABLE_NESTED + block / NESTED_BLOCK] + tables[TABLE_OFFSET];
}

// Dequantizes elements [start, start + 2 * pairs) (start even); one thread per byte (two elements).
extern "C" __global__ void nf4_dequant_bf16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                            size_t start, size_t pairs, __nv_bfloat162 *out) {
  size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  size_t i = start + 2 * p;
  uint8_t byte = codes[i / 2];
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  out[p] = __floats2bfloat162_rn(tables[byte >> 4] * s, tables[byte & 0x0f] * s);
}

// The same with sixteen elements (eight bytes, one 64-block) per thread and 16-byte stores: start a multiple
// of 16, pairs a multiple of 8 (byte by byte when codes or out are not aligned for the wide accesses).
extern "C" __global__ void nf4_dequant16_bf16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                              size_t start, size_t pairs, __nv_bfloat162 *out) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (8 * t >= pairs) return;
  size_t i = start + 16 * t;
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  if ((((uintptr_t)codes) & 7) != 0 || (((uintptr_t)out) & 15) != 0) {
    for (int k = 0; k < 8; k++) {
      uint8_t byte = codes[i / 2 + k];
      out[8 * t + k] = __floats2bfloat162_rn(tables[byte >> 4] * s, tables[byte & 0x0f] * s);
    }
    return;
  }
  uint2 raw = *reinterpret_cast<const uint2 *>(codes + i / 2);
  const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
  __nv_bfloat162 v[8];
#pragma unroll
  for (int k = 0; k < 8; k++) v[k] = __floats2bfloat162_rn(tables[bytes[k] >> 4] * s, tables[bytes[k] & 0x0f] * s);
  uint4 *o = reinterpret_cast<uint4 *>(out + 8 * t);
  o[0] = *reinterpret_cast<const uint4 *>(&v[0]);
  o[1] = *reinterpret_cast<const uint4 *>(&v[4]);
}

extern "C" __global__ void nf4_dequant_f32(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                           size_t start, size_t pairs, float2 *out) {
  size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  size_t i = start + 2 * p;
  uint8_t byte = codes[i / 2];
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  out[p] = make_float2(tables[byte >> 4] * s, tables[byte & 0x0f] * s);
}

__device__ __forceinline__ uint8_t nearest_nf4(const float *qmap, float x) {
  uint8_t best = 0;
  float best_d = INFINITY;
  for (int c = 0; c < 16; c++) {
    float d = fabsf(x - qmap[c]);
    if (d < best_d) { best_d = d; best = (uint8_t)c; }
  }
  return best;
}

// Quantizes 2 * pairs f32 values with their per-64-block absmax: one thread per output byte.
extern "C" __global__ void nf4_quantize_f32(const float *values, const float *absmax, const float *qmap,
                                            size_t pairs, uint8_t *codes) {
  size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  size_t i = 2 * p;
  float m = absmax[i / NF4_BLOCK];
  float inv = m > 0.0f ? 1.0f / m : 0.0f;
  uint8_t hi = nearest_nf4(qmap, values[i] * inv);
  uint8_t lo = nearest_nf4(qmap, values[i + 1] * inv);
  codes[p] = (uint8_t)(hi << 4 | lo);
}

#define GEMV_MAX_ROWS 16

// Generation's product y[r, j] = sum_i x[r, i] * W[j, i] for a few rows r < rows <= GEMV_MAX_ROWS, straight from
// the NF4 codes (no dequantized copy of W): one warp per output feature j, each lane sixteen elements (eight
// code bytes, a quarter of a 64-block) per step; x and y bf16 row-major, k a multiple of 64. Each weight value
// is rounded to bf16 first, as the dequantize-then-multiply path rounds it; sums in f32 (explicit FMAs).
extern "C" __global__ void nf4_gemv_bf16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                         const __nv_bfloat16 *x, __nv_bfloat16 *y, size_t n, size_t k, int rows) {
  __shared__ float qmap[16];
  if (threadIdx.x < 16) qmap[threadIdx.x] = tables[threadIdx.x];
  __syncthreads();
  size_t j = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (j >= n) return;
  float acc[GEMV_MAX_ROWS];
#pragma unroll
  for (int r = 0; r < GEMV_MAX_ROWS; r++) acc[r] = 0.0f;
  const uint8_t *row = codes + j * (k / 2);
  for (size_t c = lane; c < k / 16; c += 32) {
    size_t i = 16 * c;
    float s = block_scale(absmax_q, tables, (j * k + i) / NF4_BLOCK);
    uint2 raw = *reinterpret_cast<const uint2 *>(row + i / 2);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&raw);
    float w[16];
#pragma unroll
    for (int t = 0; t < 8; t++) {
      w[2 * t] = __bfloat162float(__float2bfloat16_rn(qmap[bytes[t] >> 4] * s));
      w[2 * t + 1] = __bfloat162float(__float2bfloat16_rn(qmap[bytes[t] & 0x0f] * s));
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; r++) {
      if (r >= rows) break;
      const uint4 *xp = reinterpret_cast<const uint4 *>(x + r * k + i);
      uint4 xv[2] = {xp[0], xp[1]};
      const __nv_bfloat162 *xh = reinterpret_cast<const __nv_bfloat162 *>(xv);
      float a = acc[r];
#pragma unroll
      for (int t = 0; t < 8; t++) {
        float2 f = __bfloat1622float2(xh[t]);
        a = __fmaf_rn(w[2 * t], f.x, a);
        a = __fmaf_rn(w[2 * t + 1], f.y, a);
      }
      acc[r] = a;
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_MAX_ROWS; r++) {
    if (r >= rows) break;
    float a = acc[r];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) a += __shfl_xor_sync(0xffffffff, a, off);
    if (lane == 0) y[r * n + j] = __float2bfloat16_rn(a);
  }
}
