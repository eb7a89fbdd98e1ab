//! The dashboard's whole state: the sweep's runs and what is known of them, the screen, overlays and the
//! cursor. Changed only by [`super::update::update`]; read by the views.

use crate::cluster::poll::{CellJob, Request};
use crate::rating::{Entry, StagePair};
use crate::watch::RunHistory;

use super::checks::RunCheck;
use super::rating::RatingScreen;
use super::results::ResultsScreen;
use super::sweep_info::{MatrixCell, SweepInfo};

/// The screen filling the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Sweep,
    /// One run, by index into [`App::runs`].
    Run(usize),
    /// Blind rating of two stages' answers, hosted from [`super::rating`].
    Rating,
    /// The study's results table, hosted from [`super::results`].
    Results,
}

/// A window drawn over the screen that takes the keys while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Help,
    /// Quitting while this process trains: stop, hand over to the background, or cancel.
    QuitWhileTraining,
    /// Asks y/n before [`App::confirm`] goes to the cluster.
    Confirm,
}

/// Who trains a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Nobody,
    /// The runner thread of this process.
    Us,
    /// Another live process holds the run's lock: shown read-only.
    Other(u32),
}

/// This process's runner, as the dashboard drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Idle,
    Running,
    Paused,
    /// Asked to stop after the next checkpoint; waiting for the run to end.
    Stopping,
}

/// What to do once the runner has stopped, when a quit is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingExit {
    Quit,
    /// Hand the sweep over to a detached `qlab run`, then quit.
    DetachThenQuit,
}

/// A hosted screen whose data the event loop loads from disk.
#[derive(Debug, Clone)]
pub enum Pane<T> {
    /// Never asked for.
    NotLoaded,
    Loading,
    Ready(T),
    /// Why it could not be loaded (names the file or setting at fault).
    Failed(String),
}

/// The pairs of stages the rating screen compares, in the order `v` cycles through them.
pub const STAGE_PAIRS: [(&str, &str); 3] = [("base", "e1"), ("base", "e3"), ("e1", "e3")];

/// The hosted rating screen and the judgement waiting for its journal append.
#[derive(Debug, Clone)]
pub struct RatingPane {
    /// Who rates: names every journal line written from this dashboard.
    pub rater: String,
    pub pair: StagePair,
    pub screen: Pane<RatingScreen>,
    /// A judgement not yet on disk: set when asked to be saved, cleared only once the fsynced append
    /// succeeded. After a failed append it stays here, shown as NOT SAVED, until saved again.
    pub pending: Option<Entry>,
}

/// One run of the sweep and what the dashboard knows about it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub plan: MatrixCell,
    pub history: RunHistory,
    pub owner: Owner,
    /// The study's score of each rated fine-tuned stage of the run, in stage order, from the results table.
    pub scores: Vec<(String, f64)>,
    /// The automatic check of the run's answers, stage by stage, from the results table's refresh.
    pub check: Option<RunCheck>,
    /// Last lines of run.log, loaded while the run is on screen.
    pub log_tail: Vec<String>,
    /// The run's cluster job (SLURM), as last polled.
    pub job: Option<CellJob>,
}

impl RunEntry {
    /// The score of the run's latest rated fine-tuned stage (the matrix cell's score).
    pub fn score(&self) -> Option<f64> {
        self.scores.last().map(|(_, s)| *s)
    }
}

/// The sweep's cluster as the dashboard knows it (None on [`App::cluster`]: a local sweep).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// Set when the last poll could not reach the scheduler: the job states shown are stale.
    pub stale: Option<String>,
    /// Whether a poll has answered yet.
    pub polled: bool,
}

/// The dashboard state.
#[derive(Debug, Clone)]
pub struct App {
    pub sweep: SweepInfo,
    pub runs: Vec<RunEntry>,
    pub screen: Screen,
    /// Where Back leaves the Rating and Results screens for (the Sweep or a Run screen).
    pub back_to: Screen,
    pub rating: RatingPane,
    pub results: Pane<ResultsScreen>,
    pub overlay: Option<Overlay>,
    /// Selected cell: (model row, dataset column).
    pub cursor: (usize, usize),
    pub control: Control,
    pub pending_exit: Option<PendingExit>,
    /// One line for the researcher (a refused action, a file that could not be read).
    pub notice: Option<String>,
    /// The sweep's cells run as cluster jobs (`[cluster] backend = "slurm"`).
    pub cluster: Option<ClusterView>,
    /// The cluster request waiting for its y/n ([`Overlay::Confirm`]).
    pub confirm: Option<Request>,
    /// Wall-clock seconds since the Unix epoch, injected by the event loop (or a test).
    pub now: f64,
    /// Something visible changed since the last frame.
    pub dirty: bool,
    pub quit: bool,
}

impl App {
    /// The dashboard on a sweep; `rater` names the judgements made on its Rating screen.
    pub fn new(sweep: SweepInfo, rater: &str, now: f64) -> Self {
        let runs = sweep
            .runs
            .iter()
            .map(|p| RunEntry {
                plan: p.clone(),
                history: RunHistory::new(&p.id),
                owner: Owner::Nobody,
                scores: Vec::new(),
                check: None,
                log_tail: Vec::new(),
                job: None,
            })
            .collect();
        App {
            sweep,
            runs,
            screen: Screen::Sweep,
            back_to: Screen::Sweep,
            rating: RatingPane {
                rater: rater.to_owned(),
                pair: StagePair::default(),
                screen: Pane::NotLoaded,
                pending: None,
            },
            results: Pane::NotLoaded,
            overlay: None,
            cursor: (0, 0),
            control: Control::Idle,
            pending_exit: None,
            notice: None,
            cluster: None,
            confirm: None,
            now,
            dirty: true,
            quit: false,
        }
    }

    /// Index of the run in a matrix cell, if the plan has one there.
    pub fn run_at(&self, model: usize, dataset: usize) -> Option<usize> {
        let (m, d) = (
            self.sweep.models.get(model)?,
            self.sweep.datasets.get(dataset)?,
        );
        self.runs
            .iter()
            .position(|r| &r.plan.model == m && &r.plan.dataset == d)
    }

    /// The run under the cursor.
    pub fn selected_run(&self) -> Option<usize> {
        self.run_at(self.cursor.0, self.cursor.1)
    }

    pub fn run_index(&self, run_id: &str) -> Option<usize> {
        self.runs.iter().position(|r| r.plan.id == run_id)
    }

    /// Whether this process's runner is working (so quitting must ask).
    pub fn training_here(&self) -> bool {
        matches!(
            self.control,
            Control::Running | Control::Paused | Control::Stopping
        )
    }
}
