use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::q8k::{self, BlockQ8K, QK_K};
use super::{candle_may_take_amx, candle_takes_avx512_tiles, matmul, serves, taken};

fn random(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows * k)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

fn bytes(blocks: &[BlockQ8K]) -> Vec<u8> {
    blocks
        .iter()
        .flat_map(|b| {
            let mut v = b.d.to_le_bytes().to_vec();
            v.extend(b.qs.iter().map(|&q| q as u8));
            v.extend(b.bsums.iter().flat_map(|s| s.to_le_bytes()));
            v
        })
        .collect()
}

/// Blocks that stress the rounding: random values; a zero block; the largest magnitude negative and
/// then equalled by a positive value; halves exactly (scale 1: the largest value -127); NaN and infinity; a
/// tiny block.
fn awkward_rows() -> Vec<f32> {
    let mut xs = random(1, QK_K, 3);
    xs.extend(std::iter::repeat_n(0.0, QK_K));
    let mut ties = random(1, QK_K, 4);
    ties[10] = -7.0;
    ties[200] = 7.0;
    xs.extend(ties);
    let mut halves: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 128.0) * 0.5).collect();
    halves[0] = -127.0;
    xs.extend(halves);
    let mut odd = random(1, QK_K, 5);
    odd[3] = f32::NAN;
    odd[9] = -0.0;
    xs.extend(odd);
    let mut inf = random(1, QK_K, 6);
    inf[17] = f32::INFINITY;
    xs.extend(inf);
    xs.extend(random(1, QK_K, 7).iter().map(|x| x * 1e-30));
    xs
}

#[test]
fn inputs_round_to_candles_q8k_bytes() {
    let xs = awkward_rows();
    let rows = xs.len() / QK_K;
    let t = Tensor::from_vec(xs.clone(), (rows, QK_K), &Device::Cpu).unwrap();
    let want = QTensor::quantize(&t, GgmlDType::Q8K)
        .unwrap()
        .data()
        .unwrap()
        .to_vec();
    assert_eq!(
        bytes(&q8k::round_rows(&xs, rows, QK_K).blocks),
        want,
        "rows as the products round them"
    );
    let mut scalar = vec![
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16]
        };
        rows
    ];
    for (x, y) in xs.chunks_exact(QK_K).zip(scalar.iter_mut()) {
        q8k::round_block(x, y);
    }
    assert_eq!(bytes(&scalar), want, "the scalar reference");
}

fn quantized(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> Arc<QTensor> {
    let w = Tensor::from_vec(random(n, k, seed), (n, k), &Device::Cpu).unwrap();
    Arc::new(QTensor::quantize(&w, dtype).unwrap())
}

fn candles(w: &Arc<QTensor>, x: &Tensor) -> Vec<u32> {
    let y = QMatMul::from_arc(w.clone()).unwrap().forward(x).unwrap();
    y.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn tile_products_have_candles_bits_at_every_row_count() {
    if !candle_takes_avx512_tiles() {
        let w = quantized(GgmlDType::Q4K, 32, 512, 1);
        assert!(!serves(&w), "no AVX-512 VNNI: candle's kernels serve");
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0] {
        // Two weights of one width in one loop, 48 and 32 columns (3 and 2 tiles), 3 superblocks wide.
        let ws = [quantized(dtype, 48, 768, 11), quantized(dtype, 32, 768, 12)];
        // On an AMX-INT8 CPU candle may multiply Q4_K inputs of 32 rows or more by its AMX kernel, so split
        // batches' Q4_K products stay candle's there; fewer rows still take the copied tile kernels.
        let amx_q4k = dtype == GgmlDType::Q4K && candle_may_take_amx();
        assert!(
            ws.iter().all(|w| serves(w) != amx_q4k),
            "{dtype:?}, AMX: {amx_q4k}"
        );
        assert_eq!(taken(&ws[0], 32).is_none(), amx_q4k, "{dtype:?} at 32 rows");
        for m in [1, 2, 3, 4, 5, 6, 7, 10, 13, 16, 17, 31] {
            let x = Tensor::from_vec(random(m, 768, m as u64), (m, 768), &Device::Cpu).unwrap();
            let got = matmul(&x, &ws).unwrap();
            let Some(got) = got else {
                assert!(
                    dtype == GgmlDType::Q6K && m == 1,
                    "{dtype:?} at {m} rows is candle's tile case"
                );
                assert!(taken(&ws[0], m).is_none());
                continue;
            };
            for (w, y) in ws.iter().zip(&got) {
                let bits: Vec<u32> = y
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(bits, candles(w, &x), "{dtype:?}, {m} rows, {:?}", w.shape());
            }
        }
    }
}

#[test]
fn shapes_candle_does_not_tile_stay_candles() {
    let x = Tensor::from_vec(random(4, 768, 1), (4, 768), &Device::Cpu).unwrap();
    // 40 columns (not a multiple of 16), a Q5_K weight, and a width of 768 + 32 for Q8_0.
    let w = quantized(GgmlDType::Q4K, 40, 768, 2);
    assert!(!serves(&w) && matmul(&x, &[w]).unwrap().is_none());
    let w = quantized(GgmlDType::Q5K, 32, 768, 3);
    assert!(!serves(&w) && matmul(&x, &[w]).unwrap().is_none());
    let x = Tensor::from_vec(random(4, 800, 1), (4, 800), &Device::Cpu).unwrap();
    let w = quantized(GgmlDType::Q8_0, 32, 800, 4);
    assert!(!serves(&w) && matmul(&x, &[w]).unwrap().is_none());
    // Weights of two types are not multiplied in one loop.
    let x = Tensor::from_vec(random(4, 768, 1), (4, 768), &Device::Cpu).unwrap();
    let ws = [
        quantized(GgmlDType::Q4K, 32, 768, 5),
        quantized(GgmlDType::Q6K, 32, 768, 6),
    ];
    assert!(matmul(&x, &ws).unwrap().is_none());
}
