//! The greedy head's tests: its choice against the argmax of candle's logits, its spans against plain loops
//! and against the logits, on every instruction set this CPU has.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module};

use super::super::activations;
use super::*;

/// Columns of the groups in the tests of `choose`.
const LANES: usize = 16;

/// The instruction sets this CPU has, each tested.
fn isas() -> Vec<Isa> {
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Vnni512]
        .into_iter()
        .filter(|isa| Isa::detect().is_some_and(|best| best == *isa || best == Isa::Vnni512))
        .collect();
    if isas.len() < 2 {
        eprintln!("tested only with {isas:?}: this CPU lacks the others");
    }
    isas
}

/// The first column of the largest value, as candle's `argmax` gives it.
fn first_max(values: &[f32]) -> u32 {
    let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values.iter().position(|&v| v == top).unwrap_or(0) as u32
}

/// Groups of exact values with a tie for the largest across groups and a near tie, and a tail.
fn exact_values() -> (Vec<[f32; LANES]>, Vec<f32>) {
    let mut groups = vec![[0f32; LANES]; 6];
    for (g, group) in groups.iter_mut().enumerate() {
        for (l, v) in group.iter_mut().enumerate() {
            *v = ((g * 7 + l * 3) % 11) as f32 * 0.25;
        }
    }
    groups[2][5] = 3.0;
    groups[4][1] = 3.0;
    groups[3][9] = 2.9999;
    (groups, vec![1.0, 2.5])
}

#[test]
fn the_choice_is_the_exact_values_first_largest_whatever_the_spans_around_them() {
    let (groups, tail) = exact_values();
    let all: Vec<f32> = groups.iter().flatten().chain(&tail).copied().collect();
    let top = |g: &[f32; LANES]| g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (below, above) in [(0.0f32, 0.0f32), (0.5, 0.01), (0.01, 0.5), (1e-4, 1e-4)] {
        let low: Vec<f32> = groups.iter().map(|g| top(g) - below).collect();
        let high: Vec<f32> = groups.iter().map(|g| top(g) + above).collect();
        let got = choose((&low, &high), LANES, |g| groups[g].to_vec(), &tail);
        assert_eq!(got, Some(first_max(&all)), "spans -{below} +{above}");
    }
}

#[test]
fn groups_whose_span_cannot_reach_the_best_are_never_computed() {
    let low: Vec<f32> = (0..100).map(|g| g as f32).collect();
    let high: Vec<f32> = low.iter().map(|l| l + 0.4).collect();
    let computed = std::cell::Cell::new(0);
    let got = choose(
        (&low, &high),
        LANES,
        |g| {
            computed.set(computed.get() + 1);
            vec![g as f32; LANES]
        },
        &[],
    );
    assert_eq!((got, computed.get()), (Some(99 * LANES as u32), 1));
}

#[test]
fn too_many_candidates_or_a_value_not_finite_leave_the_choice_to_the_logits() {
    let flat = vec![0.0f32; 20];
    assert_eq!(
        choose((&flat, &flat), LANES, |_| vec![0.0; LANES], &[]),
        None
    );
    let mut nan = vec![0.0f32; 5];
    nan[3] = f32::NAN;
    assert_eq!(choose((&nan, &nan), LANES, |_| vec![0.0; LANES], &[]), None);
    let (low, high) = ([5.0f32, 1.0], [5.0f32, 1.0]);
    assert_eq!(
        choose((&low, &high), LANES, |_| vec![f32::INFINITY; LANES], &[]),
        None
    );
    assert_eq!(
        choose((&low, &high), LANES, |g| vec![g as f32; LANES], &[f32::NAN]),
        None
    );
}

/// Random Q8_0 heads, each row's input made the largest logit of a column copied to a later column
/// (an exact tie) and to one with a single value nudged (a near tie): the ids equal the argmax of
/// candle's logits, on widths with columns after the whole groups.
#[test]
fn greedy_ids_are_the_argmax_of_candles_logits_ties_included() {
    let dev = Device::Cpu;
    for (m, n, k, seed) in [
        (1, 645, 576, 1u64),
        (10, 1000, 576, 2),
        (7, 403, 96, 3),
        (3, 64, 896, 4),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let mut w = Tensor::randn(0f32, 0.05, (n, k), &dev)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let xs = x.to_vec2::<f32>().unwrap();
        for (r, row) in xs.iter().enumerate() {
            let c = (r * 37 + seed as usize) % (n / 3);
            w[c] = row.iter().map(|v| v * 0.02).collect();
            w[c + n / 3] = w[c].clone();
            w[c + 2 * n / 3] = w[c].clone();
            w[c + 2 * n / 3][r % k] += 1e-4;
        }
        let w = Tensor::new(w, &dev).unwrap();
        for isa in isas() {
            // A weight of its own per instruction set: the packed copy is kept per weight.
            let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let logits = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
            let want: Vec<u32> = (logits.to_vec2::<f32>().unwrap().iter())
                .map(|row| first_max(row))
                .collect();
            let got = greedy_with(isa, &x, &w).unwrap();
            assert_eq!(got, Some(want), "{isa:?} ({m}, {n}, {k})");
        }
    }
}

/// Each group's largest candle logit lies within its span, whose width is small against the logits'
/// spread; a span of no width (the estimates' own largest) misses it for many groups, so the bound is
/// what makes the choice exact.
#[test]
fn each_groups_largest_logit_lies_within_its_span() {
    let dev = Device::Cpu;
    let mut off_centre = 0;
    for (m, n, k) in [(10, 2048, 576), (4, 512, 896), (2, 96, 32)] {
        let x = Tensor::randn(0f32, 3.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
        let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let logits = QMatMul::from_arc(w.clone()).unwrap().forward(&x).unwrap();
        let logits = logits.to_vec2::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1().unwrap();
        let acts = Activations::quantize(Format::Q8_0, &xs, m, k);
        let data = w.data().unwrap();
        let spread = logits.iter().flatten().fold(0f32, |s, v| s.max(v.abs()));
        for isa in isas() {
            let packed = Packed::new(Format::Q8_0, isa, &data, n, k / BLOCK);
            let (low, high) = spans(&packed, &acts);
            let lanes = isa.lanes();
            for (r, row) in logits.iter().enumerate() {
                for (g, group) in row.chunks_exact(lanes).enumerate() {
                    let top = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (lo, hi) = (low[r * n / lanes + g], high[r * n / lanes + g]);
                    let at = format!("{isa:?} ({m}, {n}, {k})");
                    assert!(lo <= top && top <= hi, "{top} outside [{lo}, {hi}] {at}");
                    assert!(
                        hi - lo < 1e-3 * spread,
                        "span {} of logits up to {spread}",
                        hi - lo
                    );
                    off_centre += usize::from(top != (lo + hi) / 2.0);
                }
            }
        }
    }
    assert!(
        off_centre > 100,
        "{off_centre} groups' largest logits off their spans' centres"
    );
}

/// [`spans`] in plain loops, column after column, with the kernels' operations in their order.
fn spans_reference(w: &[u8], acts: &Activations, n: usize, lanes: usize) -> (Vec<f32>, Vec<f32>) {
    let row_bytes = acts.blocks * Format::Q8_0.bytes();
    let tol = tolerance(acts.blocks);
    let (mut low, mut high) = (Vec::new(), Vec::new());
    for r in 0..acts.rows {
        // The row's largest block bound before the weight's scale.
        let scale = (r * acts.blocks..(r + 1) * acts.blocks).fold(0f32, |top, a| {
            let size: f32 = acts.values[a].iter().map(|q| q.unsigned_abs() as f32).sum();
            top.max(128.0 * acts.d[a].abs() * size)
        });
        for g in 0..n / lanes {
            let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for c in g * lanes..(g + 1) * lanes {
                let (mut estimate, mut weight_sizes) = (0f32, 0f32);
                for (b, wb) in w[c * row_bytes..][..row_bytes].chunks_exact(34).enumerate() {
                    let a = r * acts.blocks + b;
                    let v = &acts.values[a];
                    let sum: i32 = (0..32).map(|i| wb[2 + i] as i8 as i32 * v[i] as i32).sum();
                    let dw = activations::f16_at(wb, 0);
                    estimate = (sum as f32).mul_add(dw * acts.d[a], estimate);
                    weight_sizes += dw.abs();
                }
                let bound = weight_sizes * scale;
                lo = lo.max(estimate - tol * bound);
                hi = hi.max(estimate + tol * bound);
            }
            low.push(lo);
            high.push(hi);
        }
    }
    (low, high)
}

#[test]
fn the_kernels_spans_are_the_plain_loops_bit_for_bit() {
    let dev = Device::Cpu;
    for (m, n, k) in [(10, 512, 576), (3, 96, 896), (1, 48, 32)] {
        let x = Tensor::randn(0f32, 3.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
        let w = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1().unwrap();
        let acts = Activations::quantize(Format::Q8_0, &xs, m, k);
        let data = w.data().unwrap();
        for isa in isas() {
            let packed = Packed::new(Format::Q8_0, isa, &data, n, k / BLOCK);
            let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (low, high) = spans(&packed, &acts);
            let (lo, hi) = spans_reference(&data, &acts, n, isa.lanes());
            assert_eq!(bits(low), bits(lo), "{isa:?} lower ends ({m}, {n}, {k})");
            assert_eq!(bits(high), bits(hi), "{isa:?} upper ends ({m}, {n}, {k})");
        }
    }
}

#[test]
fn other_weight_types_are_left_to_the_logits() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 64), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (32, 64), &dev).unwrap();
    let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
    assert_eq!(greedy(&x, &w).unwrap(), None);
}
