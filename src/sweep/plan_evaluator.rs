//! The runner's evaluation after training for real runs: the plan's question sets answered by the run's
//! model at base and at each trained stage, reported as runner events.

use std::sync::atomic::AtomicBool;

use candle_core::Device;

use super::events::RunEvent;
use super::job::{EvalJobError, RunEvaluator};
use crate::config::{Config, DeviceSpec};
use crate::eval::evaluate::{EvalProgress, evaluate_run};
use crate::plan::Plan;
use crate::store::SweepPaths;

/// Evaluates the runs of one plan.
pub struct PlanEvaluator {
    config: Config,
    plan: Plan,
    sweep: SweepPaths,
}

impl PlanEvaluator {
    pub fn new(config: Config, plan: Plan, sweep: SweepPaths) -> Self {
        PlanEvaluator {
            config,
            plan,
            sweep,
        }
    }
}

impl RunEvaluator for PlanEvaluator {
    fn evaluate(
        &self,
        run_id: &str,
        device: DeviceSpec,
        stop: &AtomicBool,
        emit: &mut dyn FnMut(RunEvent),
    ) -> Result<(), EvalJobError> {
        let run = self
            .plan
            .run(run_id)
            .ok_or_else(|| EvalJobError::NotInPlan(run_id.to_owned()))?;
        // Opted out, or a dataset with no question set: nothing to benchmark.
        if !run.spec.eval.after_training || run.spec.dataset.questions.is_none() {
            return Ok(());
        }
        let mut progress = |p: EvalProgress<'_>| {
            emit(match p {
                EvalProgress::StageStarted { stage, questions } => RunEvent::EvalStarted {
                    stage: stage.to_owned(),
                    questions: u32::try_from(questions).unwrap_or(u32::MAX),
                },
                EvalProgress::Answer(a) => RunEvent::AnswerReady {
                    stage: a.stage.clone(),
                    question_id: a.question_id.clone(),
                },
                EvalProgress::StageDone { stage } => RunEvent::EvalDone {
                    stage: stage.to_owned(),
                },
            })
        };
        let device = Device::try_from(device).map_err(EvalJobError::Device)?;
        evaluate_run(
            &self.config,
            &self.sweep,
            run,
            &device,
            Some(stop),
            &mut progress,
        )?;
        Ok(())
    }
}
