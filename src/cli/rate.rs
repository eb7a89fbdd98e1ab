//! `qlab rate [CONFIG] [--rater NAME] [--pair base-e1]`: blind keyboard rating in its own terminal loop.

use std::process::ExitCode;

use clap::Args;
use color_eyre::eyre::{Result, WrapErr};
use crossterm::event::{self, Event, KeyEventKind};

use qlab::rating::StagePair;
use qlab::rating::context::RatingContext;
use qlab::rating::journal::{self, JournalLine, now_rfc3339};
use qlab::tui::rating::{RatingAction, RatingScreen};

use super::{ConfigArg, load_config};

/// Who rates: `--rater NAME`, shared by `qlab rate` and the dashboard.
#[derive(Debug, Clone, Default, Args)]
pub struct RaterArg {
    /// Who is rating (defaults to $QLAB_RATER, then $USER, then `rater`).
    #[arg(long)]
    pub rater: Option<String>,
}

impl RaterArg {
    /// The rater's name: the flag, else $QLAB_RATER, else $USER, else `rater` (blank values skipped).
    pub fn name(&self) -> String {
        self.rater
            .clone()
            .into_iter()
            .chain(std::env::var("QLAB_RATER").ok())
            .chain(std::env::var("USER").ok())
            .find(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "rater".to_owned())
    }
}

/// Rate answers blind, two stages side by side; every key that scores is saved at once.
#[derive(Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub rater: RaterArg,
    /// The two stages to compare: base-e1, base-e3 or e1-e3.
    #[arg(long, default_value = "base-e1")]
    pub pair: StagePair,
    /// Show which stage wrote each answer from the start.
    #[arg(long)]
    pub unblind: bool,
}

pub fn run(args: RateArgs) -> Result<ExitCode> {
    let rater = args.rater.name();
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let ctx = RatingContext::from_config(config)?;
    let items = ctx.items(&rater, &args.pair)?;
    let ratings = ctx.ratings()?;
    let mut screen = RatingScreen::new(items, ctx.rubric.clone(), &rater, !args.unblind, ratings);
    let journal_path = ctx.sweep.ratings_journal();
    // ratatui::init installs a panic hook that restores the terminal before the panic is reported.
    let mut terminal = ratatui::init();
    let outcome = (|| -> Result<()> {
        loop {
            terminal
                .draw(|f| screen.render(f, f.area()))
                .wrap_err("drawing the rating screen")?;
            let Event::Key(key) = event::read().wrap_err("reading the keyboard")? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match screen.handle_key(key) {
                RatingAction::None => {}
                RatingAction::Quit => return Ok(()),
                RatingAction::Record(entry) => {
                    let line = JournalLine::new(&rater, now_rfc3339(), *entry);
                    match journal::append(&journal_path, &ctx.rubric, &line) {
                        Ok(()) => screen.saved(line),
                        Err(e) => screen.save_failed(&e.to_string()),
                    }
                }
            }
        }
    })();
    ratatui::restore();
    let (rated, total) = screen.progress();
    println!(
        "rated {rated}/{total} items; journal: {}",
        journal_path.display()
    );
    outcome.map(|()| ExitCode::SUCCESS)
}
