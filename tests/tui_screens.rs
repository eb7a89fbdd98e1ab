//! Snapshots of every dashboard screen at 80x24 and 120x40 (and ASCII mode), drawn with TestBackend from
//! an app fed with runner events and followed log lines. Run ids' hashes and durations are filtered; the
//! clock is injected.

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use qlab::rating::auto::{AutoCell, AutoCheck, AutoChecks, NoCheck, Tally};
use qlab::rating::journal::QuestionRef;
use qlab::rating::results::build_with_checks;
use qlab::rating::session::{ItemSide, RatingItem};
use qlab::rating::{AnswerKey, Entry, JournalLine, Ratings, Rubric, StagePair};
use qlab::sweep::events::{LoggedEvent, RunEvent, StepMetrics, Telemetry};
use qlab::tui::checks::RunCheck;
use qlab::tui::scores::RunScores;
use qlab::tui::{App, MatrixCell, Msg, RatingData, ResultsData, SweepInfo, Theme, update, view};
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
    let mut app = App::new(sweep(), "ann", NOW);
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
        if s % 40 == 0 {
            let epoch = (s / 40) as u32;
            let done = RunEvent::EpochDone { epoch, step: s };
            followed(&mut app, &ids[0], NOW - 900.0 + s as f64, done);
        }
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
        Msg::ResultsLoaded(Ok(Box::new(ResultsData {
            tasks: Vec::new(),
            losses: BTreeMap::new(),
            scores: vec![RunScores {
                run: ids[0].clone(),
                stages: vec![("e1".into(), 3.75)],
            }],
            checks: Vec::new(),
        }))),
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
        if s == 40 {
            update(
                &mut app,
                Msg::Runner {
                    run: ids[1].clone(),
                    event: RunEvent::EpochDone { epoch: 1, step: s },
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

/// A finished run with its epochs' ends marked on the loss plot, e1 with its score (rated), e2 and e3 not.
#[test]
fn run_screen_of_a_rated_run_marks_the_stages_with_their_scores() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Enter);
    let text = render(&app, 80, 24, false);
    assert!(text.contains("e1 3.75") && text.contains("e2"), "{text}");
    snap("run_rated", &app, false);
    snap("run_rated_ascii", &app, true);
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

/// The sweep's cells as SLURM jobs in four states.
fn slurm_app() -> App {
    use qlab::cluster::JobInfo;
    use qlab::cluster::poll::{CellJob, Report};
    let mut app = busy_app();
    let ids: Vec<String> = app.runs.iter().map(|r| r.plan.id.clone()).collect();
    let job = |i: usize, state: &str, reason: Option<&str>, node: Option<&str>| CellJob {
        run: ids[i].clone(),
        job_id: format!("{}", 4100 + i),
        info: Some(JobInfo {
            id: format!("{}", 4100 + i),
            state: state.into(),
            reason: reason.map(Into::into),
            node: node.map(Into::into),
            elapsed: Some("12:34".into()),
        }),
        no_marker: false,
    };
    update(
        &mut app,
        Msg::Cluster(Report::Jobs(vec![
            job(0, "COMPLETED", None, Some("gpu01")),
            job(1, "RUNNING", None, Some("gpu02")),
            job(2, "PENDING", Some("Priority"), None),
            job(3, "TIMEOUT", None, Some("gpu01")),
        ])),
    );
    app
}

#[test]
fn slurm_states_on_the_sweep_and_run_screens_and_the_cancel_question() {
    let mut app = slurm_app();
    snap("sweep_slurm", &app, false);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Char('C'));
    snap("slurm_confirm_cancel", &app, false);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Enter);
    update(
        &mut app,
        Msg::Cluster(qlab::cluster::poll::Report::Unreachable(
            "squeue failed (is the scheduler reachable?): timed out".into(),
        )),
    );
    snap("run_slurm_stale", &app, false);
}

#[test]
fn quit_dialog_while_training() {
    let mut app = busy_app();
    key(&mut app, KeyCode::Char('q'));
    snap("quit_while_training", &app, false);
}

/// A journal line scoring every rubric criterion of one answer (task arith, question set arith-q).
fn scored(model: &str, stage: &str, q: u32, values: [f64; 3]) -> JournalLine {
    let scores = Rubric::default().criteria.into_iter().zip(values).collect();
    JournalLine::new(
        "ann",
        "2026-11-29T00:00:00Z".into(),
        Entry::Score {
            answer: AnswerKey {
                item: QuestionRef {
                    task: "arith".into(),
                    questions: "arith-q".into(),
                    question: q.to_string(),
                },
                model: model.into(),
                stage: stage.into(),
            },
            run: None,
            scores,
            blind: None,
            unparsed: Default::default(),
        },
    )
}

/// The automatic check of the fixture sweep: arith (rated too) and gsm8k-tiny (answered, not yet rated)
/// are checked; alpaca-mini has free-text references, so no check.
fn checks() -> AutoChecks {
    let cell = |model: &str, stage: &str, correct| AutoCell {
        model: model.into(),
        stage: stage.into(),
        tally: Tally { correct, n: 10 },
    };
    AutoChecks::from([
        (
            "arith".to_string(),
            AutoCheck::Checked(vec![
                cell("smollm2-135m", "base", 1),
                cell("smollm2-135m", "e1", 6),
                cell("smollm2-135m", "e3", 4),
                cell("qwen2.5-0.5b", "base", 2),
                cell("qwen2.5-0.5b", "e1", 5),
                cell("qwen2.5-0.5b", "e3", 8),
            ]),
        ),
        (
            "gsm8k-tiny".to_string(),
            AutoCheck::Checked(vec![
                cell("smollm2-135m", "base", 0),
                cell("smollm2-135m", "e1", 3),
            ]),
        ),
        (
            "alpaca-mini".to_string(),
            AutoCheck::Unchecked(NoCheck::NotNumeric),
        ),
    ])
}

/// Each run's check as the results refresh gives it (the fixture's task is its dataset's name).
fn run_checks(app: &App, checks: &AutoChecks) -> Vec<(String, RunCheck)> {
    app.runs
        .iter()
        .filter_map(|r| {
            let check = match checks.get(&r.plan.dataset)? {
                AutoCheck::Checked(cells) => RunCheck::Stages(
                    cells
                        .iter()
                        .filter(|c| c.model == r.plan.model)
                        .map(|c| (c.stage.clone(), c.tally))
                        .collect(),
                ),
                AutoCheck::Unchecked(why) => RunCheck::None(why.to_string()),
            };
            Some((r.plan.id.clone(), check))
        })
        .filter(|(_, c)| !matches!(c, RunCheck::Stages(s) if s.is_empty()))
        .collect()
}

/// The fixture sweep with its ratings: smollm2 improves at e1 then falls at e3, qwen keeps improving;
/// beside them the automatic check, also of a dataset nobody rated yet.
fn rated_app() -> App {
    let mut app = App::new(sweep(), "ann", NOW);
    let mut journal = Vec::new();
    for q in 1..=4 {
        journal.push(scored("smollm2-135m", "base", q, [1.0, 2.0, 2.0]));
        journal.push(scored("smollm2-135m", "e1", q, [4.0, 4.0, 5.0]));
        journal.push(scored("smollm2-135m", "e3", q, [3.0, 2.0, f64::from(q)]));
        journal.push(scored("qwen2.5-0.5b", "base", q, [2.0, 2.0, 3.0]));
        journal.push(scored("qwen2.5-0.5b", "e1", q, [3.0, 3.0, 4.0]));
        journal.push(scored("qwen2.5-0.5b", "e3", q, [5.0, 4.0, 5.0]));
    }
    let models = app.sweep.models.clone();
    let checks = checks();
    let tasks = build_with_checks(
        &Ratings::replay(&journal),
        &Rubric::default(),
        &models,
        &checks,
    );
    let losses = BTreeMap::from([
        (("arith".to_string(), "smollm2-135m".to_string()), 0.412),
        (("arith".to_string(), "qwen2.5-0.5b".to_string()), 0.388),
    ]);
    let scores = app
        .runs
        .iter()
        .filter(|r| r.plan.dataset == "arith")
        .map(|r| RunScores {
            run: r.plan.id.clone(),
            stages: ["e1", "e3"]
                .iter()
                .filter_map(|s| Some((s.to_string(), tasks[0].cell(&r.plan.model, s)?.mean)))
                .collect(),
        })
        .collect();
    let checks_by_run = run_checks(&app, &checks);
    update(
        &mut app,
        Msg::ResultsLoaded(Ok(Box::new(ResultsData {
            tasks,
            losses,
            scores,
            checks: checks_by_run,
        }))),
    );
    app
}

fn rating_item(
    q: &str,
    text: &str,
    reference: &str,
    a: (&str, &str),
    b: (&str, &str),
) -> RatingItem {
    RatingItem {
        question: QuestionRef {
            task: "arith".into(),
            questions: "arith-q".into(),
            question: q.into(),
        },
        model: "smollm2-135m".into(),
        run: "smollm2-135m-arith-1a2b3c00".into(),
        text: text.into(),
        reference: reference.into(),
        numeric: true,
        a: ItemSide {
            stage: a.0.into(),
            answer: a.1.into(),
        },
        b: ItemSide {
            stage: b.0.into(),
            answer: b.1.into(),
        },
    }
}

/// The Rating screen opened from the Sweep screen (key `a`) on two items of base vs e1.
fn rating_app() -> App {
    let mut app = rated_app();
    key(&mut app, KeyCode::Char('a'));
    let items = vec![
        rating_item(
            "1",
            "What is 17 + 25?",
            "17 + 25 = 42",
            ("e1", "17 + 25 = 42."),
            ("base", "17 + 25 is 32."),
        ),
        rating_item(
            "2",
            "What is 9 * 8?",
            "9 * 8 = 72",
            ("base", "72"),
            ("e1", "9 * 8 = 72."),
        ),
    ];
    update(
        &mut app,
        Msg::RatingLoaded {
            pair: StagePair::default(),
            result: Ok(Box::new(RatingData {
                items,
                rubric: Rubric::default(),
                journal: Vec::new(),
            })),
        },
    );
    app
}

/// Score the focused criterion with a digit and answer as the event loop does after the fsynced append.
fn score_and_save(app: &mut App, digit: char) {
    let effects = update(
        app,
        Msg::Key(KeyEvent::new(KeyCode::Char(digit), KeyModifiers::NONE)),
    );
    let [qlab::tui::Effect::SaveJudgement { rater, entry }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    let line = JournalLine::new(rater, "2026-11-29T01:00:00Z".into(), (**entry).clone());
    update(app, Msg::JudgementSaved(Box::new(line)));
}

#[test]
fn rating_screen_hosted_in_the_dashboard() {
    let mut app = rating_app();
    score_and_save(&mut app, '4');
    snap("rating_saved", &app, false);
    key(&mut app, KeyCode::Char('j'));
    let effects = update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Char('3'), KeyModifiers::NONE)),
    );
    assert_eq!(effects.len(), 1);
    update(
        &mut app,
        Msg::JudgementNotSaved {
            error: "runs/demo/ratings.jsonl: No space left on device (os error 28)".into(),
        },
    );
    snap("rating_not_saved", &app, false);
    key(&mut app, KeyCode::Char('?'));
    snap("help_rating", &app, false);
}

#[test]
fn rating_screen_with_nothing_to_rate_says_what_to_run() {
    let mut app = rated_app();
    key(&mut app, KeyCode::Char('a'));
    key(&mut app, KeyCode::Char('v'));
    update(
        &mut app,
        Msg::RatingLoaded {
            pair: "base-e3".parse().unwrap(),
            result: Ok(Box::new(RatingData {
                items: Vec::new(),
                rubric: Rubric::default(),
                journal: Vec::new(),
            })),
        },
    );
    snap("rating_nothing_to_rate", &app, false);
}

#[test]
fn results_screen_hosted_in_the_dashboard() {
    let mut app = rated_app();
    snap("sweep_rated", &app, false);
    key(&mut app, KeyCode::Right);
    let text = render(&app, 120, 40, false);
    assert!(
        text.contains("step 0/0 · auto: no automatic check for this task"),
        "the detail line of a cell without a check says so:\n{text}"
    );
    key(&mut app, KeyCode::Left);
    key(&mut app, KeyCode::Char('t'));
    snap("results", &app, false);
    key(&mut app, KeyCode::Char('c'));
    snap("results_chart", &app, false);
    snap("results_chart_ascii", &app, true);
    key(&mut app, KeyCode::Char('?'));
    snap("help_results", &app, false);
}
