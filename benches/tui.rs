//! Dashboard benchmarks (not tests): `cargo bench --bench tui -- [render] [idle] [follow]`.
//! - render: time to draw the Run screen at 200x60 with a 1,000,000-step history (target < 2 ms).
//! - idle: CPU of the real binary over 60 s on a finished sweep, in tmux (target < 0.5% of a core).
//! - follow: CPU of the real binary over 60 s while it follows a run trained by another process.
//! - keypress: a score key on the Rating screen to the next frame, 10,000 judgements, 14 runs (< 16 ms).

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
    if want("idle") {
        tui_bench::cpu::idle();
    }
    if want("follow") {
        tui_bench::cpu::follow();
    }
    if want("keypress") {
        tui_bench::keypress::run();
    }
}
