use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::activations::{Activations, dot_scalar};
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn candle(x: &Tensor, w: &Arc<QTensor>) -> Vec<f32> {
    let y = QMatMul::from_arc(w.clone()).unwrap().forward(x).unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn products_equal_candles_kernels_bit_for_bit() {
    if Isa::detect().is_none() {
        eprintln!("skipped: this CPU has no AVX2");
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
        ] {
            let (x, w) = operands(dtype, m, n, k, n as u64);
            let ours = matmul(&x, &w).unwrap().expect("served");
            let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(
                bits(&ours),
                bits(&candle(&x, &w)),
                "{dtype:?} ({m},{n},{k})"
            );
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
            // Two tasks and a column after the last group of 16 (three after the last of 8 and of 16).
            let (m, n, k) = (5, 4 * 16 + 3, 256);
            let (x, w) = operands(dtype, m, n, k, 3);
            let acts =
                Activations::quantize(format, &x.flatten_all().unwrap().to_vec1().unwrap(), m, k);
            let data = w.data().unwrap();
            let row_bytes = k / BLOCK * format.bytes();
            let want: Vec<f32> = (0..n)
                .flat_map(|c| (0..m).map(move |r| (c, r)))
                .map(|(c, r)| dot_scalar(format, &data[c * row_bytes..][..row_bytes], &acts, r))
                .collect();
            let packed = Packed::new(format, isa, &data, n, k / BLOCK);
            let got = product(&packed, &acts, &w).unwrap();
            assert_eq!(bits(&got), bits(&want), "{dtype:?} {isa:?}");
        }
    }
}

#[test]
fn a_weight_is_packed_once_and_let_go_with_it() {
    let Some(isa) = Isa::detect() else {
        return;
    };
    let (_, w) = operands(GgmlDType::Q4_1, 1, 32, 64, 2);
    let first = packed::cached(&w, Format::Q4_1, isa).unwrap();
    let again = packed::cached(&w, Format::Q4_1, isa).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let held = Arc::downgrade(&first);
    drop((first, again, w));
    // The next weight packed clears the entries of dropped ones.
    let (_, other) = operands(GgmlDType::Q4_1, 1, 32, 64, 4);
    packed::cached(&other, Format::Q4_1, isa).unwrap();
    assert_eq!(held.strong_count(), 0);
}

#[test]
fn other_weight_types_and_bad_widths_are_not_served_or_refused() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (16, 256), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 256), &dev).unwrap();
    let q4k = Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap());
    assert!(matmul(&x, &q4k).unwrap().is_none());
    // Q8_0 at widths candle multiplies with its own repacked kernels.
    let q8 = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
    assert!(matmul(&x, &q8).unwrap().is_none());
    if Isa::detect().is_some() {
        let q4 = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let wrong = Tensor::randn(0f32, 1.0, (1, 32), &dev).unwrap();
        assert!(matmul(&wrong, &q4).is_err());
    }
}
