//! The vector operations `gemm_order`'s recipes are written in, for AVX-512 F (16 lanes) and AVX2 + FMA (8
//! lanes): the width of gemm's own f32 kernels on the same CPU, so one lane of a recipe is one lane of gemm's.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::model::kernels::cpu::transpose;

/// A vector of `N` f32 lanes. Every method is `unsafe`: the CPU must have the instruction set of the type,
/// which the callers' `#[target_feature]` functions vouch for.
pub trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// The first `min(N, v.len())` values of `v`, zeros after them (gemm's masked load).
    unsafe fn load(v: &[f32]) -> Self;
    /// `N` values from `p`, which must be valid for reads of `N` floats.
    unsafe fn load_at(p: *const f32) -> Self;
    /// Writes the first `min(N, v.len())` lanes.
    unsafe fn store(self, v: &mut [f32]);
    /// `a b + c` with one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// Transposes the `N x N` tile in `v[..N]`: lane `k` of `v[l]` becomes lane `l` of `v[k]`.
    unsafe fn transpose(v: &mut [Self; 16]);
}

#[derive(Clone, Copy)]
pub struct Zmm(__m512);

impl Lanes for Zmm {
    const N: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm512_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm512_set1_ps(v) })
    }

    #[inline(always)]
    unsafe fn load(v: &[f32]) -> Self {
        if v.len() >= 16 {
            // SAFETY: 16 floats from the start of `v`.
            Self(unsafe { _mm512_loadu_ps(v.as_ptr()) })
        } else {
            // SAFETY: the mask reads only the first `v.len()` floats.
            Self(unsafe { _mm512_maskz_loadu_ps(((1u32 << v.len()) - 1) as u16, v.as_ptr()) })
        }
    }

    #[inline(always)]
    unsafe fn load_at(p: *const f32) -> Self {
        // SAFETY: the caller vouches for 16 floats at `p` and for the instruction set.
        Self(unsafe { _mm512_loadu_ps(p) })
    }

    #[inline(always)]
    unsafe fn store(self, v: &mut [f32]) {
        if v.len() >= 16 {
            // SAFETY: 16 floats from the start of `v`.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), self.0) }
        } else {
            let mask = ((1u32 << v.len()) - 1) as u16;
            // SAFETY: the mask writes only the first `v.len()` floats.
            unsafe { _mm512_mask_storeu_ps(v.as_mut_ptr(), mask, self.0) }
        }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm512_add_ps(a.0, b.0) })
    }

    #[inline(always)]
    unsafe fn transpose(v: &mut [Self; 16]) {
        // Plain loops, not `map`: a generic function would take the vectors through memory.
        let mut tile = [v[0].0; 16];
        for (t, x) in tile.iter_mut().zip(v.iter()) {
            *t = x.0;
        }
        // SAFETY: the CPU has AVX-512 F (the trait's contract).
        let tile = unsafe { transpose::avx512(tile) };
        for (x, t) in v.iter_mut().zip(tile) {
            *x = Self(t);
        }
    }
}

#[derive(Clone, Copy)]
pub struct Ymm(__m256);

/// `_mm256_maskload_ps`'s masks: the first `n` lanes set.
const YMM_MASKS: [[i32; 8]; 9] = {
    let mut masks = [[0i32; 8]; 9];
    let mut n = 0;
    while n <= 8 {
        let mut l = 0;
        while l < n {
            masks[n][l] = -1;
            l += 1;
        }
        n += 1;
    }
    masks
};

impl Ymm {
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        // SAFETY: YMM_MASKS[n] holds 8 i32 (n <= 8, checked by the indexing).
        unsafe { _mm256_loadu_si256(YMM_MASKS[n].as_ptr().cast()) }
    }
}

impl Lanes for Ymm {
    const N: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm256_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm256_set1_ps(v) })
    }

    #[inline(always)]
    unsafe fn load(v: &[f32]) -> Self {
        if v.len() >= 8 {
            // SAFETY: 8 floats from the start of `v`.
            Self(unsafe { _mm256_loadu_ps(v.as_ptr()) })
        } else {
            // SAFETY: the mask reads only the first `v.len()` floats.
            Self(unsafe { _mm256_maskload_ps(v.as_ptr(), Self::mask(v.len())) })
        }
    }

    #[inline(always)]
    unsafe fn load_at(p: *const f32) -> Self {
        // SAFETY: the caller vouches for 8 floats at `p` and for the instruction set.
        Self(unsafe { _mm256_loadu_ps(p) })
    }

    #[inline(always)]
    unsafe fn store(self, v: &mut [f32]) {
        if v.len() >= 8 {
            // SAFETY: 8 floats from the start of `v`.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), self.0) }
        } else {
            // SAFETY: the mask writes only the first `v.len()` floats.
            unsafe { _mm256_maskstore_ps(v.as_mut_ptr(), Self::mask(v.len()), self.0) }
        }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the CPU has this type's instruction set (the trait's contract).
        Self(unsafe { _mm256_add_ps(a.0, b.0) })
    }

    #[inline(always)]
    unsafe fn transpose(v: &mut [Self; 16]) {
        let mut tile = [v[0].0; 8];
        for (t, x) in tile.iter_mut().zip(v.iter()) {
            *t = x.0;
        }
        // SAFETY: the CPU has AVX2 (this type's contract).
        let t = unsafe { transpose::avx2(tile) };
        for (x, y) in v.iter_mut().zip(t) {
            *x = Self(y);
        }
    }
}
