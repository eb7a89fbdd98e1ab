use candle_core::{Device, Tensor};

use super::gemm_order::{Dims, Path, lanes};
use super::*;

/// candle's composition in `AdaptedLinear::forward`.
fn composed(y: &Tensor, x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
    let inp = a.dim(1).unwrap();
    let x2 = x.reshape(((), inp)).unwrap();
    let delta = x2
        .matmul(&a.t().unwrap())
        .unwrap()
        .affine(scale, 0.0)
        .unwrap();
    let delta = delta.matmul(&b.t().unwrap()).unwrap();
    (y + delta.reshape(y.shape()).unwrap()).unwrap()
}

fn bits(t: Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// Random operands; row 0 of `x` and of `y` is zero when `zero_row` (signs of zero must match too).
fn operands(d: Dims, zero_row: bool) -> (Tensor, Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let mut x = Tensor::randn(0f32, 1.0, (d.rows, 1, d.inp), &dev).unwrap();
    let a = Tensor::randn(0f32, 0.05, (d.rank, d.inp), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.05, (d.out, d.rank), &dev).unwrap();
    let mut y = Tensor::randn(0f32, 1.0, (d.rows, 1, d.out), &dev).unwrap();
    if zero_row {
        let keep = |t: Tensor| {
            let mask: Vec<f32> = (0..d.rows)
                .map(|i| if i == 0 { 0.0 } else { 1.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (d.rows, 1, 1), &dev).unwrap();
            t.broadcast_mul(&mask).unwrap()
        };
        (x, y) = (keep(x), keep(y));
    }
    (x, a, b, y)
}

use Path::{Gemm, Gemv, Horizontal, MicroKernel};

/// A delta's shape: rows, in, rank, out.
type Shape = (usize, usize, usize, usize);

/// Shapes on every path gemm takes for the two products, with those paths.
const SHAPES: [(Shape, (Path, Path)); 19] = [
    ((1, 576, 16, 576), (Horizontal, Gemv)),
    ((1, 576, 16, 192), (Horizontal, Horizontal)), // one row, 192 outputs
    ((2, 576, 16, 128), (Horizontal, Horizontal)), // at the limit (256 outputs)
    ((10, 576, 16, 1536), (Horizontal, MicroKernel)),
    ((10, 1536, 16, 576), (Horizontal, MicroKernel)), // depth in two chunks (1,024 + 512)
    ((3, 64, 8, 192), (Horizontal, MicroKernel)),     // rank below 16 lanes
    ((1, 64, 8, 300), (Horizontal, Gemv)),            // with 16 lanes: gemv's scalar tail alone
    ((1, 4096, 16, 14336), (Horizontal, Gemv)),       // Llama-3.1-8B's MLP at batch 1
    ((16, 1100, 16, 64), (Horizontal, MicroKernel)), // first product at its limit, masked last block
    ((17, 100, 16, 64), (Gemm, MicroKernel)),        // first product past the horizontal path
    ((1, 300, 128, 400), (Horizontal, Gemv)),        // gemv's eight accumulators
    ((2, 333, 128, 4096), (Horizontal, MicroKernel)), // the largest rank, wide output
    ((1, 64, 2, 300), (Gemm, Gemm)),                 // a rank without kernels here
    ((4, 77, 300, 64), (Gemm, Gemm)),
    ((13, 200, 16, 400), (Horizontal, MicroKernel)), // rows in groups of 8, 4 and 1
    ((3, 100, 32, 300), (Horizontal, MicroKernel)),
    ((1, 100, 64, 50), (Horizontal, Horizontal)),
    ((5, 2000, 32, 40), (Horizontal, Horizontal)), // two chunks, masked last block
    ((130, 576, 16, 576), (Gemm, MicroKernel)),    // a prompt's rows
];

fn dims((rows, inp, rank, out): Shape) -> Dims {
    Dims {
        rows,
        inp,
        rank,
        out,
    }
}

#[test]
fn the_delta_is_candles_composition_bit_for_bit() {
    for (shape, _) in SHAPES {
        let d = dims(shape);
        for (zero_row, scale) in [(false, 2.0), (true, 0.5)] {
            let (x, a, b, y) = operands(d, zero_row);
            let ours = add_delta(&y, &x, (&a, &b), scale).unwrap();
            assert_eq!(ours.dims(), y.dims());
            let (ours, theirs) = (bits(ours), bits(composed(&y, &x, &a, &b, scale)));
            let first = ours.iter().zip(&theirs).position(|(p, q)| p != q);
            assert_eq!(
                first,
                None,
                "{d:?} (zero row {zero_row}): paths {:?}, lanes {:?}",
                paths(d),
                lanes()
            );
        }
    }
}

#[test]
fn the_shapes_above_take_their_paths_where_the_cpu_has_kernels() {
    for (shape, expected) in SHAPES {
        let d = dims(shape);
        match lanes() {
            Some(_) => assert_eq!(paths(d), expected, "{d:?}"),
            None => assert_eq!(paths(d), (Gemm, Gemm), "{d:?}"),
        }
    }
}

/// `scripts/avx2-under-qemu.sh` runs these tests on an emulated CPU without AVX-512 and sets
/// `QLAB_EXPECT_GEMM_LANES=8`: there the products must take the AVX2 kernels, not gemm's fallback.
#[test]
fn the_kernels_take_the_lanes_the_caller_expects() {
    if let Ok(expected) = std::env::var("QLAB_EXPECT_GEMM_LANES") {
        assert_eq!(lanes(), expected.parse().ok());
    }
}
