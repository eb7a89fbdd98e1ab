//! Snapshots of every dashboard screen at 80x24 and 120x40 (and ASCII mode), drawn with TestBackend from
//! an app fed with runner events and followed log lines. Run ids' hashes and durations are filtered; the
//! clock is injected.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use qlab::sweep::events::{LoggedEvent, RunEvent, StepMetrics, Telemetry};
use qlab::tui::{App, MatrixCell, Msg, SweepInfo, Theme, update, view};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: f64 = 1_800_000_000.0;

fn sweep() -> SweepInfo {
    let models = vec!["smollm2-135m".to_string(), "qwen2.5-0.5b".to_string()];
    let datasets = vec![
        "arith".to_string(),
        "alpaca-mini".to_string(),
        "gsm8k-tiny".to_string(),
    ];
    let runs = models
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            datasets.iter().enumerate().map(move |(j, d)| MatrixCell {
                id: format!("{m}-{d}-{:08x}", 0x1a2b3c00 + i * 16 + j),
                model: m.clone(),
                dataset: d.clone(),
            })
        })
        .collect();
    SweepInfo {
        name: "demo".into(),
        models,
        datasets,
        runs,
        runs_dir: "runs".into(),
    }
}

fn step(s: u64) -> RunEvent {
    let x = s as f64;
    RunEvent::Step(StepMetrics {
        step: s,
        epoch: x / 40.0,
        loss: 2.5 / (1.0 + x / 20.0) + 0.15 * (x * 0.9).sin(),
        lr: if s < 10 {
            2e-4 * x / 10.0
        } else {
            2e-4 * (1.0 - (x - 10.0) / 110.0)
        },
        grad_norm: 1.0,
        tokens_per_s: 1800.0 + 120.0 * (x * 0.3).cos(),
        step_s: 0.5,
        rss_mib: 900.0 + x * 2.0,
    })
}

fn key(app: &mut App, code: KeyCode) {
    update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
}

fn followed(app: &mut App, run: &str, ts: f64, event: RunEvent) {
    update(
        app,
        Msg::Followed(LoggedEvent {
            ts,
            run: run.into(),
            event,
        }),
    );
}

/// A sweep in every state: done and rated, training here, trained by another process, failed,
/// interrupted, queued.
fn busy_app() -> App {
    let mut app = App::new(sweep(), NOW);
    let ids: Vec<String> = app.runs.iter().map(|r| r.plan.id.clone()).collect();
    // Done and rated.
    followed(
        &mut app,
        &ids[0],
        NOW - 900.0,
        RunEvent::RunStarted {
            total_steps: 120,
            start_step: 0,
            device: "cuda:0".into(),
            pid: 10,
        },
    );
    for s in 1..=120 {
        followed(&mut app, &ids[0], NOW - 900.0 + s as f64, step(s));
    }
    followed(
        &mut app,
        &ids[0],
        NOW - 700.0,
        RunEvent::RunFinished {
            step: 120,
            secs: 200.0,
        },
    );
    update(
        &mut app,
        Msg::Score {
            run: ids[0].clone(),
            score: 3.75,
        },
    );
    // Trained by another process (read-only), resumed from step 40.
    update(
        &mut app,
        Msg::LockHolders(vec![(ids[2].clone(), Some(4242))]),
    );
    followed(
        &mut app,
        &ids[2],
        NOW - 30.0,
        RunEvent::RunStarted {
            total_steps: 120,
            start_step: 40,
            device: "cpu".into(),
            pid: 4242,
        },
    );
    for s in 41..=50 {
        followed(
            &mut app,
            &ids[2],
            NOW - 30.0 + (s - 40) as f64 * 2.0,
            step(s),
        );
    }
    // Failed and interrupted.
    followed(
        &mut app,
        &ids[3],
        NOW - 500.0,
        RunEvent::RunStarted {
            total_steps: 120,
            start_step: 0,
            device: "cuda:0".into(),
            pid: 12,
        },
    );
    followed(&mut app, &ids[3], NOW - 499.0, step(1));
    followed(
        &mut app,
        &ids[3],
        NOW - 498.0,
        RunEvent::RunFailed {
            step: Some(1),
            reason: "loss became NaN at step 2 (lr 2.0e-4): see run.log".into(),
        },
    );
    followed(
        &mut app,
        &ids[4],
        NOW - 400.0,
        RunEvent::RunStarted {
            total_steps: 120,
            start_step: 0,
            device: "cuda:0".into(),
            pid: 13,
        },
    );
    followed(&mut app, &ids[4], NOW - 399.0, step(1));
    followed(
        &mut app,
        &ids[4],
        NOW - 398.0,
        RunEvent::Interrupted {
            step: 1,
            reason: "stopped by the user after a checkpoint".into(),
        },
    );
    // Training in this process, with telemetry, checkpoints and a log.
    key(&mut app, KeyCode::Char('s'));
    update(
        &mut app,
        Msg::Runner {
            run: ids[1].clone(),
            event: RunEvent::RunStarted {
                total_steps: 120,
                start_step: 0,
                device: "cuda:0".into(),
                pid: 11,
            },
            ts: NOW - 60.0,
        },
    );
    for s in 1..=72 {
        let ts = NOW - 60.0 + s as f64 * 0.5;
        update(
            &mut app,
            Msg::Runner {
                run: ids[1].clone(),
                event: step(s),
                ts,
            },
        );
        if s % 4 == 0 {
            let t = Telemetry {
                rss_mib: 905.0 + s as f64 * 2.0,
                vram_used_mib: Some(3000.0 + s as f64 * 10.0),
                vram_total_mib: Some(81_559.0),
                vram_process_mib: Some(2800.0),
            };
            update(
                &mut app,
                Msg::Runner {
                    run: ids[1].clone(),
                    event: RunEvent::Telemetry(t),
                    ts,
                },
            );
        }
        if s % 25 == 0 {
            update(
                &mut app,
                Msg::Runner {
                    run: ids[1].clone(),
                    event: RunEvent::CheckpointSaved {
                        step: s,
                        stage: None,
                        bytes: 9_437_184,
                        secs: 0.4,
                    },
                    ts,
                },
            );
        }
    }
    update(
        &mut app,
        Msg::LogTail {
            run: ids[1].clone(),
            lines: (60..=72)
                .map(|s| format!("2026-11-28T21:00:{s:02}Z INFO step {s} loss 0.9{s}"))
                .collect(),
        },
    );
    app
}

fn render(app: &App, w: u16, h: u16, ascii: bool) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| view::draw(f, app, &Theme::new(ascii)))
        .unwrap();
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn snap(name: &str, app: &App, ascii: bool) {
    for (w, h) in [(80, 24), (120, 40)] {
        let text = render(app, w, h, ascii);
        if ascii {
            assert!(text.is_ascii(), "{name} {w}x{h} is not ASCII:\n{text}");
        }
        insta::with_settings!({
            filters => vec![
                (r"-[0-9a-f]{8}\b", "-[hash]"),
                (r"\b\d+[dhm]\d\d[hms]\b|\b\d+s\b", "[dur]"),
            ],
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(format!("{name}_{w}x{h}"), text);
        });
    }
}

#[test]
fn sweep_screen() {
    let mut app = busy_app();
    snap("sweep", &app, false);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    snap("sweep_cursor_on_attached_run", &app, false);
}

#[test]
fn sweep_screen_ascii() {
    snap("sweep_ascii", &busy_app(), true);
}

#[test]
fn run_screen_training_here() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Enter);
    snap("run_training", &app, false);
    snap("run_training_ascii", &app, true);
}

#[test]
fn run_screen_attached_failed_and_empty() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Enter);
    snap("run_attached", &app, false);
    key(&mut app, KeyCode::Char(']'));
    snap("run_failed", &app, false);
    key(&mut app, KeyCode::Char(']'));
    key(&mut app, KeyCode::Char(']'));
    snap("run_queued", &app, false);
}

#[test]
fn help_overlays_come_from_the_keymap() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Char('?'));
    snap("help_sweep", &app, false);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Char('?'));
    snap("help_run", &app, false);
}

#[test]
fn quit_dialog_while_training() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Char('q'));
    snap("quit_while_training", &app, false);
}
