use super::*;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn rounded(x: f32) -> f64 {
    half::bf16::from_f32(x).to_f32() as f64
}

/// `lhs @ rhs` with both rounded to bf16 first, summed in f64: what the kernel computes, up to the order
/// of its f32 sums.
fn reference(
    lhs: &[f32],
    rhs_at: impl Fn(usize, usize) -> f32,
    (m, k, n): (usize, usize, usize),
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|kk| rounded(lhs[i * k + kk]) * rounded(rhs_at(kk, j)))
                .sum();
        }
    }
    out
}

/// Max |got - want| over the elements, relative to the largest |want|.
fn rel_diff(got: impl Iterator<Item = f32>, want: &[f64]) -> f64 {
    let scale = want.iter().fold(1e-30f64, |a, w| a.max(w.abs()));
    got.zip(want)
        .map(|(g, w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

/// The kernels this CPU runs: the dot-product kernel where it has AVX512_BF16, and AMX where it has that.
fn kernels() -> Vec<Kernel> {
    let mut k = Vec::new();
    if supported() {
        k.push(Kernel::Dot);
        #[cfg(target_arch = "x86_64")]
        if amx::available() {
            k.push(Kernel::Amx);
        }
    }
    if k.is_empty() {
        eprintln!("skipped: this CPU lacks AVX512_BF16 (the kernels are never called here)");
    }
    k
}

#[test]
fn products_match_rounded_operands_at_every_edge() {
    for kernel in kernels() {
        products_match_rounded_operands_on(kernel);
    }
}

fn products_match_rounded_operands_on(kernel: Kernel) {
    // Rows around the register tile (12), AMX block (32) and task (96) sizes, depths odd and even and
    // around AMX's 32-deep chunks, columns around the panel width (32) and its 16-lane halves.
    for (m, k, n) in [
        (3, 0, 5),
        (1, 1, 1),
        (5, 7, 17),
        (12, 64, 32),
        (13, 65, 33),
        (33, 31, 48),
        (97, 30, 70),
        (200, 129, 16),
        (100, 576, 40),
    ] {
        let w = values(n * k, 1);
        let x = values(m * k, 2);
        // x W^T with W [n, k], into rows of n + 3 (a column offset of a wider output).
        let want = reference(&x, |kk, c| w[c * k + kk], (m, k, n));
        let dst_rs = n + 3;
        let mut dst = vec![7f32; m * dst_rs];
        let rows = Rows { data: &x, m, rs: k };
        matmul_on(
            kernel,
            &mut dst,
            dst_rs,
            rows,
            &Panels::transposed(&w, n, k),
            false,
        )
        .unwrap();
        let got = dst.chunks(dst_rs).flat_map(|r| r[..n].to_vec());
        assert!(
            rel_diff(got, &want) < 1e-6,
            "x W^T at {m} x {k} x {n} on {kernel:?}"
        );
        assert!(
            dst.chunks(dst_rs).all(|r| r[n..] == [7.0; 3]),
            "columns past n written"
        );
        // g W with W [k, n] read plain, accumulated onto ones.
        let want = reference(&x, |kk, c| w[kk * n + c], (m, k, n));
        let mut dst = vec![1f32; m * n];
        matmul_on(kernel, &mut dst, n, rows, &Panels::plain(&w, k, n), true).unwrap();
        let want: Vec<f64> = want.iter().map(|v| v + 1.0).collect();
        assert!(
            rel_diff(dst.into_iter(), &want) < 1e-6,
            "g W at {m} x {k} x {n} on {kernel:?}"
        );
    }
}

/// A new output (not zero-filled first) holds what a product into zeros holds, at edge sizes.
#[test]
fn a_new_output_matches_a_product_into_zeros() {
    for kernel in kernels() {
        for (m, k, n) in [(1, 3, 1), (13, 65, 33), (97, 30, 70)] {
            let (w, x) = (values(n * k, 9), values(m * k, 10));
            let rows = Rows { data: &x, m, rs: k };
            let rhs = Panels::transposed(&w, n, k);
            let mut zeros = vec![0f32; m * n];
            matmul_on(kernel, &mut zeros, n, rows, &rhs, false).unwrap();
            let new = matmul_new_on(kernel, rows, &rhs).unwrap();
            assert!(new == zeros, "{m} x {k} x {n} on {kernel:?}");
        }
    }
    if !supported() {
        return;
    }
    assert!(
        matmul_new(
            Rows {
                data: &[],
                m: 0,
                rs: 4
            },
            &Panels::plain(&[0.0; 8], 2, 4)
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn a_strided_left_operand_reads_only_its_columns() {
    for kernel in kernels() {
        let (m, k, n, rs) = (14, 9, 40, 13);
        let x = values(m * rs, 3);
        let w = values(n * k, 4);
        let dense: Vec<f32> = x.chunks(rs).flat_map(|r| r[..k].to_vec()).collect();
        let want = reference(&dense, |kk, c| w[c * k + kk], (m, k, n));
        let mut dst = vec![0f32; m * n];
        let rows = Rows { data: &x, m, rs };
        matmul_on(
            kernel,
            &mut dst,
            n,
            rows,
            &Panels::transposed(&w, n, k),
            false,
        )
        .unwrap();
        assert!(rel_diff(dst.into_iter(), &want) < 1e-6, "{kernel:?}");
    }
}

/// AMX and the dot-product kernel sum the same rounded products: they agree to f32 rounding at the
/// training step's shapes, so a run's numbers do not depend on which one the CPU has beyond that.
#[test]
fn amx_agrees_with_the_dot_product_kernel() {
    if kernels().len() < 2 {
        eprintln!("skipped: this CPU has no AMX (only one kernel runs here)");
        return;
    }
    let (m, k, n) = (130, 576, 192);
    let (w, x) = (values(n * k, 11), values(m * k, 12));
    let rows = Rows { data: &x, m, rs: k };
    let rhs = Panels::transposed(&w, n, k);
    let dot = matmul_new_on(Kernel::Dot, rows, &rhs).unwrap();
    let amx = matmul_new_on(Kernel::Amx, rows, &rhs).unwrap();
    let scale = dot.iter().fold(0f32, |a, v| a.max(v.abs()));
    let worst = dot
        .iter()
        .zip(&amx)
        .map(|(d, a)| (d - a).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5 * scale, "worst {worst} of {scale}");
}

#[test]
fn operands_that_do_not_fit_are_refused() {
    let w = values(8 * 4, 5);
    let x = values(3 * 4, 6);
    let mut small = vec![0f32; 2 * 8];
    let rows = Rows {
        data: &x,
        m: 3,
        rs: 4,
    };
    assert!(matmul(&mut small, 8, rows, &Panels::transposed(&w, 8, 4), false).is_err());
    let short = Rows {
        data: &x[..10],
        m: 3,
        rs: 4,
    };
    let mut dst = vec![0f32; 3 * 8];
    assert!(matmul(&mut dst, 8, short, &Panels::transposed(&w, 8, 4), false).is_err());
}

#[test]
fn bf16_is_chosen_only_when_allowed_and_faster_here() {
    assert_eq!(Precision::resolve(false), Precision::F32);
    let support = Support::detect();
    let want = match support {
        Support::Dot | Support::Amx => Precision::Bf16,
        Support::Missing | Support::SlowDot => Precision::F32,
    };
    assert_eq!(Precision::resolve(true), want, "{support:?}");
    assert_eq!(support == Support::Missing, !supported());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(support == Support::Amx, amx::available() && supported());
}

/// The vectorised packing (full panels) gives the value-by-value packing's panels exactly, at widths with
/// full and edge panels and odd and even depths.
#[test]
fn vectorised_packing_matches_value_by_value_packing() {
    if !supported() {
        eprintln!("skipped: this CPU lacks AVX512_BF16 (it packs value by value)");
        return;
    }
    for (rows, cols) in [(64, 96), (33, 70), (96, 33), (5, 64), (70, 65)] {
        let w = values(rows * cols, 8);
        let same =
            |got: &Panels, (k, n): (usize, usize), at: &(dyn Fn(usize, usize) -> f32 + Sync)| {
                let want = Panels::pack(k, n, |p, panel| panels::fill(panel, (k, n), p * NR, at));
                assert_eq!((got.k(), got.n()), (k, n));
                for p in 0..want.panels() {
                    assert!(got.panel(p) == want.panel(p), "[{rows}, {cols}] panel {p}");
                }
            };
        same(
            &Panels::transposed(&w, rows, cols),
            (cols, rows),
            &|kk, c| w[c * cols + kk],
        );
        same(&Panels::plain(&w, rows, cols), (rows, cols), &|kk, c| {
            w[kk * cols + c]
        });
    }
}

#[test]
fn panels_pad_columns_and_odd_depth_with_zeros() {
    let w = values(3 * 5, 7);
    let p = Panels::transposed(&w, 3, 5);
    assert_eq!((p.k(), p.n(), p.pairs(), p.panels()), (5, 3, PAIR_BLOCK, 1));
    let panel = p.panel(0);
    // Pair 2 holds row 4 of W^T (W's column 4) and a zero row; columns 3.. are zeros.
    for c in 0..NR {
        let want = if c < 3 { bf16_bits(w[c * 5 + 4]) } else { 0 };
        assert_eq!(panel[2 * 2 * NR + 2 * c], want);
        assert_eq!(panel[2 * 2 * NR + 2 * c + 1], 0);
    }
    assert!(
        p.panel(0)[3 * 2 * NR..].iter().all(|v| *v == 0),
        "pairs past the depth"
    );
    assert_eq!(p.bytes(), PAIR_BLOCK * 2 * NR * 2);
}

/// candle's AMX kernel (a Q4_K product of 32 rows or more) configures a thread's tiles once and keeps them,
/// and its thread pool runs part of a product on the calling thread; the training's AMX products run on the
/// same threads in a sweep. A product here between two of candle's on one thread must leave candle's
/// configuration in place (releasing the tiles made candle's next product fault).
#[test]
fn candles_tile_configuration_survives_an_amx_product() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    if kernels().len() < 2 {
        eprintln!("skipped: this CPU has no AMX");
        return;
    }
    let (k, n) = (512, 256);
    let w = Tensor::from_vec(values(n * k, 21), (n, k), &Device::Cpu).unwrap();
    let q = QMatMul::from_arc(std::sync::Arc::new(
        QTensor::quantize(&w, GgmlDType::Q4K).unwrap(),
    ))
    .unwrap();
    // 32 blocks of 32 rows: the calling thread takes some of them.
    let x = Tensor::from_vec(values(1024 * k, 22), (1024, k), &Device::Cpu).unwrap();
    let bits = |t: Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    one_thread.install(|| {
        let first = bits(q.forward(&x).unwrap());
        let (m, xs) = (130, values(130 * k, 23));
        let rhs = Panels::transposed(&values(n * k, 24), n, k);
        let rows = Rows {
            data: &xs,
            m,
            rs: k,
        };
        matmul_new_on(Kernel::Amx, rows, &rhs).unwrap();
        assert_eq!(bits(q.forward(&x).unwrap()), first);
    });
}
