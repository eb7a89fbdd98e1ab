//! Between two steps the runner asks: go on, pause, stop after a checkpoint, or cancel? Commands come over a
//! channel; a stop flag (set by a signal handler) is checked too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use super::events::{RunEvent, RunnerCommand};
use super::sink::EventSink;
use crate::store::StoreError;

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Continue,
    /// Write a checkpoint, then end the run as interrupted (resumable) and stop the sweep.
    Stop(String),
    /// End now without a checkpoint (the last complete one stays) and stop the sweep.
    Cancel,
}

/// Reads commands and the stop flag for the runner thread.
pub struct Control<'a> {
    commands: &'a Receiver<RunnerCommand>,
    stop_flag: &'a AtomicBool,
    stop_requested: bool,
}

const PAUSE_POLL: Duration = Duration::from_millis(100);

impl<'a> Control<'a> {
    pub fn new(commands: &'a Receiver<RunnerCommand>, stop_flag: &'a AtomicBool) -> Self {
        Control {
            commands,
            stop_flag,
            stop_requested: false,
        }
    }

    /// Drain pending commands; while paused, block here (emitting `Paused` / `Resumed` at `step`).
    pub fn poll(&mut self, sink: &EventSink, step: u64) -> Result<Directive, StoreError> {
        let mut paused = false;
        loop {
            match self.commands.try_recv() {
                Ok(RunnerCommand::Pause) => paused = true,
                Ok(RunnerCommand::Resume) => paused = false,
                Ok(RunnerCommand::StopAfterCheckpoint) => self.stop_requested = true,
                Ok(RunnerCommand::Cancel) => return Ok(Directive::Cancel),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if paused && !self.stop_requested {
            sink.emit(RunEvent::Paused { step })?;
            loop {
                if self.stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                match self.commands.recv_timeout(PAUSE_POLL) {
                    Ok(RunnerCommand::Resume) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(RunnerCommand::StopAfterCheckpoint) => {
                        self.stop_requested = true;
                        break;
                    }
                    Ok(RunnerCommand::Cancel) => return Ok(Directive::Cancel),
                    Ok(RunnerCommand::Pause) | Err(RecvTimeoutError::Timeout) => {}
                }
            }
            sink.emit(RunEvent::Resumed { step })?;
        }
        Ok(if self.stop_flag.load(Ordering::SeqCst) {
            Directive::Stop("stopped by a signal".to_string())
        } else if self.stop_requested {
            Directive::Stop("stop requested".to_string())
        } else {
            Directive::Continue
        })
    }

    /// While a run answers its questions (no steps, no checkpoints to wait for): has a stop, a cancel or the
    /// stop flag asked the runner to end? Pause and resume are not honoured while answering.
    pub fn stop_asked(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            if matches!(
                command,
                RunnerCommand::StopAfterCheckpoint | RunnerCommand::Cancel
            ) {
                self.stop_requested = true;
            }
        }
        self.stop_requested || self.stop_flag.load(Ordering::SeqCst)
    }
}
