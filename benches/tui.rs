//! Dashboard benchmarks (not tests): `cargo bench --bench tui -- [render]`.
//! - render: time to draw the Run screen at 200x60 with a 1,000,000-step history (target < 2 ms).

mod tui_bench;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|a| a == name);
    if want("render") {
        tui_bench::render::run();
    }
}
