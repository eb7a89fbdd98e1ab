// Flash attention for training in bf16 (FlashAttention-2's scheme): the forward keeps an online softmax per
// query row in registers and writes only the output and the row's log-sum-exp; the backward recomputes the
// probabilities tile by tile, in one kernel for the keys' and values' gradients (a CTA per key tile and key
// head, looping over the group's query heads, so grouped-query heads need no atomics) and one for the
// queries'. No [T, T] tensor exists at any point. Products are tensor-core mma.sync m16n8k16 (bf16 in, f32
// accumulated); a probability tile goes from the accumulator layout straight into the next product's A
// operand.
//
// Masking is computed, not read: query i (absolute position past + i) sees key j when j <= past + i, when
// j > past + i - window (window > 0), and when valid[b][j] != 0 (padding). Gemma 2's soft-capping applies
// cap * tanh(x / cap) to the scaled scores. A query that sees no key outputs zeros (lse = +inf).
//
// Layouts: q [b, h, t, D] and k, v [b, kvh, T, D] with any batch/head/token strides (head_dim contiguous,
// 16-byte aligned rows); out and dout [b, t, h, D] (heads merged); lse and delta [b, h, t] f32;
// dq [b, h, t, D]; dk, dv [b, kvh, T, D].
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define WARPS 4
#define THREADS (WARPS * 32)

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two floats as a bf16 pair, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_f(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t pack_h(bf16 lo, bf16 hi) {
  return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

__device__ __forceinline__ uint32_t ld32(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16 *p) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16 *p) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// A fragment (16 x 16) of a row-major tile in shared memory starting at s (row stride ld).
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *s, int ld, int lane) {
  ldmatrix_x4(a, s + (lane & 15) * ld + (lane >> 4) * 8);
}

// B fragments (16 x 8) of two neighbouring n8 tiles whose column n is row n of a row-major tile
// (B = tile^T): b[0..1] for rows s.. s + 7, b[2..3] for rows s + 8.. s + 15.
__device__ __forceinline__ void frag_b_rows(uint32_t b[4], const bf16 *s, int ld, int lane) {
  ldmatrix_x4(b, s + ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8);
}

// B fragments (16 x 8) of two neighbouring n8 tiles read straight from a row-major tile (k down the rows,
// n across the columns): b[0..1] for columns s.. s + 7, b[2..3] for columns s + 8.. s + 15.
__device__ __forceinline__ void frag_b_cols(uint32_t b[4], const bf16 *s, int ld, int lane) {
  ldmatrix_x4_trans(b, s + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8);
}

// The A fragment of a 16 x 16 slice (n8 tiles j and j + 1) of an accumulator held in registers.
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float x[4], const float y[4]) {
  a[0] = pack_f(x[0], x[1]);
  a[1] = pack_f(x[2], x[3]);
  a[2] = pack_f(y[0], y[1]);
  a[3] = pack_f(y[2], y[3]);
}

// rows x D of a [*, D] matrix with row stride `stride` (elements) into shared memory (row stride D + 8),
// asynchronously (cp.async, 16 bytes at a time); rows past `valid` are zero-filled. The caller commits the
// group and waits for it.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile(bf16 *s, const bf16 *g, long stride, int valid) {
  constexpr int LD = D + 8, CH = D / 8;
  for (int i = threadIdx.x; i < ROWS * CH; i += THREADS) {
    int r = i / CH, c = (i % CH) * 8;
    bool in = r < valid;
    const bf16 *src = in ? g + (long)r * stride + c : g;
    uint32_t dst = (uint32_t)__cvta_generic_to_shared(s + r * LD + c);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(in ? 16 : 0));
  }
}

__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void wait_groups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

struct Geometry {
  long qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst;
  int h, kvh, t, T, past, window;
  float scale, softcap;
};

// Whether query qi sees key kj; the key's padding flag is read only for a tile that has padding (`padded`).
__device__ __forceinline__ bool sees(const Geometry &m, const uint8_t *valid, bool padded, int qi, int kj) {
  int qa = m.past + qi;
  return qi < m.t && kj < m.T && kj <= qa && (m.window <= 0 || kj > qa - m.window) && !(padded && valid[kj] == 0);
}

// Whether no query of rows [q, q + rows) sees any key of [k, k + keys): all rows past the end, every key
// after the last row's diagonal, or every key before the first row's window. A warp skips such a tile.
__device__ __forceinline__ bool sees_none(const Geometry &m, int q, int rows, int k, int keys) {
  return q >= m.t || k > m.past + min(m.t, q + rows) - 1 || (m.window > 0 && k + keys - 1 <= m.past + q - m.window);
}

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// Scores of N n8 tiles (a 16-row slice) turned into log2 units in place: raw * scale * log2(e), or with
// Gemma 2's cap, cap * tanh(raw * scale / cap) * log2(e). Uniform branches outside the element loops keep
// the common path to one multiply per score.
template <int N>
__device__ __forceinline__ void log2_scores(const Geometry &m, float s[N][4]) {
  if (m.softcap > 0.f) {
    const float in = m.scale / m.softcap, out = m.softcap * LOG2E;
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = out * tanhf(s[j][e] * in);
  } else {
    const float sl = m.scale * LOG2E;
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= sl;
  }
}

// The forward's scores of N n8 tiles before their exponentials: with Gemma 2's cap turned into log2 units
// in place (returns 1), without one left raw (returns scale * log2(e), the factor to log2 units), so that
// the common path folds the scale into the exponent's FFMA.
template <int N>
__device__ __forceinline__ float capped_scores(const Geometry &m, float s[N][4]) {
  if (m.softcap > 0.f) {
    log2_scores<N>(m, s);
    return 1.f;
  }
  return m.scale * LOG2E;
}

// How far (log2 units) a tile's row max may pass the forward's reference max before the accumulators are
// rescaled to a new one.
#ifndef RESCALE
#define RESCALE 8.f
#endif

// 2^x (ex2.approx: one instruction; 2^-inf = 0).
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 1 / (cap * log2(e)) with a cap, 0 without: the cap's slope at a score s in log2 units is then
// 1 - (s * inv)^2, exactly 1 without a cap.
__device__ __forceinline__ float inverse_cap(const Geometry &m) {
  return m.softcap > 0.f ? 1.f / (m.softcap * LOG2E) : 0.f;
}

__device__ __forceinline__ float cap_slope(float s2, float inv) {
  const float th = s2 * inv;
  return 1.f - th * th;
}

// Sets x[j][e] to `to` where query q + 8 (e >> 1) does not see key k0 + 8 j + 2 tig + (e & 1) (queries in
// rows, keys in columns), for tiles that are not wholly open.
template <int N>
__device__ __forceinline__ void mask_rows(const Geometry &m, const uint8_t *valid, bool padded, int q, int k0,
                                          int tig, float x[N][4], float to) {
  // without padding the test is index arithmetic only (selects, no branches around flag loads)
  if (!padded) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!sees(m, valid, false, q + 8 * (e >> 1), k0 + j * 8 + 2 * tig + (e & 1))) x[j][e] = to;
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (!sees(m, valid, true, q + 8 * (e >> 1), k0 + j * 8 + 2 * tig + (e & 1))) x[j][e] = to;
}

// The keys query tile [r0, r0 + rows) may see: [begin, end), begin rounded down to a multiple of `tile`.
__device__ __forceinline__ void key_span(const Geometry &m, int r0, int rows, int tile, int *begin, int *end) {
  int last = min(m.t, r0 + rows) - 1;
  *end = min(m.T, m.past + last + 1);
  int b = m.window > 0 ? max(0, m.past + r0 + 1 - m.window) : 0;
  *begin = b / tile * tile;
}

// ---------------------------------------------------------------------------------------------------------
// Whether key j of the tile at k0 is padding, for thread j; reduced over the CTA by __syncthreads_or.
__device__ __forceinline__ int padded_key(const Geometry &m, const uint8_t *valid, int k0, int tile) {
  int j = k0 + threadIdx.x;
  return threadIdx.x < tile && j < m.T && valid[j] == 0;
}

// Whether every query of rows [q, q + rows) sees every key of [k, k + keys) apart from padding: no key past
// the end, none after the first query's diagonal, none before the last query's window.
__device__ __forceinline__ bool block_open(const Geometry &m, int q, int rows, int k, int keys) {
  return k + keys <= m.T && k + keys - 1 <= m.past + q && (m.window <= 0 || k > m.past + q + rows - 1 - m.window);
}

// ---------------------------------------------------------------------------------------------------------
// Forward: a CTA per (batch x head, query tile of 16 * MT rows per warp). The grid's x runs over batch x head
// and y over the tiles from the heaviest (last) one, so that the CTAs start in order of falling work across
// all heads (the longest first, the short ones filling the tail). Each warp owns 16 * MT rows, so that
// every K and V fragment read from shared memory serves MT products.
template <int D, int BC, int MT>
__device__ void forward(const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, bf16 *out,
                        float *lse, Geometry m) {
  constexpr int WR = 16 * MT, BR = WR * WARPS, LD = D + 8;
  extern __shared__ uint4 smem[];
  // Q, then two stages of (K, V) tiles: one computed on while the next one loads
  bf16 *Qs = reinterpret_cast<bf16 *>(smem), *KV = Qs + BR * LD;
  const int r0 = (gridDim.y - 1 - blockIdx.y) * BR, b = blockIdx.x / m.h, hh = blockIdx.x % m.h,
            kh = hh / (m.h / m.kvh);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tig = lane & 3, wr = warp * WR;
  const bf16 *kg = k + b * m.ksb + kh * m.ksh, *vg = v + b * m.vsb + kh * m.vsh;
  const uint8_t *vrow = valid + (long)b * m.T;
  int kbeg, kend;
  key_span(m, r0, BR, BC, &kbeg, &kend);
  load_tile<BR, D>(Qs, q + b * m.qsb + hh * m.qsh + (long)r0 * m.qst, m.qst, m.t - r0);
  if (kbeg < kend) {
    load_tile<BC, D>(KV, kg + (long)kbeg * m.kst, m.kst, m.T - kbeg);
    load_tile<BC, D>(KV + BC * LD, vg + (long)kbeg * m.vst, m.vst, m.T - kbeg);
  }
  commit();
  float o[MT][D / 8][4];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0.f;
  float mx[MT][2], l[MT][2];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[t][r] = -INFINITY;
      l[t][r] = 0.f;
    }
  // each tile's padding flag is read one tile ahead, so that no barrier waits on a global load
  int next_padded = kbeg < kend ? padded_key(m, vrow, kbeg, BC) : 0;
  for (int k0 = kbeg, stage = 0; k0 < kend; k0 += BC, stage ^= 1) {
    const bf16 *Ks = KV + stage * 2 * BC * LD, *Vs = Ks + BC * LD;
    const int padded = next_padded;
    if (k0 + BC < kend) {
      bf16 *next = KV + (stage ^ 1) * 2 * BC * LD;
      load_tile<BC, D>(next, kg + (long)(k0 + BC) * m.kst, m.kst, m.T - k0 - BC);
      load_tile<BC, D>(next + BC * LD, vg + (long)(k0 + BC) * m.vst, m.vst, m.T - k0 - BC);
      next_padded = padded_key(m, vrow, k0 + BC, BC);
    }
    commit();
    wait_groups<1>();
    const bool tile_padded = __syncthreads_or(padded);
    // a warp whose rows see no key of this tile has nothing to add (it still meets the barrier)
    if (!sees_none(m, r0 + wr, WR, k0, BC)) {
      const bool open = !tile_padded && block_open(m, r0 + wr, WR, k0, BC);
      float s[MT][BC / 8][4];
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < BC / 8; ++j) s[t][j][0] = s[t][j][1] = s[t][j][2] = s[t][j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int t = 0; t < MT; ++t) frag_a(a[t], Qs + (wr + t * 16) * LD + kk * 16, LD, lane);
#pragma unroll
        for (int j = 0; j < BC / 8; j += 2) {
          uint32_t bb[4];
          frag_b_rows(bb, Ks + j * 8 * LD + kk * 16, LD, lane);
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            mma16816(s[t][j], a[t], bb);
            mma16816(s[t][j + 1], a[t], bb + 2);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        // scores stay raw (times `sl` in log2 units) without a cap: the scale folds into the exponent's FFMA
        const float sl = capped_scores<BC / 8>(m, s[t]);
        if (!open) mask_rows<BC / 8>(m, vrow, tile_padded, r0 + wr + t * 16 + g, k0, tig, s[t], -INFINITY);
        float nm[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) nm[e >> 1] = fmaxf(nm[e >> 1], s[t][j][e]);
        // The reference max moves only when a tile's max passes it by more than RESCALE (log2 units): below
        // that the exponentials stay under 2^RESCALE, harmless in f32 and exact after the final division by
        // l, and the warp skips rescaling its accumulators. A row that has seen no key yet keeps max -inf.
        bool grow[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          nm[r] = fmaxf(nm[r], __shfl_xor_sync(0xffffffff, nm[r], 1));
          nm[r] = fmaxf(nm[r], __shfl_xor_sync(0xffffffff, nm[r], 2));
          nm[r] *= sl;
          grow[r] = nm[r] > mx[t][r] + RESCALE;
        }
        if (__any_sync(0xffffffff, grow[0] || grow[1])) {
          float alpha[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            alpha[r] = grow[r] ? exp2_fast(mx[t][r] - nm[r]) : 1.f;
            if (grow[r]) mx[t][r] = nm[r];
            l[t][r] *= alpha[r];
          }
#pragma unroll
          for (int i = 0; i < D / 8; ++i) {
            o[t][i][0] *= alpha[0];
            o[t][i][1] *= alpha[0];
            o[t][i][2] *= alpha[1];
            o[t][i][3] *= alpha[1];
          }
        }
        // exponentials of a row with max -inf are taken from 0 (all zeros)
        const float nb[2] = {mx[t][0] == -INFINITY ? 0.f : -mx[t][0], mx[t][1] == -INFINITY ? 0.f : -mx[t][1]};
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float p = exp2_fast(fmaf(s[t][j][e], sl, nb[e >> 1]));
            s[t][j][e] = p;
            l[t][e >> 1] += p;
          }
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int t = 0; t < MT; ++t) acc_to_a(a[t], s[t][2 * kk], s[t][2 * kk + 1]);
#pragma unroll
        for (int i = 0; i < D / 8; i += 2) {
          uint32_t bb[4];
          frag_b_cols(bb, Vs + kk * 16 * LD + i * 8, LD, lane);
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            mma16816(o[t][i], a[t], bb);
            mma16816(o[t][i + 1], a[t], bb + 2);
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[t][r] += __shfl_xor_sync(0xffffffff, l[t][r], 1);
      l[t][r] += __shfl_xor_sync(0xffffffff, l[t][r], 2);
      const int qi = r0 + wr + t * 16 + g + 8 * r;
      if (qi >= m.t) continue;
      float inv = l[t][r] > 0.f ? 1.f / l[t][r] : 0.f;
      bf16 *op = out + ((long)(b * m.t + qi) * m.h + hh) * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<uint32_t *>(op + i * 8 + 2 * tig) =
            pack_f(o[t][i][2 * r] * inv, o[t][i][2 * r + 1] * inv);
      if (tig == 0)
        lse[((long)b * m.h + hh) * m.t + qi] = l[t][r] > 0.f ? (mx[t][r] + log2f(l[t][r])) * LN2 : INFINITY;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Decoding's forward: one new query row per (batch, head) (t = 1, any number of cached keys), where the
// tiled forward would spend a 128-row tile and a single CTA's loop over the keys on it. A CTA per (batch x
// head) of DECODE_WARPS warps; each group of four lanes takes every 64th key (keys far apart run in
// parallel), with its own online softmax in f32 over its keys and the four lanes splitting the head's
// 16-byte chunks; the groups merge by shuffles, the warps through shared memory. Same masks, cap, output and
// log-sum-exp as the forward.
#define DECODE_WARPS 8
template <int D>
__device__ void decode(const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, bf16 *out, float *lse,
                       Geometry m) {
  // a lane's chunks: chunk p, p + 4, ... of the head (at least one: d = 16 and 32 leave some lanes idle)
  constexpr int CH = D / 8, MINE = (CH + 3) / 4;
  extern __shared__ float merge[];  // per warp: max, sum, then D output values
  const int b = blockIdx.x / m.h, hh = blockIdx.x % m.h, kh = hh / (m.h / m.kvh);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 2, part = lane & 3;
  const int group = warp * 8 + grp, groups = DECODE_WARPS * 8;
  const unsigned lanes = 0xfu << (lane & ~3);
  const bf16 *qrow = q + b * m.qsb + hh * m.qsh;
  const bf16 *kg = k + b * m.ksb + kh * m.ksh, *vg = v + b * m.vsb + kh * m.vsh;
  const uint8_t *vrow = valid + (long)b * m.T;
  float qf[MINE][8], o[MINE][8];
#pragma unroll
  for (int i = 0; i < MINE; ++i) {
    const int c = part + 4 * i;
    uint4 w = c < CH ? *reinterpret_cast<const uint4 *>(qrow + c * 8) : make_uint4(0, 0, 0, 0);
    const bf16 *h8 = reinterpret_cast<const bf16 *>(&w);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      qf[i][e] = __bfloat162float(h8[e]);
      o[i][e] = 0.f;
    }
  }
  // the query's position is past (t = 1); the keys it may see
  const int kend = min(m.T, m.past + 1), kbeg = m.window > 0 ? max(0, m.past + 1 - m.window) : 0;
  const float sl = m.scale * LOG2E, inv_cap = m.softcap > 0.f ? 1.f / m.softcap : 0.f;
  float mx = -INFINITY, l = 0.f;
  for (int j = kbeg + group; j < kend; j += groups) {
    uint4 kw[MINE], vw[MINE];
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
      const int c = part + 4 * i;
      kw[i] = c < CH ? *reinterpret_cast<const uint4 *>(kg + (long)j * m.kst + c * 8) : make_uint4(0, 0, 0, 0);
      vw[i] = c < CH ? *reinterpret_cast<const uint4 *>(vg + (long)j * m.vst + c * 8) : make_uint4(0, 0, 0, 0);
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
      const bf16 *h8 = reinterpret_cast<const bf16 *>(&kw[i]);
#pragma unroll
      for (int e = 0; e < 8; ++e) s = fmaf(qf[i][e], __bfloat162float(h8[e]), s);
    }
    // the group's lanes run the same keys; groups may run one key more than others
    s += __shfl_xor_sync(lanes, s, 1);
    s += __shfl_xor_sync(lanes, s, 2);
    // log2 units; Gemma 2's cap first
    s = m.softcap > 0.f ? m.softcap * LOG2E * tanhf(s * m.scale * inv_cap) : s * sl;
    if (vrow[j] == 0) continue;  // padding
    const float nm = fmaxf(mx, s), alpha = exp2_fast(mx - nm), p = exp2_fast(s - nm);
    mx = nm;
    l = l * alpha + p;
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
      const bf16 *h8 = reinterpret_cast<const bf16 *>(&vw[i]);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[i][e] = fmaf(p, __bfloat162float(h8[e]), o[i][e] * alpha);
    }
  }
  // merge the warp's eight groups (lanes with the same part), then the warps
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    const float om = __shfl_xor_sync(0xffffffff, mx, off), ol = __shfl_xor_sync(0xffffffff, l, off);
    const float nm = fmaxf(mx, om);
    const float a = mx == -INFINITY ? 0.f : exp2_fast(mx - nm), c = om == -INFINITY ? 0.f : exp2_fast(om - nm);
    l = l * a + ol * c;
#pragma unroll
    for (int i = 0; i < MINE; ++i)
#pragma unroll
      for (int e = 0; e < 8; ++e) o[i][e] = o[i][e] * a + __shfl_xor_sync(0xffffffff, o[i][e], off) * c;
    mx = nm;
  }
  float *mine = merge + warp * (D + 2);
  if (grp == 0) {
    if (part == 0) {
      mine[0] = mx;
      mine[1] = l;
    }
#pragma unroll
    for (int i = 0; i < MINE; ++i)
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (part + 4 * i < CH) mine[2 + (part + 4 * i) * 8 + e] = o[i][e];
  }
  __syncthreads();
  float big = -INFINITY;
#pragma unroll
  for (int w = 0; w < DECODE_WARPS; ++w) big = fmaxf(big, merge[w * (D + 2)]);
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < DECODE_WARPS; ++w) {
    const float wm = merge[w * (D + 2)];
    total += wm == -INFINITY ? 0.f : merge[w * (D + 2) + 1] * exp2_fast(wm - big);
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < DECODE_WARPS; ++w) {
      const float wm = merge[w * (D + 2)];
      if (wm != -INFINITY) acc += merge[w * (D + 2) + 2 + d] * exp2_fast(wm - big);
    }
    out[((long)b * m.h + hh) * D + d] = __float2bfloat16_rn(total > 0.f ? acc / total : 0.f);
  }
  if (threadIdx.x == 0) lse[(long)b * m.h + hh] = total > 0.f ? (big + log2f(total)) * LN2 : INFINITY;
}

// ---------------------------------------------------------------------------------------------------------
// delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d] (f32): a warp per row.
extern "C" __global__ void flash_delta_bf16(const bf16 *out, const bf16 *dout, float *delta, int b, int h, int t,
                                            int d) {
  long row = (long)blockIdx.x * WARPS + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (long)b * t * h) return;
  const bf16 *o = out + row * d, *g = dout + row * d;
  float acc = 0.f;
  for (int i = lane; i < d; i += 32) acc += __bfloat162float(o[i]) * __bfloat162float(g[i]);
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, s);
  // row runs over [b, t, h]; delta is [b, h, t]
  long bi = row / ((long)t * h), rest = row % ((long)t * h), ti = rest / h, hi = rest % h;
  if (lane == 0) delta[(bi * h + hi) * t + ti] = acc;
}

// ---------------------------------------------------------------------------------------------------------
// Keys' and values' gradients: a CTA per (batch x key head, 64-key tile from the first (the heaviest under a
// causal mask), DC-column slice of the gradients), started in order of falling work as in the forward;
// each warp owns 16 keys; the loop runs over the group's query heads and the BR-row query tiles that see
// the key tile.
template <int D, int DC, int BR>
__device__ void backward_kv(const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid,
                            const bf16 *dout, const float *lse, const float *delta, bf16 *dk, bf16 *dv,
                            Geometry m) {
  constexpr int BC = 16 * WARPS, LD = D + 8;
  extern __shared__ uint4 smem[];
  // K, V, then two stages of (Q, dO) tiles and their rows' lse and delta
  bf16 *Ks = reinterpret_cast<bf16 *>(smem), *Vs = Ks + BC * LD, *QG = Vs + BC * LD;
  float *LD2 = reinterpret_cast<float *>(QG + 4 * BR * LD);
  const int k0 = blockIdx.y * BC, b = blockIdx.x / m.kvh, kh = blockIdx.x % m.kvh, dc0 = blockIdx.z * DC;
  const int rep = m.h / m.kvh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tig = lane & 3, wk = warp * 16;
  const uint8_t *vrow = valid + (long)b * m.T;
  load_tile<BC, D>(Ks, k + b * m.ksb + kh * m.ksh + (long)k0 * m.kst, m.kst, m.T - k0);
  load_tile<BC, D>(Vs, v + b * m.vsb + kh * m.vsh + (long)k0 * m.vst, m.vst, m.T - k0);
  const bool padded = __syncthreads_or(padded_key(m, vrow, k0, BC));
  // queries that see a key of this tile: `tiles` query tiles from qbeg for each of the group's heads
  const int qbeg = max(0, k0 - m.past) / BR * BR;
  int qend = m.t;
  if (m.window > 0) qend = min(m.t, max(0, k0 + BC - 1 + m.window - m.past));
  const int tiles = qend > qbeg ? (qend - qbeg + BR - 1) / BR : 0;
  // Loads step `i` (query head, query tile) into `stage`: Q and dO asynchronously, lse and delta directly.
  auto load_step = [&](int i, int stage) {
    const int hh = kh * rep + i / tiles, q0 = qbeg + (i % tiles) * BR;
    bf16 *Qs = QG + stage * 2 * BR * LD, *Gs = Qs + BR * LD;
    float *Ls = LD2 + stage * 2 * BR;
    load_tile<BR, D>(Qs, q + b * m.qsb + hh * m.qsh + (long)q0 * m.qst, m.qst, m.t - q0);
    load_tile<BR, D>(Gs, dout + ((long)b * m.t + q0) * m.h * D + (long)hh * D, (long)m.h * D, m.t - q0);
    // Rows past the end read lse = delta = 0: their q and dO rows are zeros, so their terms vanish.
    for (int j = threadIdx.x; j < 2 * BR; j += THREADS) {
      const int row = j % BR;
      const bool in = q0 + row < m.t;
      const float *src = (j < BR ? lse : delta) + ((long)b * m.h + hh) * m.t + (in ? q0 + row : 0);
      uint32_t dst = (uint32_t)__cvta_generic_to_shared(Ls + j);
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(in ? 4 : 0));
    }
  };
  const int steps = rep * tiles;
  const float inv = inverse_cap(m);
  if (steps > 0) load_step(0, 0);
  commit();
  float dka[DC / 8][4], dva[DC / 8][4];
#pragma unroll
  for (int i = 0; i < DC / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.f;
  const int kj[2] = {k0 + wk + g, k0 + wk + g + 8};
  for (int step = 0, stage = 0; step < steps; ++step, stage ^= 1) {
    {
      const int q0 = qbeg + (step % tiles) * BR;
      const bf16 *Qs = QG + stage * 2 * BR * LD, *Gs = Qs + BR * LD;
      const float *Ls = LD2 + stage * 2 * BR, *Ds = Ls + BR;
      if (step + 1 < steps) load_step(step + 1, stage ^ 1);
      commit();
      wait_groups<1>();
      __syncthreads();
      // a warp whose keys no query of this tile sees has nothing to add (it still meets the barrier)
      if (!sees_none(m, q0, BR, k0 + wk, 16)) {
        // Queries past the end need no mask: their q and dO rows are zeros, so their terms vanish.
        const bool open = !padded && block_open(m, q0, BR, k0 + wk, 16);
        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BR queries
        float st[BR / 8][4], dpt[BR / 8][4];
#pragma unroll
        for (int j = 0; j < BR / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t ak[4], av[4];
          frag_a(ak, Ks + wk * LD + kk * 16, LD, lane);
          frag_a(av, Vs + wk * LD + kk * 16, LD, lane);
#pragma unroll
          for (int j = 0; j < BR / 8; j += 2) {
            uint32_t bq[4], bg[4];
            frag_b_rows(bq, Qs + j * 8 * LD + kk * 16, LD, lane);
            frag_b_rows(bg, Gs + j * 8 * LD + kk * 16, LD, lane);
            mma16816(st[j], ak, bq);
            mma16816(st[j + 1], ak, bq + 2);
            mma16816(dpt[j], av, bg);
            mma16816(dpt[j + 1], av, bg + 2);
          }
        }
        // P^T and dS^T = P^T * (dP^T - delta) * the cap's slope, queries in columns
        // (without a cap the scale folds into the exponent's FFMA and the slope is 1)
        if (m.softcap > 0.f) {
          log2_scores<BR / 8>(m, st);
#pragma unroll
          for (int j = 0; j < BR / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int ql = j * 8 + 2 * tig + (e & 1);
              const float p = exp2_fast(st[j][e] - Ls[ql] * LOG2E);
              dpt[j][e] = p * (dpt[j][e] - Ds[ql]) * cap_slope(st[j][e], inv);
              st[j][e] = p;
            }
        } else {
          const float sl = m.scale * LOG2E;
#pragma unroll
          for (int j = 0; j < BR / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int ql = j * 8 + 2 * tig + (e & 1);
              const float p = exp2_fast(fmaf(st[j][e], sl, -Ls[ql] * LOG2E));
              dpt[j][e] = p * (dpt[j][e] - Ds[ql]);
              st[j][e] = p;
            }
        }
        if (!open && !padded) {
#pragma unroll
          for (int j = 0; j < BR / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (!sees(m, vrow, false, q0 + j * 8 + 2 * tig + (e & 1), kj[e >> 1])) st[j][e] = dpt[j][e] = 0.f;
        } else if (!open) {
#pragma unroll
          for (int j = 0; j < BR / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (!sees(m, vrow, true, q0 + j * 8 + 2 * tig + (e & 1), kj[e >> 1])) st[j][e] = dpt[j][e] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
          uint32_t ap[4], as[4];
          acc_to_a(ap, st[2 * kk], st[2 * kk + 1]);
          acc_to_a(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
          for (int i = 0; i < DC / 8; i += 2) {
            uint32_t bg[4], bq[4];
            frag_b_cols(bg, Gs + kk * 16 * LD + dc0 + i * 8, LD, lane);
            frag_b_cols(bq, Qs + kk * 16 * LD + dc0 + i * 8, LD, lane);
            mma16816(dva[i], ap, bg);
            mma16816(dva[i + 1], ap, bg + 2);
            mma16816(dka[i], as, bq);
            mma16816(dka[i + 1], as, bq + 2);
          }
        }
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (kj[r] >= m.T) continue;
    long row = (((long)b * m.kvh + kh) * m.T + kj[r]) * D + dc0;
#pragma unroll
    for (int i = 0; i < DC / 8; ++i) {
      int c = i * 8 + 2 * tig;
      *reinterpret_cast<uint32_t *>(dk + row + c) =
          pack_f(dka[i][2 * r] * m.scale, dka[i][2 * r + 1] * m.scale);
      *reinterpret_cast<uint32_t *>(dv + row + c) = pack_f(dva[i][2 * r], dva[i][2 * r + 1]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Queries' gradients: a CTA per (batch x head, query tile of 16 * MT rows per warp), ordered as the forward;
// each warp owns 16 * MT rows.
template <int D, int BC, int MT>
__device__ void backward_q(const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid,
                           const bf16 *dout, const float *lse, const float *delta, bf16 *dq, Geometry m) {
  constexpr int WR = 16 * MT, BR = WR * WARPS, LD = D + 8;
  extern __shared__ uint4 smem[];
  // Q, dO, then two stages of (K, V) tiles
  bf16 *Qs = reinterpret_cast<bf16 *>(smem), *Gs = Qs + BR * LD, *KV = Gs + BR * LD;
  const int r0 = (gridDim.y - 1 - blockIdx.y) * BR, b = blockIdx.x / m.h, hh = blockIdx.x % m.h,
            kh = hh / (m.h / m.kvh);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tig = lane & 3, wr = warp * WR;
  const bf16 *kg = k + b * m.ksb + kh * m.ksh, *vg = v + b * m.vsb + kh * m.vsh;
  const uint8_t *vrow = valid + (long)b * m.T;
  int kbeg, kend;
  key_span(m, r0, BR, BC, &kbeg, &kend);
  load_tile<BR, D>(Qs, q + b * m.qsb + hh * m.qsh + (long)r0 * m.qst, m.qst, m.t - r0);
  load_tile<BR, D>(Gs, dout + ((long)b * m.t + r0) * m.h * D + (long)hh * D, (long)m.h * D, m.t - r0);
  if (kbeg < kend) {
    load_tile<BC, D>(KV, kg + (long)kbeg * m.kst, m.kst, m.T - kbeg);
    load_tile<BC, D>(KV + BC * LD, vg + (long)kbeg * m.vst, m.vst, m.T - kbeg);
  }
  commit();
  int qi[MT][2];
  float L2[MT][2], Dl[MT][2];
  const float inv = inverse_cap(m);
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      qi[t][r] = r0 + wr + t * 16 + g + 8 * r;
      long at = ((long)b * m.h + hh) * m.t + qi[t][r];
      L2[t][r] = qi[t][r] < m.t ? lse[at] * LOG2E : INFINITY;
      Dl[t][r] = qi[t][r] < m.t ? delta[at] : 0.f;
    }
  float acc[MT][D / 8][4];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[t][i][0] = acc[t][i][1] = acc[t][i][2] = acc[t][i][3] = 0.f;
  // each tile's padding flag is read one tile ahead, so that no barrier waits on a global load
  int next_padded = kbeg < kend ? padded_key(m, vrow, kbeg, BC) : 0;
  for (int k0 = kbeg, stage = 0; k0 < kend; k0 += BC, stage ^= 1) {
    const bf16 *Ks = KV + stage * 2 * BC * LD, *Vs = Ks + BC * LD;
    const int padded = next_padded;
    if (k0 + BC < kend) {
      bf16 *next = KV + (stage ^ 1) * 2 * BC * LD;
      load_tile<BC, D>(next, kg + (long)(k0 + BC) * m.kst, m.kst, m.T - k0 - BC);
      load_tile<BC, D>(next + BC * LD, vg + (long)(k0 + BC) * m.vst, m.vst, m.T - k0 - BC);
      next_padded = padded_key(m, vrow, k0 + BC, BC);
    }
    commit();
    wait_groups<1>();
    const bool tile_padded = __syncthreads_or(padded);
    // a warp whose rows see no key of this tile has nothing to add (it still meets the barrier)
    if (!sees_none(m, r0 + wr, WR, k0, BC)) {
      const bool open = !tile_padded && block_open(m, r0 + wr, WR, k0, BC);
      float s[MT][BC / 8][4], dp[MT][BC / 8][4];
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < BC / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[t][j][e] = dp[t][j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t aq[MT][4], ag[MT][4];
#pragma unroll
        for (int t = 0; t < MT; ++t) {
          frag_a(aq[t], Qs + (wr + t * 16) * LD + kk * 16, LD, lane);
          frag_a(ag[t], Gs + (wr + t * 16) * LD + kk * 16, LD, lane);
        }
#pragma unroll
        for (int j = 0; j < BC / 8; j += 2) {
          uint32_t bk[4], bv[4];
          frag_b_rows(bk, Ks + j * 8 * LD + kk * 16, LD, lane);
          frag_b_rows(bv, Vs + j * 8 * LD + kk * 16, LD, lane);
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            mma16816(s[t][j], aq[t], bk);
            mma16816(s[t][j + 1], aq[t], bk + 2);
            mma16816(dp[t][j], ag[t], bv);
            mma16816(dp[t][j + 1], ag[t], bv + 2);
          }
        }
      }
      // dS = P * (dP - delta) * the cap's slope
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        // (without a cap the scale folds into the exponent's FFMA and the slope is 1)
        if (m.softcap > 0.f) {
          log2_scores<BC / 8>(m, s[t]);
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int r = e >> 1;
              s[t][j][e] =
                  exp2_fast(s[t][j][e] - L2[t][r]) * (dp[t][j][e] - Dl[t][r]) * cap_slope(s[t][j][e], inv);
            }
        } else {
          const float sl = m.scale * LOG2E;
#pragma unroll
          for (int j = 0; j < BC / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int r = e >> 1;
              s[t][j][e] = exp2_fast(fmaf(s[t][j][e], sl, -L2[t][r])) * (dp[t][j][e] - Dl[t][r]);
            }
        }
        if (!open) mask_rows<BC / 8>(m, vrow, tile_padded, r0 + wr + t * 16 + g, k0, tig, s[t], 0.f);
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int t = 0; t < MT; ++t) acc_to_a(a[t], s[t][2 * kk], s[t][2 * kk + 1]);
#pragma unroll
        for (int i = 0; i < D / 8; i += 2) {
          uint32_t bb[4];
          frag_b_cols(bb, Ks + kk * 16 * LD + i * 8, LD, lane);
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            mma16816(acc[t][i], a[t], bb);
            mma16816(acc[t][i + 1], a[t], bb + 2);
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (qi[t][r] >= m.t) continue;
      bf16 *row = dq + (((long)b * m.h + hh) * m.t + qi[t][r]) * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<uint32_t *>(row + i * 8 + 2 * tig) =
            pack_f(acc[t][i][2 * r] * m.scale, acc[t][i][2 * r + 1] * m.scale);
    }
}

// ---------------------------------------------------------------------------------------------------------
// One set of entry points per head size. Up to D = 128 the forward and the queries' gradient give each warp
// 32 query rows (each K/V fragment serves two products); registers keep big heads at 16 rows and 32-key tiles.
// The keys' gradients take at most 128 columns per CTA (more run as further CTAs over the same tiles).
// flash.rs (and scripts/flash_ptx_check.py) size the grids and shared memory from the same choices.
#ifndef FWD_MT
#define FWD_MT 2
#endif
#ifndef FWD_TILE
#define FWD_TILE 64
#endif
#ifndef BQ_MT
#define BQ_MT 2
#endif
#ifndef BQ_TILE
#define BQ_TILE 32
#endif
#ifndef QUERY_TILE_KV
#define QUERY_TILE_KV 64
#endif
#define ROW_TILES(D, MT) ((D) <= 128 ? (MT) : 1)
#define GRAD_COLS(D) ((D) <= 128 ? (D) : 128)

#define ENTRIES(D)                                                                                              \
  extern "C" __global__ void __launch_bounds__(THREADS) flash_forward_d##D(                                    \
      const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, bf16 *out, float *lse, Geometry m) { \
    forward<D, ((D) <= 128 ? FWD_TILE : 32), ROW_TILES(D, FWD_MT)>(q, k, v, valid, out, lse, m);                                \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32) flash_decode_d##D(                          \
      const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, bf16 *out, float *lse, Geometry m) { \
    decode<D>(q, k, v, valid, out, lse, m);                                                                     \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS) flash_backward_kv_d##D(                                \
      const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, const bf16 *dout, const float *lse,   \
      const float *delta, bf16 *dk, bf16 *dv, Geometry m) {                                                    \
    backward_kv<D, GRAD_COLS(D), QUERY_TILE_KV>(q, k, v, valid, dout, lse, delta, dk, dv, m);                  \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS) flash_backward_q_d##D(                                 \
      const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *valid, const bf16 *dout, const float *lse,   \
      const float *delta, bf16 *dq, Geometry m) {                                                              \
    backward_q<D, ((D) <= 128 ? BQ_TILE : 32), ROW_TILES(D, BQ_MT)>(q, k, v, valid, dout, lse, delta, dq, m);  \
  }

ENTRIES(16)
ENTRIES(32)
ENTRIES(64)
ENTRIES(128)
ENTRIES(256)
