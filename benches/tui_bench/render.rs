//! Render time of the Run screen with a 1,000,000-step history at 200x60.

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use qlab::sweep::events::{RunEvent, StepMetrics};
use qlab::tui::view::draw;
use qlab::tui::{App, MatrixCell, Msg, SweepInfo, Theme, update};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const STEPS: u64 = 1_000_000;

pub fn run() {
    let sweep = SweepInfo {
        name: "bench".into(),
        models: vec!["smollm2-135m".into()],
        datasets: vec!["arith".into()],
        runs: vec![MatrixCell {
            id: "smollm2-135m-arith-0a1b2c3d".into(),
            model: "smollm2-135m".into(),
            dataset: "arith".into(),
        }],
        runs_dir: "runs".into(),
    };
    let run = sweep.runs[0].id.clone();
    let mut app = App::new(sweep, "bench", 0.0);
    let fed = Instant::now();
    let started = RunEvent::RunStarted {
        total_steps: 2 * STEPS,
        start_step: 0,
        device: "cuda:0".into(),
        pid: 1,
    };
    update(
        &mut app,
        Msg::Runner {
            run: run.clone(),
            event: started,
            ts: 0.0,
        },
    );
    for s in 1..=STEPS {
        let x = s as f64;
        let m = StepMetrics {
            step: s,
            epoch: x / 10_000.0,
            loss: 2.0 / (1.0 + x / 50_000.0) + 0.1 * (x * 0.37).sin(),
            lr: 2e-4 * (1.0 - x / (2.0 * STEPS as f64)),
            grad_norm: 1.0,
            tokens_per_s: 9000.0 + 300.0 * (x * 0.01).cos(),
            step_s: 0.1,
            rss_mib: 2000.0 + (x / 1000.0).sqrt(),
        };
        update(
            &mut app,
            Msg::Runner {
                run: run.clone(),
                event: RunEvent::Step(m),
                ts: x * 0.1,
            },
        );
    }
    let feed_s = fed.elapsed().as_secs_f64();
    update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
    );
    for ascii in [false, true] {
        let theme = Theme::new(ascii);
        let mut term = match Terminal::new(TestBackend::new(200, 60)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("render bench: {e}");
                return;
            }
        };
        for _ in 0..20 {
            let _ = term.draw(|f| draw(f, &app, &theme));
        }
        let mut times = Vec::with_capacity(500);
        let mut cpu_ms = 0.0;
        for _ in 0..500 {
            // Worst case: the terminal was cleared, so every cell of the frame is written.
            let _ = term.clear();
            let (t, c) = (Instant::now(), thread_cpu_ms());
            let _ = term.draw(|f| draw(f, &app, &theme));
            times.push(t.elapsed().as_secs_f64() * 1e3);
            cpu_ms += thread_cpu_ms() - c;
        }
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "render run screen 200x60, {STEPS} steps ({} symbols): CPU time {:.3} ms/frame; wall mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (history fed in {feed_s:.2} s)",
            if ascii { "ascii" } else { "braille" },
            cpu_ms / times.len() as f64,
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            times[times.len() - 1],
        );
    }
}

/// CPU time of the calling thread, in milliseconds (immune to other processes taking the core).
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
