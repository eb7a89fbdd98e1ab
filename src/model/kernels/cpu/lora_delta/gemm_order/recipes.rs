//! gemm's orders of roundings (see `gemm_order`) on vectors of `S::N` lanes, gemm's own width on the same
//! CPU, for a rank `R` fixed at compile time so that every accumulator indexes a register. Inlined into the
//! `#[target_feature]` functions of `gemm_order`, whose instruction set `S` needs: every function here is
//! `unsafe` for that reason alone.

use super::lanes::Lanes;
use super::{Dims, HORIZONTAL_CHUNK, Operands, Path};

/// gemm's `reduce_sum` on lane `p` of `lanes[..N]`, for every output at once: halves added down to four
/// lanes, then `(l0 + l2) + (l1 + l3)`.
#[inline(always)]
unsafe fn tree<S: Lanes>(mut lanes: [S; 16]) -> S {
    // SAFETY (here and below): the caller's instruction set is S's.
    unsafe {
        let mut width = S::N;
        while width > 4 {
            width /= 2;
            for p in 0..width {
                lanes[p] = S::add(lanes[p], lanes[p + width]);
            }
        }
        S::add(S::add(lanes[0], lanes[2]), S::add(lanes[1], lanes[3]))
    }
}

/// `u = x A^T`: blocks of rows of `x` times rows of `A` that fill the N accumulators one transpose reduces
/// (one row times N outputs for a single row, more rows for batches), each output's N-lane accumulator over
/// the depth (gemm's horizontal kernel), their trees side by side after the transpose.
#[inline(always)]
pub unsafe fn first<S: Lanes, const R: usize>(d: Dims, o: &Operands, u: &mut [f32]) {
    // SAFETY: as above.
    unsafe {
        match d.rows {
            1 => first_blocks::<S, R, 16>(d, o, u),
            2 | 3 => first_blocks::<S, R, 8>(d, o, u),
            _ => first_blocks::<S, R, 4>(d, o, u),
        }
    }
}

/// [`first`] with blocks of `N / J` rows of `x` times `J` rows of `A` (`J` at most N; outputs past the rank
/// and rows past the last are computed on zeros and never stored).
#[inline(always)]
unsafe fn first_blocks<S: Lanes, const R: usize, const J: usize>(
    d: Dims,
    o: &Operands,
    u: &mut [f32],
) {
    let (n, k) = (S::N, d.inp);
    let (block_rows, outputs) = ((n / J).max(1), J.min(n));
    assert!(o.x.len() >= d.rows * k && o.a.len() >= R * k);
    unsafe {
        for i0 in (0..d.rows).step_by(block_rows) {
            let rows = block_rows.min(d.rows - i0);
            for j0 in (0..R).step_by(outputs) {
                let live = outputs.min(R - j0);
                // Rows and outputs past the last read the block's first again (a valid row) and are never
                // stored.
                let x_at: [*const f32; 16] = std::array::from_fn(|i| {
                    o.x[(i0 + if i < rows { i } else { 0 }) * k..].as_ptr()
                });
                let a_at: [*const f32; 16] = std::array::from_fn(|j| {
                    o.a[(j0 + if j < live { j } else { 0 }) * k..].as_ptr()
                });
                let mut total = S::zero();
                for (c, start) in (0..k).step_by(HORIZONTAL_CHUNK).enumerate() {
                    let end = (start + HORIZONTAL_CHUNK).min(k);
                    // acc[i * outputs + j]: row i0 + i of x with row j0 + j of A.
                    let mut acc = [S::zero(); 16];
                    let whole = start + (end - start) / n * n;
                    for at in (start..whole).step_by(n) {
                        // SAFETY: `at + n <= whole <= k`: N floats inside each row of x and A (the
                        // assert above).
                        let mut a = [S::zero(); 16];
                        for j in 0..outputs {
                            a[j] = S::load_at(a_at[j].add(at));
                        }
                        for i in 0..block_rows {
                            let x = S::load_at(x_at[i].add(at));
                            for j in 0..outputs {
                                acc[i * outputs + j] = S::fma(x, a[j], acc[i * outputs + j]);
                            }
                        }
                    }
                    if whole < end {
                        // gemm's masked last block: zeros past the end, still multiplied and added.
                        let len = end - whole;
                        let mut a = [S::zero(); 16];
                        for j in 0..outputs {
                            a[j] = S::load(std::slice::from_raw_parts(a_at[j].add(whole), len));
                        }
                        for i in 0..block_rows {
                            let x = S::load(std::slice::from_raw_parts(x_at[i].add(whole), len));
                            for j in 0..outputs {
                                acc[i * outputs + j] = S::fma(x, a[j], acc[i * outputs + j]);
                            }
                        }
                    }
                    S::transpose(&mut acc);
                    let chunk = tree(acc);
                    // The first chunk is stored (times beta = 1); later ones are fused into the store.
                    total = if c == 0 {
                        chunk
                    } else {
                        S::fma(S::splat(1.0), chunk, total)
                    };
                }
                let mut block = [0f32; 16];
                total.store(&mut block);
                for (i, block) in block.chunks_exact(outputs).take(rows).enumerate() {
                    let from = (i0 + i) * R + j0;
                    u[from..from + live].copy_from_slice(&block[..live]);
                }
            }
        }
    }
}

/// `dst = y + u B^T`: N outputs at a time, their rows of `B` transposed (`t[l]` = lane l of every output),
/// then the rows of `u` through the path's recipe.
#[inline(always)]
pub unsafe fn second<S: Lanes, const R: usize>(
    path: Path,
    d: Dims,
    o: &Operands,
    u: &[f32],
    dst: &mut [f32],
) {
    let n = S::N;
    unsafe {
        for o0 in (0..d.out).step_by(n) {
            let width = n.min(d.out - o0);
            let mut t = [S::zero(); R];
            for l0 in (0..R).step_by(n) {
                let len = n.min(R - l0);
                let mut tile = [S::zero(); 16];
                for (v, tile) in tile.iter_mut().enumerate().take(n) {
                    if v < width {
                        let at = (o0 + v) * R + l0;
                        *tile = S::load(&o.b[at..at + len]);
                    }
                }
                S::transpose(&mut tile);
                t[l0..l0 + len].copy_from_slice(&tile[..len]);
            }
            let mut i = 0;
            while i < d.rows {
                let ui = &u[i * R..];
                match (path, d.rows - i) {
                    (Path::MicroKernel, 8..) => {
                        let delta = micro_kernel::<S, R, 8>(&t, ui);
                        for (k, delta) in delta.into_iter().enumerate() {
                            add_row(d, o, (i + k, o0, width), delta, dst);
                        }
                        i += 8;
                    }
                    (Path::MicroKernel, 4..) => {
                        let delta = micro_kernel::<S, R, 4>(&t, ui);
                        for (k, delta) in delta.into_iter().enumerate() {
                            add_row(d, o, (i + k, o0, width), delta, dst);
                        }
                        i += 4;
                    }
                    (Path::MicroKernel, 2..) => {
                        let delta = micro_kernel::<S, R, 2>(&t, ui);
                        for (k, delta) in delta.into_iter().enumerate() {
                            add_row(d, o, (i + k, o0, width), delta, dst);
                        }
                        i += 2;
                    }
                    (path, _) => {
                        let delta = match path {
                            Path::Horizontal => horizontal::<S, R>(&t, ui),
                            Path::Gemv => gemv::<S, R>(&t, ui),
                            Path::MicroKernel => micro_kernel::<S, R, 1>(&t, ui)[0],
                            Path::Gemm => unreachable!("lora-delta: gemm's own path"),
                        };
                        add_row(d, o, (i, o0, width), delta, dst);
                        i += 1;
                    }
                }
            }
        }
    }
}

/// `dst = y + delta` for row `i`, outputs `o0..o0 + width`.
#[inline(always)]
unsafe fn add_row<S: Lanes>(
    d: Dims,
    o: &Operands,
    (i, o0, width): (usize, usize, usize),
    delta: S,
    dst: &mut [f32],
) {
    let at = i * d.out + o0;
    unsafe {
        let y = S::load(&o.y[at..at + width]);
        S::add(y, delta).store(&mut dst[at..at + width]);
    }
}

/// gemm's horizontal kernel (depth = the rank, one chunk) on the row `u[..R]`.
#[inline(always)]
unsafe fn horizontal<S: Lanes, const R: usize>(t: &[S; R], u: &[f32]) -> S {
    let n = S::N;
    unsafe {
        let mut lanes = [S::zero(); 16];
        let whole = R / n * n;
        for at in (0..whole).step_by(n) {
            for p in 0..n {
                lanes[p] = S::fma(t[at + p], S::splat(u[at + p]), lanes[p]);
            }
        }
        if whole < R {
            for (p, lane) in lanes.iter_mut().enumerate().take(n) {
                *lane = if whole + p < R {
                    S::fma(t[whole + p], S::splat(u[whole + p]), *lane)
                } else {
                    S::fma(S::zero(), S::zero(), *lane)
                };
            }
        }
        tree(lanes)
    }
}

/// gemm's `mixed_gemv_rowmajor` on the row `u[..R]`.
#[inline(always)]
unsafe fn gemv<S: Lanes, const R: usize>(t: &[S; R], u: &[f32]) -> S {
    let n = S::N;
    let (k_lane, k_lane8) = (R / n * n, R / (8 * n) * (8 * n));
    unsafe {
        let mut depth = 0;
        // Below 8N the eight accumulators stay zero and their sum is +0: skip them.
        let mut lanes = [S::zero(); 16];
        if k_lane8 > 0 {
            let mut acc = [[S::zero(); 16]; 8];
            while depth < k_lane8 {
                for (a, lanes) in acc.iter_mut().enumerate() {
                    for (p, lane) in lanes.iter_mut().enumerate().take(n) {
                        let at = depth + a * n + p;
                        *lane = S::fma(t[at], S::splat(u[at]), *lane);
                    }
                }
                depth += 8 * n;
            }
            for (x, y) in [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (4, 6), (0, 4)] {
                let other = acc[y];
                for (lane, other) in acc[x].iter_mut().zip(other).take(n) {
                    *lane = S::add(*lane, other);
                }
            }
            lanes = acc[0];
        }
        while depth < k_lane {
            for (p, lane) in lanes.iter_mut().enumerate().take(n) {
                *lane = S::fma(t[depth + p], S::splat(u[depth + p]), *lane);
            }
            depth += n;
        }
        let mut sum = lanes[0];
        for &lane in &lanes[1..n] {
            sum = S::add(sum, lane);
        }
        while depth < R {
            sum = S::fma(t[depth], S::splat(u[depth]), sum);
            depth += 1;
        }
        sum
    }
}

/// gemm's micro-kernel for `ROWS` rows of `u` (rows of `R`): one fused multiply-add per depth step, the rows'
/// chains side by side.
#[inline(always)]
unsafe fn micro_kernel<S: Lanes, const R: usize, const ROWS: usize>(
    t: &[S; R],
    u: &[f32],
) -> [S; ROWS] {
    unsafe {
        let mut acc = [S::zero(); ROWS];
        for (l, &tl) in t.iter().enumerate() {
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = S::fma(tl, S::splat(u[i * R + l]), *acc);
            }
        }
        acc
    }
}
