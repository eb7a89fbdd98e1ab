//! The dashboard's whole state: the sweep's runs and what is known of them, the screen, overlays and the
//! cursor. Changed only by [`super::update::update`]; read by the views.

use crate::watch::RunHistory;

use super::sweep_info::{MatrixCell, SweepInfo};

/// The screen filling the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Sweep,
    /// One run, by index into [`App::runs`].
    Run(usize),
}

/// A window drawn over the screen that takes the keys while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Help,
    /// Quitting while this process trains: stop, hand over to the background, or cancel.
    QuitWhileTraining,
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

/// One run of the sweep and what the dashboard knows about it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub plan: MatrixCell,
    pub history: RunHistory,
    pub owner: Owner,
    /// Mean rating once rated.
    pub score: Option<f64>,
    /// Last lines of run.log, loaded while the run is on screen.
    pub log_tail: Vec<String>,
}

/// The dashboard state.
#[derive(Debug, Clone)]
pub struct App {
    pub sweep: SweepInfo,
    pub runs: Vec<RunEntry>,
    pub screen: Screen,
    pub overlay: Option<Overlay>,
    /// Selected cell: (model row, dataset column).
    pub cursor: (usize, usize),
    pub control: Control,
    pub pending_exit: Option<PendingExit>,
    /// One line for the researcher (a refused action, a file that could not be read).
    pub notice: Option<String>,
    /// Wall-clock seconds since the Unix epoch, injected by the event loop (or a test).
    pub now: f64,
    /// Something visible changed since the last frame.
    pub dirty: bool,
    pub quit: bool,
}

impl App {
    pub fn new(sweep: SweepInfo, now: f64) -> Self {
        let runs = sweep
            .runs
            .iter()
            .map(|p| RunEntry {
                plan: p.clone(),
                history: RunHistory::new(&p.id),
                owner: Owner::Nobody,
                score: None,
                log_tail: Vec::new(),
            })
            .collect();
        App {
            sweep,
            runs,
            screen: Screen::Sweep,
            overlay: None,
            cursor: (0, 0),
            control: Control::Idle,
            pending_exit: None,
            notice: None,
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
