//! How close the batch-10 Q4_1 decoding product runs to what the CPU's vector pipes allow, on AVX-512 VNNI
//! machines. For each 16-column group and 32-value block, ten rows cost 80 `vpdpbusd` (the exact integer
//! sums) and 30 `vmulps` (candle's f32 terms: `(sum * d_w) * d_x` and `m_w * s_x`, without fused
//! multiply-adds, which would change the bits): 110 cycles at best on a CPU that issues one of each a cycle
//! and whose integer dot products and float multiplies share pipes (Zen 4; measured here first).
//!
//! `RAYON_NUM_THREADS=1 cargo bench --bench qdot` (one thread: per-thread cycles; with more threads the
//! products run on the pool as in decoding and the figure is per thread). Prints one JSON line.

#[cfg(target_arch = "x86_64")]
fn main() {
    x86::run();
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("skipped: this bench measures x86-64 vector pipes");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::sync::Arc;
    use std::time::Instant;

    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use qlab::model::kernels::cpu::qdot;
    use serde_json::json;

    /// Iterations of each timed instruction loop.
    const LOOPS: u64 = 200_000_000;

    pub fn run() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // SAFETY: the CPU has AVX-512 F and VNNI (checked above).
        let (ghz, dpbusd, mulps, mixed) = unsafe { pipes() };
        let threads = candle_core::utils::get_num_threads();
        // The pipes' floor for one group and block of ten rows: the two kinds queue behind each other when
        // four of one and two of the other take as long as the six in turn.
        let shared = mixed >= 0.9 * (4.0 * dpbusd + 2.0 * mulps);
        let floor = match shared {
            true => 80.0 * dpbusd + 30.0 * mulps,
            false => (80.0 * dpbusd).max(30.0 * mulps),
        };
        let hot = product_cycles(1, ghz, threads);
        let streamed = product_cycles(100, ghz, threads);
        println!(
            "clock {ghz:.2} GHz; cycles per vpdpbusd zmm {dpbusd:.2}, per vmulps zmm {mulps:.2}, per 4 vpdpbusd + 2 vmulps {mixed:.2} (shared pipes: {shared}); Q4_1 product of 10 rows, cycles per 16-column block per thread ({threads} threads): weight in cache {hot:.1}, 100 weights streamed {streamed:.1}, the pipes' floor {floor:.1}"
        );
        let line = json!({
            "bench": "qdot",
            "clock_ghz": ghz,
            "threads": threads,
            "cycles_per_vpdpbusd_zmm": dpbusd,
            "cycles_per_vmulps_zmm": mulps,
            "cycles_per_4_vpdpbusd_2_vmulps": mixed,
            "q4_1_rows_10_cycles_per_block_group_hot": hot,
            "q4_1_rows_10_cycles_per_block_group_streamed": streamed,
            "shared_pipes": shared,
            "floor_cycles": floor,
        });
        println!("{line}");
    }

    /// Seconds `f` takes, the best of three.
    fn best_of_three(mut f: impl FnMut()) -> f64 {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// The clock (a chain of dependent adds, one a cycle) and the cycles per instruction of independent
    /// `vpdpbusd`, `vmulps`, and four of the first with two of the second.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn pipes() -> (f64, f64, f64, f64) {
        let adds = best_of_three(|| unsafe {
            asm!("2:", "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1", "sub {n}, 4", "jnz 2b",
                n = inout(reg) LOOPS => _, x = inout(reg) 0u64 => _, options(nomem, nostack));
        });
        let ghz = LOOPS as f64 / adds / 1e9;
        let cycles = |secs: f64, per_loop: f64| secs * ghz * 1e9 / (LOOPS as f64 * per_loop);
        // Independent instructions (each writes its own zmm0-7 from zmm20 and zmm21), `dec` and `jnz` a loop.
        macro_rules! timed {
            ($($op:ident $dst:literal),+) => {
                best_of_three(|| unsafe {
                    asm!("2:", $(concat!(stringify!($op), " zmm", $dst, ", zmm20, zmm21")),+,
                        "dec {n}", "jnz 2b", n = inout(reg) LOOPS => _,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                        out("zmm5") _, out("zmm6") _, out("zmm7") _, options(nomem, nostack));
                })
            };
        }
        let dpbusd = timed!(vpdpbusd 0, vpdpbusd 1, vpdpbusd 2, vpdpbusd 3, vpdpbusd 4, vpdpbusd 5, vpdpbusd 6, vpdpbusd 7);
        let mulps =
            timed!(vmulps 0, vmulps 1, vmulps 2, vmulps 3, vmulps 4, vmulps 5, vmulps 6, vmulps 7);
        let mixed = timed!(vpdpbusd 0, vpdpbusd 1, vpdpbusd 2, vpdpbusd 3, vmulps 4, vmulps 5);
        (
            ghz,
            cycles(dpbusd, 8.0),
            cycles(mulps, 8.0),
            cycles(mixed, 1.0),
        )
    }

    /// Cycles per 16-column group and block, per thread, of qlab's Q4_1 product of 10 rows by 1536 x 576
    /// weights (the demo model's feed-forward width): `weights` distinct weights taken in turn (1: the weight
    /// stays in cache; 100: 55 MB streamed from memory, as decoding reads a model).
    fn product_cycles(weights: usize, ghz: f64, threads: usize) -> f64 {
        let (rows, n, k) = (10, 1536, 576);
        let dev = Device::Cpu;
        let ws: Vec<Arc<QTensor>> = (0..weights)
            .map(|_| {
                let w = Tensor::randn(0f32, 0.5, (n, k), &dev).expect("random weight");
                Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).expect("Q4_1 weight"))
            })
            .collect();
        let x = Tensor::randn(0f32, 2.0, (rows, k), &dev).expect("random input");
        let product = |w: &Arc<QTensor>| {
            let y = qdot::matmul(&x, std::slice::from_ref(w)).expect("product");
            assert!(y.is_some(), "qdot serves Q4_1 on this CPU");
        };
        ws.iter().for_each(product);
        let calls = 2000usize.next_multiple_of(weights);
        let secs = best_of_three(|| (0..calls).for_each(|i| product(&ws[i % weights])));
        let groups = (n / 16 * k / 32 * calls) as f64;
        secs * ghz * 1e9 * threads as f64 / groups
    }
}
