// Rank-r products of LoRA on CUDA with bf16 activations and f32 adapter weights, f32 accumulation and no
// f32 copy of the activations (rank r <= 64; each kernel is instantiated for r padded to 8, 16, 32 or 64).
//   lowrank_in:   out[m, j] += scale * sum_i X[m, i] W[j, i]      X bf16 [M, K], W f32 [r, K], out f32 [M, r]
//   lowrank_grad: out[j, i] += sum_m G[m, j] X[m, i]              G f32 [M, r], X bf16 [M, K], out f32 [r, K]
//   lowrank_out:  out[m, o]  = Y[m, o] + sum_j R[m, j] W[o, j]    Y bf16 [M, O], R f32 [M, r], W f32 [O, r]
// Regenerate lowrank.ptx with scripts/build-cuda.sh (nvcc -ptx -arch=compute_80; fused multiply-adds).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define IN_CHUNK 128
#define IN_SPLIT 512
#define GRAD_ROWS 128
#define OUT_ROWS 32

// 8 warps per block, RW rows per warp; W streamed through shared memory in chunks of IN_CHUNK columns.
// Every loop has a constant trip count so that the accumulators stay in registers.
// Columns split over blockIdx.y in spans of IN_SPLIT (more blocks than rows alone give), partial sums added
// atomically into `out` (zeroed by the caller).
template <int RP, int RW>
__device__ void lowrank_in(const bf16 *x, const float *w, float *out, size_t M, size_t K, int r, float scale) {
  __shared__ float ws[RP][IN_CHUNK];
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  size_t row0 = ((size_t)blockIdx.x * 8 + warp) * RW;
  size_t k_begin = (size_t)blockIdx.y * IN_SPLIT;
  size_t k_end = min(K, k_begin + IN_SPLIT);
  float acc[RW][RP];
#pragma unroll
  for (int a = 0; a < RW; a++)
#pragma unroll
    for (int j = 0; j < RP; j++) acc[a][j] = 0.0f;
  for (size_t k0 = k_begin; k0 < k_end; k0 += IN_CHUNK) {
    __syncthreads();
    for (int e = threadIdx.x; e < RP * IN_CHUNK; e += blockDim.x) {
      int j = e / IN_CHUNK, kk = e % IN_CHUNK;
      ws[j][kk] = (j < r && k0 + kk < k_end) ? w[(size_t)j * K + k0 + kk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < IN_CHUNK / 32; s++) {
      int kk = lane + 32 * s;
      float xv[RW];
#pragma unroll
      for (int a = 0; a < RW; a++) {
        size_t m = row0 + a;
        xv[a] = (m < M && k0 + kk < k_end) ? __bfloat162float(x[m * K + k0 + kk]) : 0.0f;
      }
      // Each value of W read from shared memory serves every row of the warp.
#pragma unroll
      for (int j = 0; j < RP; j++) {
        float wv = ws[j][kk];
#pragma unroll
        for (int a = 0; a < RW; a++) acc[a][j] += xv[a] * wv;
      }
    }
  }
#pragma unroll
  for (int a = 0; a < RW; a++) {
    size_t m = row0 + a;
#pragma unroll
    for (int j = 0; j < RP; j++) {
      float v = acc[a][j];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
      if (lane == 0 && m < M && j < r) atomicAdd(&out[m * r + j], v * scale);
    }
  }
}

// One thread per column i, GRAD_ROWS rows per block, partial sums added atomically.
template <int RP>
__device__ void lowrank_grad(const float *g, const bf16 *x, float *out, size_t M, size_t K, int r) {
  __shared__ float gs[GRAD_ROWS][RP];
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t m0 = (size_t)blockIdx.y * GRAD_ROWS;
  for (int e = threadIdx.x; e < GRAD_ROWS * RP; e += blockDim.x) {
    int mm = e / RP, j = e % RP;
    gs[mm][j] = (j < r && m0 + mm < M) ? g[(m0 + mm) * r + j] : 0.0f;
  }
  __syncthreads();
  if (i >= K) return;
  float acc[RP];
#pragma unroll
  for (int j = 0; j < RP; j++) acc[j] = 0.0f;
  for (int mm = 0; mm < GRAD_ROWS && m0 + mm < M; mm++) {
    float xv = __bfloat162float(x[(m0 + mm) * K + i]);
#pragma unroll
    for (int j = 0; j < RP; j++) acc[j] += gs[mm][j] * xv;
  }
#pragma unroll
  for (int j = 0; j < RP; j++)
    if (j < r) atomicAdd(&out[(size_t)j * K + i], acc[j]);
}

// One thread per column o holding W's row o, OUT_ROWS rows per block.
template <int RP>
__device__ void lowrank_out(const bf16 *y, const float *rr, const float *w, bf16 *out, size_t M, size_t O, int r) {
  __shared__ float rs[OUT_ROWS][RP];
  size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t m0 = (size_t)blockIdx.y * OUT_ROWS;
  for (int e = threadIdx.x; e < OUT_ROWS * RP; e += blockDim.x) {
    int mm = e / RP, j = e % RP;
    rs[mm][j] = (j < r && m0 + mm < M) ? rr[(m0 + mm) * r + j] : 0.0f;
  }
  __syncthreads();
  if (o >= O) return;
  float wv[RP];
#pragma unroll
  for (int j = 0; j < RP; j++) wv[j] = j < r ? w[o * r + j] : 0.0f;
  for (int mm = 0; mm < OUT_ROWS && m0 + mm < M; mm++) {
    float acc = __bfloat162float(y[(m0 + mm) * O + o]);
#pragma unroll
    for (int j = 0; j < RP; j++) acc += rs[mm][j] * wv[j];
    out[(m0 + mm) * O + o] = __float2bfloat16(acc);
  }
}

#define INSTANCES(RP, RW)                                                                                          \
  extern "C" __global__ void lowrank_in_r##RP(const bf16 *x, const float *w, float *out, size_t M, size_t K, int r, \
                                              float scale) {                                                       \
    lowrank_in<RP, RW>(x, w, out, M, K, r, scale);                                                                 \
  }                                                                                                                \
  extern "C" __global__ void lowrank_grad_r##RP(const float *g, const bf16 *x, float *out, size_t M, size_t K,     \
                                                int r) {                                                           \
    lowrank_grad<RP>(g, x, out, M, K, r);                                                                          \
  }                                                                                                                \
  extern "C" __global__ void lowrank_out_r##RP(const bf16 *y, const float *rr, const float *w, bf16 *out, size_t M, \
                                               size_t O, int r) {                                                  \
    lowrank_out<RP>(y, rr, w, out, M, O, r);                                                                       \
  }

INSTANCES(8, 1)
INSTANCES(16, 1)
INSTANCES(32, 1)
INSTANCES(64, 1)
