//! App-state tests: the dashboard fed with keys, runner events and followed log lines, checking state and
//! the effects it asks for.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::store::RunState;
use crate::sweep::events::{LoggedEvent, RunEvent, RunnerCommand, StepMetrics};

use super::app::{App, Control, Overlay, Owner, Screen};
use super::msg::{Effect, Msg};
use super::sweep_info::{MatrixCell, SweepInfo};
use super::update::update;

fn sweep() -> SweepInfo {
    let models = vec!["smollm2".to_string(), "qwen".to_string()];
    let datasets = vec!["arith".to_string(), "alpaca".to_string()];
    let runs = models
        .iter()
        .flat_map(|m| {
            datasets.iter().map(move |d| MatrixCell {
                id: format!("{m}-{d}-0a1b2c3d"),
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

fn key(app: &mut App, c: char) -> Vec<Effect> {
    update(
        app,
        Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)),
    )
}

fn code(app: &mut App, c: KeyCode) -> Vec<Effect> {
    update(app, Msg::Key(KeyEvent::new(c, KeyModifiers::NONE)))
}

fn runner(app: &mut App, run: &str, event: RunEvent, ts: f64) -> Vec<Effect> {
    update(
        app,
        Msg::Runner {
            run: run.into(),
            event,
            ts,
        },
    )
}

/// A run starts from scratch on the CPU in process 7.
fn started(total_steps: u64) -> RunEvent {
    RunEvent::RunStarted {
        total_steps,
        start_step: 0,
        device: "cpu".into(),
        pid: 7,
    }
}

fn step(step: u64, loss: f64) -> RunEvent {
    RunEvent::Step(StepMetrics {
        step,
        epoch: 0.1 * step as f64,
        loss,
        lr: 2e-4,
        grad_norm: 1.0,
        tokens_per_s: 900.0,
        step_s: 0.5,
        rss_mib: 512.0,
    })
}

const R0: &str = "smollm2-arith-0a1b2c3d";

#[test]
fn start_trains_every_queued_run_and_runner_events_fill_the_cell() {
    let mut app = App::new(sweep(), "ann", 0.0);
    let fx = key(&mut app, 's');
    assert_eq!(fx.len(), 1);
    let Effect::StartRuns(runs) = &fx[0] else {
        panic!("{fx:?}")
    };
    assert_eq!(runs.len(), 4);
    assert_eq!(app.control, Control::Running);
    runner(&mut app, R0, started(100), 0.0);
    for s in 1..=10 {
        runner(&mut app, R0, step(s, 2.0 - 0.05 * s as f64), s as f64);
    }
    let r = &app.runs[0];
    assert_eq!(r.history.state, RunState::Training);
    assert_eq!(r.history.step, 10);
    assert_eq!(r.owner, Owner::Us);
    assert!((r.history.eta_secs().unwrap() - 90.0).abs() < 1e-9);
    assert_eq!(key(&mut app, 's'), vec![], "a second start is refused");
    assert_eq!(
        app.notice.as_deref(),
        Some("the sweep is already running here")
    );
}

#[test]
fn cursor_moves_with_arrows_and_vim_keys_and_stays_in_the_matrix() {
    let mut app = App::new(sweep(), "ann", 0.0);
    key(&mut app, 'j');
    key(&mut app, 'j');
    code(&mut app, KeyCode::Right);
    code(&mut app, KeyCode::Right);
    assert_eq!(app.cursor, (1, 1));
    key(&mut app, 'k');
    key(&mut app, 'h');
    assert_eq!(app.cursor, (0, 0));
    code(&mut app, KeyCode::Down);
    let fx = code(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Run(2));
    assert_eq!(fx, vec![Effect::LoadLog("qwen-arith-0a1b2c3d".into())]);
    key(&mut app, ']');
    assert_eq!(app.screen, Screen::Run(3));
    key(&mut app, ']');
    assert_eq!(app.screen, Screen::Run(0), "next run wraps around");
    code(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Sweep);
    assert_eq!(
        app.cursor,
        (0, 0),
        "the cursor follows the run that was open"
    );
}

#[test]
fn quitting_while_training_asks_and_detach_waits_for_the_checkpoint() {
    let mut app = App::new(sweep(), "ann", 0.0);
    key(&mut app, 's');
    runner(&mut app, R0, started(100), 0.0);
    assert_eq!(key(&mut app, 'q'), vec![]);
    assert_eq!(app.overlay, Some(Overlay::QuitWhileTraining));
    assert_eq!(key(&mut app, 'c'), vec![], "cancel keeps training");
    assert_eq!(app.overlay, None);
    key(&mut app, 'q');
    assert_eq!(
        key(&mut app, 'b'),
        vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
    );
    assert!(!app.quit);
    runner(
        &mut app,
        R0,
        RunEvent::CheckpointSaved {
            step: 12,
            stage: None,
            bytes: 10,
            secs: 0.1,
        },
        13.0,
    );
    runner(
        &mut app,
        R0,
        RunEvent::Interrupted {
            step: 12,
            reason: "stopped for hand-over".into(),
        },
        13.0,
    );
    assert!(
        !app.quit,
        "leaves only once the runner thread is gone (lock released)"
    );
    assert_eq!(
        update(&mut app, Msg::RunnerExited),
        vec![Effect::DetachToBackground, Effect::Quit]
    );
    assert!(app.quit);
    // The background runner could not be started: stay, and say how to go on.
    let error = "exited with exit status: 2".to_string();
    assert_eq!(update(&mut app, Msg::DetachFailed { error }), vec![]);
    assert!(!app.quit);
    let notice = app.notice.clone().unwrap_or_default();
    assert!(
        notice.contains("exit status: 2") && notice.contains("s resumes"),
        "{notice}"
    );
}

#[test]
fn stop_and_quit_does_not_hand_over() {
    let mut app = App::new(sweep(), "ann", 0.0);
    key(&mut app, 's');
    key(&mut app, 'q');
    assert_eq!(
        key(&mut app, 's'),
        vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
    );
    // The runner started the next run before seeing the command: that one is stopped too.
    let fx = runner(&mut app, "qwen-arith-0a1b2c3d", started(9), 1.0);
    assert_eq!(
        fx,
        vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
    );
    assert_eq!(update(&mut app, Msg::RunnerExited), vec![Effect::Quit]);
}

#[test]
fn a_runner_that_ends_while_the_quit_dialog_is_open_lets_either_answer_quit() {
    for answer in ['s', 'b'] {
        let mut app = App::new(sweep(), "ann", 0.0);
        key(&mut app, 's');
        key(&mut app, 'q');
        assert_eq!(app.overlay, Some(Overlay::QuitWhileTraining));
        assert_eq!(update(&mut app, Msg::RunnerExited), vec![]);
        assert_eq!(key(&mut app, answer), vec![Effect::Quit], "answer {answer}");
        assert!(app.quit);
    }
}

#[test]
fn quitting_when_idle_is_immediate() {
    let mut app = App::new(sweep(), "ann", 0.0);
    assert_eq!(key(&mut app, 'q'), vec![Effect::Quit]);
    let mut app = App::new(sweep(), "ann", 0.0);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(update(&mut app, Msg::Key(ctrl_c)), vec![Effect::Quit]);
}

#[test]
fn a_run_locked_by_another_process_is_followed_read_only() {
    let mut app = App::new(sweep(), "ann", 0.0);
    update(&mut app, Msg::LockHolders(vec![(R0.into(), Some(4242))]));
    assert_eq!(app.runs[0].owner, Owner::Other(4242));
    let logged = LoggedEvent {
        ts: 5.0,
        run: R0.into(),
        event: RunEvent::RunStarted {
            total_steps: 50,
            start_step: 20,
            device: "cuda:0".into(),
            pid: 4242,
        },
    };
    update(&mut app, Msg::Followed(logged));
    assert_eq!(app.runs[0].history.state, RunState::Training);
    assert_eq!(app.runs[0].history.step, 20);
    // Start trains the other three runs, never the locked one.
    let fx = key(&mut app, 's');
    let Effect::StartRuns(runs) = &fx[0] else {
        panic!("{fx:?}")
    };
    assert!(!runs.contains(&R0.to_string()), "{runs:?}");
    assert_eq!(runs.len(), 3);
    update(&mut app, Msg::RunnerExited);
    key(&mut app, 'r');
    assert_eq!(
        app.notice.as_deref(),
        Some("read-only: pid 4242 trains this run")
    );
}

#[test]
fn when_every_run_is_locked_elsewhere_start_says_who_trains() {
    let mut app = App::new(sweep(), "ann", 0.0);
    let all = app
        .runs
        .iter()
        .map(|r| (r.plan.id.clone(), Some(99)))
        .collect();
    update(&mut app, Msg::LockHolders(all));
    assert_eq!(key(&mut app, 's'), vec![]);
    assert_eq!(
        app.notice.as_deref(),
        Some("pid 99 is training this sweep; shown read-only")
    );
    assert_eq!(key(&mut app, 'p'), vec![]);
    assert_eq!(
        app.notice.as_deref(),
        Some("read-only: pid 99 trains this sweep")
    );
}

#[test]
fn a_failed_run_is_retried_alone_and_pause_toggles() {
    let mut app = App::new(sweep(), "ann", 0.0);
    let failed = LoggedEvent {
        ts: 1.0,
        run: R0.into(),
        event: RunEvent::RunFailed {
            step: Some(3),
            reason: "out of memory".into(),
        },
    };
    update(&mut app, Msg::Followed(failed));
    assert_eq!(key(&mut app, 'r'), vec![Effect::StartRuns(vec![R0.into()])]);
    assert_eq!(
        key(&mut app, 'p'),
        vec![Effect::Command(RunnerCommand::Pause)]
    );
    assert_eq!(app.control, Control::Paused);
    assert_eq!(
        key(&mut app, 'p'),
        vec![Effect::Command(RunnerCommand::Resume)]
    );
    assert_eq!(
        key(&mut app, 'x'),
        vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
    );
    assert_eq!(app.control, Control::Stopping);
    update(&mut app, Msg::RunnerExited);
    assert_eq!(app.control, Control::Idle);
    assert_eq!(app.runs[0].owner, Owner::Nobody);
    key(&mut app, 'l');
    assert_eq!(key(&mut app, 'r'), vec![], "a queued run is not retried");
}

#[test]
fn termination_checkpoints_first_when_training() {
    let mut app = App::new(sweep(), "ann", 0.0);
    assert_eq!(update(&mut app, Msg::Terminate), vec![Effect::Quit]);
    let mut app = App::new(sweep(), "ann", 0.0);
    key(&mut app, 's');
    assert_eq!(
        update(&mut app, Msg::Terminate),
        vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
    );
    assert_eq!(update(&mut app, Msg::RunnerExited), vec![Effect::Quit]);
}

#[test]
fn help_opens_and_closes_and_unknown_keys_change_nothing() {
    let mut app = App::new(sweep(), "ann", 0.0);
    app.dirty = false;
    assert_eq!(key(&mut app, 'z'), vec![]);
    assert!(!app.dirty, "an unbound key does not redraw");
    key(&mut app, '?');
    assert_eq!(app.overlay, Some(Overlay::Help));
    assert_eq!(key(&mut app, 's'), vec![], "help swallows other keys");
    key(&mut app, '?');
    assert_eq!(app.overlay, None);
}

#[test]
fn ticks_redraw_only_a_live_run_screen() {
    let mut app = App::new(sweep(), "ann", 0.0);
    app.dirty = false;
    assert_eq!(update(&mut app, Msg::Tick { now: 10.0 }), vec![]);
    assert!(
        !app.dirty,
        "an idle sweep screen does not redraw every second"
    );
    code(&mut app, KeyCode::Enter);
    update(
        &mut app,
        Msg::Followed(LoggedEvent {
            ts: 1.0,
            run: R0.into(),
            event: RunEvent::RunStarted {
                total_steps: 5,
                start_step: 0,
                device: "cpu".into(),
                pid: 1,
            },
        }),
    );
    app.dirty = false;
    assert_eq!(
        update(&mut app, Msg::Tick { now: 11.0 }),
        vec![Effect::LoadLog(R0.into())]
    );
    assert!(app.dirty);
}

fn job(run: &str, id: &str, state: &str) -> crate::cluster::poll::CellJob {
    crate::cluster::poll::CellJob {
        run: run.into(),
        job_id: id.into(),
        info: Some(crate::cluster::JobInfo {
            id: id.into(),
            state: state.into(),
            reason: None,
            node: Some("n1".into()),
            elapsed: None,
        }),
        no_marker: false,
    }
}

#[test]
fn slurm_jobs_fill_the_cells_and_cancel_or_resubmit_ask_first() {
    use crate::cluster::poll::{Report, Request};
    const R1: &str = "smollm2-alpaca-0a1b2c3d";
    let mut app = App::new(sweep(), "ann", 0.0);
    assert!(key(&mut app, 'C').is_empty());
    assert!(app.notice.as_deref().unwrap().contains("not a SLURM sweep"));
    update(
        &mut app,
        Msg::Cluster(Report::Jobs(vec![
            job(R0, "7", "RUNNING"),
            job(R1, "8", "TIMEOUT"),
        ])),
    );
    assert_eq!(app.runs[0].job.as_ref().unwrap().job_id, "7");
    assert!(
        app.cluster
            .as_ref()
            .is_some_and(|c| c.polled && c.stale.is_none())
    );
    // The sweep trains on SLURM, not here.
    assert!(key(&mut app, 's').is_empty());
    assert!(app.notice.as_deref().unwrap().contains("runs on SLURM"));
    // A running job: R refuses, C asks, n leaves it, y sends the request.
    assert!(key(&mut app, 'R').is_empty());
    assert!(
        app.notice
            .as_deref()
            .unwrap()
            .contains("job 7 is RUNNING: C cancels it first")
    );
    assert!(key(&mut app, 'C').is_empty());
    assert_eq!(app.overlay, Some(Overlay::Confirm));
    assert!(key(&mut app, 'n').is_empty());
    assert_eq!((app.overlay, &app.confirm), (None, &None));
    key(&mut app, 'C');
    assert_eq!(
        key(&mut app, 'y'),
        vec![Effect::Cluster(Request::Cancel { run: R0.into() })]
    );
    // A timed-out job: C refuses, R asks and resubmits.
    code(&mut app, KeyCode::Right);
    assert!(key(&mut app, 'C').is_empty());
    assert!(
        app.notice
            .as_deref()
            .unwrap()
            .contains("not queued or running: TIMEOUT")
    );
    key(&mut app, 'R');
    assert_eq!(
        key(&mut app, 'y'),
        vec![Effect::Cluster(Request::Resubmit { run: R1.into() })]
    );
    // squeue unreachable: the states stay, marked stale.
    update(
        &mut app,
        Msg::Cluster(Report::Unreachable("squeue: timed out".into())),
    );
    assert_eq!(
        app.cluster.as_ref().unwrap().stale.as_deref(),
        Some("squeue: timed out")
    );
    assert_eq!(app.runs[0].job.as_ref().unwrap().job_id, "7");
    update(
        &mut app,
        Msg::Cluster(Report::Done("cancelled job 7".into())),
    );
    assert_eq!(app.notice.as_deref(), Some("cancelled job 7"));
}
