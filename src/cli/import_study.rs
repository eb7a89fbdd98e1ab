//! `qlab import-study DIR [--config CONFIG]`: the study's raw benchmark files as answers and ratings.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use color_eyre::eyre::Result;

use qlab::rating::context::RatingContext;
use qlab::rating::journal::now_rfc3339;
use qlab::rating::study::read_study_dir;
use qlab::rating::study::store::store;

use super::load_config;

/// Import the study's 42 raw output files: answers (eval hash `study`) and hand scores (rater `study`).
#[derive(Debug, Args)]
pub struct ImportStudyArgs {
    /// Folder of the raw files (searched with its subfolders for *-benchmark.txt).
    pub dir: PathBuf,
    /// The sweep's config, naming the runs that hold the study's models and tasks.
    #[arg(long, default_value = "examples/study.toml")]
    pub config: PathBuf,
}

pub fn run(args: ImportStudyArgs) -> Result<ExitCode> {
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let ctx = RatingContext::from_config(config)?;
    let import = read_study_dir(&args.dir, &ctx.rubric)?;
    for p in &import.problems {
        eprintln!("warning: {p}");
    }
    let run_for = |model: &str, task: &str| ctx.run_for(model, task);
    let questions_for = |task: &str| ctx.questions_for(task);
    let target = ctx.study_target(&run_for, &questions_for);
    let report = store(&import, &target, &now_rfc3339())?;
    println!(
        "imported {} files: {} answer files, {} ratings written, {} unchanged, {} cells left unrated",
        import.files.len(),
        report.answer_files.len(),
        report.ratings_written,
        report.ratings_unchanged,
        import.problems.len()
    );
    Ok(ExitCode::SUCCESS)
}
