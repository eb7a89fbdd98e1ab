//! Evaluating one run on the runner thread after its training: under the run's lock, with its events in the
//! metrics log and its state in status.json (evaluating, then done; failed with the reason if answers
//! could not be made, so that the next `qlab run` tries again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use super::control::Control;
use super::events::RunEvent;
use super::job::{EvalJobError, RunEvaluator};
use super::metrics_log::MetricsLog;
use super::panic_guard::guarded;
use super::sink::EventSink;
use crate::config::DeviceSpec;
use crate::store::atomic::{read_json, write_json_atomic};
use crate::store::now_secs;
use crate::store::{RunLock, RunPaths, RunState, RunStatus};

/// How answering a run's question sets ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalOutcome {
    /// Answered, already answered, or held by another process.
    Done,
    /// A stop command or signal came while answering: the answers so far stay, the sweep stops.
    Stopped,
    Failed,
}

/// Evaluate `run_id` unless another process holds it; a stop or cancel from `control` ends it between answers.
pub fn evaluate_job(
    paths: &RunPaths,
    run_id: &str,
    device: DeviceSpec,
    evaluator: &dyn RunEvaluator,
    control: &mut Control<'_>,
    tx: &Sender<(String, RunEvent)>,
) -> EvalOutcome {
    let Ok(_lock) = RunLock::acquire(paths) else {
        return EvalOutcome::Done;
    };
    let sink = match MetricsLog::open(&paths.metrics()) {
        Ok(log) => EventSink::new(run_id, tx.clone(), log),
        Err(e) => {
            tracing::error!(
                run = run_id,
                "cannot open the metrics log for evaluation: {e}"
            );
            return EvalOutcome::Failed;
        }
    };
    let mut status: Option<RunStatus> = read_json(&paths.status()).ok().flatten();
    let mut set_state = |state: RunState, reason: Option<String>| {
        if let Some(s) = status.as_mut() {
            s.state = state;
            s.reason = reason;
            s.pid = (state == RunState::Evaluating).then(std::process::id);
            s.updated = now_secs();
            if let Err(e) = write_json_atomic(&paths.status(), s) {
                tracing::warn!(run = run_id, "status not written: {e}");
            }
        }
    };
    let stop = AtomicBool::new(control.stop_asked());
    let mut evaluating = false;
    let mut emit = |event: RunEvent| {
        if control.stop_asked() {
            stop.store(true, Ordering::SeqCst);
        }
        if !evaluating && matches!(event, RunEvent::EvalStarted { .. }) {
            evaluating = true;
            set_state(RunState::Evaluating, None);
        }
        if let Err(e) = sink.emit(event) {
            tracing::warn!(run = run_id, "event not logged: {e}");
        }
    };
    let result = guarded(|| evaluator.evaluate(run_id, device, &stop, &mut emit))
        .unwrap_or_else(|message| Err(EvalJobError::Panicked(message)));
    match result {
        // Asked to stop (signal, stop command): the answers written so far stay and the next run resumes.
        Err(_) if stop.load(Ordering::SeqCst) => {
            set_state(
                RunState::Interrupted,
                Some("stopped while answering the question set".into()),
            );
            EvalOutcome::Stopped
        }
        Ok(()) => {
            if evaluating {
                set_state(RunState::Done, None);
            }
            EvalOutcome::Done
        }
        Err(reason) => {
            let reason = format!("evaluation: {reason}");
            tracing::error!(run = run_id, "{reason}");
            if let Err(e) = sink.emit(RunEvent::RunFailed {
                step: None,
                reason: reason.clone(),
            }) {
                tracing::warn!(run = run_id, "event not logged: {e}");
            }
            set_state(RunState::Failed, Some(reason));
            EvalOutcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::events::RunnerCommand;

    /// Answers up to 1000 questions, giving up as soon as the stop flag it is given is set; with
    /// `signal_after`, sets that flag itself after so many answers, as a signal handler would.
    #[derive(Default)]
    struct Answerer {
        answered: std::sync::atomic::AtomicUsize,
        signal_after: Option<usize>,
    }

    impl RunEvaluator for Answerer {
        fn evaluate(
            &self,
            _run_id: &str,
            _device: DeviceSpec,
            stop: &AtomicBool,
            emit: &mut dyn FnMut(RunEvent),
        ) -> Result<(), EvalJobError> {
            emit(RunEvent::EvalStarted {
                stage: "base".into(),
                questions: 1000,
            });
            for _ in 0..1000 {
                if stop.load(Ordering::SeqCst) {
                    // Whatever the error, the stop flag decides: the run is interrupted, not failed.
                    return Err(EvalJobError::NotInPlan("stopped".into()));
                }
                let n = self.answered.fetch_add(1, Ordering::SeqCst) + 1;
                emit(RunEvent::Resumed { step: 0 });
                if self.signal_after == Some(n) {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            Ok(())
        }
    }

    /// Evaluate a trained run "r" in a fresh directory with `commands` already sent to the runner:
    /// the outcome, the status written afterwards and the events emitted.
    fn evaluate_trained(
        evaluator: &dyn RunEvaluator,
        commands: &[RunnerCommand],
    ) -> (EvalOutcome, RunStatus, Vec<RunEvent>) {
        let (_dir, paths) = RunPaths::in_temp_dir();
        let mut status = RunStatus::queued(4);
        status.state = RunState::Done;
        write_json_atomic(&paths.status(), &status).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (commands_tx, commands_rx) = std::sync::mpsc::channel();
        for &c in commands {
            commands_tx.send(c).unwrap();
        }
        let stop = AtomicBool::new(false);
        let outcome = evaluate_job(
            &paths,
            "r",
            DeviceSpec::Cpu,
            evaluator,
            &mut Control::new(&commands_rx, &stop),
            &tx,
        );
        let after: RunStatus = read_json(&paths.status()).unwrap().unwrap();
        (outcome, after, rx.try_iter().map(|(_, e)| e).collect())
    }

    #[test]
    fn a_stop_during_evaluation_leaves_the_run_interrupted_not_failed() {
        let (outcome, after, events) = evaluate_trained(
            &Answerer {
                signal_after: Some(1),
                ..Default::default()
            },
            &[],
        );
        assert_eq!(outcome, EvalOutcome::Stopped);
        assert_eq!(after.state, RunState::Interrupted);
        assert!(after.reason.unwrap().contains("stopped"));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, RunEvent::RunFailed { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn a_stop_command_sent_while_answering_ends_the_answering_between_two_answers() {
        let evaluator = Answerer::default();
        // The dashboard's "stop & quit" arrives while the run answers.
        let (outcome, after, _) =
            evaluate_trained(&evaluator, &[RunnerCommand::StopAfterCheckpoint]);
        assert_eq!(outcome, EvalOutcome::Stopped);
        assert!(
            evaluator.answered.load(Ordering::SeqCst) < 2,
            "answered on after the stop"
        );
        assert_eq!(after.state, RunState::Interrupted);
    }
}
