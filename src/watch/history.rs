//! Everything a watcher knows about one run, rebuilt from its events (live from the runner or replayed from
//! metrics.jsonl): state, progress, graphs with bounded memory, checkpoints, failure reason and ETA.

use crate::store::RunState;
use crate::sweep::events::{LoggedEvent, RunEvent, StepMetrics, Telemetry};

use super::eta::Eta;
use super::series::Series;

/// Weight of the newest loss in the smoothed curve (an exponential moving average, bias-corrected).
const SMOOTHING: f64 = 0.05;

/// A checkpoint the run reported as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub step: u64,
    pub stage: Option<String>,
    pub bytes: u64,
    pub secs: f64,
}

/// Progress of the evaluation stage being generated.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalProgress {
    pub stage: String,
    pub answered: u32,
    pub questions: u32,
}

/// Graphs of one run, against optimizer steps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunGraphs {
    pub loss: Series,
    pub loss_smoothed: Series,
    pub lr: Series,
    pub tokens_per_s: Series,
    pub rss_mib: Series,
    pub vram_used_mib: Series,
}

/// The watched state of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunHistory {
    pub run_id: String,
    pub state: RunState,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub last_loss: Option<f64>,
    pub device: Option<String>,
    /// Process that trains (or last trained) the run.
    pub pid: Option<u32>,
    pub paused: bool,
    /// A worker took the run and is loading its model (`ModelLoading` seen, `RunStarted` not yet).
    pub loading: bool,
    pub graphs: RunGraphs,
    pub vram_total_mib: Option<f64>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// `(epoch, step)` where each finished epoch ended, by epoch (a resumed run reports an epoch once).
    pub epoch_ends: Vec<(u32, u64)>,
    pub eval: Option<EvalProgress>,
    pub stages_evaluated: Vec<String>,
    /// Why the run failed or was interrupted.
    pub reason: Option<String>,
    pub eta: Eta,
    /// Time of the newest event, seconds since the Unix epoch.
    pub last_ts: Option<f64>,
    ema: Option<(f64, u64)>,
    /// State to return to when an evaluation ends.
    state_before_eval: RunState,
}

impl RunHistory {
    pub fn new(run_id: impl Into<String>) -> Self {
        RunHistory {
            run_id: run_id.into(),
            state: RunState::Queued,
            step: 0,
            total_steps: 0,
            epoch: 0.0,
            last_loss: None,
            device: None,
            pid: None,
            paused: false,
            loading: false,
            graphs: RunGraphs::default(),
            vram_total_mib: None,
            checkpoints: Vec::new(),
            epoch_ends: Vec::new(),
            eval: None,
            stages_evaluated: Vec::new(),
            reason: None,
            eta: Eta::new(),
            last_ts: None,
            ema: None,
            state_before_eval: RunState::Training,
        }
    }

    /// Apply one logged event (from the metrics log or a live runner stamped with its time).
    pub fn apply_logged(&mut self, e: &LoggedEvent) {
        self.apply(&e.event, e.ts);
    }

    /// Apply one event that happened at `ts` (seconds since the Unix epoch).
    pub fn apply(&mut self, event: &RunEvent, ts: f64) {
        self.last_ts = Some(ts);
        self.loading = matches!(event, RunEvent::ModelLoading { .. })
            || (self.loading && !event.is_lifecycle());
        match event {
            RunEvent::ModelLoading { device } => {
                self.device = Some(device.clone());
                self.reason = None;
            }
            RunEvent::RunStarted {
                total_steps,
                start_step,
                device,
                pid,
            } => {
                self.state = RunState::Training;
                self.total_steps = *total_steps;
                self.step = *start_step;
                self.device = Some(device.clone());
                self.pid = Some(*pid);
                self.paused = false;
                self.reason = None;
                self.eta.start(*start_step, *total_steps);
            }
            RunEvent::Step(m) => self.step_done(m, ts),
            RunEvent::Telemetry(t) => self.telemetry(t),
            RunEvent::CheckpointSaved {
                step,
                stage,
                bytes,
                secs,
            } => self.checkpoints.push(CheckpointInfo {
                step: *step,
                stage: stage.clone(),
                bytes: *bytes,
                secs: *secs,
            }),
            RunEvent::EpochDone { epoch, step } => {
                self.epoch_ends.retain(|(e, _)| e != epoch);
                self.epoch_ends.push((*epoch, *step));
                self.epoch_ends.sort_unstable();
            }
            RunEvent::Paused { .. } => {
                self.paused = true;
                self.eta.pause();
            }
            RunEvent::Resumed { .. } => {
                self.paused = false;
                self.eta.resume();
            }
            RunEvent::EvalStarted { stage, questions } => {
                if self.state != RunState::Evaluating {
                    self.state_before_eval = self.state;
                }
                self.state = RunState::Evaluating;
                self.eta.pause();
                self.eval = Some(EvalProgress {
                    stage: stage.clone(),
                    answered: 0,
                    questions: *questions,
                });
            }
            RunEvent::AnswerReady { stage, .. } => {
                if let Some(ev) = self.eval.as_mut().filter(|ev| &ev.stage == stage) {
                    ev.answered += 1;
                }
            }
            RunEvent::EvalDone { stage } => {
                self.eval = None;
                self.stages_evaluated.push(stage.clone());
                // Evaluation after a finished run ends done; one between epochs goes back to training.
                self.state = self.state_before_eval;
                self.eta.resume();
            }
            RunEvent::RunFinished { step, .. } => {
                self.step = *step;
                self.state = RunState::Done;
                self.finish();
            }
            RunEvent::RunFailed { step, reason } => {
                if let Some(s) = step {
                    self.step = *s;
                }
                self.state = RunState::Failed;
                self.reason = Some(reason.clone());
                self.finish();
            }
            RunEvent::Interrupted { step, reason } => {
                self.step = *step;
                self.state = RunState::Interrupted;
                self.reason = Some(reason.clone());
                self.finish();
            }
        }
    }

    /// Whether a process is (as far as the log says) working on this run.
    pub fn is_active(&self) -> bool {
        matches!(self.state, RunState::Training | RunState::Evaluating)
    }

    /// Seconds left, when the run is active and a rate is known.
    pub fn eta_secs(&self) -> Option<f64> {
        self.is_active()
            .then(|| self.eta.remaining_secs())
            .flatten()
    }

    /// Fraction done for a progress bar (below 1.0 until the run is done).
    pub fn progress(&self) -> f64 {
        super::eta::progress_fraction(self.step, self.total_steps, self.state == RunState::Done)
    }

    fn step_done(&mut self, m: &StepMetrics, ts: f64) {
        self.state = RunState::Training;
        self.step = m.step;
        self.epoch = m.epoch;
        self.last_loss = Some(m.loss);
        self.eta.step(m.step, ts);
        let x = m.step as f64;
        let g = &mut self.graphs;
        g.loss.push(x, m.loss);
        if m.loss.is_finite() {
            let (avg, n) = self.ema.unwrap_or((0.0, 0));
            let avg = (1.0 - SMOOTHING) * avg + SMOOTHING * m.loss;
            let n = n + 1;
            self.ema = Some((avg, n));
            g.loss_smoothed.push(
                x,
                avg / (1.0 - (1.0 - SMOOTHING).powi(n.min(10_000) as i32)),
            );
        }
        g.lr.push(x, m.lr);
        g.tokens_per_s.push(x, m.tokens_per_s);
        g.rss_mib.set_at(x, m.rss_mib);
    }

    fn telemetry(&mut self, t: &Telemetry) {
        let x = self.step as f64;
        self.graphs.rss_mib.set_at(x, t.rss_mib);
        if let Some(used) = t.vram_used_mib {
            self.graphs.vram_used_mib.set_at(x, used);
        }
        if t.vram_total_mib.is_some() {
            self.vram_total_mib = t.vram_total_mib;
        }
    }

    fn finish(&mut self) {
        self.eval = None;
        self.paused = false;
        self.eta.pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> RunEvent {
        RunEvent::Step(StepMetrics {
            step,
            epoch: step as f64 / 10.0,
            loss,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens_per_s: 500.0,
            step_s: 1.0,
            rss_mib: 300.0 + step as f64,
        })
    }

    fn started(start_step: u64) -> RunEvent {
        RunEvent::RunStarted {
            total_steps: 20,
            start_step,
            device: "cpu".into(),
            pid: 42,
        }
    }

    #[test]
    fn a_run_is_rebuilt_from_its_events() {
        let mut h = RunHistory::new("r1");
        h.apply(&started(0), 0.0);
        for s in 1..=10 {
            h.apply(&step(s, 3.0 - s as f64 * 0.1), s as f64);
        }
        h.apply(
            &RunEvent::CheckpointSaved {
                step: 10,
                stage: None,
                bytes: 1024,
                secs: 0.5,
            },
            10.5,
        );
        assert_eq!(h.state, RunState::Training);
        assert_eq!(h.step, 10);
        assert_eq!(h.graphs.loss.len(), 10);
        assert_eq!(h.graphs.loss_smoothed.len(), 10);
        assert_eq!(h.checkpoints.len(), 1);
        assert!((h.last_loss.unwrap() - 2.0).abs() < 1e-12);
        let eta = h.eta_secs().unwrap();
        assert!((eta - 10.0).abs() < 1e-9, "{eta}");
        assert!(h.progress() < 1.0);
        // The bias-corrected smoothing starts at the first value instead of near zero.
        assert!((h.graphs.loss_smoothed.points()[0].1 - 2.9).abs() < 1e-9);
    }

    #[test]
    fn epoch_ends_are_kept_once_each_in_epoch_order() {
        let mut h = RunHistory::new("r1");
        for (epoch, step) in [(2, 20), (1, 10), (2, 21)] {
            h.apply(&RunEvent::EpochDone { epoch, step }, 1.0);
        }
        assert_eq!(h.epoch_ends, [(1, 10), (2, 21)]);
    }

    #[test]
    fn failure_keeps_its_reason_and_stops_the_eta() {
        let mut h = RunHistory::new("r1");
        h.apply(&started(0), 0.0);
        h.apply(&step(1, 2.0), 1.0);
        h.apply(
            &RunEvent::RunFailed {
                step: Some(1),
                reason: "loss is NaN at step 2".into(),
            },
            2.0,
        );
        assert_eq!(h.state, RunState::Failed);
        assert_eq!(h.reason.as_deref(), Some("loss is NaN at step 2"));
        assert_eq!(h.eta_secs(), None);
    }

    #[test]
    fn resume_continues_the_graphs_and_evaluation_is_tracked() {
        let mut h = RunHistory::new("r1");
        h.apply(&started(0), 0.0);
        h.apply(&step(1, 2.0), 1.0);
        h.apply(
            &RunEvent::Interrupted {
                step: 1,
                reason: "stopped by user".into(),
            },
            2.0,
        );
        assert_eq!(h.state, RunState::Interrupted);
        h.apply(&started(1), 100.0);
        assert_eq!(h.state, RunState::Training);
        assert_eq!(h.reason, None);
        h.apply(&step(2, 1.5), 101.0);
        h.apply(
            &RunEvent::EvalStarted {
                stage: "e1".into(),
                questions: 4,
            },
            102.0,
        );
        h.apply(
            &RunEvent::AnswerReady {
                stage: "e1".into(),
                question_id: "q1".into(),
            },
            103.0,
        );
        assert_eq!(h.state, RunState::Evaluating);
        assert_eq!(
            h.eval.as_ref().map(|e| (e.answered, e.questions)),
            Some((1, 4))
        );
        h.apply(&RunEvent::EvalDone { stage: "e1".into() }, 104.0);
        h.apply(
            &RunEvent::RunFinished {
                step: 20,
                secs: 10.0,
            },
            105.0,
        );
        assert_eq!(h.state, RunState::Done);
        assert_eq!(h.progress(), 1.0);
        assert_eq!(h.graphs.loss.len(), 2);
        assert_eq!(h.stages_evaluated, vec!["e1".to_string()]);
    }

    #[test]
    fn telemetry_adds_vram_at_the_current_step() {
        let mut h = RunHistory::new("r1");
        h.apply(&started(0), 0.0);
        h.apply(&step(1, 2.0), 1.0);
        let t = Telemetry {
            rss_mib: 400.0,
            vram_used_mib: Some(1000.0),
            vram_total_mib: Some(80_000.0),
            vram_process_mib: None,
        };
        h.apply(&RunEvent::Telemetry(t.clone()), 1.5);
        h.apply(&RunEvent::Telemetry(t), 1.8);
        assert_eq!(h.graphs.vram_used_mib.points(), vec![(1.0, 1000.0)]);
        assert_eq!(h.graphs.rss_mib.points(), vec![(1.0, 400.0)]);
        assert_eq!(h.vram_total_mib, Some(80_000.0));
    }
}
