// Variants of nf4.cu's few-row products for scripts/nf4_gemv_bench.py (not used by qlab). nf4.cu is included, so
// its kernels (nf4_gemv_mma{G} and nf4_gemv_lut{G}_{WIDE}) are the baseline the variants are compared with
// (measured on an H100: bench/results/h100-gemv-variants-2026-12-07.txt, where the lut kernels were still variants
// here, with two more parameters: a second block in flight, no faster, is at f8b690b; h100-gemv-lut-2026-12-07.txt,
// this file as it is).
//   mmap{G}: nf4_gemv_mma after asking L2 for the block's whole share of the weight (prefetch_features).
//   lutp{G}_{WIDE}: nf4_gemv_lut after the same prefetch.
//   lut{G}_{WIDE}_r64: nf4_gemv_lut capped at 64 registers (what the compiler picks unasked for lut2_0), which
//   moves the next block's loads after the multiplications.
//   tile{G}_{WIDE}_s{S}: the lut arithmetic on codes streamed through shared memory in whole 128-byte lines, S
//   stages in flight a warp (measured on an H100: bench/results/h100-gemv-tile-2026-12-08.txt).
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

// Copies 16 bytes (bypassing L1) or 4 bytes from global to shared memory asynchronously; waits until at most N of the
// committed groups are still in flight.
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src)
               : "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// tile{G}_{WIDE}_s{S} (nf4_gemv_tile): nf4_gemv_lut's arithmetic with the codes streamed through shared memory in
// whole 128-byte lines. A warp's unit of work is a stage: four consecutive 64-blocks (256 elements) of its block's
// 16 G features; warp w takes stages w, w + warps, ... Each cp.async instruction copies four feature rows' 128 bytes
// (lanes 8 r' to 8 r' + 7 one row, 16 bytes each), instead of the lut kernel's 32-byte pieces of eight rows; S stages
// a warp are in flight. A row's 16-byte chunk c lands at chunk c ^ (2 row & 7), so that the eight-byte reads of the
// mma layout (lane (g, t): bytes 32 b + 8 t of 64-block b, rows g and g + 8 of each group) hit distinct banks in each
// half-warp. The four absmax codes of a row's stage (one 32-bit word: k a multiple of 256) come with it.
// Dynamic shared memory: the lut table (32 KiB, the partial sums after the loop), acode[256], the warps' stage rings
// (warps * S * (16 G * 132) bytes), then the low-rank term's floats. k a multiple of 256; codes 16-byte and absmax
// codes 4-byte aligned.
template <int G> struct TileShape {
  static constexpr int F = 16 * G;                 // features a block
  static constexpr int CODES = F * 128;            // a stage's code bytes
  static constexpr int BYTES = CODES + F * 4;      // and its absmax words
};

// Copies stage `s` (its 16 G rows' bytes [128 s, 128 s + 128) and absmax words) into `dst`, then commits the group.
template <int G>
__device__ __forceinline__ void tile_issue(uint8_t *dst, const uint8_t *codes, const uint8_t *absmax_q, size_t j0,
                                           size_t n, size_t k, uint32_t s, bool valid) {
  using T = TileShape<G>;
  const int lane = threadIdx.x & 31;
  if (valid) {
#pragma unroll
    for (int m = 0; m < T::F / 4; m++) {
      const int r = (lane >> 3) + 4 * m, ch = lane & 7;
      const size_t j = min(j0 + r, n - 1);
      cp_async16(dst + r * 128 + ((ch ^ ((2 * r) & 7)) << 4), codes + j * (k / 2) + 128 * (size_t)s + 16 * ch);
    }
    for (int r = lane; r < T::F; r += 32) {
      const size_t j = min(j0 + r, n - 1);
      cp_async4(dst + T::CODES + 4 * r, absmax_q + j * (k / NF4_BLOCK) + 4 * (size_t)s);
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int G, bool WIDE, int S>
__device__ __forceinline__ void nf4_gemv_tile(const uint8_t *__restrict__ codes,
                                              const uint8_t *__restrict__ absmax_q, const float *__restrict__ tables,
                                              const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y,
                                              size_t n, size_t k, int rows, const GemvAdd add) {
  using T = TileShape<G>;
  extern __shared__ __align__(16) float tile_smem[];
  constexpr int TABLE_WORDS = 256 * 32;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  float *partial = tile_smem, *acode = tile_smem + TABLE_WORDS;
  uint8_t *rings = reinterpret_cast<uint8_t *>(acode + 256);
  uint8_t *ring = rings + warp * S * T::BYTES;
  float *mid = reinterpret_cast<float *>(rings + warps * S * T::BYTES), *b_rows = mid + rows * add.rank;
  const size_t j0 = (size_t)blockIdx.x * T::F;
  const uint32_t blocks = (uint32_t)(k / NF4_BLOCK), stages = blocks / 4;
  // The first S - 1 stages are on their way while the tables are built.
#pragma unroll
  for (int p = 0; p < S - 1; p++) {
    const uint32_t s = warp + p * warps;
    tile_issue<G>(ring + p * T::BYTES, codes, absmax_q, j0, n, k, s, s < stages);
  }
  gemv_add_prologue<G>(add, mid, b_rows, j0, n, rows);
  // nf4_gemv_lut's tables (see there).
  for (int i = threadIdx.x; i < 512; i += blockDim.x) {
    const int e = i >> 1;
    __nv_bfloat162 p = __floats2bfloat162_rn(tables[e >> 4], tables[e & 15]);
    const uint32_t w = *reinterpret_cast<const uint32_t *>(&p);
    uint4 *dst = reinterpret_cast<uint4 *>(tile_smem + (e << 5) + 16 * (i & 1));
#pragma unroll
    for (int q = 0; q < 4; q++) dst[q] = make_uint4(w, w, w, w);
  }
  for (int i = threadIdx.x; i < 256; i += blockDim.x) acode[i] = tables[16 + i];
  __syncthreads();
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(tile_smem) + 4 * lane;
  const float offset = tables[TABLE_OFFSET];
  const __nv_bfloat16 *x0 = x + (size_t)min(g, rows - 1) * k + 16 * t;
  const __nv_bfloat16 *x1 = x + (size_t)min(g + 8, rows - 1) * k + 16 * t;
  // Lane (g, t)'s eight bytes of 64-block b in a row of the stage: chunk 2 b + t / 2 (swizzled by g: every row the
  // lane reads is g modulo 8), half t % 2.
  const int swz = (2 * g) & 7;
  float acc[G][2][4];
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[h][0][i] = acc[h][1][i] = 0.0f;
  int slot = 0;
  for (uint32_t s = warp; s < stages; s += warps) {
    // The slot written next held the stage finished last iteration: every lane is done reading it.
    __syncwarp();
    const uint32_t ahead = s + (S - 1) * warps;
    tile_issue<G>(ring + ((slot + S - 1) % S) * T::BYTES, codes, absmax_q, j0, n, k, ahead, ahead < stages);
    float nest[2 * G];
#pragma unroll
    for (int f = 0; f < 2 * G; f++) {
      const size_t j = min(j0 + 16 * (f / 2) + 8 * (f % 2) + g, n - 1);
      nest[f] = __ldg(tables + TABLE_NESTED + (j * blocks + 4 * (size_t)s) / NESTED_BLOCK);
    }
    cp_async_wait<S - 1>();
    __syncwarp();
    const uint8_t *st = ring + slot * T::BYTES;
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const __nv_bfloat16 *p = x0 + 64 * (size_t)(4 * s + b);
      uint4 xa[2] = {__ldg(reinterpret_cast<const uint4 *>(p)), __ldg(reinterpret_cast<const uint4 *>(p + 8))}, xb[2];
      if (WIDE) {
        p = x1 + 64 * (size_t)(4 * s + b);
        xb[0] = __ldg(reinterpret_cast<const uint4 *>(p));
        xb[1] = __ldg(reinterpret_cast<const uint4 *>(p + 8));
      }
      const int off = (((2 * b + (t >> 1)) ^ swz) << 4) + 8 * (t & 1);
#pragma unroll
      for (int h = 0; h < G; h++) {
        const int ra = 16 * h + g, rb = ra + 8;
        const uint2 ca = *reinterpret_cast<const uint2 *>(st + ra * 128 + off);
        const uint2 cb = *reinterpret_cast<const uint2 *>(st + rb * 128 + off);
        const uint32_t qa = st[T::CODES + 4 * ra + b], qb = st[T::CODES + 4 * rb + b];
        const float sa = acode[qa] * nest[2 * h] + offset, sb = acode[qb] * nest[2 * h + 1] + offset;
        lut_rows(acc[h][0], ca, cb, xa, sa, sb, base);
        if (WIDE) lut_rows(acc[h][1], ca, cb, xb, sa, sb, base);
      }
    }
    slot = (slot + 1) % S;
  }
  cp_async_wait<0>();
  __syncthreads();  // the table's space takes the partial sums
  gemv_epilogue<G, WIDE ? 2 : 1>(acc, partial, mid, b_rows, add, y, j0, n, rows);
}

// A tile kernel named NAME with S stages a warp, capped at 128 registers as the lut kernels.
#define NF4_GEMV_TILE_KERNEL(NAME, G, WIDE, S)                                                                 \
  extern "C" __global__ void __maxnreg__(128)                                                                  \
      NAME(const uint8_t *codes, const uint8_t *absmax_q, const float *tables, const __nv_bfloat16 *x,         \
           __nv_bfloat16 *y, size_t n, size_t k, int rows, const GemvAdd add) {                                \
    nf4_gemv_tile<G, WIDE, S>(codes, absmax_q, tables, x, y, n, k, rows, add);                                 \
  }

// The tile kernel with 2, 3 and 4 stages a warp.
#define NF4_GEMV_TILES(G, WIDE)                                                                                \
  NF4_GEMV_TILE_KERNEL(nf4_gemv_tile##G##_##WIDE##_s2, G, WIDE, 2)                                             \
  NF4_GEMV_TILE_KERNEL(nf4_gemv_tile##G##_##WIDE##_s3, G, WIDE, 3)                                             \
  NF4_GEMV_TILE_KERNEL(nf4_gemv_tile##G##_##WIDE##_s4, G, WIDE, 4)
NF4_GEMV_TILES(1, 0)
NF4_GEMV_TILES(1, 1)
NF4_GEMV_TILES(2, 0)
NF4_GEMV_TILES(2, 1)
