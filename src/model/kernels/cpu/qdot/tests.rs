use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::activations::{self, Activations, dot_scalar};
use super::packed::Packed;
use super::*;

const DTYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0];

/// Random weights (with an offset, so Q4_1's minimum and Q5_0's high bits both matter) and inputs.
fn operands(dtype: GgmlDType, m: usize, n: usize, k: usize, seed: u64) -> (Tensor, Arc<QTensor>) {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.5, (n, k), &dev)
        .unwrap()
        .affine(1.0, 0.1 * seed as f64)
        .unwrap();
    let x = Tensor::randn(0f32, 2.0, (m, k), &dev).unwrap();
    (x, Arc::new(QTensor::quantize(&w, dtype).unwrap()))
}

/// Whether this CPU lacks the kernels (no AVX2), said on standard error: the test is then skipped.
fn no_kernels() -> bool {
    let none = Isa::detect().is_none();
    if none {
        eprintln!("skipped: this CPU has no AVX2");
    }
    none
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Our product of `x` and `w` (which this module must serve), flattened.
fn ours(x: &Tensor, w: &Arc<QTensor>) -> Vec<f32> {
    let y = matmul(x, std::slice::from_ref(w))
        .unwrap()
        .expect("served")
        .remove(0);
    y.flatten_all().unwrap().to_vec1().unwrap()
}

fn candle(x: &Tensor, w: &Arc<QTensor>) -> Vec<f32> {
    let y = QMatMul::from_arc(w.clone()).unwrap().forward(x).unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn products_equal_candles_kernels_bit_for_bit() {
    if no_kernels() {
        return;
    }
    // Shapes that leave columns after the whole groups (of 16 and of 8) and after the tasks, and the
    // vocabulary head's width (576, not a multiple of 256).
    for dtype in DTYPES {
        for (m, n, k) in [
            (1, 576, 576),
            (10, 1536, 576),
            (3, 37, 128),
            (32, 19, 1536),
            (2, 24, 64),
            (90, 192, 576),
            (35, 1536, 576),
        ] {
            let (x, w) = operands(dtype, m, n, k, n as u64);
            assert_eq!(
                bits(&ours(&x, &w)),
                bits(&candle(&x, &w)),
                "{dtype:?} ({m},{n},{k})"
            );
        }
    }
}

/// The blocks candle's `from_float` makes of `xs` (one row), as (values, d, s) with Q8_0's s the values' sum.
fn candles_rounding(format: Format, xs: &[f32]) -> Vec<([i8; 32], f32, f32)> {
    use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1, GgmlType};
    fn blocks<T: GgmlType>(xs: &[f32], size: usize) -> Vec<u8> {
        let mut q = vec![T::zeros(); xs.len() / 32];
        T::from_float(xs, &mut q);
        // SAFETY: candle's Q8 blocks are `repr(C)` without padding, `size` bytes each.
        unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len() * size) }.to_vec()
    }
    let values = |qs: &[u8]| std::array::from_fn::<i8, 32, _>(|i| qs[i] as i8);
    let f16_at = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    match format {
        Format::Q4_1 => blocks::<BlockQ8_1>(xs, 36)
            .chunks_exact(36)
            .map(|b| (values(&b[4..]), f16_at(b, 0), f16_at(b, 2)))
            .collect(),
        _ => blocks::<BlockQ8_0>(xs, 34)
            .chunks_exact(34)
            .map(|b| {
                let v = values(&b[2..]);
                (
                    v,
                    f16_at(b, 0),
                    v.iter().map(|&q| q as i32).sum::<i32>() as f32,
                )
            })
            .collect(),
    }
}

#[test]
fn activations_are_rounded_as_candle_rounds_them() {
    // Random values, a block of zeros, halves (127 sets d = 1: rounded away from zero), a NaN, an infinity,
    // values so small that 1 / d overflows and so large that d and s overflow f16: the special blocks first
    // (inside the AVX-512 kernel's groups of 16 blocks) and again last (in the blocks after them).
    let mut specials: Vec<f32> = vec![0.0; 32];
    let halves = [0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 0.49999997, -0.49999997];
    specials.extend((0..32).map(|i| if i == 0 { 127.0 } else { halves[i % 8] }));
    specials.extend((0..32).map(|i| if i == 3 { f32::NAN } else { i as f32 - 9.0 }));
    specials.extend((0..32).map(|i| if i == 5 { f32::NEG_INFINITY } else { i as f32 }));
    specials.extend((0..32).map(|i| (i as f32 - 16.0) * 1e-40));
    specials.extend((0..32).map(|i| (i as f32 - 3.0) * 1e7));
    let random: Vec<f32> = Tensor::randn(0f32, 3.0, 1024, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    let xs = [&specials[..], &random, &specials].concat();
    let k = xs.len();
    let bits = |acts: &Activations| -> Vec<_> {
        (0..acts.blocks)
            .map(|b| (acts.values[b], acts.d[b].to_bits(), acts.s[b].to_bits()))
            .collect()
    };
    for format in [Format::Q4_1, Format::Q8_0] {
        let want: Vec<_> = candles_rounding(format, &xs)
            .into_iter()
            .map(|(v, d, s)| (v, d.to_bits(), s.to_bits()))
            .collect();
        let mut scalar = Activations::unrounded(1, k);
        activations::round_blocks(format, &xs, &mut scalar);
        assert_eq!(bits(&scalar), want, "{format:?} scalar");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut avx2 = Activations::unrounded(1, k);
            // SAFETY: the CPU has AVX2.
            unsafe { activations::round_blocks_avx2(format, &xs, &mut avx2, 0) };
            assert_eq!(bits(&avx2), want, "{format:?} avx2");
        }
        #[cfg(target_arch = "x86_64")]
        if activations::has_avx512() {
            let mut avx512 = Activations::unrounded(1, k);
            // SAFETY: the CPU has what the kernel needs.
            unsafe { activations::round_blocks_avx512(format, &xs, &mut avx512) };
            assert_eq!(bits(&avx512), want, "{format:?} avx512");
        }
    }
}

#[test]
fn the_scalar_reference_is_candles_arithmetic() {
    for dtype in DTYPES {
        let format = Format::of(dtype).unwrap();
        let (x, w) = operands(dtype, 2, 8, 128, 1);
        let acts =
            Activations::quantize(format, &x.flatten_all().unwrap().to_vec1().unwrap(), 2, 128);
        let data = w.data().unwrap();
        let row = 4 * format.bytes();
        let want = candle(&x, &w);
        for (i, want) in want.iter().enumerate() {
            let (r, c) = (i / 8, i % 8);
            let ours = dot_scalar(format, &data[c * row..][..row], &acts, r);
            assert_eq!(
                ours.to_bits(),
                want.to_bits(),
                "{dtype:?} row {r} column {c}"
            );
        }
    }
}

/// Every instruction set this CPU has, whichever `Isa::detect` picks.
fn available() -> Vec<Isa> {
    let mut isas = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            isas.push(Isa::Avx2);
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                isas.push(Isa::Vnni512);
            } else {
                eprintln!("the AVX-512 VNNI kernels are not tested: this CPU lacks them");
            }
        }
    }
    isas
}

#[test]
fn each_instruction_set_gives_the_scalar_reference() {
    for isa in available() {
        for dtype in DTYPES {
            let format = Format::of(dtype).unwrap();
            // Two tasks and a column after the last group of 16 (three after the last of 8 and of 16); every
            // pass size of the kernels (1 to 10 rows) and rows split into several passes.
            let (n, k) = (4 * 16 + 3, 256);
            for m in (1..=13).chain([21, 32]) {
                let (x, w) = operands(dtype, m, n, k, 3 + m as u64);
                let acts = Activations::quantize(
                    format,
                    &x.flatten_all().unwrap().to_vec1().unwrap(),
                    m,
                    k,
                );
                let data = w.data().unwrap();
                let row_bytes = k / BLOCK * format.bytes();
                let want: Vec<f32> = (0..m)
                    .flat_map(|r| (0..n).map(move |c| (c, r)))
                    .map(|(c, r)| dot_scalar(format, &data[c * row_bytes..][..row_bytes], &acts, r))
                    .collect();
                let packed = Packed::new(format, isa, &data, n, k / BLOCK);
                let got = products(&[(&packed, &*w)], &acts).unwrap().remove(0);
                assert_eq!(bits(&got), bits(&want), "{dtype:?} {isa:?} {m} rows");
            }
        }
    }
}

#[test]
fn a_weight_is_packed_once_and_let_go_with_it() {
    let Some(isa) = Isa::detect() else {
        return;
    };
    let (_, w) = operands(GgmlDType::Q4_1, 1, 32, 64, 2);
    let pack = |data: &[u8], n, k| Packed::new(Format::Q4_1, isa, data, n, k / BLOCK);
    let first = packed::cached(&w, pack).unwrap();
    let again = packed::cached(&w, pack).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let held = Arc::downgrade(&first);
    drop((first, again, w));
    // The next weight packed clears the entries of dropped ones.
    let (_, other) = operands(GgmlDType::Q4_1, 1, 32, 64, 4);
    packed::cached(&other, pack).unwrap();
    assert_eq!(held.strong_count(), 0);
}

#[test]
fn other_weight_types_and_bad_widths_are_not_served_or_refused() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (16, 256), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 256), &dev).unwrap();
    let q5k = Arc::new(QTensor::quantize(&w, GgmlDType::Q5K).unwrap());
    assert!(matmul(&x, &[q5k]).unwrap().is_none());
    // (Q8_0 at widths candle multiplies with its own repacked kernels goes through their copies, with candle's
    // bits: `candle_tiles`' tests.)
    if Isa::detect().is_some() {
        let q4 = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let wrong = Tensor::randn(0f32, 1.0, (1, 32), &dev).unwrap();
        assert!(matmul(&wrong, &[q4]).is_err());
    }
}

/// The same values (in another tensor) reuse the kept rounding; a single bit of difference (the sign of a
/// zero) or another activation type rounds afresh.
#[test]
fn an_input_is_rounded_once_for_the_products_that_share_it() {
    let mut values: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
    values[12] = 0.0;
    let x = Tensor::from_vec(values.clone(), (1, 64), &Device::Cpu).unwrap();
    let round =
        |format: Format| move |xs: &[f32], rows| Activations::quantize(format, xs, rows, 64);
    let first = reuse::rounded(0, &x, 64, round(Format::Q4_1)).unwrap();
    let same = Tensor::from_vec(values.clone(), (1, 64), &Device::Cpu).unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &reuse::rounded(0, &same, 64, round(Format::Q4_1)).unwrap()
    ));
    let other_type = reuse::rounded(1, &x, 64, round(Format::Q5_0)).unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &reuse::rounded(0, &x, 64, round(Format::Q4_1)).unwrap()
    ));
    values[12] = -0.0;
    let signed = Tensor::from_vec(values, (1, 64), &Device::Cpu).unwrap();
    let again = reuse::rounded(0, &signed, 64, round(Format::Q4_1)).unwrap();
    assert!(!Arc::ptr_eq(&first, &again));
    assert!(!Arc::ptr_eq(&first, &other_type));
}

/// A long prompt's input (over a million values) is rounded each time, not kept for the thread's life.
#[test]
fn a_long_prompts_input_is_not_kept() {
    let x = Tensor::zeros((2049, 512), candle_core::DType::F32, &Device::Cpu).unwrap();
    let round = |xs: &[f32], rows| Activations::quantize(Format::Q4_1, xs, rows, 512);
    let first = reuse::rounded(0, &x, 512, round).unwrap();
    assert!(!Arc::ptr_eq(
        &first,
        &reuse::rounded(0, &x, 512, round).unwrap()
    ));
    let small = x.narrow(0, 0, 4).unwrap().contiguous().unwrap();
    let kept = reuse::rounded(0, &small, 512, round).unwrap();
    assert!(Arc::ptr_eq(
        &kept,
        &reuse::rounded(0, &small, 512, round).unwrap()
    ));
}

/// A row's outputs are the same bits whichever rows it is multiplied with (passes of up to 10 rows).
#[test]
fn a_rows_products_do_not_depend_on_the_other_rows() {
    if no_kernels() {
        return;
    }
    for dtype in DTYPES {
        let (x, w) = operands(dtype, 90, 192, 576, 3);
        let all = ours(&x, &w);
        for r in [0usize, 5, 33, 89] {
            let one = ours(&x.narrow(0, r, 1).unwrap(), &w);
            assert_eq!(
                bits(&one),
                bits(&all[r * 192..(r + 1) * 192]),
                "{dtype:?} row {r}"
            );
        }
    }
}

/// Several weights of one type multiplied in one loop give each weight's own product to the bit (widths
/// that leave a tail after the last whole group included); weights of different types are not served.
#[test]
fn products_in_one_loop_equal_one_product_each() {
    if no_kernels() {
        return;
    }
    for dtype in DTYPES {
        let (x, q) = operands(dtype, 10, 576, 576, 1);
        let (_, k) = operands(dtype, 10, 200, 576, 2);
        let (_, v) = operands(dtype, 10, 192, 576, 3);
        let joint = matmul(&x, &[q.clone(), k.clone(), v.clone()])
            .unwrap()
            .expect("served");
        for (y, w) in joint.iter().zip([&q, &k, &v]) {
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(bits(&y), bits(&ours(&x, w)), "{dtype:?}");
        }
    }
    let (x, q) = operands(GgmlDType::Q4_1, 3, 64, 576, 1);
    let (_, other) = operands(GgmlDType::Q5_0, 3, 64, 576, 2);
    assert!(matmul(&x, &[q, other]).unwrap().is_none());
}
