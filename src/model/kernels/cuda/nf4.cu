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

// Dequantizes elements [start, start + 2 * pairs) (start even); one thread per byte (two elements). Element e of
// the span lands at out[(e / cols) * ld + e % cols]: rows of cols values (even) ld apart (ld = cols: contiguous;
// more when the rows are followed by a low-rank term's columns, see lowrank.rs's weight_with_low_rank).
extern "C" __global__ void nf4_dequant_bf16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
                                            size_t start, size_t pairs, __nv_bfloat16 *out, size_t cols,
                                            size_t ld) {
  size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  size_t i = start + 2 * p, e = 2 * p;
  uint8_t byte = codes[i / 2];
  float s = block_scale(absmax_q, tables, i / NF4_BLOCK);
  *reinterpret_cast<__nv_bfloat162 *>(out + (e / cols) * ld + e % cols) =
      __floats2bfloat162_rn(tables[byte >> 4] * s, tables[byte & 0x0f] * s);
}

// The same with sixteen elements (eight bytes, one 64-block) per thread and 16-byte stores: start and cols
// multiples of 16, pairs a multiple of 8 (byte by byte when codes or the row are not aligned for the wide accesses).
extern "C" __global__ void nf4_dequant16_bf16(const uint8_t *codes, const uint8_t *absmax_q, const float *tables,
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
// the NF4 codes (no dequantized copy of W), the first version (nf4_gemv_mma below serves generation now; this one
// stays for comparison): one warp per output feature j, each lane sixteen elements (eight
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

// The same product on the tensor cores (mma.sync m16n8k16: bf16 operands, f32 sums), computed as
// y^T = W x^T: the weight, dequantized in registers, is the A operand (16 output features by 16 k), x's rows
// the B operand (16 k by 8 rows; rows 8-15 a second product; rows past `rows` read as zeros and their sums
// are not written). The x values a warp loads serve all of its 16 * G output features instead of one.
//
// A block of `warps` warps takes the 16 * G features [j0, j0 + 16G) over the whole of k: warp w takes the
// 128-element chunks w, w + warps, ...; the warps' partial sums meet in shared memory at the end and are added
// in warp order. In chunk c, lane (g = lane / 4, t = lane % 4) reads elements [128c + 32t, +32) (sixteen code
// bytes, one 16-byte load; all in the 64-block 2c + t / 2, so one scale) of features j0 + 16h + g and
// j0 + 16h + g + 8 (group h < G), and the same 32 elements of x's rows g and g + 8. The sum over a chunk is
// order-free, so elements enter the mma's k slots in the order the lanes hold them: in step s (0..7) lane t puts
// its element pair 2s (elements 32t + 4s, +1) where the instruction's layout has k = 2t, 2t + 1, and its pair
// 2s + 1 where it has k = 2t + 8, 2t + 9, in A and B alike (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type"); so B's two registers are two adjacent words of x as loaded. Each weight value is rounded
// to bf16 from qmap[code] * scale exactly as nf4_dequant16_bf16 computes it. k a multiple of 64 (the missing
// half of a last odd chunk reads as zeros in x), codes and x 16-byte aligned.
//
// The epilogue adds what `GemvAdd` names to each sum before it is rounded to bf16: a bias, and a low-rank product
// (an unmerged LoRA adapter's, y += scale (x A^T) B^T) from the rank-wide rows in slices as lowrank.cu's
// rows_project leaves them. The block adds the slices up into shared memory while it loads its tables, and copies
// its features' rows of B there (cp.async, waited for only before the epilogue) while the codes are multiplied.
// Dynamic shared memory: warps * G * 256 floats (the partial sums), then rows * rank (the rank-wide rows), then
// 16 G * (rank + 1) (B's rows, one float apart so that a warp's lanes, reading consecutive features, hit distinct
// banks).

// What the tensor-core kernels (nf4_gemv_mma, nf4_gemv_lut) add to x W^T (null pointers and rank 0: nothing).
// bias f32 [n]; parts f32 [slices, rows, rank], x A^T as the sum of its slices; b f32 [n, rank]; the low-rank term
// is scale * (x A^T) B^T.
struct GemvAdd {
  const float *bias;
  const float *parts;
  const float *b;
  int slices, rank;
  float scale;
};

// Copies one f32 from global to shared memory asynchronously (cp.async: sm_80 on; waited for by
// cp.async.wait_all).
__device__ __forceinline__ void copy_async_f32(float *dst, const float *src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src)
               : "memory");
}

// d += a b for one 16x8x16 tile: a as four bf16x2 words, b as two.
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four code bytes to four bf16x2 words (byte b: its high nibble's value in the low half, the element first in
// memory). qmap is a 256-byte aligned shared array, so one byte permute makes a nibble's table address: the
// nibble times 4 (masked out of the word in place) as the low byte under qbase's upper three.
__device__ __forceinline__ void nf4_word_bf16x2(uint32_t v, float s, uint32_t qbase, uint32_t *w) {
  const uint32_t hi = (v >> 2) & 0x3c3c3c3cu, lo = (v << 2) & 0x3c3c3c3cu;
#pragma unroll
  for (int b = 0; b < 4; b++) {
    float a, c;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(a) : "r"(__byte_perm(hi, qbase, 0x7650 + b)));
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(c) : "r"(__byte_perm(lo, qbase, 0x7650 + b)));
    __nv_bfloat162 p = __floats2bfloat162_rn(a * s, c * s);
    w[b] = *reinterpret_cast<const uint32_t *>(&p);
  }
}

// What a lane reads of W for one chunk, for each of its 2G features (2h: feature g of group h, 2h + 1: g + 8):
// sixteen code bytes, the 64-block's quantized absmax and its nested scale (zeros for a 64-block past k).
template <int G> struct GemvCodes {
  uint4 c[2 * G];
  uint32_t q[2 * G];
  float nest[2 * G];
};

// `first`: each feature's first 64-block plus t / 2, so that first + 2c is the lane's 64-block in chunk c (the
// launcher keeps n * k / 64 under 2^32).
template <int G>
__device__ __forceinline__ void gemv_load_codes(GemvCodes<G> &st, const uint8_t *codes, const uint8_t *absmax_q,
                                                const float *tables, const uint32_t (&first)[2 * G], uint32_t c,
                                                bool valid) {
#pragma unroll
  for (int f = 0; f < 2 * G; f++) {
    st.c[f] = make_uint4(0, 0, 0, 0);
    st.q[f] = 0;
    st.nest[f] = 0.0f;
    if (valid) {
      uint32_t b = first[f] + 2 * c;
      st.c[f] = __ldg(reinterpret_cast<const uint4 *>(codes + 32 * (size_t)b) + (threadIdx.x & 1));
      st.q[f] = __ldg(absmax_q + b);
      st.nest[f] = __ldg(tables + TABLE_NESTED + b / NESTED_BLOCK);
    }
  }
}

// The epilogue's inputs that `add` names, laid out in shared memory while the block's first loads are on their way:
// the block's rows of B (16 G features, rank + 1 floats apart so that a warp's lanes, reading consecutive features,
// hit distinct banks) copied with cp.async (waited for by gemv_epilogue), and the rank-wide rows x A^T (the sum of
// `add`'s slices, times its scale) into `mid`, rows * rank floats.
template <int G>
__device__ __forceinline__ void gemv_add_prologue(const GemvAdd &add, float *mid, float *b_rows, size_t j0, size_t n,
                                                  int rows) {
  for (int i = threadIdx.x; i < 16 * G * add.rank; i += blockDim.x) {
    const int f = i / add.rank, u = i % add.rank;
    if (j0 + f < n) copy_async_f32(b_rows + f * (add.rank + 1) + u, add.b + (j0 + f) * add.rank + u);
  }
  for (int i = threadIdx.x; i < rows * add.rank; i += blockDim.x) {
    // Eight slices at a time, their loads in flight together (past the last slice: the last again, not added).
    float sum = 0.0f;
    for (int s0 = 0; s0 < add.slices; s0 += 8) {
      float v[8];
#pragma unroll
      for (int q = 0; q < 8; q++) v[q] = add.parts[(size_t)min(s0 + q, add.slices - 1) * rows * add.rank + i];
#pragma unroll
      for (int q = 0; q < 8; q++) sum += s0 + q < add.slices ? v[q] : 0.0f;
    }
    mid[i] = add.scale * sum;
  }
}

// The warps' sums to y: acc[h][r][i] is feature j0 + 16h + g + 8 (i / 2), row 8r + 2t + i % 2 (R: the row groups
// held, 2 where rows > 8). Partial sums by warp in `partial` (warps * G * 256 floats), added in warp order, then the
// bias and the low-rank term (gemv_add_prologue's `mid` and `b_rows`), rounded to bf16 once.
template <int G, int R>
__device__ __forceinline__ void gemv_epilogue(const float (&acc)[G][2][4], float *partial, const float *mid,
                                              const float *b_rows, const GemvAdd &add, __nv_bfloat16 *y, size_t j0,
                                              size_t n, int rows) {
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int i = 0; i < 4; i++) partial[((warp * G + h) * 8 + 4 * r + i) * 32 + lane] = acc[h][r][i];
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
  for (int e = threadIdx.x; e < rows * 16 * G; e += blockDim.x) {
    const int row = e / (16 * G), col = e % (16 * G);
    const size_t j = j0 + col;
    if (j >= n) continue;
    const int h = col / 16, m = col % 16, rr = row % 8;
    const int slot = (h * 8 + 4 * (row / 8) + (rr & 1) + 2 * (m / 8)) * 32 + (m % 8) * 4 + rr / 2;
    float sum = 0.0f;
    for (int w = 0; w < warps; w++) sum += partial[w * G * 256 + slot];
    if (add.bias) sum += add.bias[j];
    const float *m_row = mid + row * add.rank, *b_row = b_rows + col * (add.rank + 1);
    float low = 0.0f;
    for (int u = 0; u < add.rank; u++) low = __fmaf_rn(m_row[u], b_row[u], low);
    y[(size_t)row * n + j] = __float2bfloat16_rn(sum + low);
  }
}

// Block `block` of the product (its features [16 G block, 16 G block + 16 G)).
template <int G>
__device__ __forceinline__ void nf4_gemv_mma(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ absmax_q,
                                             const float *__restrict__ tables, const __nv_bfloat16 *__restrict__ x,
                                             __nv_bfloat16 *__restrict__ y, size_t n, size_t k, int rows,
                                             const GemvAdd &add, unsigned int block) {
  __shared__ __align__(256) float qmap[16];
  __shared__ float acode[256];
  extern __shared__ float partial[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t j0 = (size_t)block * (16 * G);
  float *mid = partial + warps * G * 256, *b_rows = mid + rows * add.rank;
  for (int i = threadIdx.x; i < 16 + 256; i += blockDim.x) {
    if (i < 16) qmap[i] = tables[i];
    else acode[i - 16] = tables[i];
  }
  gemv_add_prologue<G>(add, mid, b_rows, j0, n, rows);
  __syncthreads();
  const uint32_t qbase = (uint32_t)__cvta_generic_to_shared(qmap);
  if (qbase & 0xff) __trap();  // the table addresses below need the declared alignment
  const int g = lane >> 2, t = lane & 3;
  const uint32_t blocks = (uint32_t)(k / NF4_BLOCK), chunks = (blocks + 1) / 2;
  const float offset = tables[TABLE_OFFSET];
  // Features past n read the last feature's codes (their sums are not written).
  uint32_t first[2 * G];
#pragma unroll
  for (int f = 0; f < 2 * G; f++) {
    size_t j = j0 + 16 * (f / 2) + 8 * (f % 2) + g;
    first[f] = (uint32_t)(j < n ? j : n - 1) * blocks + (t >> 1);
  }
  const bool has0 = g < rows, has1 = g + 8 < rows;
  const __nv_bfloat16 *x0 = x + (size_t)g * k + 32 * t, *x1 = x + (size_t)(g + 8) * k + 32 * t;
  // acc[h][r]: group h, rows 8r..8r+7.
  float acc[G][2][4];
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[h][0][i] = acc[h][1][i] = 0.0f;

  GemvCodes<G> cur;
  uint32_t c = warp;
  gemv_load_codes<G>(cur, codes, absmax_q, tables, first, c, c < chunks && 2 * c + (t >> 1) < blocks);
  for (; c < chunks; c += warps) {
    const bool valid = 2 * c + (t >> 1) < blocks;
    uint4 xa[4], xb[4];
#pragma unroll
    for (int i = 0; i < 4; i++) xa[i] = xb[i] = make_uint4(0, 0, 0, 0);
    if (valid && has0) {
      const uint4 *p = reinterpret_cast<const uint4 *>(x0 + 128 * c);
#pragma unroll
      for (int i = 0; i < 4; i++) xa[i] = p[i];
    }
    if (valid && has1) {
      const uint4 *p = reinterpret_cast<const uint4 *>(x1 + 128 * c);
#pragma unroll
      for (int i = 0; i < 4; i++) xb[i] = p[i];
    }
    // The next chunk's codes are on their way while this one is multiplied.
    GemvCodes<G> next;
    const uint32_t nc = c + warps;
    gemv_load_codes<G>(next, codes, absmax_q, tables, first, nc, nc < chunks && 2 * nc + (t >> 1) < blocks);
#pragma unroll
    for (int h = 0; h < G; h++) {
      const float sa = acode[cur.q[2 * h]] * cur.nest[2 * h] + offset;
      const float sb = acode[cur.q[2 * h + 1]] * cur.nest[2 * h + 1] + offset;
      const uint32_t ca[4] = {cur.c[2 * h].x, cur.c[2 * h].y, cur.c[2 * h].z, cur.c[2 * h].w};
      const uint32_t cb[4] = {cur.c[2 * h + 1].x, cur.c[2 * h + 1].y, cur.c[2 * h + 1].z, cur.c[2 * h + 1].w};
#pragma unroll
      for (int i = 0; i < 4; i++) {
        // Code word i: element pairs 4i..4i+3, steps 2i and 2i + 1.
        uint32_t wa[4], wb[4];
        nf4_word_bf16x2(ca[i], sa, qbase, wa);
        nf4_word_bf16x2(cb[i], sb, qbase, wb);
        mma_16816(acc[h][0], wa[0], wb[0], wa[1], wb[1], xa[i].x, xa[i].y);
        mma_16816(acc[h][1], wa[0], wb[0], wa[1], wb[1], xb[i].x, xb[i].y);
        mma_16816(acc[h][0], wa[2], wb[2], wa[3], wb[3], xa[i].z, xa[i].w);
        mma_16816(acc[h][1], wa[2], wb[2], wa[3], wb[3], xb[i].z, xb[i].w);
      }
    }
    cur = next;
  }
  gemv_epilogue<G, 2>(acc, partial, mid, b_rows, add, y, j0, n, rows);
}

// The block of the grid's x index.
template <int G>
__device__ __forceinline__ void nf4_gemv_mma(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ absmax_q,
                                             const float *__restrict__ tables, const __nv_bfloat16 *__restrict__ x,
                                             __nv_bfloat16 *__restrict__ y, size_t n, size_t k, int rows,
                                             const GemvAdd &add) {
  nf4_gemv_mma<G>(codes, absmax_q, tables, x, y, n, k, rows, add, blockIdx.x);
}

// One kernel per G; launch bounds that keep G = 1 and 2 at 128 registers or fewer (two blocks of 256 threads fit
// a multiprocessor), G = 4 at most 8 warps (its partial sums fill 32 KiB of shared memory).
#define NF4_GEMV_MMA(G, THREADS)                                                                               \
  extern "C" __global__ void __launch_bounds__(THREADS)                                                        \
      nf4_gemv_mma##G(const uint8_t *codes, const uint8_t *absmax_q, const float *tables, const __nv_bfloat16 *x, \
                      __nv_bfloat16 *y, size_t n, size_t k, int rows, const GemvAdd add) {                     \
    nf4_gemv_mma<G>(codes, absmax_q, tables, x, y, n, k, rows, add);                                           \
  }
NF4_GEMV_MMA(1, 512)
NF4_GEMV_MMA(2, 512)
NF4_GEMV_MMA(4, 256)

// nf4_gemv_mma_members: the products of one x by up to three weights (q, k and v) in one launch, so that the narrow
// ones (k and v: 2 MB each, whose launches alone are latency) run beside the wide one. Each member is a weight of k
// inputs with its own output, bias and low-rank term; the grid's blocks are the members' blocks one after the other
// (member i's end where ends[i] says), each block running nf4_gemv_mma on its member's weight. Dynamic shared
// memory: what the largest rank among the members needs.
#define GEMV_MEMBERS 3
struct GemvMember {
  const uint8_t *codes;
  const uint8_t *absmax_q;
  const float *tables;
  __nv_bfloat16 *y;
  size_t n;
  GemvAdd add;
};
struct GemvMembers {
  GemvMember m[GEMV_MEMBERS];
  unsigned int ends[GEMV_MEMBERS];
};

// Each member's call has its own constant index (a kernel parameter indexed at run time would be copied to local
// memory first).
#define NF4_GEMV_MMA_MEMBERS(G, THREADS)                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
      nf4_gemv_mma_members##G(const GemvMembers members, const __nv_bfloat16 *x, size_t k, int rows) {            \
    const unsigned int b = blockIdx.x;                                                                             \
    if (b < members.ends[0]) {                                                                                     \
      const GemvMember &m = members.m[0];                                                                          \
      nf4_gemv_mma<G>(m.codes, m.absmax_q, m.tables, x, m.y, m.n, k, rows, m.add, b);                              \
    } else if (b < members.ends[1]) {                                                                              \
      const GemvMember &m = members.m[1];                                                                          \
      nf4_gemv_mma<G>(m.codes, m.absmax_q, m.tables, x, m.y, m.n, k, rows, m.add, b - members.ends[0]);            \
    } else {                                                                                                       \
      const GemvMember &m = members.m[2];                                                                          \
      nf4_gemv_mma<G>(m.codes, m.absmax_q, m.tables, x, m.y, m.n, k, rows, m.add, b - members.ends[1]);            \
    }                                                                                                              \
  }
NF4_GEMV_MMA_MEMBERS(1, 512)
NF4_GEMV_MMA_MEMBERS(2, 512)

// nf4_gemv_lut: the same product with the scale applied after the tensor cores (measured 9-21% faster than
// nf4_gemv_mma on the wide products, bench/results/h100-gemv-lut-2026-12-07.txt). Each 64-block's four k16
// steps multiply the raw code values (the quant map's, in bf16) and are summed by one mma chain; the block's sum is
// then scaled once in f32 and added: about half the instructions per weight of dequantizing every value. A code byte
// becomes its two bf16 values (one word, the high nibble's in the low half) by one lookup in a table of 256 words
// in shared memory, copied once per lane (word 32 e + lane) so that every lane reads its own bank.
//
// A block of `warps` warps takes the 16 G features [j0, j0 + 16G) over the whole of k: warp w takes the 64-blocks
// w, w + warps, ...; in block c, lane (g = lane / 4, t = lane % 4) reads elements [64c + 16t, +16) (eight code
// bytes) of features j0 + 16h + g and j0 + 16h + g + 8 (group h < G), their absmax codes and nested scales, and the
// same sixteen elements of x's rows g and g + 8 (WIDE: rows 9 to 16 too). Step s (0..3) puts the lane's bytes 2s
// (elements 4s, 4s + 1) where the mma's layout has k = 2t, 2t + 1, and 2s + 1 where it has k = 2t + 8, 2t + 9, in A
// and B alike (as nf4_gemv_mma does). The next block's loads are issued before this one's lookups; the kernels'
// register cap (128) keeps them there (at 64, what the compiler picks for lut2_0 unasked, it moves them after the
// multiplications, and each block waits for its loads). Any k that is a multiple of 64.
//
// Dynamic shared memory: the table (32 KiB; the warps' partial sums reuse it after the main loop: warps * G <= 32),
// then acode[256], then rows * rank floats (the rank-wide rows), then 16 G * (rank + 1) (B's rows).

// What a lane reads for one 64-block: eight code bytes of each of its 2G features, their quantized absmax and
// nested scale, and sixteen elements of x's rows g (xa) and g + 8 (xb, WIDE only).
template <int G> struct LutBlock {
  uint2 c[2 * G];
  uint32_t q[2 * G];
  float nest[2 * G];
  uint4 xa[2];
  uint4 xb[2];
};

// Loads through volatile asm, so that the program order puts them ahead of the previous block's table lookups.
__device__ __forceinline__ uint2 ldg_u2(const void *p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ldg_u4(const void *p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ldg_u8(const uint8_t *p) {
  uint16_t v;
  asm volatile("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ float ldg_f32(const float *p) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

// Block c's loads, unconditional: the caller passes the last block again past the end; rows past `rows` read row
// rows - 1 (x0 and x1 point there), whose sums are not written.
template <int G, bool WIDE>
__device__ __forceinline__ void lut_load(LutBlock<G> &b, const uint8_t *codes, const uint8_t *absmax_q,
                                         const float *tables, const uint32_t (&first)[2 * G],
                                         const __nv_bfloat16 *x0, const __nv_bfloat16 *x1, uint32_t c) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int f = 0; f < 2 * G; f++) {
    const uint32_t blk = first[f] + c;
    b.c[f] = ldg_u2(codes + 32 * (size_t)blk + 8 * t);
    b.q[f] = ldg_u8(absmax_q + blk);
    b.nest[f] = ldg_f32(tables + TABLE_NESTED + blk / NESTED_BLOCK);
  }
  const __nv_bfloat16 *p = x0 + 64 * (size_t)c;
  b.xa[0] = ldg_u4(p);
  b.xa[1] = ldg_u4(p + 8);
  if (WIDE) {
    p = x1 + 64 * (size_t)c;
    b.xb[0] = ldg_u4(p);
    b.xb[1] = ldg_u4(p + 8);
  }
}

// The two bf16 values of byte `B` of `word` from the lane's copy of the table: `base` = the table's address +
// 4 lane, plus the byte times 128.
template <int B>
__device__ __forceinline__ uint32_t lut_pair(uint32_t word, uint32_t base) {
  const uint32_t addr = (__byte_perm(word, 0, 0x4440 | B) << 7) + base;
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}

// d = a b for one 16x8x16 tile (the sums start from zero).
__device__ __forceinline__ void mma_16816_zero(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.0f));
}

// Step S of a 64-block: the lane's bytes 2S and 2S + 1 of features g (ca) and g + 8 (cb), x's words x0 and x1.
template <int S>
__device__ __forceinline__ void lut_step(float (&d)[4], const uint2 ca, const uint2 cb, uint32_t base, uint32_t x0,
                                         uint32_t x1) {
  const uint32_t wa = S < 2 ? ca.x : ca.y, wb = S < 2 ? cb.x : cb.y;
  constexpr int P = (2 * S) % 4;
  const uint32_t a0 = lut_pair<P>(wa, base), a2 = lut_pair<P + 1>(wa, base);
  const uint32_t a1 = lut_pair<P>(wb, base), a3 = lut_pair<P + 1>(wb, base);
  if (S == 0) mma_16816_zero(d, a0, a1, a2, a3, x0, x1);
  else mma_16816(d, a0, a1, a2, a3, x0, x1);
}

// One row group's four steps over a 64-block's codes, scaled (sa: feature g's block, sb: g + 8's) into acc.
__device__ __forceinline__ void lut_rows(float (&acc)[4], const uint2 ca, const uint2 cb, const uint4 *xv, float sa,
                                         float sb, uint32_t base) {
  float d[4];
  lut_step<0>(d, ca, cb, base, xv[0].x, xv[0].y);
  lut_step<1>(d, ca, cb, base, xv[0].z, xv[0].w);
  lut_step<2>(d, ca, cb, base, xv[1].x, xv[1].y);
  lut_step<3>(d, ca, cb, base, xv[1].z, xv[1].w);
  acc[0] = __fmaf_rn(sa, d[0], acc[0]);
  acc[1] = __fmaf_rn(sa, d[1], acc[1]);
  acc[2] = __fmaf_rn(sb, d[2], acc[2]);
  acc[3] = __fmaf_rn(sb, d[3], acc[3]);
}

template <int G, bool WIDE>
__device__ __forceinline__ void lut_block(float (&acc)[G][2][4], const LutBlock<G> &b, const float *acode,
                                          float offset, uint32_t base) {
#pragma unroll
  for (int h = 0; h < G; h++) {
    const float sa = acode[b.q[2 * h]] * b.nest[2 * h] + offset;
    const float sb = acode[b.q[2 * h + 1]] * b.nest[2 * h + 1] + offset;
#pragma unroll
    for (int r = 0; r < (WIDE ? 2 : 1); r++)
      lut_rows(acc[h][r], b.c[2 * h], b.c[2 * h + 1], r == 0 ? b.xa : b.xb, sa, sb, base);
  }
}

template <int G, bool WIDE>
__device__ __forceinline__ void nf4_gemv_lut(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ absmax_q,
                                             const float *__restrict__ tables, const __nv_bfloat16 *__restrict__ x,
                                             __nv_bfloat16 *__restrict__ y, size_t n, size_t k, int rows,
                                             const GemvAdd add) {
  extern __shared__ __align__(16) float lut_smem[];
  constexpr int TABLE_WORDS = 256 * 32;
  float *partial = lut_smem, *acode = lut_smem + TABLE_WORDS, *mid = acode + 256, *b_rows = mid + rows * add.rank;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const size_t j0 = (size_t)blockIdx.x * (16 * G);
  const uint32_t blocks = (uint32_t)(k / NF4_BLOCK);
  // Features past n read the last feature's codes (their sums are not written).
  uint32_t first[2 * G];
#pragma unroll
  for (int f = 0; f < 2 * G; f++) {
    size_t j = j0 + 16 * (f / 2) + 8 * (f % 2) + g;
    first[f] = (uint32_t)(j < n ? j : n - 1) * blocks;
  }
  const __nv_bfloat16 *x0 = x + (size_t)min(g, rows - 1) * k + 16 * t;
  const __nv_bfloat16 *x1 = x + (size_t)min(g + 8, rows - 1) * k + 16 * t;
  // The first block's loads are on their way while the tables are built.
  LutBlock<G> cur, next;
  uint32_t c = warp;
  lut_load<G, WIDE>(cur, codes, absmax_q, tables, first, x0, x1, min(c, blocks - 1));
  gemv_add_prologue<G>(add, mid, b_rows, j0, n, rows);
  // Entry e for every lane: thread i writes half of entry i / 2's copies (16 words, four 16-byte stores).
  for (int i = threadIdx.x; i < 512; i += blockDim.x) {
    const int e = i >> 1;
    __nv_bfloat162 p = __floats2bfloat162_rn(tables[e >> 4], tables[e & 15]);
    const uint32_t w = *reinterpret_cast<const uint32_t *>(&p);
    uint4 *dst = reinterpret_cast<uint4 *>(lut_smem + (e << 5) + 16 * (i & 1));
#pragma unroll
    for (int q = 0; q < 4; q++) dst[q] = make_uint4(w, w, w, w);
  }
  for (int i = threadIdx.x; i < 256; i += blockDim.x) acode[i] = tables[16 + i];
  __syncthreads();
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(lut_smem) + 4 * lane;
  const float offset = tables[TABLE_OFFSET];
  float acc[G][2][4];
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[h][0][i] = acc[h][1][i] = 0.0f;
  for (; c < blocks; c += warps) {
    lut_load<G, WIDE>(next, codes, absmax_q, tables, first, x0, x1, min(c + warps, blocks - 1));
    lut_block<G, WIDE>(acc, cur, acode, offset, base);
    cur = next;
  }
  __syncthreads();  // the table's space takes the partial sums
  gemv_epilogue<G, WIDE ? 2 : 1>(acc, partial, mid, b_rows, add, y, j0, n, rows);
}

// A lut kernel named NAME, capped at REGS registers (scripts/nf4_gemv_variants.cu instantiates others).
#define NF4_GEMV_LUT_KERNEL(NAME, G, WIDE, REGS)                                                               \
  extern "C" __global__ void __maxnreg__(REGS)                                                                 \
      NAME(const uint8_t *codes, const uint8_t *absmax_q, const float *tables, const __nv_bfloat16 *x,         \
           __nv_bfloat16 *y, size_t n, size_t k, int rows, const GemvAdd add) {                                \
    nf4_gemv_lut<G, WIDE>(codes, absmax_q, tables, x, y, n, k, rows, add);                                     \
  }
// One kernel per G (1 or 2) and WIDE (0: up to 8 rows, 1: up to 16), capped at 128 registers (see above).
#define NF4_GEMV_LUT(G, WIDE) NF4_GEMV_LUT_KERNEL(nf4_gemv_lut##G##_##WIDE, G, WIDE, 128)
NF4_GEMV_LUT(1, 0)
NF4_GEMV_LUT(1, 1)
NF4_GEMV_LUT(2, 0)
NF4_GEMV_LUT(2, 1)
