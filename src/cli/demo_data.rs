//! `qlab demo-data`: regenerate the demo sweep's arithmetic word problems.

use std::path::PathBuf;
use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::demo_data;
use qlab::store::atomic::write_atomic;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output file.
    #[arg(long, default_value = "data/arith.jsonl")]
    pub out: PathBuf,
    /// Number of problems.
    #[arg(long, default_value_t = 96)]
    pub rows: usize,
    #[arg(long, default_value_t = 3407)]
    pub seed: u64,
    /// Replace `--out` when it exists (regenerating the committed file).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    super::refuse_overwrite(&args.out, args.force)?;
    if args.rows == 0 {
        return Err(super::bad_flag("--rows", "must be at least 1"));
    }
    let rows = demo_data::arithmetic(args.seed, args.rows);
    write_atomic(&args.out, demo_data::to_jsonl(&rows).as_bytes())?;
    eprintln!(
        "{}: {} problem(s) (seed {})",
        args.out.display(),
        rows.len(),
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}
