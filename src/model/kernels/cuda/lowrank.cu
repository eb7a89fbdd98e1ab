// LoRA's rank-r products run on cuBLAS's bf16 tensor cores (lowrank.rs); the first four kernels prepare and
// finish them, the last one starts a decoding step's few rows on its own (nf4.cu's few-row product finishes
// them). An f32 operand v is split into bf16 parts hi = bf16(v) and lo = bf16(v - hi), 16 significant bits
// together; cuBLAS multiplies the parts exactly and sums in f32.
// Regenerate lowrank.ptx with scripts/build-cuda.sh (nvcc -ptx -arch=compute_80).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// The adapter weights of up to STACK_MOST projections that share an input, as one operand: dst [3, n r, C] bf16,
// rows [i r, i r + r) from member i's f32 [r, c_i] (any strides: s0 between rows, s1 between columns) placed at
// columns [lo_i, lo_i + c_i) and zeros elsewhere, each value v as the parts (hi, hi, lo) with hi = bf16(v) and
// lo = bf16(v - hi). The A of every member spans all columns (lo_i = 0, c_i = C); B^T's members sit on the
// diagonal (lo_i the member's first output feature), so that one product serves all of them.
#define STACK_MOST 4
struct Stack {
  const float *src[STACK_MOST];
  long long s0[STACK_MOST], s1[STACK_MOST];
  int lo[STACK_MOST], cols[STACK_MOST];
};

// One element of dst: row j (member j / r, its row j % r) and column c of the parts, written at `at` and the
// planes `plane` apart. The member's fields are picked with constant indices (an unrolled select), so that the
// kernel reads them as parameters instead of copying the struct into local memory for a dynamic index.
template <typename I>
__device__ __forceinline__ void stack_one(const Stack &m, bf16 *at, I plane, I r, I j, I c) {
  const I member = j / r, row = j - member * r;
  const float *src = m.src[0];
  long long s0 = m.s0[0], s1 = m.s1[0];
  int lo = m.lo[0], cols = m.cols[0];
#pragma unroll
  for (int k = 1; k < STACK_MOST; ++k)
    if (member == k) {
      src = m.src[k];
      s0 = m.s0[k];
      s1 = m.s1[k];
      lo = m.lo[k];
      cols = m.cols[k];
    }
  const long long col = (long long)c - lo;
  const float v = col >= 0 && col < cols ? src[(long long)row * s0 + col * s1] : 0.f;
  const bf16 hi = __float2bfloat16_rn(v), low = __float2bfloat16_rn(v - __bfloat162float(hi));
  at[0] = hi;
  at[plane] = hi;
  at[2 * plane] = low;
}

// The loop over dst's elements in index type I (32 bits where they fit: a 64-bit division costs tens of
// instructions). Consecutive threads take consecutive elements of dst's rows: j fastest when transposed
// (dst [C, 3 n r]), c fastest otherwise (dst [3, n r, C]), so that the stores coalesce.
template <typename I>
__device__ void stack_all(const Stack &m, bf16 *dst, I r, I rows, I C, bool transposed, size_t ld) {
  const I total = rows * C, step = (I)gridDim.x * blockDim.x;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
    if (transposed) {
      const I c = i / rows, j = i - c * rows;
      stack_one(m, dst + (size_t)c * ld + j, rows, r, j, c);
    } else {
      const I j = i / C, c = i - j * C;
      stack_one(m, dst + i, total, r, j, c);
    }
  }
}

// transposed != 0 writes the parts' transpose instead, [C, 3 n r] with rows ld values apart (the columns a frozen
// weight's rows end with, so that one product adds the low-rank term: lowrank.rs's weight_with_low_rank).
extern "C" __global__ void stack_parts_bf16(Stack m, bf16 *dst, int r, int n, size_t C, int transposed, size_t ld) {
  const size_t rows = (size_t)n * r;
  // 32 bits while the index plus the grid's stride stays below 2^32 (the grid has at most 2^21 threads)
  if (rows * C <= 0x7fffffffu)
    stack_all<unsigned>(m, dst, (unsigned)r, (unsigned)rows, (unsigned)C, transposed != 0, ld);
  else
    stack_all<size_t>(m, dst, (size_t)r, rows, C, transposed != 0, ld);
}

// dst [A, C] = src [A, 2, C] summed over its middle axis (the products of the high and the low parts).
extern "C" __global__ void fold_halves(const float *src, float *dst, size_t A, size_t C) {
  size_t total = A * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t a = i / C, c = i % C;
    dst[i] = src[a * 2 * C + c] + src[a * 2 * C + C + c];
  }
}

// dst [C, A] = src [2, A, C] summed over its first axis, transposed (B's gradient, made [r, out], in B's own
// layout [out, r]).
extern "C" __global__ void fold_halves_t(const float *src, float *dst, size_t A, size_t C) {
  size_t total = A * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t c = i / A, a = i % A;
    dst[i] = src[a * C + c] + src[total + a * C + c];
  }
}

// dst [A, 3, C] bf16 from src [A, 2, C] f32: each sum v of the middle axis (a rank-wide product of the high and
// the low parts) split at once for the next product, as (hi, lo, hi) with hi = bf16(v), lo = bf16(v - hi): the
// left operand's parts of expand's three-part product, whose first two segments are also reduce's pair. dst's rows
// lie ld values apart (3 C, or more when they follow the product's input in its rows: lowrank.rs's norm_project).
extern "C" __global__ void fold_split_bf16(const float *src, bf16 *dst, size_t A, size_t C, size_t ld) {
  size_t total = A * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t a = i / C, c = i % C;
    float v = src[a * 2 * C + c] + src[a * 2 * C + C + c];
    bf16 hi = __float2bfloat16_rn(v);
    bf16 *row = dst + a * ld;
    row[c] = hi;
    row[C + c] = __float2bfloat16_rn(v - __bfloat162float(hi));
    row[2 * C + c] = hi;
  }
}

// Answering's few rows, the adapter's first product in slices of the summed axis (no tensor cores, no bf16 parts
// of the adapter), for up to three adapters of one input at once (q, k and v; gate and up): parts [M, S, m, r] with
// parts[j, s, i, t] = sum of x[i, e] A_j[t, e] over e in slice s, [1024 s, 1024 s + 1024), for bf16 x [m, k] and
// f32 A_j [r, k] (a0, a1, a2; M = members of them used), summed in f32; m <= 16, k a multiple of 8, x and the A's
// 16-byte aligned. nf4.cu's nf4_gemv_mma adds one member's slices up (times its adapter's scale) in the same launch
// as its frozen product. Grid (S, ceil(M r / 8)), 8 warps a block: warp w takes rank t = 8 blockIdx.y + w of the
// members' ranks one after the other (member t / r) and slice s = blockIdx.x, lane l the eight elements
// 1024 s + 256 c + 8 l (c < 4) of that A's row (read once, for every row of x) and of x's rows, four rows at a
// time; then each row's 32 lane sums meet across the warp, and lane i writes row i's.
// Elements past k are read at element 0 and taken as zeros, and rows past m (up to the next multiple of four) as
// row m - 1, so that the loads carry no branches and are in flight together.
#define ROWS_SLICE 1024
#define ROWS_MOST 16

__device__ __forceinline__ uint4 zero_unless(bool keep, uint4 v) {
  return keep ? v : make_uint4(0u, 0u, 0u, 0u);
}

extern "C" __global__ void __launch_bounds__(256)
    rows_project(const bf16 *__restrict__ x, const float *__restrict__ a0, const float *__restrict__ a1,
                 const float *__restrict__ a2, float *__restrict__ parts, int m, int k, int r, int members) {
  const int lane = threadIdx.x & 31, t = blockIdx.y * 8 + (threadIdx.x >> 5), s = blockIdx.x;
  if (t >= members * r) return;  // the whole warp: t is the same for its lanes
  const int member = t / r, u = t - member * r;
  const float *a = member == 0 ? a0 : member == 1 ? a1 : a2;
  bool valid[4];
  int at[4];
  uint4 av[4][2];
#pragma unroll
  for (int c = 0; c < 4; c++) {
    const int e = s * ROWS_SLICE + 256 * c + 8 * lane;
    valid[c] = e < k;
    at[c] = valid[c] ? e : 0;
    const uint4 *p = reinterpret_cast<const uint4 *>(a + (size_t)u * k + at[c]);
    av[c][0] = zero_unless(valid[c], p[0]);
    av[c][1] = zero_unless(valid[c], p[1]);
  }
  float sum[ROWS_MOST];
#pragma unroll
  for (int i = 0; i < ROWS_MOST; i++) sum[i] = 0.f;
#pragma unroll
  for (int g = 0; g < ROWS_MOST; g += 4) {
    if (g >= m) break;
#pragma unroll
    for (int i = g; i < g + 4; i++) {
      const bf16 *xr = x + (size_t)min(i, m - 1) * k;
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const uint4 raw = zero_unless(valid[c], *reinterpret_cast<const uint4 *>(xr + at[c]));
        const __nv_bfloat162 *xh = reinterpret_cast<const __nv_bfloat162 *>(&raw);
        const float *w = reinterpret_cast<const float *>(av[c]);
#pragma unroll
        for (int q = 0; q < 4; q++) {
          const float2 f = __bfloat1622float2(xh[q]);
          sum[i] += f.x * w[2 * q] + f.y * w[2 * q + 1];
        }
      }
    }
  }
  float mine = 0.f;
#pragma unroll
  for (int i = 0; i < ROWS_MOST; i++) {
    if (i >= m) break;
    float v = sum[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == i) mine = v;
  }
  if (lane < m) parts[(((size_t)member * gridDim.x + s) * m + lane) * r + u] = mine;
}
