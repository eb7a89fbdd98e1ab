// LoRA's rank-r products run on cuBLAS's bf16 tensor cores (lowrank.rs); the first two kernels prepare and
// finish them, the last two take a decoding step's few rows on their own. An f32 operand v is split into bf16 parts hi = bf16(v) and lo = bf16(v - hi), 16 significant bits
// together; cuBLAS multiplies the parts exactly and sums in f32.
// Regenerate lowrank.ptx with scripts/build-cuda.sh (nvcc -ptx -arch=compute_80).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// dst [A, S, B, C] (contiguous) from the f32 element (a, b, c) at src[a*sa + b*sb + c*sc]: segment s holds the
// low parts when bit s of lo_bits is set, the high parts otherwise.
extern "C" __global__ void split_bf16(const float *src, bf16 *dst, size_t A, int S, size_t B, size_t C,
                                      size_t sa, size_t sb, size_t sc, unsigned lo_bits) {
  size_t total = A * S * B * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t c = i % C, rest = i / C;
    size_t b = rest % B;
    rest /= B;
    int s = (int)(rest % S);
    size_t a = rest / S;
    float v = src[a * sa + b * sb + c * sc];
    bf16 hi = __float2bfloat16_rn(v);
    dst[i] = ((lo_bits >> s) & 1u) ? __float2bfloat16_rn(v - __bfloat162float(hi)) : hi;
  }
}

// dst [A, C] = src [A, 2, C] summed over its middle axis (the products of the high and the low parts).
extern "C" __global__ void fold_halves(const float *src, float *dst, size_t A, size_t C) {
  size_t total = A * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t a = i / C, c = i % C;
    dst[i] = src[a * 2 * C + c] + src[a * 2 * C + C + c];
  }
}

// Answering's few rows (no tensor cores, no bf16 parts of the adapter): mid [m, r] = scale * x [m, k] A^T for
// bf16 x and f32 A [r, k], summed in f32; one block per (row, rank) pair, blockDim a multiple of 32.
extern "C" __global__ void rows_project(const bf16 *x, const float *a, float *mid, int m, int k, int r,
                                        float scale) {
  int row = blockIdx.x / r, j = blockIdx.x % r;
  const bf16 *xr = x + (size_t)row * k;
  const float *aj = a + (size_t)j * k;
  float s = 0.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) s += __bfloat162float(xr[i]) * aj[i];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  __shared__ float part[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) mid[(size_t)row * r + j] = scale * s;
  }
}

// out [m, o] = base [m, o] + mid [m, r] B^T in bf16, for f32 mid and B [o, r] (each column's rank-wide row),
// summed in f32; one thread per column, all rows, mid in shared memory (m * r floats).
extern "C" __global__ void rows_expand(const bf16 *base, const float *mid, const float *b, bf16 *out, int m,
                                       int o, int r) {
  extern __shared__ float rows_mid[];
  for (int i = threadIdx.x; i < m * r; i += blockDim.x) rows_mid[i] = mid[i];
  __syncthreads();
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= o) return;
  const float *bj = b + (size_t)j * r;
  for (int row = 0; row < m; row++) {
    float d = 0.f;
    for (int t = 0; t < r; t++) d += rows_mid[row * r + t] * bj[t];
    out[(size_t)row * o + j] = __float2bfloat16_rn(__bfloat162float(base[(size_t)row * o + j]) + d);
  }
}
