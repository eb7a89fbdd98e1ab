//! The dashboard's inputs (messages) and the side effects its update asks the event loop to perform.

use crossterm::event::KeyEvent;

use crate::sweep::events::{LoggedEvent, RunEvent, RunnerCommand};

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
    /// Mean rating of a run.
    Score {
        run: String,
        score: f64,
    },
    Notice(String),
    /// The clock moved (the event loop's once-a-second tick).
    Tick {
        now: f64,
    },
    Resized,
    /// SIGTERM or SIGHUP: checkpoint and leave.
    Terminate,
}

/// Work for the event loop; update itself never does I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Train these runs, in order, on this process's runner thread.
    StartRuns(Vec<String>),
    Command(RunnerCommand),
    /// Load the tail of this run's run.log.
    LoadLog(String),
    /// Start a detached `qlab run` that resumes the sweep from its checkpoints.
    DetachToBackground,
    Quit,
}
