//! `qlab plan`: the runs a config asks for, as a table or JSON.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::plan::Plan;
use serde::Serialize;

use super::{ConfigAndJson, load_config};

#[derive(Serialize)]
struct JsonRun<'a> {
    id: &'a str,
    model: &'a str,
    dataset: &'a str,
    task: &'a str,
    stages: &'a [String],
}

pub fn run(args: ConfigAndJson) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let plan = Plan::from_config(&config);
    if args.json {
        let runs: Vec<JsonRun> = plan
            .runs
            .iter()
            .map(|r| JsonRun {
                id: &r.id,
                model: &r.model,
                dataset: &r.dataset,
                task: &r.task,
                stages: &r.stages,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = plan
        .runs
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "sweep `{}`: {} run(s) into {}",
        plan.sweep,
        plan.runs.len(),
        config.runs_dir().join(&plan.sweep).display()
    );
    println!("{:width$}  {:<16} {:<12} stages", "run", "model", "dataset");
    for r in &plan.runs {
        println!(
            "{:width$}  {:<16} {:<12} {}",
            r.id,
            r.model,
            r.dataset,
            r.stages.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
