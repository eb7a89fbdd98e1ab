// LoRA's rank-r products run on cuBLAS's bf16 tensor cores (lowrank.rs); these two kernels prepare and finish
// them. An f32 operand v is split into bf16 parts hi = bf16(v) and lo = bf16(v - hi), 16 significant bits
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
