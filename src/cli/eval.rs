//! `qlab eval`: answers for every run of the plan (or one): base answers once per model and question set,
//! then each trained stage with its checkpoint's adapter; resumable, each answer written as it completes.

use std::collections::BTreeMap;
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr, eyre};
use qlab::config::{Config, PromptStyle};
use qlab::eval::prompts::QuestionPrompt;
use qlab::eval::questions::QuestionSet;
use qlab::eval::sources;
use qlab::eval::stages::{AnswerSet, answer_sets, generation_options, run_answer_sets};
use qlab::model::generate::open_model;
use qlab::model::source::ResolveOptions;
use qlab::model::tokenizer::Tokenizer;
use qlab::plan::{Plan, PlannedRun};
use qlab::store::SweepPaths;

use super::{ConfigArg, load_config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Evaluate only this run (its id as `qlab plan` prints it).
    #[arg(long)]
    pub only: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let plan = Plan::from_config(&config);
    let runs: Vec<&PlannedRun> = match &args.only {
        Some(id) => vec![plan.run(id).ok_or_else(|| {
            let ids: Vec<&str> = plan.runs.iter().map(|r| r.id.as_str()).collect();
            eyre!(
                "no run {id:?} in {} (runs: {})",
                args.config.config.display(),
                ids.join(", ")
            )
        })?],
        None => plan.runs.iter().collect(),
    };
    let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
    let mut by_model: BTreeMap<&str, Vec<&PlannedRun>> = BTreeMap::new();
    for run in runs {
        by_model.entry(run.model.as_str()).or_default().push(run);
    }
    for (model_id, runs) in by_model {
        eval_model(&config, &sweep, model_id, &runs)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn eval_model(
    config: &Config,
    sweep: &SweepPaths,
    model_id: &str,
    runs: &[&PlannedRun],
) -> Result<()> {
    let model = config
        .model(model_id)
        .ok_or_else(|| eyre!("no [[model]] {model_id:?}"))?;
    let source = sources::source_of(model, config);
    let path = source
        .resolve(&ResolveOptions::from_env()?)
        .wrap_err_with(|| format!("model {model_id}"))?;
    let tokenizer = Tokenizer::load(&path).wrap_err_with(|| format!("model {model_id}"))?;
    let chat_override = sources::chat_template_override(model, config)
        .wrap_err_with(|| format!("model {model_id}: chat_template file"))?;
    let mut sets: Vec<AnswerSet> = Vec::new();
    for run in runs {
        let (run_sets, waiting) = run_sets(config, sweep, run, &tokenizer, &chat_override)?;
        for stage in waiting {
            eprintln!(
                "{}: stage {stage} not trained yet (no checkpoint): skipped",
                run.id
            );
        }
        sets.extend(run_sets);
    }
    eprintln!("{model_id}: loading {}", path.display());
    let mut lm = open_model(&path, sources::quant_name(model.quant), None)?;
    let mut on_answer = |a: &qlab::eval::answers::AnswerRecord| {
        eprintln!(
            "{model_id} {:>5} q{:<6} {:>4} tokens {:>6.1} s",
            a.stage, a.question_id, a.new_tokens, a.secs
        );
    };
    for (stage, out, summary) in
        run_answer_sets(&mut lm, &tokenizer, model_id, sets, &mut on_answer)?
    {
        println!(
            "{model_id} {stage}: {} new, {} already done -> {}",
            summary.written,
            summary.already_done,
            out.display()
        );
    }
    Ok(())
}

fn run_sets(
    config: &Config,
    sweep: &SweepPaths,
    run: &PlannedRun,
    tokenizer: &Tokenizer,
    chat_override: &Option<Option<String>>,
) -> Result<(Vec<AnswerSet>, Vec<String>)> {
    let dataset = &run.spec.dataset;
    let questions_file = dataset.questions.as_deref().ok_or_else(|| {
        eyre!(
            "dataset {}: no `questions` file to benchmark it with",
            dataset.id
        )
    })?;
    let set = QuestionSet::load(&config.resolve_path(questions_file))
        .map_err(|errors| eyre!("{errors}"))?;
    let style = run.spec.eval.prompt;
    let override_text = match (chat_override, style) {
        (Some(None), PromptStyle::Chat) => {
            return Err(eyre!(
                "model {}: chat_template = \"none\" but [eval] prompt = \"chat\"",
                run.model
            ));
        }
        (Some(Some(text)), _) => Some(text.as_str()),
        _ => None,
    };
    let prompt = QuestionPrompt::new(dataset, style, tokenizer, override_text)?;
    let questions = prompt.prompt_all(&set)?;
    let generation = generation_options(&run.spec.eval, tokenizer);
    Ok(answer_sets(
        sweep,
        run,
        &set.id,
        &questions,
        &generation,
        prompt.add_special_tokens(),
    ))
}
