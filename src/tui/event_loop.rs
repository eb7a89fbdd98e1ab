//! The dashboard's event loop: waits on keys, the runner channel, signals and a file-follow timer; drains
//! everything pending, applies `update`, performs the effects, and draws at most once per frame interval,
//! only when something changed. Idle, it wakes about once a second. On a SLURM sweep a named thread polls
//! the scheduler and carries out cancel/resubmit requests; its reports arrive as messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::{FutureExt, StreamExt};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Instant, sleep_until};

use crate::cluster::poll::{self, Request};
use crate::cluster::submit::Submitter;
use crate::store::now_secs;
use crate::sweep::events::RunEvent;

use super::app::App;
use super::disk_worker::{DiskJob, DiskWorker};
use super::files::RunFiles;
use super::msg::{Effect, Msg};
use super::rating_files::RatingFiles;
use super::theme::Theme;
use super::trainer::Trainer;
use super::update::update;
use super::view;

/// How the loop paces itself and how it hands over to the background.
pub struct LoopOptions {
    pub theme: Theme,
    /// At most one frame per this interval (100 ms: 10 frames/s).
    pub frame_interval: Duration,
    /// How often logs of runs trained elsewhere are polled while any run is active.
    pub follow_interval: Duration,
    /// The command that continues the sweep in the background (`qlab run CONFIG --detach`).
    pub detach_command: Option<Vec<String>>,
    /// Longest wait for the runner's checkpoint after SIGTERM/SIGHUP before leaving anyway.
    pub terminate_grace: Duration,
    /// A SLURM sweep: the cells' jobs are polled (and cancelled, resubmitted) through this.
    pub cluster: Option<Arc<Submitter>>,
    /// How often the cluster poller asks the scheduler.
    pub cluster_every: Duration,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Quit,
    /// Input closed (the terminal went away) or a termination signal's grace period ran out.
    Lost,
}

/// What the loop performs effects with: the trainer, the run files, the disk thread and the channel that
/// brings runner events and disk answers back.
struct Io<'a> {
    trainer: Option<Box<dyn Trainer>>,
    files: RunFiles,
    disk: DiskWorker,
    runner_tx: UnboundedSender<Msg>,
    /// Requests to the cluster poller thread (None: a local sweep).
    cluster: Option<Sender<Request>>,
    opts: &'a LoopOptions,
    /// A results refresh was asked for; done once after the messages pending now (a sweep's history
    /// replayed at start would otherwise ask once per finished run).
    results_due: bool,
}

/// Run the dashboard until it quits. `signals` carries SIGTERM/SIGHUP numbers.
pub async fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    mut app: App,
    trainer: Option<Box<dyn Trainer>>,
    ratings: RatingFiles,
    opts: LoopOptions,
    mut signals: UnboundedReceiver<i32>,
) -> std::io::Result<Exit> {
    let mut keys = EventStream::new();
    let (runner_tx, mut runner_rx) = unbounded_channel::<Msg>();
    let files = RunFiles::new(&app.sweep);
    let disk = DiskWorker::spawn(ratings, runner_tx.clone())?;
    let cluster = opts
        .cluster
        .as_ref()
        .and_then(|s| start_cluster_poll(s.clone(), opts.cluster_every, runner_tx.clone()));
    if cluster.is_some() {
        app.cluster = Some(Default::default());
    }
    let mut io = Io {
        trainer,
        files,
        disk,
        runner_tx,
        cluster,
        opts: &opts,
        results_due: true,
    };
    let mut pending: Vec<Msg> = io.files.poll();
    pending.push(io.files.lock_holders());
    let mut last_draw = Instant::now() - opts.frame_interval;
    let mut next_follow = Instant::now();
    let mut next_second = Instant::now() + Duration::from_secs(1);
    let mut give_up_at: Option<Instant> = None;
    // False once the terminal is gone (SIGHUP, closed SSH): stop reading and drawing, finish cleanly.
    let mut terminal_alive = true;
    loop {
        // One queue: the answers of effects are updated in turn, after the messages already waiting.
        let mut queue: VecDeque<Msg> = pending.drain(..).collect();
        while let Some(msg) = queue.pop_front() {
            for effect in update(&mut app, msg) {
                queue.extend(perform(effect, &mut io));
            }
        }
        if std::mem::take(&mut io.results_due) && !io.disk.send(DiskJob::LoadResults) {
            pending.push(disk_gone());
        }
        if app.quit {
            return Ok(Exit::Quit);
        }
        if !app.training_here() {
            // Our runner is gone: follow its runs from their logs again.
            let ours = io.files.ours();
            if !ours.is_empty() {
                io.files.set_ours(&ours, false);
            }
        }
        if give_up_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(Exit::Lost);
        }
        if !terminal_alive && !app.training_here() {
            return Ok(Exit::Lost);
        }
        let now = Instant::now();
        if terminal_alive && app.dirty && now >= last_draw + opts.frame_interval {
            if let Err(e) = terminal.draw(|f| view::draw(f, &app, &opts.theme)) {
                tracing::warn!("drawing failed, the terminal is gone: {e}");
                terminal_alive = false;
                give_up_at.get_or_insert(Instant::now() + opts.terminate_grace);
                pending.push(Msg::Terminate);
            }
            app.dirty = false;
            last_draw = now;
        }
        let redraw_at = app.dirty.then_some(last_draw + opts.frame_interval);
        tokio::select! {
            Some(_) = signals.recv() => {
                give_up_at.get_or_insert(Instant::now() + opts.terminate_grace);
                pending.push(Msg::Terminate);
            }
            key = keys.next(), if terminal_alive => match key {
                Some(Ok(ev)) => pending.extend(term_msg(ev)),
                other => {
                    tracing::warn!("terminal input ended: {other:?}");
                    terminal_alive = false;
                    give_up_at.get_or_insert(Instant::now() + opts.terminate_grace);
                    pending.push(Msg::Terminate);
                }
            },
            Some(msg) = runner_rx.recv() => pending.push(msg),
            _ = sleep_until(next_follow) => {
                pending.extend(io.files.poll());
                let active = app.runs.iter().any(|r| r.history.is_active());
                next_follow = Instant::now() + if active { opts.follow_interval } else { Duration::from_secs(1) };
                if Instant::now() >= next_second {
                    next_second = Instant::now() + Duration::from_secs(1);
                    pending.push(io.files.lock_holders());
                    pending.push(Msg::Tick { now: now_secs() });
                }
            }
            _ = sleep_until(redraw_at.unwrap_or(now)), if redraw_at.is_some() => {}
        }
        // Drain whatever else is ready before the next update/draw.
        while let Ok(msg) = runner_rx.try_recv() {
            pending.push(msg);
        }
        while terminal_alive && let Some(Some(Ok(ev))) = keys.next().now_or_never() {
            pending.extend(term_msg(ev));
        }
    }
}

fn term_msg(ev: Event) -> Option<Msg> {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => Some(Msg::Key(k)),
        Event::Resize(..) => Some(Msg::Resized),
        _ => None,
    }
}

/// Do one effect; what it answers now comes back as messages for the queue (disk work answers later,
/// through the runner channel).
fn perform(effect: Effect, io: &mut Io) -> Vec<Msg> {
    let Io {
        trainer,
        files,
        disk,
        runner_tx,
        cluster,
        opts,
        results_due,
    } = io;
    let to_disk = |job: DiskJob| {
        if disk.send(job) {
            Vec::new()
        } else {
            vec![disk_gone()]
        }
    };
    match effect {
        Effect::StartRuns(runs) => {
            let Some(t) = trainer.as_mut() else {
                return vec![
                    Msg::RunnerExited,
                    Msg::Notice("this dashboard has no trainer; train with `qlab run`".into()),
                ];
            };
            files.set_ours(&runs, true);
            match t.start(&runs) {
                Ok(rx) => {
                    forward_runner(rx, runner_tx.clone(), runs);
                    Vec::new()
                }
                Err(e) => {
                    files.set_ours(&runs, false);
                    tracing::error!("could not start training: {e}");
                    vec![
                        Msg::RunnerExited,
                        Msg::Notice(format!("could not start training: {e}")),
                    ]
                }
            }
        }
        Effect::Command(c) => {
            if let Some(t) = trainer.as_mut() {
                t.send(c);
            }
            Vec::new()
        }
        Effect::LoadLog(run) => files.log_tail(&run).into_iter().collect(),
        Effect::LoadRating { rater, pair } => to_disk(DiskJob::LoadRating { rater, pair }),
        Effect::SaveJudgement { rater, entry } => to_disk(DiskJob::Save { rater, entry }),
        Effect::LoadResults => {
            *results_due = true;
            Vec::new()
        }
        Effect::DetachToBackground => match &opts.detach_command {
            Some(cmd) => match spawn_detached(cmd) {
                Ok(()) => Vec::new(),
                Err(e) => {
                    tracing::error!("could not start the background runner {cmd:?}: {e}");
                    vec![Msg::DetachFailed {
                        error: e.to_string(),
                    }]
                }
            },
            None => {
                tracing::warn!("no background command configured");
                Vec::new()
            }
        },
        Effect::Cluster(request) => {
            if cluster.as_ref().is_some_and(|c| c.send(request).is_ok()) {
                Vec::new()
            } else {
                vec![Msg::Notice(
                    "the SLURM poller is not running; see qlab's log".into(),
                )]
            }
        }
        Effect::Quit => Vec::new(),
    }
}

/// The disk thread ended (it only does when its channel breaks): say so instead of waiting forever.
fn disk_gone() -> Msg {
    tracing::error!("the dashboard's disk thread is gone");
    Msg::Notice(
        "ratings and results cannot be read or saved: the disk thread ended (see the log)".into(),
    )
}

/// Start the cluster poller thread; its reports come back as [`Msg::Cluster`].
fn start_cluster_poll(
    submitter: Arc<Submitter>,
    every: Duration,
    tx: UnboundedSender<Msg>,
) -> Option<Sender<Request>> {
    let (requests, rx) = std::sync::mpsc::channel();
    match poll::spawn(submitter, every, rx, move |report| {
        tx.send(Msg::Cluster(report)).is_ok()
    }) {
        Ok(_) => Some(requests),
        Err(e) => {
            tracing::error!("could not start the cluster poller: {e}");
            None
        }
    }
}

/// Forward a runner's std channel into the loop from a named thread; it ends when either side closes.
fn forward_runner(rx: Receiver<(String, RunEvent)>, tx: UnboundedSender<Msg>, runs: Vec<String>) {
    let spawned = std::thread::Builder::new()
        .name("qlab-tui-runner-events".into())
        .spawn(move || {
            for (run, event) in rx {
                if tx
                    .send(Msg::Runner {
                        run,
                        event,
                        ts: now_secs(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Msg::RunnerExited);
        });
    if let Err(e) = spawned {
        tracing::error!("could not start the event thread for runs {runs:?}: {e}");
    }
}

/// Start the background runner with no terminal attached; it detaches itself (`qlab run --detach`).
fn spawn_detached(cmd: &[String]) -> std::io::Result<()> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .and_then(|s| {
            if s.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("exited with {s}")))
            }
        })
}
