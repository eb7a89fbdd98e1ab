//! The dashboard's view of a trainer: start some runs on a background thread, send it commands, receive
//! its events. The sweep runner implements it; tests and benchmarks use scripted ones.

use std::sync::mpsc::Receiver;

use crate::sweep::events::{RunEvent, RunnerCommand};

/// Why training could not start.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// A trainer that the dashboard can drive.
pub trait Trainer {
    /// Start training `runs`, in order, on a background thread. Its `(run id, event)` pairs arrive on the
    /// returned channel, which closes when the thread ends.
    fn start(&mut self, runs: &[String]) -> Result<Receiver<(String, RunEvent)>, StartError>;

    /// Pass a command to the running thread; ignored when none runs.
    fn send(&mut self, command: RunnerCommand);
}
