//! Training one run on the runner thread: lock, prepare data, load or resume, step with events, checkpoints
//! and status, and end as finished, failed (with the reason) or interrupted.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use super::control::{Control, Directive};
use super::events::{RunEvent, StepMetrics};
use super::job::{LoadError, RunJob};
use super::metrics_log::{self, MetricsLog};
use super::panic_guard::{guarded, inject_test_panic};
use super::reconcile::{RunAction, action_for};
use super::runner::RunnerOptions;
use super::sink::EventSink;
use super::telemetry::{TelemetryThread, rss_mib};
use crate::store::RunLock;
use crate::store::atomic::{read_json, write_json_atomic};
use crate::store::now_secs;
use crate::store::{RunPaths, RunState, RunStatus, StoreError};
use crate::train::TrainError;
use crate::train::checkpoint::{self, FileWriter};
use crate::train::data;
use crate::train::session::Session;

/// How a run ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Finished,
    Failed,
    /// Stopped at a checkpoint or cancelled; resumable. A stop or cancel also stops the sweep; reaching
    /// `max_steps` does not.
    Interrupted {
        stop_sweep: bool,
    },
    /// Done earlier, or held by another process.
    Skipped,
}

/// Everything a run needs from the runner.
pub struct JobContext<'a> {
    pub paths: RunPaths,
    pub tx: Sender<(String, RunEvent)>,
    pub control: Control<'a>,
    pub options: &'a RunnerOptions,
    pub loader: &'a dyn super::job::ModelLoader,
}

/// The `RunFailed` reason or the way the loop ended.
enum Ended {
    Finished,
    Interrupted {
        step: u64,
        reason: String,
        stop_sweep: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Model code panicked; the run ends as failed and the sweep goes on.
    #[error("{0}")]
    Panicked(String),
    #[error(
        "checkpoint at step {step} could not be written ({source}); the previous checkpoint (step {previous}) is intact"
    )]
    Checkpoint {
        step: u64,
        previous: u64,
        source: TrainError,
    },
}

/// Train `job` (or skip it); never panics on bad input, a failure becomes a `RunFailed` event.
pub fn train_job(ctx: &mut JobContext<'_>, job: &RunJob) -> JobOutcome {
    let action = match action_for(&ctx.paths) {
        Ok(RunAction::Done) => return JobOutcome::Skipped,
        Ok(RunAction::Locked { pid }) => {
            tracing::info!(
                run = job.run_id,
                pid,
                "run is trained by another process; skipped"
            );
            return JobOutcome::Skipped;
        }
        Ok(a) => a,
        Err(e) => {
            tracing::error!(run = job.run_id, "cannot read the run directory: {e}");
            return JobOutcome::Failed;
        }
    };
    let _lock = match RunLock::acquire(&ctx.paths) {
        Ok(l) => l,
        Err(e) => {
            tracing::info!(run = job.run_id, "{e}; skipped");
            return JobOutcome::Skipped;
        }
    };
    let sink = match open_sink(ctx, job, &action) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(run = job.run_id, "cannot open the run's logs: {e}");
            return JobOutcome::Failed;
        }
    };
    let mut status = read_json::<RunStatus>(&ctx.paths.status())
        .ok()
        .flatten()
        .unwrap_or(RunStatus::queued(0));
    status.pid = Some(std::process::id());
    status.reason = None;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.paths.log());
    let result = match log_file {
        Ok(file) => {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                guarded(|| run_loop(ctx, job, &action, &sink, &mut status))
                    .unwrap_or_else(|message| Err(RunError::Panicked(message)))
            })
        }
        Err(e) => Err(RunError::Store(StoreError::io(ctx.paths.log(), e))),
    };
    let (outcome, event) = match result {
        Ok(Ended::Finished) => {
            status.state = RunState::Done;
            (JobOutcome::Finished, None)
        }
        Ok(Ended::Interrupted {
            step,
            reason,
            stop_sweep,
        }) => {
            status.state = RunState::Interrupted;
            status.reason = Some(reason.clone());
            (
                JobOutcome::Interrupted { stop_sweep },
                Some(RunEvent::Interrupted { step, reason }),
            )
        }
        Err(e) => {
            status.state = RunState::Failed;
            status.reason = Some(e.to_string());
            let step = (status.step > 0).then_some(status.step);
            (
                JobOutcome::Failed,
                Some(RunEvent::RunFailed {
                    step,
                    reason: e.to_string(),
                }),
            )
        }
    };
    if let Some(event) = event
        && let Err(e) = sink.emit(event)
    {
        tracing::error!(run = job.run_id, "cannot log the run's end: {e}");
    }
    if let Err(e) = write_status(&ctx.paths, &mut status) {
        tracing::error!(run = job.run_id, "cannot write status: {e}");
    }
    outcome
}

fn open_sink(
    ctx: &JobContext<'_>,
    job: &RunJob,
    action: &RunAction,
) -> Result<EventSink, StoreError> {
    write_json_atomic(&ctx.paths.spec(), job)?;
    let resume_step = match action {
        RunAction::Resume { step, .. } => *step,
        _ => 0,
    };
    let dropped = metrics_log::cut_back_to(&ctx.paths.metrics(), resume_step)?;
    if dropped > 0 {
        tracing::info!(
            run = job.run_id,
            dropped,
            resume_step,
            "metrics log cut back to the checkpoint"
        );
    }
    Ok(EventSink::new(
        &job.run_id,
        ctx.tx.clone(),
        MetricsLog::open(&ctx.paths.metrics())?,
    ))
}

fn write_status(paths: &RunPaths, status: &mut RunStatus) -> Result<(), StoreError> {
    status.updated = now_secs();
    write_json_atomic(&paths.status(), status)
}

fn run_loop(
    ctx: &mut JobContext<'_>,
    job: &RunJob,
    action: &RunAction,
    sink: &Arc<EventSink>,
    status: &mut RunStatus,
) -> Result<Ended, RunError> {
    let started = Instant::now();
    sink.emit(RunEvent::ModelLoading {
        device: job.device.to_string(),
    })?;
    inject_test_panic(&job.run_id);
    let loaded = ctx.loader.load(job)?;
    let prepared = data::prepare(
        &job.data,
        loaded.encoder.as_ref(),
        job.train.max_seq_len,
        job.train.packing,
    )?;
    let r = &prepared.report;
    tracing::info!(
        rows = r.rows_read,
        skipped = r.rows_skipped,
        truncated = r.rows_truncated,
        dropped_without_target = r.dropped_without_target,
        sequences = r.sequences,
        tokens = r.tokens,
        trained_tokens = r.trained_tokens,
        "dataset {} prepared",
        job.data.path.display()
    );
    let mut session = Session::new(
        loaded.model,
        prepared.sequences,
        job.train.clone(),
        loaded.pad_id,
    )?;
    if let RunAction::Resume {
        checkpoint: dir, ..
    } = action
    {
        let found = checkpoint::read(dir)
            .ok_or_else(|| TrainError::State(format!("{}: checkpoint vanished", dir.display())))?;
        session.restore(&found)?;
    }
    let start_step = session.state().step;
    let total = session.state().total_steps;
    sink.emit(RunEvent::RunStarted {
        total_steps: total,
        start_step,
        device: job.device.to_string(),
        pid: std::process::id(),
    })?;
    status.state = RunState::Training;
    status.step = start_step;
    status.total_steps = total;
    write_status(&ctx.paths, status)?;
    let telemetry_sink = sink.clone();
    let _telemetry = TelemetryThread::spawn(
        &job.device.to_string(),
        ctx.options.telemetry_every,
        move |t| {
            let _ = telemetry_sink.emit(RunEvent::Telemetry(t));
        },
    )
    .map_err(|e| StoreError::io(&ctx.paths.root, e))?;
    let mut last_checkpoint = start_step;
    loop {
        let step = session.state().step;
        let max_reached = ctx
            .options
            .max_steps
            .filter(|&max| step >= max && !session.is_done());
        let directive = match max_reached {
            Some(max) => Directive::Stop(format!("--max-steps {max} reached")),
            None => ctx.control.poll(sink, step)?,
        };
        match directive {
            Directive::Continue => {}
            Directive::Cancel => {
                return Ok(Ended::Interrupted {
                    step: last_checkpoint,
                    reason: "cancelled".to_string(),
                    stop_sweep: true,
                });
            }
            Directive::Stop(reason) => {
                if step > last_checkpoint {
                    save(&session, ctx, sink, status, None, &mut last_checkpoint)?;
                }
                return Ok(Ended::Interrupted {
                    step: last_checkpoint,
                    reason,
                    stop_sweep: max_reached.is_none(),
                });
            }
        }
        if session.is_done() {
            break;
        }
        let out = session.train_step()?;
        sink.emit(RunEvent::Step(StepMetrics {
            step: out.step,
            epoch: out.epoch_progress,
            loss: out.loss,
            lr: out.lr,
            grad_norm: out.grad_norm,
            tokens_per_s: out.tokens as f64 / out.secs.max(1e-9),
            step_s: out.secs,
            rss_mib: rss_mib(),
        }))?;
        status.step = out.step;
        status.last_loss = Some(out.loss);
        let settings = session.settings();
        let stage = out
            .finished_epoch
            .filter(|e| settings.eval_at_epochs.contains(e))
            .map(|e| format!("e{e}"));
        let every = settings.checkpoint_every;
        if stage.is_some() || (every > 0 && out.step % every == 0) || session.is_done() {
            save(&session, ctx, sink, status, stage, &mut last_checkpoint)?;
        }
        if let Some(epoch) = out.finished_epoch {
            sink.emit(RunEvent::EpochDone {
                epoch,
                step: out.step,
            })?;
        }
    }
    sink.emit(RunEvent::RunFinished {
        step: session.state().step,
        secs: started.elapsed().as_secs_f64(),
    })?;
    Ok(Ended::Finished)
}

fn save(
    session: &Session,
    ctx: &JobContext<'_>,
    sink: &EventSink,
    status: &mut RunStatus,
    stage: Option<String>,
    last_checkpoint: &mut u64,
) -> Result<(), RunError> {
    let step = session.state().step;
    let dest = match &stage {
        Some(s) => ctx.paths.stage(s),
        None => ctx.paths.checkpoint(step),
    };
    let t = Instant::now();
    let writer: &dyn FileWriter = ctx.options.writer.as_ref();
    let bytes = session
        .save_checkpoint(&dest, writer)
        .map_err(|source| RunError::Checkpoint {
            step,
            previous: *last_checkpoint,
            source,
        })?;
    *last_checkpoint = step;
    checkpoint::prune(&ctx.paths, session.settings().keep_checkpoints)?;
    sink.emit(RunEvent::CheckpointSaved {
        step,
        stage,
        bytes,
        secs: t.elapsed().as_secs_f64(),
    })?;
    write_status(&ctx.paths, status)?;
    Ok(())
}
