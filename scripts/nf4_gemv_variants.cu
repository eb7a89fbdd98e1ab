// Variants of nf4.cu's few-row product nf4_gemv_mma for scripts/nf4_gemv_bench.py (not used by qlab). nf4.cu is
// included, so the committed kernels are the baseline the variants are compared with (measured on an H100:
// bench/results/h100-gemv-variants-2026-12-07.txt).
//   mmap{G}: nf4_gemv_mma after asking L2 for the block's whole share of the weight (prefetch_features).
//   lut{G}_{WIDE}_7_r{REGS}_d{DEPTH}_p{P}: the scale applied after the tensor cores instead of to every weight:
//   each 64-block's four k16 steps are summed from the raw code values (bf16 of the quant map), then scaled once
//   (f32). A code byte becomes its two bf16 values (one word) by one lookup in a shared table of 256 words, copied
//   once per lane so that every lane reads its own bank: word 32 e + lane (rows of 2^7 bytes, 32 KiB; a permute
//   and a multiply-add make the address). WIDE: rows 9-16 too. REGS, DEPTH and P: see NF4_GEMV_LUT.
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

// What a lane reads for one 64-block: eight code bytes of each of its 2G features (elements [16t, +16) of the
// block), their quantized absmax and nested scale, and the same sixteen elements of x's rows g and g + 8.
template <int G, bool WIDE> struct LutBlock {
  uint2 c[2 * G];
  uint32_t q[2 * G];
  float nest[2 * G];
  uint4 xa[2];
  uint4 xb[2];
};

// Loads through volatile asm, so that the program order puts them ahead of the previous block's table lookups (also
// volatile). That alone did not keep ptxas from moving them after the multiplications: the register cap did (see
// NF4_GEMV_LUT).
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

// Unconditional loads: a block past the last reads the last again; rows past `rows` read row rows - 1, whose sums
// are not written.
template <int G, bool WIDE>
__device__ __forceinline__ void lut_load(LutBlock<G, WIDE> &b, const uint8_t *codes, const uint8_t *absmax_q,
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

// The two bf16 values of byte `B` of `word` (the high nibble's in the low half) from the lane's copy of the table.
// `base` = the table's address + 4 lane; the byte times 128 is added to it.
template <int B>
__device__ __forceinline__ uint32_t lut_pair(uint32_t word, uint32_t base) {
  const uint32_t addr = (__byte_perm(word, 0, 0x4440 | B) << 7) + base;
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}

__device__ __forceinline__ void mma_16816_zero(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.0f));
}

template <int S>
__device__ __forceinline__ void lut_step(float (&d)[4], const uint2 ca, const uint2 cb, uint32_t base, uint32_t x0,
                                         uint32_t x1) {
  // bytes 2S and 2S + 1 of the eight: in word S / 2, positions (2S) % 4 and (2S + 1) % 4
  const uint32_t wa = S < 2 ? ca.x : ca.y, wb = S < 2 ? cb.x : cb.y;
  constexpr int P = (2 * S) % 4;
  const uint32_t a0 = lut_pair<P>(wa, base), a2 = lut_pair<P + 1>(wa, base);
  const uint32_t a1 = lut_pair<P>(wb, base), a3 = lut_pair<P + 1>(wb, base);
  if (S == 0) mma_16816_zero(d, a0, a1, a2, a3, x0, x1);
  else mma_16816(d, a0, a1, a2, a3, x0, x1);
}

template <int G, bool WIDE>
__device__ __forceinline__ void lut_block(float (&acc)[G][2][4], const LutBlock<G, WIDE> &b, const float *acode,
                                          float offset, uint32_t base) {
#pragma unroll
  for (int h = 0; h < G; h++) {
    const float sa = acode[b.q[2 * h]] * b.nest[2 * h] + offset;
    const float sb = acode[b.q[2 * h + 1]] * b.nest[2 * h + 1] + offset;
    const uint2 ca = b.c[2 * h], cb = b.c[2 * h + 1];
    float d[4];
    lut_step<0>(d, ca, cb, base, b.xa[0].x, b.xa[0].y);
    lut_step<1>(d, ca, cb, base, b.xa[0].z, b.xa[0].w);
    lut_step<2>(d, ca, cb, base, b.xa[1].x, b.xa[1].y);
    lut_step<3>(d, ca, cb, base, b.xa[1].z, b.xa[1].w);
    acc[h][0][0] = __fmaf_rn(sa, d[0], acc[h][0][0]);
    acc[h][0][1] = __fmaf_rn(sa, d[1], acc[h][0][1]);
    acc[h][0][2] = __fmaf_rn(sb, d[2], acc[h][0][2]);
    acc[h][0][3] = __fmaf_rn(sb, d[3], acc[h][0][3]);
    if (WIDE) {
      lut_step<0>(d, ca, cb, base, b.xb[0].x, b.xb[0].y);
      lut_step<1>(d, ca, cb, base, b.xb[0].z, b.xb[0].w);
      lut_step<2>(d, ca, cb, base, b.xb[1].x, b.xb[1].y);
      lut_step<3>(d, ca, cb, base, b.xb[1].z, b.xb[1].w);
      acc[h][1][0] = __fmaf_rn(sa, d[0], acc[h][1][0]);
      acc[h][1][1] = __fmaf_rn(sa, d[1], acc[h][1][1]);
      acc[h][1][2] = __fmaf_rn(sb, d[2], acc[h][1][2]);
      acc[h][1][3] = __fmaf_rn(sb, d[3], acc[h][1][3]);
    }
  }
}

// Dynamic shared memory: the table (32 KiB; the partial sums reuse it after the main loop), then acode[256],
// then rows * rank (the rank-wide rows), then 16 G * (rank + 1) (B's rows).
template <int G, bool WIDE, int DEPTH, bool PREFETCH>
__device__ __forceinline__ void nf4_gemv_lut(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ absmax_q,
                                             const float *__restrict__ tables, const __nv_bfloat16 *__restrict__ x,
                                             __nv_bfloat16 *__restrict__ y, size_t n, size_t k, int rows,
                                             const GemvAdd add) {
  extern __shared__ __align__(16) float dyn[];
  constexpr int TABLE_WORDS = 8192;
  float *smem = dyn;
  float *partial = smem, *acode = smem + TABLE_WORDS, *mid = acode + 256, *b_rows = mid + rows * add.rank;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const size_t j0 = (size_t)blockIdx.x * (16 * G);
  const uint32_t blocks = (uint32_t)(k / NF4_BLOCK);
  uint32_t first[2 * G];
#pragma unroll
  for (int f = 0; f < 2 * G; f++) {
    size_t j = j0 + 16 * (f / 2) + 8 * (f % 2) + g;
    first[f] = (uint32_t)(j < n ? j : n - 1) * blocks;
  }
  const __nv_bfloat16 *x0 = x + (size_t)min(g, rows - 1) * k + 16 * t;
  const __nv_bfloat16 *x1 = x + (size_t)min(g + 8, rows - 1) * k + 16 * t;
  // The first block's loads are on their way while the tables are built.
  if (PREFETCH) prefetch_features<G>(codes, absmax_q, n, k);
  // DEPTH 1: one block in flight while one is multiplied; DEPTH 2: two (a ring of three, unrolled, so that no
  // register copy waits for a load).
  LutBlock<G, WIDE> b0, b1, b2;
  uint32_t c = warp;
  lut_load<G, WIDE>(b0, codes, absmax_q, tables, first, x0, x1, min(c, blocks - 1));
  if (DEPTH == 2) lut_load<G, WIDE>(b1, codes, absmax_q, tables, first, x0, x1, min(c + warps, blocks - 1));

  for (int i = threadIdx.x; i < 16 * G * add.rank; i += blockDim.x) {
    const int f = i / add.rank, u = i % add.rank;
    if (j0 + f < n) copy_async_f32(b_rows + f * (add.rank + 1) + u, add.b + (j0 + f) * add.rank + u);
  }
  // Entry e for every lane: thread i writes half of entry i / 2's copies (16 words, four 16-byte stores).
  for (int i = threadIdx.x; i < 512; i += blockDim.x) {
    const int e = i >> 1;
    __nv_bfloat162 p = __floats2bfloat162_rn(tables[e >> 4], tables[e & 15]);
    const uint32_t w = *reinterpret_cast<const uint32_t *>(&p);
    uint4 *dst = reinterpret_cast<uint4 *>(smem + (e << 5) + 16 * (i & 1));
#pragma unroll
    for (int q = 0; q < 4; q++) dst[q] = make_uint4(w, w, w, w);
  }
  for (int i = threadIdx.x; i < 256; i += blockDim.x) acode[i] = tables[16 + i];
  for (int i = threadIdx.x; i < rows * add.rank; i += blockDim.x) {
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
  __syncthreads();
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(smem) + 4 * lane;
  const float offset = tables[TABLE_OFFSET];
  float acc[G][2][4];
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[h][0][i] = acc[h][1][i] = 0.0f;
  if (DEPTH == 1) {
    for (; c < blocks; c += warps) {
      lut_load<G, WIDE>(b1, codes, absmax_q, tables, first, x0, x1, min(c + warps, blocks - 1));
      lut_block<G, WIDE>(acc, b0, acode, offset, base);
      b0 = b1;
    }
  } else {
    const uint32_t ahead = 2 * warps;
    while (c < blocks) {
      lut_load<G, WIDE>(b2, codes, absmax_q, tables, first, x0, x1, min(c + ahead, blocks - 1));
      lut_block<G, WIDE>(acc, b0, acode, offset, base);
      if ((c += warps) >= blocks) break;
      lut_load<G, WIDE>(b0, codes, absmax_q, tables, first, x0, x1, min(c + ahead, blocks - 1));
      lut_block<G, WIDE>(acc, b1, acode, offset, base);
      if ((c += warps) >= blocks) break;
      lut_load<G, WIDE>(b1, codes, absmax_q, tables, first, x0, x1, min(c + ahead, blocks - 1));
      lut_block<G, WIDE>(acc, b2, acode, offset, base);
      c += warps;
    }
  }
  __syncthreads();  // the table's space takes the partial sums
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int r = 0; r < (WIDE ? 2 : 1); r++)
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

// REGS: the register cap (__maxnreg__). At 64 (what ptxas picks when not capped) it moves the next block's loads after
// the multiplications, where the copy into `cur` waits for them, so no load is in flight while a block is multiplied;
// at 128 they stay ahead. DEPTH: blocks in flight per warp (1, or 2 in an unrolled ring of three). P: 1 to prefetch
// the block's rows into L2 first.
#define NF4_GEMV_LUT(G, WIDE, REGS, DEPTH, P)                                                                  \
  extern "C" __global__ void __maxnreg__(REGS) nf4_gemv_lut##G##_##WIDE##_7_r##REGS##_d##DEPTH##_p##P(        \
      const uint8_t *codes, const uint8_t *absmax_q, const float *tables, const __nv_bfloat16 *x,              \
      __nv_bfloat16 *y, size_t n, size_t k, int rows, const GemvAdd add) {                                     \
    nf4_gemv_lut<G, WIDE, DEPTH, P>(codes, absmax_q, tables, x, y, n, k, rows, add);                           \
  }
#define NF4_GEMV_LUT2(G, REGS, DEPTH, P) NF4_GEMV_LUT(G, 0, REGS, DEPTH, P) NF4_GEMV_LUT(G, 1, REGS, DEPTH, P)
NF4_GEMV_LUT2(1, 128, 1, 0)
NF4_GEMV_LUT2(2, 128, 1, 0)
NF4_GEMV_LUT2(2, 64, 1, 0)
NF4_GEMV_LUT2(2, 128, 2, 0)
NF4_GEMV_LUT2(1, 128, 1, 1)
NF4_GEMV_LUT2(2, 128, 1, 1)
NF4_GEMV_LUT2(2, 64, 1, 1)

