//! The dashboard's inputs (messages) and the side effects its update asks the event loop to perform.

use std::collections::BTreeMap;

use crossterm::event::KeyEvent;

use crate::cluster::poll::{Report, Request};
use crate::rating::session::RatingItem;
use crate::rating::{Entry, JournalLine, Rubric, StagePair, TaskResults};
use crate::sweep::events::{LoggedEvent, RunEvent, RunnerCommand};
use crate::tui::checks::RunCheck;

use super::scores::RunScores;

/// What the rating screen is opened with, read from the sweep's answers and journal.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingData {
    pub items: Vec<RatingItem>,
    pub rubric: Rubric,
    /// The whole journal, replayed by the screen.
    pub journal: Vec<JournalLine>,
}

/// The results table and what derives from it, computed once per refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsData {
    pub tasks: Vec<TaskResults>,
    /// Each run's last training loss, keyed by (task, model).
    pub losses: BTreeMap<(String, String), f64>,
    /// Each rated run's stage scores (the Sweep screen shows the latest, the Run screen each).
    pub scores: Vec<RunScores>,
    /// Each run's automatic check on the Sweep screen, by run id (there before any rating).
    pub checks: Vec<(String, RunCheck)>,
}

/// Something that happened, fed to [`super::update::update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Key(KeyEvent),
    /// An event from this process's runner, stamped with the time it arrived.
    Runner {
        run: String,
        event: RunEvent,
        ts: f64,
    },
    /// This process's runner thread ended (its channel closed).
    RunnerExited,
    /// A new line of the metrics log of a run this process does not train.
    Followed(LoggedEvent),
    /// Live lock holders, by run id (`None`: unlocked or stale).
    LockHolders(Vec<(String, Option<u32>)>),
    LogTail {
        run: String,
        lines: Vec<String>,
    },
    /// The rating screen's items for `pair` (or why they could not be read).
    RatingLoaded {
        pair: StagePair,
        result: Result<Box<RatingData>, String>,
    },
    /// The pending judgement is in the journal, fsynced, as this line.
    JudgementSaved(Box<JournalLine>),
    /// Appending the pending judgement failed; it stays pending.
    JudgementNotSaved {
        error: String,
    },
    /// The results table, recomputed from the journal and the runs' status files.
    ResultsLoaded(Result<Box<ResultsData>, String>),
    Notice(String),
    /// From the cluster poller: the cells' jobs, an unreachable scheduler, or a request's outcome.
    Cluster(Report),
    /// The clock moved (the event loop's once-a-second tick).
    Tick {
        now: f64,
    },
    Resized,
    /// SIGTERM or SIGHUP: checkpoint and leave.
    Terminate,
    /// The background runner could not be started on quitting: the dashboard stays open to say so.
    DetachFailed {
        error: String,
    },
}

/// Work for the event loop; update itself never does I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Train these runs, in order, on this process's runner thread.
    StartRuns(Vec<String>),
    Command(RunnerCommand),
    /// Load the tail of this run's run.log.
    LoadLog(String),
    /// Read the rating items of `pair` for `rater`; answered by [`Msg::RatingLoaded`].
    LoadRating {
        rater: String,
        pair: StagePair,
    },
    /// Append this judgement to the ratings journal (fsynced); answered by [`Msg::JudgementSaved`] or
    /// [`Msg::JudgementNotSaved`].
    SaveJudgement {
        rater: String,
        entry: Box<Entry>,
    },
    /// Recompute the results table; answered by [`Msg::ResultsLoaded`].
    LoadResults,
    /// Start a detached `qlab run` that resumes the sweep from its checkpoints.
    DetachToBackground,
    /// Pass a request (cancel, resubmit) to the cluster poller thread.
    Cluster(Request),
    Quit,
}
