// Row-wise and elementwise bf16 kernels for qlab's training step on CUDA, forward and backward, each one
// pass over its tensors (candle's compositions sweep the same tensors five to ten times, in f32).
// Rows go one per block (blockDim.x a multiple of 32, at most 1024); sums and maxima are taken in f32.
// Regenerate fused.ptx with scripts/build-cuda.sh (nvcc -ptx -arch=compute_80 -fmad=false).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// The block's total of `v`, returned to every thread.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ void load8(const bf16 *src, float out[8]) {
  uint4 raw = *reinterpret_cast<const uint4 *>(src);
  const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
  for (int k = 0; k < 8; k++) out[k] = __bfloat162float(h[k]);
}

__device__ __forceinline__ void store8(bf16 *dst, const float in[8]) {
  uint4 raw;
  bf16 *h = reinterpret_cast<bf16 *>(&raw);
#pragma unroll
  for (int k = 0; k < 8; k++) h[k] = __float2bfloat16(in[k]);
  *reinterpret_cast<uint4 *>(dst) = raw;
}

// The block's maximum of `v`, returned to every thread.
__device__ float block_max(float v) {
  __shared__ float partial[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : -INFINITY;
  return warp_max(v);
}

#define ALIGNED16(p) ((((uintptr_t)(p)) & 15) == 0)

__device__ __forceinline__ void load8f(const float *src, float out[8]) {
  float4 a = *reinterpret_cast<const float4 *>(src), b = *reinterpret_cast<const float4 *>(src + 4);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// Whether a row kernel takes its 16-byte path: rows of a multiple of 8 values from 16-byte aligned bases (each
// thread then takes runs of 8 values, strided by 8 * blockDim.x; otherwise single values, strided by blockDim.x).
#define ROWS16(cols, a, b, c) ((cols) % 8 == 0 && ALIGNED16(a) && ALIGNED16(b) && ALIGNED16(c))

// y = x / sqrt(mean(x^2) + eps) * w per row; w f32 (Gemma's 1 + w already folded in). y's rows lie ly values
// apart (cols, or more when a projection's rank-wide operand follows each row: see lowrank.rs's norm_project).
extern "C" __global__ void rms_norm_bf16(const bf16 *x, const float *w, bf16 *y, size_t cols, size_t ly, float eps) {
  const bf16 *xr = x + blockIdx.x * cols;
  bf16 *yr = y + blockIdx.x * ly;
  const bool wide = ROWS16(cols, xr, w, yr);
  float ss = 0.0f;
  if (wide) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8];
      load8(xr + j, v);
#pragma unroll
      for (int k = 0; k < 8; k++) ss += v[k] * v[k];
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x) {
      float v = __bfloat162float(xr[j]);
      ss += v * v;
    }
  }
  float r = rsqrtf(block_sum(ss) / (float)cols + eps);
  if (wide) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8], wv[8];
      load8(xr + j, v);
      load8f(w + j, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] = v[k] * r * wv[k];
      store8(yr + j, v);
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x)
      yr[j] = __float2bfloat16(__bfloat162float(xr[j]) * r * w[j]);
  }
}

// The norm's input gradient (its weight is frozen): dx = r * (g w - xhat * mean(g w xhat)), xhat = x r, plus
// `add` (another gradient of the same input, such as the residual stream's) when add_given is set, summed in f32
// before the one rounding to bf16.
extern "C" __global__ void rms_norm_backward_bf16(const bf16 *x, const float *w, const bf16 *grad, const bf16 *add,
                                                  int add_given, bf16 *dx, size_t cols, float eps) {
  const size_t base = blockIdx.x * cols;
  const bf16 *xr = x + base, *g = grad + base, *ar = add + base;
  bf16 *dr = dx + base;
  const bool wide = ROWS16(cols, x, w, grad) && ALIGNED16(add) && ALIGNED16(dx);
  float ss = 0.0f, dot = 0.0f;
  if (wide) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8], gv[8], wv[8];
      load8(xr + j, v);
      load8(g + j, gv);
      load8f(w + j, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        ss += v[k] * v[k];
        dot += gv[k] * wv[k] * v[k];
      }
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x) {
      float v = __bfloat162float(xr[j]);
      ss += v * v;
      dot += __bfloat162float(g[j]) * w[j] * v;
    }
  }
  float r = rsqrtf(block_sum(ss) / (float)cols + eps);
  float mean_dot = block_sum(dot) * r / (float)cols;
  if (wide) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8], gv[8], wv[8], av[8];
      load8(xr + j, v);
      load8(g + j, gv);
      load8f(w + j, wv);
      if (add_given) load8(ar + j, av);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        v[k] = r * (gv[k] * wv[k] - v[k] * r * mean_dot);
        if (add_given) v[k] += av[k];
      }
      store8(dr + j, v);
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x) {
      float xhat = __bfloat162float(xr[j]) * r;
      float d = r * (__bfloat162float(g[j]) * w[j] - xhat * mean_dot);
      if (add_given) d += __bfloat162float(ar[j]);
      dr[j] = __float2bfloat16(d);
    }
  }
}

#define GELU_C 0.7978845608028654f
#define GELU_K 0.044715f

// act(g) and its derivative: activation 0 = SiLU, 1 = GELU (tanh approximation).
__device__ __forceinline__ float act_value(float g, int activation, float *deriv) {
  if (activation == 0) {
    float s = 1.0f / (1.0f + __expf(-g));
    *deriv = s * (1.0f + g * (1.0f - s));
    return g * s;
  }
  float u = GELU_C * (g + GELU_K * g * g * g);
  float th = tanhf(u);
  *deriv = 0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * GELU_C * (1.0f + 3.0f * GELU_K * g * g);
  return 0.5f * g * (1.0f + th);
}

// out [rows, cols] (contiguous) = act(gate) * up for gate and up [rows, cols] whose rows lie lg and lu values
// apart (views of one product's output whose rows hold both, or contiguous tensors); thread c takes values [8c,
// 8c + 8) of out, within one row when cols is a multiple of 8.
extern "C" __global__ void gated_bf16(const bf16 *gate, const bf16 *up, bf16 *out, size_t rows, size_t cols,
                                      size_t lg, size_t lu, int activation) {
  size_t i0 = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8, n = rows * cols;
  if (i0 >= n) return;
  float d;
  size_t r = i0 / cols, c = i0 % cols;
  const bf16 *gr = gate + r * lg + c, *ur = up + r * lu + c;
  if (cols % 8 == 0 && ALIGNED16(gr) && ALIGNED16(ur) && ALIGNED16(out + i0)) {
    float g[8], u[8];
    load8(gr, g);
    load8(ur, u);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] = act_value(g[k], activation, &d) * u[k];
    store8(out + i0, g);
    return;
  }
  for (size_t i = i0; i < n && i < i0 + 8; i++) {
    size_t ri = i / cols, ci = i % cols;
    float g = __bfloat162float(gate[ri * lg + ci]), u = __bfloat162float(up[ri * lu + ci]);
    out[i] = __float2bfloat16(act_value(g, activation, &d) * u);
  }
}

// The gradients of gated_bf16's gate and up for out's gradient grad [rows, cols] (contiguous): the gate's,
// g * up * act'(gate), at grads[r * lo + c], and up's, g * act(gate), at grads[uo + r * lo + c] (the two halves
// [2, rows, cols] with lo = cols and uo = rows * cols, or each row [gate's | up's] with lo = 2 cols and uo = cols);
// gate and up as in gated_bf16. Thread c takes values [8c, 8c + 8) of grad.
extern "C" __global__ void gated_backward_bf16(const bf16 *gate, const bf16 *up, const bf16 *grad, bf16 *grads,
                                               size_t rows, size_t cols, size_t lg, size_t lu, size_t lo, size_t uo,
                                               int activation) {
  size_t i0 = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8, n = rows * cols;
  if (i0 >= n) return;
  float d;
  size_t r = i0 / cols, c = i0 % cols;
  const bf16 *gr = gate + r * lg + c, *ur = up + r * lu + c;
  bf16 *dg_out = grads + r * lo + c, *du_out = grads + uo + r * lo + c;
  if (cols % 8 == 0 && ALIGNED16(gr) && ALIGNED16(ur) && ALIGNED16(grad + i0) && ALIGNED16(dg_out) &&
      ALIGNED16(du_out)) {
    float g[8], u[8], gd[8], dg[8];
    load8(gr, g);
    load8(ur, u);
    load8(grad + i0, gd);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float a = act_value(g[k], activation, &d);
      dg[k] = gd[k] * u[k] * d;
      u[k] = gd[k] * a;
    }
    store8(dg_out, dg);
    store8(du_out, u);
    return;
  }
  for (size_t i = i0; i < n && i < i0 + 8; i++) {
    size_t ri = i / cols, ci = i % cols;
    float a = act_value(__bfloat162float(gate[ri * lg + ci]), activation, &d);
    float g = __bfloat162float(grad[i]);
    grads[ri * lo + ci] = __float2bfloat16(g * __bfloat162float(up[ri * lu + ci]) * d);
    grads[uo + ri * lo + ci] = __float2bfloat16(g * a);
  }
}

// Folds value v into a running (maximum m, sum s of exp(value - m)).
__device__ __forceinline__ void online_add(float v, float &m, float &s) {
  if (v > m) {
    s = s * __expf(m - v) + 1.0f;
    m = v;
  } else {
    s += __expf(v - m);
  }
}

// Negative log-likelihood of each row's target under softmax(logits): nll[row] = logsumexp - logit[target].
// One pass over the row: each thread keeps a running maximum and its sum of exponentials, merged at the end.
extern "C" __global__ void row_nll_bf16(const bf16 *logits, const uint32_t *targets, float *nll, size_t cols) {
  size_t row = blockIdx.x;
  const bf16 *l = logits + row * cols;
  float m = -INFINITY, s = 0.0f;
  if (cols % 8 == 0 && ALIGNED16(logits)) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8];
      load8(l + j, v);
      float top = v[0];
#pragma unroll
      for (int k = 1; k < 8; k++) top = fmaxf(top, v[k]);
      if (top > m) {
        s *= __expf(m - top);
        m = top;
      }
#pragma unroll
      for (int k = 0; k < 8; k++) s += __expf(v[k] - m);
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x) online_add(__bfloat162float(l[j]), m, s);
  }
  float mx = block_max(m);
  float sum = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - mx));
  if (threadIdx.x == 0) nll[row] = mx + logf(sum) - __bfloat162float(l[targets[row]]);
}

// Its gradient: dlogits = (softmax(logits) - onehot(target)) * grad[row], in one pass over the row: the
// forward's nll gives the log-sum-exp back as nll + logit[target].
extern "C" __global__ void row_nll_backward_bf16(const bf16 *logits, const uint32_t *targets, const float *nll,
                                                 const float *grad, bf16 *dx, size_t cols) {
  size_t row = blockIdx.x;
  const bf16 *l = logits + row * cols;
  bf16 *d = dx + row * cols;
  size_t target = targets[row];
  float lse = nll[row] + __bfloat162float(l[target]);
  float g = grad[row];
  if (cols % 8 == 0 && ALIGNED16(logits) && ALIGNED16(dx)) {
    for (size_t j = threadIdx.x * 8; j < cols; j += blockDim.x * 8) {
      float v[8];
      load8(l + j, v);
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] = (__expf(v[k] - lse) - (j + k == target ? 1.0f : 0.0f)) * g;
      store8(d + j, v);
    }
  } else {
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x)
      d[j] = __float2bfloat16((__expf(__bfloat162float(l[j]) - lse) - (j == target ? 1.0f : 0.0f)) * g);
  }
}

// Row r of heads_rope_bf16's and heads_rope8_bf16's loops, r = (bi * n + ni) * t + ti: its offset in the source and
// the destination (the heads layout [b, n, t, d] and the sequence layout [b, t, n, d] whose rows (b, t) lie ld values
// apart, one each way by to_heads) and its row of the rotary tables, bi * t + ti.
struct RopeRow {
  size_t from, to, rotary;
};
__device__ __forceinline__ RopeRow rope_row(size_t r, size_t t, size_t n, size_t d, size_t ld, int to_heads) {
  size_t ti = r % t;
  r /= t;
  size_t ni = r % n, bi = r / n;
  size_t heads_base = ((bi * n + ni) * t + ti) * d;
  size_t seq_base = (bi * t + ti) * ld + ni * d;
  RopeRow row = {to_heads ? seq_base : heads_base, to_heads ? heads_base : seq_base, bi * t + ti};
  return row;
}

// Moves heads between the projections' layout [b, t, n, d] and attention's [b, n, t, d], rotating each pair
// of rotary dimensions by its position's angle on the way: sign +1 rotates forward, -1 back (the gradient).
// to_heads 1 reads [b, t, n, d] and writes [b, n, t, d]; 0 the reverse. The sequence layout's rows lie ld values
// apart: n * d when contiguous, more in the output of a product that holds other projections' columns too (q, k and
// v side by side). cos and sin are [b, t, d / 2]; rope 0 only moves; interleaved 1 pairs (2i, 2i + 1) (GGUF
// llama), 0 pairs (i, i + d / 2) (HF).
extern "C" __global__ void heads_rope_bf16(const bf16 *src, bf16 *dst, const bf16 *cos, const bf16 *sin, size_t b,
                                           size_t t, size_t n, size_t d, size_t ld, int rope, int interleaved,
                                           float sign, int to_heads) {
  size_t half = d / 2;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= b * n * t * half) return;
  size_t i = idx % half;
  RopeRow row = rope_row(idx / half, t, n, d, ld, to_heads);
  size_t from = row.from, to = row.to;
  size_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
  float x0 = __bfloat162float(src[from + i0]), x1 = __bfloat162float(src[from + i1]);
  if (rope) {
    size_t a = row.rotary * half + i;
    float c = __bfloat162float(cos[a]), s = sign * __bfloat162float(sin[a]);
    dst[to + i0] = __float2bfloat16(x0 * c - x1 * s);
    dst[to + i1] = __float2bfloat16(x0 * s + x1 * c);
  } else {
    dst[to + i0] = src[from + i0];
    dst[to + i1] = src[from + i1];
  }
}

// heads_rope_bf16 eight rotary pairs a thread, for d a multiple of 16 and every operand 16-byte aligned: the
// thread takes pairs [i, i + 8) of one row (i a multiple of 8), that is values [i, i + 8) and [half + i, half + i
// + 8) of the row (HF pairing) or values [2i, 2i + 16) (interleaved), and cos and sin [i, i + 8): 16-byte loads
// and stores, and an eighth of the index arithmetic. Same arithmetic per pair as heads_rope_bf16.
extern "C" __global__ void heads_rope8_bf16(const bf16 *src, bf16 *dst, const bf16 *cos, const bf16 *sin, size_t b,
                                            size_t t, size_t n, size_t d, size_t ld, int rope, int interleaved,
                                            float sign, int to_heads) {
  size_t half = d / 2, groups = half / 8;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= b * n * t * groups) return;
  size_t i = (idx % groups) * 8;
  RopeRow row = rope_row(idx / groups, t, n, d, ld, to_heads);
  size_t from = row.from, to = row.to;
  size_t a0 = interleaved ? 2 * i : i, a1 = interleaved ? 2 * i + 8 : i + half;
  const uint4 *s0 = reinterpret_cast<const uint4 *>(src + from + a0), *s1 = reinterpret_cast<const uint4 *>(src + from + a1);
  uint4 *d0 = reinterpret_cast<uint4 *>(dst + to + a0), *d1 = reinterpret_cast<uint4 *>(dst + to + a1);
  if (!rope) {
    *d0 = *s0;
    *d1 = *s1;
    return;
  }
  float x[16], c[8], sn[8];
  load8(src + from + a0, x);
  load8(src + from + a1, x + 8);
  size_t at = row.rotary * half + i;
  load8(cos + at, c);
  load8(sin + at, sn);
  // Pair k: values (2k, 2k + 1) of the sixteen when interleaved, (k, 8 + k) otherwise (two loops, so that every
  // register index is a constant).
  float y[16];
  if (interleaved) {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float x0 = x[2 * k], x1 = x[2 * k + 1], sk = sign * sn[k];
      y[2 * k] = x0 * c[k] - x1 * sk;
      y[2 * k + 1] = x0 * sk + x1 * c[k];
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float x0 = x[k], x1 = x[8 + k], sk = sign * sn[k];
      y[k] = x0 * c[k] - x1 * sk;
      y[8 + k] = x0 * sk + x1 * c[k];
    }
  }
  store8(dst + to + a0, y);
  store8(dst + to + a1, y + 8);
}

// AdamW in place. Moments mv = [m (n values), v (n values)] take the gradient g; then the parameter p steps:
// p = p * decay - lr * (m / c1) / (sqrt(v / c2) + eps), decay = 1 - lr * weight_decay, c = bias corrections.
extern "C" __global__ void adamw_moments_f32(float *mv, const float *g, size_t n, float b1, float b2) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float gi = g[i];
  mv[i] = mv[i] * b1 + gi * (1.0f - b1);
  mv[n + i] = mv[n + i] * b2 + gi * gi * (1.0f - b2);
}

extern "C" __global__ void adamw_param_f32(float *p, const float *mv, size_t n, float lr, float decay, float c1,
                                           float c2, float eps) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float m_hat = mv[i] / c1;
  float denom = sqrtf(mv[n + i] / c2) + eps;
  p[i] = p[i] * decay - (m_hat / denom) * lr;
}

// Multi-tensor forms for the optimizer (one launch for up to MT_MAX tensors, a tensor per blockIdx.y, its
// elements strided over blockIdx.x): an 8B model has 448 LoRA tensors, and a kernel per tensor left the
// device idle while the host launched thousands of them. The table travels as a kernel parameter.
#define MT_MAX 48
struct MtTable {
  float *a[MT_MAX];
  const float *b[MT_MAX];
  float *c[MT_MAX];
  unsigned int n[MT_MAX];
};

// a[t] += b[t] (gradients summed over micro-batches).
extern "C" __global__ void mt_add_f32(MtTable t) {
  int k = blockIdx.y;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n[k]; i += (size_t)gridDim.x * blockDim.x)
    t.a[k][i] += t.b[k][i];
}

// *sumsq += the sum of b[t]'s squares over the table.
extern "C" __global__ void mt_sumsq_f32(MtTable t, double *sumsq) {
  int k = blockIdx.y;
  float s = 0.0f;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n[k]; i += (size_t)gridDim.x * blockDim.x)
    s += t.b[k][i] * t.b[k][i];
  s = block_sum(s);
  if (threadIdx.x == 0) atomicAdd(sumsq, (double)s);
}

// AdamW of parameters a[t] with gradients b[t] and moments c[t] = [m, v], the gradients first scaled as the
// step on the host did it: g * inv_micro (their mean over micro-batches), then, when their global norm
// sqrt(*sumsq) * inv_micro exceeds max_norm > 0, by max_norm / (norm + 1e-6). A non-finite norm leaves
// every parameter and moment as it was (the host reports it). Same arithmetic as adamw_moments_f32 and
// adamw_param_f32.
extern "C" __global__ void mt_adamw_f32(MtTable t, const double *sumsq, double inv_micro, double max_norm, float b1,
                                        float b2, float lr, float decay, float c1, float c2, float eps) {
  double norm = sqrt(*sumsq) * inv_micro;
  if (!isfinite(norm)) return;
  float mean = (float)inv_micro;
  bool clip = max_norm > 0.0 && norm > max_norm;
  float scale = clip ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
  int k = blockIdx.y;
  size_t n = t.n[k];
  float *p = t.a[k], *mv = t.c[k];
  const float *g = t.b[k];
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float gi = g[i] * mean;
    if (clip) gi = gi * scale;
    float m = mv[i] * b1 + gi * (1.0f - b1);
    float v = mv[n + i] * b2 + gi * gi * (1.0f - b2);
    mv[i] = m;
    mv[n + i] = v;
    float m_hat = m / c1;
    float denom = sqrtf(v / c2) + eps;
    p[i] = p[i] * decay - (m_hat / denom) * lr;
  }
}
