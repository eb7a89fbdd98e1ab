//! `qlab eval`: answers for every run of the plan (or one): base answers once per model and question set,
//! then each trained stage with its checkpoint's adapter; resumable, each answer written as it completes.

use std::collections::BTreeMap;
use std::process::ExitCode;

use candle_core::Device;
use color_eyre::eyre::Result;
use qlab::config::{Config, DeviceSpec};
use qlab::eval::evaluate::EvalModel;
use qlab::eval::stages::{AnswerSet, run_answer_sets};
use qlab::model::generate::open_model;
use qlab::plan::{Plan, PlannedRun};
use qlab::store::SweepPaths;

use super::{ConfigArg, load_config, open_device};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Evaluate only this run (its id as `qlab plan` prints it).
    #[arg(long)]
    pub only: Option<String>,
    /// Generate on this device (`cpu`, `cuda:N`, `auto`); default: the config's first device.
    #[arg(long, value_parser = super::parse_device)]
    pub device: Option<DeviceSpec>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    super::validate::preflight(&config)?;
    let plan = Plan::from_config(&config);
    let runs: Vec<&PlannedRun> = match &args.only {
        Some(id) => vec![plan.run(id).ok_or_else(|| {
            let ids: Vec<&str> = plan.runs.iter().map(|r| r.id.as_str()).collect();
            super::bad_flag(
                "--only",
                format!(
                    "no run {id:?} in {} (runs: {})",
                    args.config.config.display(),
                    ids.join(", ")
                ),
            )
        })?],
        None => plan.runs.iter().collect(),
    };
    let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
    let mut by_model: BTreeMap<&str, Vec<&PlannedRun>> = BTreeMap::new();
    for run in runs {
        by_model.entry(run.model.as_str()).or_default().push(run);
    }
    let device = open_device(args.device.unwrap_or(match config.sweep.devices.first() {
        Some(first) => *first,
        None => config.sweep.device,
    }))?;
    for (model_id, runs) in by_model {
        eval_model(&config, &sweep, model_id, &runs, &device)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn eval_model(
    config: &Config,
    sweep: &SweepPaths,
    model_id: &str,
    runs: &[&PlannedRun],
    device: &Device,
) -> Result<()> {
    let model = EvalModel::prepare(config, model_id)?;
    let mut sets: Vec<AnswerSet> = Vec::new();
    for run in runs {
        let (run_sets, waiting) = model.answer_sets(config, sweep, run)?;
        for stage in waiting {
            eprintln!(
                "{}: stage {stage} not trained yet (no checkpoint): skipped",
                run.id
            );
        }
        sets.extend(run_sets);
    }
    eprintln!("{model_id}: loading {}", model.path.display());
    let mut lm = open_model(&model.path, model.quant, None, device)?;
    let mut on_answer = |a: &qlab::eval::answers::AnswerRecord| {
        eprintln!(
            "{model_id} {:>5} q{:<6} {:>4} tokens {:>6.1} s",
            a.stage, a.question_id, a.new_tokens, a.secs
        );
    };
    for (stage, out, summary) in run_answer_sets(
        &mut lm,
        &model.tokenizer,
        model_id,
        sets,
        None,
        &mut on_answer,
    )? {
        println!(
            "{model_id} {stage}: {} new, {} already done -> {}",
            summary.written,
            summary.already_done,
            out.display()
        );
    }
    Ok(())
}
