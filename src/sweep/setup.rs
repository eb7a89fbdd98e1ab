//! One sweep, assembled once for whoever trains it (`qlab run` headless, the dashboard): its run
//! directories, the jobs of the plan, the model loader and the runner's options with the evaluator.

use std::sync::Arc;

use super::from_plan::{UnknownRun, jobs_from_plan, sweep_devices};
use super::job::{ModelLoader, RunEvaluator, RunJob};
use super::model_loader::DecoderLoader;
use super::plan_evaluator::PlanEvaluator;
use super::runner::RunnerOptions;
use crate::config::{Config, DeviceSpec};
use crate::plan::Plan;
use crate::store::SweepPaths;

/// What a runner needs to train a config's sweep.
pub struct SweepSetup {
    pub sweep: SweepPaths,
    pub jobs: Vec<RunJob>,
    pub loader: Arc<dyn ModelLoader>,
    pub options: RunnerOptions,
}

/// How the sweep is trained, where the callers differ.
#[derive(Debug, Clone, Default)]
pub struct SetupChoices<'a> {
    /// Only this run (`qlab run --only`).
    pub only: Option<&'a str>,
    /// These devices instead of the config's (empty: the config's `device` / `devices`).
    pub devices: Vec<DeviceSpec>,
    /// Train only: no answers after training.
    pub no_eval: bool,
    pub max_steps: Option<u64>,
}

impl SweepSetup {
    pub fn new(
        config: &Config,
        plan: &Plan,
        choices: SetupChoices<'_>,
    ) -> Result<Self, UnknownRun> {
        let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
        let jobs = jobs_from_plan(config, plan, choices.only)?;
        let evaluator: Option<Arc<dyn RunEvaluator>> = (!choices.no_eval).then(|| {
            Arc::new(PlanEvaluator::new(
                config.clone(),
                plan.clone(),
                sweep.clone(),
            )) as _
        });
        let devices = if choices.devices.is_empty() {
            sweep_devices(config)
        } else {
            choices.devices
        };
        Ok(SweepSetup {
            jobs,
            loader: Arc::new(DecoderLoader::new(config, plan)),
            options: RunnerOptions {
                max_steps: choices.max_steps,
                evaluator,
                devices,
                ..RunnerOptions::default()
            },
            sweep,
        })
    }
}
