//! The runner's language: events (what happened) and commands (what to do), shared by the runner, the
//! metrics log on disk and every watcher (CLI progress, dashboard, a dashboard in another process).
//!
//! Call sequence for one run, as a runner emits it and as the metrics log records it:
//! `ModelLoading` -> `RunStarted` -> (`Step` | `Telemetry` | `CheckpointSaved` | `EpochDone` | `Paused` | `Resumed`)* ->
//! (`EvalStarted` -> `AnswerReady`* -> `EvalDone`)* -> exactly one of `RunFinished`, `RunFailed`, `Interrupted`.
//! A resumed run appends a new `RunStarted` whose `start_step` is the step of the checkpoint it resumed from;
//! `Step` events then continue at `start_step + 1`, so a log never holds a duplicated or missing step.

use serde::{Deserialize, Serialize};

/// One optimizer step's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, 1-based.
    pub step: u64,
    /// Fractional epoch (1.5 = half-way through the second epoch).
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens processed per second in this step (real tokens, padding excluded).
    pub tokens_per_s: f64,
    pub step_s: f64,
    /// Resident memory of the training process, MiB.
    pub rss_mib: f64,
}

/// Memory sampled about once a second, independent of step pace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub rss_mib: f64,
    /// GPU memory in use on the device, MiB (None on CPU or when NVML is not available).
    pub vram_used_mib: Option<f64>,
    pub vram_total_mib: Option<f64>,
    /// GPU memory used by this process, MiB.
    pub vram_process_mib: Option<f64>,
}

/// What happened in a run. Serialized as one JSON object per line in the run's `metrics.jsonl`,
/// wrapped in a [`LoggedEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The worker took the run and is loading its model on `device`; `RunStarted` follows once the model
    /// and data are ready (the readiness handshake), `RunFailed` with the reason if they cannot be.
    ModelLoading {
        device: String,
    },
    RunStarted {
        /// Optimizer steps the whole run takes (all epochs).
        total_steps: u64,
        /// 0 for a fresh run; the checkpoint's step when resuming.
        start_step: u64,
        device: String,
        pid: u32,
    },
    Step(StepMetrics),
    Telemetry(Telemetry),
    CheckpointSaved {
        step: u64,
        /// `Some("e1")` when this checkpoint is an evaluation stage.
        stage: Option<String>,
        bytes: u64,
        secs: f64,
    },
    EpochDone {
        epoch: u32,
        step: u64,
    },
    Paused {
        step: u64,
    },
    Resumed {
        step: u64,
    },
    EvalStarted {
        stage: String,
        questions: u32,
    },
    AnswerReady {
        stage: String,
        question_id: String,
    },
    EvalDone {
        stage: String,
    },
    RunFinished {
        step: u64,
        secs: f64,
    },
    RunFailed {
        step: Option<u64>,
        reason: String,
    },
    /// Stopped on request or by a signal after writing a checkpoint at `step`; resumable.
    Interrupted {
        step: u64,
        reason: String,
    },
}

impl RunEvent {
    /// Lifecycle events are never dropped or throttled; `Step` and `Telemetry` may be coalesced by a watcher.
    pub fn is_lifecycle(&self) -> bool {
        !matches!(self, RunEvent::Step(_) | RunEvent::Telemetry(_))
    }
}

/// A [`RunEvent`] as written to `metrics.jsonl`: one line, with wall-clock time and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    pub run: String,
    #[serde(flatten)]
    pub event: RunEvent,
}

/// What a watcher may ask of a runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerCommand {
    Pause,
    Resume,
    /// Write a checkpoint at the next step boundary, then end the run as `Interrupted`.
    StopAfterCheckpoint,
    /// End the current run now without a new checkpoint (the last complete one stays).
    Cancel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_event_is_one_flat_json_object() {
        let e = LoggedEvent {
            ts: 1.5,
            run: "demo-abc".into(),
            event: RunEvent::EpochDone { epoch: 1, step: 10 },
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"ts":1.5,"run":"demo-abc","event":"epoch_done","epoch":1,"step":10}"#
        );
        let back: LoggedEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn step_metrics_round_trip_through_the_flat_form() {
        let e = LoggedEvent {
            ts: 2.0,
            run: "r".into(),
            event: RunEvent::Step(StepMetrics {
                step: 3,
                epoch: 0.5,
                loss: 2.25,
                lr: 1e-4,
                grad_norm: 0.5,
                tokens_per_s: 100.0,
                step_s: 1.0,
                rss_mib: 300.0,
            }),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""event":"step","step":3"#), "{line}");
        assert_eq!(serde_json::from_str::<LoggedEvent>(&line).unwrap(), e);
        assert!(!e.event.is_lifecycle());
    }
}
