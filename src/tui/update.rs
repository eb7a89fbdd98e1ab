//! The dashboard's one state transition: `update(app, msg) -> effects`. No I/O, no clock, no terminal:
//! everything it needs arrives in the message, everything it wants done leaves as an [`Effect`].

use crate::cluster::poll::{Report, Request};
use crate::store::RunState;
use crate::sweep::events::{RunEvent, RunnerCommand};

use super::app::{App, ClusterView, Control, Overlay, Owner, Pane, PendingExit, Screen};
use super::hosted;
use super::keymap::{self, Action, Context};
use super::msg::{Effect, Msg};

/// Apply one message; returns the side effects for the event loop to perform, in order.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Key(key) => {
            let ctx = context(app);
            let Some(action) = keymap::action_for(ctx, &key) else {
                // Keys the dashboard does not bind belong to the hosted screen, if one is up.
                return match ctx {
                    Context::Rating | Context::RatingNote => hosted::rating_key(app, key),
                    Context::Results => hosted::results_key(app, key),
                    _ => Vec::new(),
                };
            };
            app.notice = None;
            app.dirty = true;
            act(app, action)
        }
        Msg::Runner { run, event, ts } => runner_event(app, &run, event, ts),
        Msg::RunnerExited => runner_exited(app),
        Msg::Followed(e) => {
            let Some(i) = app.run_index(&e.run) else {
                return Vec::new();
            };
            app.runs[i].history.apply_logged(&e);
            app.dirty = true;
            if ends_work(&e.event) {
                return hosted::run_ended(app);
            }
            Vec::new()
        }
        Msg::LockHolders(holders) => {
            for (run, holder) in holders {
                let Some(i) = app.run_index(&run) else {
                    continue;
                };
                let entry = &mut app.runs[i];
                let owner = holder.map_or(Owner::Nobody, Owner::Other);
                if entry.owner != Owner::Us && entry.owner != owner {
                    entry.owner = owner;
                    app.dirty = true;
                }
            }
            Vec::new()
        }
        Msg::LogTail { run, lines } => {
            if let Some(i) = app.run_index(&run)
                && app.runs[i].log_tail != lines
            {
                app.runs[i].log_tail = lines;
                app.dirty = true;
            }
            Vec::new()
        }
        Msg::RatingLoaded { pair, result } => hosted::rating_loaded(app, pair, result),
        Msg::JudgementSaved(line) => hosted::judgement_saved(app, *line),
        Msg::JudgementNotSaved { error } => hosted::judgement_not_saved(app, &error),
        Msg::ResultsLoaded(result) => hosted::results_loaded(app, result),
        Msg::Notice(text) => {
            app.notice = Some(text);
            app.dirty = true;
            Vec::new()
        }
        Msg::Cluster(report) => cluster_report(app, report),
        Msg::Tick { now } => tick(app, now),
        Msg::Resized => {
            app.dirty = true;
            Vec::new()
        }
        Msg::DetachFailed { error } => {
            app.quit = false;
            app.notice = Some(format!(
                "could not continue in the background ({error}); the sweep is checkpointed: s resumes it here"
            ));
            app.dirty = true;
            Vec::new()
        }
        Msg::Terminate => {
            if app.training_here() {
                app.pending_exit = Some(PendingExit::Quit);
                stop(app)
            } else {
                quit(app)
            }
        }
    }
}

/// Which keymap applies now.
pub fn context(app: &App) -> Context {
    match (app.overlay, app.screen) {
        (Some(Overlay::Help), _) => Context::Help,
        (Some(Overlay::QuitWhileTraining), _) => Context::QuitDialog,
        (Some(Overlay::Confirm), _) => Context::Confirm,
        (None, Screen::Sweep) => Context::Sweep,
        (None, Screen::Run(_)) => Context::Run,
        (None, Screen::Rating) => match &app.rating.screen {
            Pane::Ready(s) if s.editing_note() => Context::RatingNote,
            _ => Context::Rating,
        },
        (None, Screen::Results) => Context::Results,
    }
}

/// Events after which a run's loss is final or its answers are written.
fn ends_work(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::RunFinished { .. } | RunEvent::EvalDone { .. }
    )
}

fn act(app: &mut App, action: Action) -> Vec<Effect> {
    let (rows, cols) = (app.sweep.models.len(), app.sweep.datasets.len());
    match action {
        Action::Up => app.cursor.0 = app.cursor.0.saturating_sub(1),
        Action::Down => app.cursor.0 = (app.cursor.0 + 1).min(rows.saturating_sub(1)),
        Action::Left => app.cursor.1 = app.cursor.1.saturating_sub(1),
        Action::Right => app.cursor.1 = (app.cursor.1 + 1).min(cols.saturating_sub(1)),
        Action::OpenRun => {
            if let Some(i) = app.selected_run() {
                return open_run(app, i);
            }
            app.notice = Some("no run in this cell".into());
        }
        Action::Back => match app.screen {
            Screen::Rating | Screen::Results => hosted::back(app),
            Screen::Sweep | Screen::Run(_) => app.screen = Screen::Sweep,
        },
        Action::NextRun | Action::PrevRun => {
            if let Screen::Run(i) = app.screen {
                let n = app.runs.len();
                let next = if action == Action::NextRun {
                    (i + 1) % n
                } else {
                    (i + n - 1) % n
                };
                return open_run(app, next);
            }
        }
        Action::StartSweep => return start_sweep(app),
        Action::TogglePause => return toggle_pause(app),
        Action::StopSweep => {
            if matches!(app.control, Control::Running | Control::Paused) {
                app.notice = Some("stopping after the next checkpoint".into());
                return stop(app);
            }
            app.notice = Some(not_training_here(app));
        }
        Action::Retry => return retry(app),
        Action::OpenRating => return hosted::open_rating(app),
        Action::OpenResults => return hosted::open_results(app),
        Action::NextPair => return hosted::next_pair(app),
        Action::SaveAgain => return hosted::save_again(app),
        Action::Help => app.overlay = Some(Overlay::Help),
        Action::CloseOverlay => {
            app.overlay = None;
            app.confirm = None;
        }
        Action::CancelJob | Action::ResubmitJob => ask_cluster(app, action),
        Action::Confirm => {
            app.overlay = None;
            if let Some(request) = app.confirm.take() {
                app.notice = Some("asking SLURM...".into());
                return vec![Effect::Cluster(request)];
            }
        }
        Action::Quit => {
            if app.training_here() {
                app.overlay = Some(Overlay::QuitWhileTraining);
            } else {
                return quit(app);
            }
        }
        Action::QuitStopAfterCheckpoint | Action::QuitDetach => {
            app.overlay = None;
            if app.control == Control::Idle {
                // The runner ended while the dialog was open: nothing to stop or hand over.
                return quit(app);
            }
            app.pending_exit = Some(if action == Action::QuitDetach {
                PendingExit::DetachThenQuit
            } else {
                PendingExit::Quit
            });
            app.notice = Some("writing a checkpoint before leaving...".into());
            if app.control == Control::Stopping {
                return Vec::new();
            }
            return stop(app);
        }
    }
    Vec::new()
}

fn open_run(app: &mut App, i: usize) -> Vec<Effect> {
    app.screen = Screen::Run(i);
    if let Some(pos) = app
        .sweep
        .models
        .iter()
        .position(|m| *m == app.runs[i].plan.model)
    {
        app.cursor.0 = pos;
    }
    if let Some(pos) = app
        .sweep
        .datasets
        .iter()
        .position(|d| *d == app.runs[i].plan.dataset)
    {
        app.cursor.1 = pos;
    }
    vec![Effect::LoadLog(app.runs[i].plan.id.clone())]
}

fn start_sweep(app: &mut App) -> Vec<Effect> {
    if app.cluster.is_some() {
        app.notice = Some(
            "this sweep runs on SLURM: `qlab run --backend slurm` submits it; R resubmits a cell"
                .into(),
        );
        return Vec::new();
    }
    if app.control != Control::Idle {
        app.notice = Some("the sweep is already running here".into());
        return Vec::new();
    }
    let runs: Vec<String> = app
        .runs
        .iter()
        .filter(|r| matches!(r.owner, Owner::Nobody))
        .filter(|r| matches!(r.history.state, RunState::Queued | RunState::Interrupted))
        .map(|r| r.plan.id.clone())
        .collect();
    if runs.is_empty() {
        app.notice = Some(match other_owner(app) {
            Some(pid) => format!("pid {pid} is training this sweep; shown read-only"),
            None => "nothing to train: every run is done or failed (r retries one)".into(),
        });
        return Vec::new();
    }
    claim(app, &runs);
    vec![Effect::StartRuns(runs)]
}

/// The run the keys act on: the Run screen's, else the cell under the cursor.
fn acted_on(app: &App) -> Option<usize> {
    match app.screen {
        Screen::Run(i) => Some(i),
        Screen::Sweep => app.selected_run(),
        Screen::Rating | Screen::Results => None,
    }
}

/// Cancel or resubmit the selected cell's job: checked here, then asked y/n.
fn ask_cluster(app: &mut App, action: Action) {
    if app.cluster.is_none() {
        app.notice = Some("not a SLURM sweep: set `[cluster] backend = \"slurm\"`".into());
        return;
    }
    let Some(i) = acted_on(app) else { return };
    let entry = &app.runs[i];
    let run = entry.plan.id.clone();
    let active = entry
        .job
        .as_ref()
        .and_then(|j| j.info.as_ref().filter(|i| i.is_active()));
    let request = match (action, &entry.job, active) {
        (Action::CancelJob, None, _) => {
            app.notice = Some(format!("{run} has no SLURM job"));
            return;
        }
        (Action::CancelJob, Some(job), None) => {
            app.notice = Some(format!(
                "job {} is not queued or running: {}",
                job.job_id,
                job.state_text()
            ));
            return;
        }
        (Action::CancelJob, Some(_), Some(_)) => Request::Cancel { run },
        (_, _, Some(info)) => {
            app.notice = Some(format!(
                "job {} is {}: C cancels it first",
                info.id, info.state
            ));
            return;
        }
        _ if entry.history.state == RunState::Done => {
            app.notice = Some(format!("{run} is done"));
            return;
        }
        _ => Request::Resubmit { run },
    };
    app.confirm = Some(request);
    app.overlay = Some(Overlay::Confirm);
}

fn cluster_report(app: &mut App, report: Report) -> Vec<Effect> {
    let view = app.cluster.get_or_insert_with(ClusterView::default);
    match report {
        Report::Jobs(jobs) => {
            view.stale = None;
            view.polled = true;
            for entry in app.runs.iter_mut() {
                entry.job = jobs.iter().find(|j| j.run == entry.plan.id).cloned();
            }
        }
        Report::Unreachable(error) => view.stale = Some(error),
        Report::Done(text) => app.notice = Some(text),
    }
    app.dirty = true;
    Vec::new()
}

fn retry(app: &mut App) -> Vec<Effect> {
    let Some(i) = acted_on(app) else {
        return Vec::new();
    };
    if app.cluster.is_some() {
        app.notice = Some("this sweep runs on SLURM: R resubmits the cell as a job".into());
        return Vec::new();
    }
    let entry = &app.runs[i];
    if let Owner::Other(pid) = entry.owner {
        app.notice = Some(format!("read-only: pid {pid} trains this run"));
    } else if app.control != Control::Idle {
        app.notice = Some("stop the sweep before retrying a run".into());
    } else if !matches!(
        entry.history.state,
        RunState::Failed | RunState::Interrupted
    ) {
        app.notice = Some("only a failed or interrupted run can be retried".into());
    } else {
        let runs = vec![entry.plan.id.clone()];
        claim(app, &runs);
        return vec![Effect::StartRuns(runs)];
    }
    Vec::new()
}

fn claim(app: &mut App, runs: &[String]) {
    for r in app.runs.iter_mut().filter(|r| runs.contains(&r.plan.id)) {
        r.owner = Owner::Us;
    }
    app.control = Control::Running;
}

fn toggle_pause(app: &mut App) -> Vec<Effect> {
    match app.control {
        Control::Running => {
            app.control = Control::Paused;
            vec![Effect::Command(RunnerCommand::Pause)]
        }
        Control::Paused => {
            app.control = Control::Running;
            vec![Effect::Command(RunnerCommand::Resume)]
        }
        Control::Stopping => {
            app.notice = Some("stopping: waiting for the checkpoint".into());
            Vec::new()
        }
        Control::Idle => {
            app.notice = Some(not_training_here(app));
            Vec::new()
        }
    }
}

fn stop(app: &mut App) -> Vec<Effect> {
    app.control = Control::Stopping;
    vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)]
}

fn quit(app: &mut App) -> Vec<Effect> {
    app.quit = true;
    vec![Effect::Quit]
}

fn other_owner(app: &App) -> Option<u32> {
    app.runs.iter().find_map(|r| match r.owner {
        Owner::Other(pid) => Some(pid),
        _ => None,
    })
}

fn not_training_here(app: &App) -> String {
    match other_owner(app) {
        Some(pid) => format!("read-only: pid {pid} trains this sweep"),
        None => "nothing is training (s starts the sweep)".into(),
    }
}

fn runner_event(app: &mut App, run: &str, event: RunEvent, ts: f64) -> Vec<Effect> {
    let Some(i) = app.run_index(run) else {
        return Vec::new();
    };
    let started = matches!(event, RunEvent::RunStarted { .. });
    let ended = ends_work(&event);
    app.runs[i].owner = Owner::Us;
    app.runs[i].history.apply(&event, ts);
    app.dirty = true;
    if started && app.control == Control::Stopping {
        // The runner moved on to another run before stopping: stop that one too.
        return vec![Effect::Command(RunnerCommand::StopAfterCheckpoint)];
    }
    if ended {
        return hosted::run_ended(app);
    }
    Vec::new()
}

fn runner_exited(app: &mut App) -> Vec<Effect> {
    app.control = Control::Idle;
    app.dirty = true;
    for r in app.runs.iter_mut().filter(|r| r.owner == Owner::Us) {
        r.owner = Owner::Nobody;
    }
    match app.pending_exit.take() {
        None => Vec::new(),
        Some(PendingExit::Quit) => quit(app),
        Some(PendingExit::DetachThenQuit) => {
            let unfinished = app
                .runs
                .iter()
                .any(|r| !matches!(r.history.state, RunState::Done | RunState::Failed));
            let mut effects = if unfinished {
                vec![Effect::DetachToBackground]
            } else {
                Vec::new()
            };
            effects.extend(quit(app));
            effects
        }
    }
}

fn tick(app: &mut App, now: f64) -> Vec<Effect> {
    app.now = now;
    match app.screen {
        Screen::Run(i) if app.runs[i].history.is_active() => {
            app.dirty = true;
            vec![Effect::LoadLog(app.runs[i].plan.id.clone())]
        }
        _ => Vec::new(),
    }
}
