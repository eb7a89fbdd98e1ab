//! In-register transposes of square tiles of floats: kernels that must add each output's lanes in a fixed
//! order (to keep another library's bits) add the lanes of 16 or 8 outputs at once this way.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// The 16 x 16 transpose: lane `k` of result `l` is lane `l` of `v[k]`.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn avx512(v: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved by element, then by pairs of elements, then 128-bit quarters twice.
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        for h in 0..2 {
            let (x, y) = (
                _mm512_castps_pd(a[4 * i + h]),
                _mm512_castps_pd(a[4 * i + 2 + h]),
            );
            b[4 * i + h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            b[4 * i + 2 + h] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    // b[4i + r] holds, in each quarter q, lanes 4q + r' of rows 4i..4i+4 (r' = the position of r in 0, 2, 1, 3).
    let mut c = [_mm512_setzero_ps(); 16];
    for i in 0..2 {
        for r in 0..4 {
            let (x, y) = (b[8 * i + r], b[8 * i + 4 + r]);
            c[8 * i + r] = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
            c[8 * i + 4 + r] = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
        }
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for r in 0..8 {
        let (x, y) = (c[r], c[8 + r]);
        let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
        let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
        // c[r] (r < 4) holds quarters 0 and 2 of its lane group, c[4 + r] quarters 1 and 3.
        let lane = [0, 2, 1, 3][r % 4];
        let quarter = r / 4;
        out[quarter * 4 + lane] = lo;
        out[(quarter + 2) * 4 + lane] = hi;
    }
    out
}

/// The 8 x 8 transpose: lane `k` of result `l` is lane `l` of `v[k]`.
#[inline]
#[target_feature(enable = "avx2")]
pub fn avx2(v: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved by element, then by pairs of elements, then the 128-bit halves.
    let mut a = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        a[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    let mut b = [_mm256_setzero_ps(); 8];
    for i in 0..2 {
        for h in 0..2 {
            let (x, y) = (a[4 * i + h], a[4 * i + 2 + h]);
            b[4 * i + 2 * h] = _mm256_shuffle_ps::<0b01_00_01_00>(x, y);
            b[4 * i + 2 * h + 1] = _mm256_shuffle_ps::<0b11_10_11_10>(x, y);
        }
    }
    // b[4i + l] holds lane l of rows 4i..4i+4 in its low half and lane 4 + l in its high half.
    let mut out = [_mm256_setzero_ps(); 8];
    for l in 0..4 {
        out[l] = _mm256_permute2f128_ps::<0x20>(b[l], b[4 + l]);
        out[4 + l] = _mm256_permute2f128_ps::<0x31>(b[l], b[4 + l]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(feature: &str) -> bool {
        match feature {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    #[test]
    fn lane_k_of_result_l_is_lane_l_of_row_k() {
        if has("avx512f") {
            let rows: [[f32; 16]; 16] =
                std::array::from_fn(|k| std::array::from_fn(|l| (k * 16 + l) as f32));
            // SAFETY: the CPU has AVX-512 F (checked above); each row holds 16 floats.
            let out: [[f32; 16]; 16] = unsafe {
                let v = rows.map(|r| _mm512_loadu_ps(r.as_ptr()));
                avx512(v).map(|x| std::mem::transmute::<__m512, [f32; 16]>(x))
            };
            for (l, row) in out.iter().enumerate() {
                for (k, &x) in row.iter().enumerate() {
                    assert_eq!(x, rows[k][l], "avx512: result {l}, lane {k}");
                }
            }
        }
        if has("avx2") {
            let rows: [[f32; 8]; 8] =
                std::array::from_fn(|k| std::array::from_fn(|l| (k * 8 + l) as f32));
            // SAFETY: the CPU has AVX2 (checked above); each row holds 8 floats.
            let out: [[f32; 8]; 8] = unsafe {
                let v = rows.map(|r| _mm256_loadu_ps(r.as_ptr()));
                avx2(v).map(|x| std::mem::transmute::<__m256, [f32; 8]>(x))
            };
            for (l, row) in out.iter().enumerate() {
                for (k, &x) in row.iter().enumerate() {
                    assert_eq!(x, rows[k][l], "avx2: result {l}, lane {k}");
                }
            }
        }
    }
}
