//! The dashboard's rating side on disk: reads the answers to rate and the journal, appends judgements
//! (fsynced) and computes the results table, answering each with a message. Used by the event loop only.

use crate::rating::context::RatingContext;
use crate::rating::journal::{self, Entry, JournalLine, now_rfc3339};
use crate::rating::{RatingError, StagePair};

use super::checks::run_checks;
use super::msg::{Msg, RatingData, ResultsData};
use super::scores::run_scores;

/// The sweep's rating context, or why it could not be made (shown on the Rating and Results screens).
pub struct RatingFiles {
    ctx: Result<RatingContext, String>,
}

impl RatingFiles {
    pub fn new(ctx: Result<RatingContext, String>) -> Self {
        RatingFiles { ctx }
    }

    /// The items `rater` rates for `pair`, with the journal they are rated against.
    pub fn load_rating(&self, rater: &str, pair: StagePair) -> Msg {
        let result = self.ctx.as_ref().map_err(Clone::clone).and_then(|ctx| {
            let items = ctx.items(rater, &pair).map_err(|e| e.to_string())?;
            let path = ctx.sweep.ratings_journal();
            let journal = journal::read(&path, &ctx.rubric).map_err(|e| e.to_string())?;
            Ok(Box::new(RatingData {
                items,
                rubric: ctx.rubric.clone(),
                journal,
            }))
        });
        Msg::RatingLoaded { pair, result }
    }

    /// Append one judgement and fsync it: `JudgementSaved` only once it is on disk.
    pub fn save(&self, rater: &str, entry: Entry) -> Msg {
        let ctx = match &self.ctx {
            Ok(ctx) => ctx,
            Err(e) => return Msg::JudgementNotSaved { error: e.clone() },
        };
        let path = ctx.sweep.ratings_journal();
        let line = JournalLine::new(rater, now_rfc3339(), entry);
        match journal::append(&path, &ctx.rubric, &line) {
            Ok(()) => Msg::JudgementSaved(Box::new(line)),
            Err(e) => {
                tracing::error!("could not append to {}: {e}", path.display());
                Msg::JudgementNotSaved {
                    error: e.to_string(),
                }
            }
        }
    }

    /// The results table of every task, the runs' losses and the Sweep screen's cell scores and checks.
    pub fn load_results(&self) -> Msg {
        let result = self.ctx.as_ref().map_err(Clone::clone).and_then(|ctx| {
            let data = (|| -> Result<ResultsData, RatingError> {
                let (tasks, checks) = ctx.results_and_checks()?;
                Ok(ResultsData {
                    scores: run_scores(&ctx.plan, &tasks),
                    checks: run_checks(&ctx.plan, &checks),
                    losses: ctx.losses()?,
                    tasks,
                })
            })();
            data.map(Box::new).map_err(|e| {
                tracing::warn!("results are not shown: {e}");
                e.to_string()
            })
        });
        Msg::ResultsLoaded(result)
    }
}
