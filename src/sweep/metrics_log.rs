//! A run's metrics.jsonl: one [`LoggedEvent`] per line, appended and flushed per line by the runner, read
//! back by watchers, and cut back to a checkpoint when a run resumes.
//!
//! Resume rule: when a run resumes from the checkpoint at step S, the log is rewritten (atomically) without
//! the `step`, `checkpoint_saved` and `epoch_done` events of steps after S and without a torn last line (a
//! process killed mid-write). Everything else stays as history (earlier `run_started`, `run_failed`,
//! `interrupted`, telemetry). The resumed runner then appends `run_started { start_step: S }` and steps
//! S+1, S+2, ...: each step appears exactly once.

use std::path::{Path, PathBuf};

use super::events::{LoggedEvent, RunEvent};
use crate::store::StoreError;
use crate::store::atomic::write_atomic;
use crate::store::jsonl::Appender;

/// An open metrics log, appending one line per event (a torn last line is moved aside first).
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    journal: Appender,
}

impl MetricsLog {
    pub fn open(path: &Path) -> Result<MetricsLog, StoreError> {
        Ok(MetricsLog {
            path: path.to_owned(),
            journal: Appender::open(path)?,
        })
    }

    /// Append one event as a single write; lifecycle events are also fsynced.
    pub fn append(&mut self, event: &LoggedEvent) -> Result<(), StoreError> {
        let line = serde_json::to_string(event).map_err(|e| StoreError::Json {
            path: self.path.clone(),
            what: "LoggedEvent",
            source: e,
        })?;
        self.journal.append(&[&line], event.event.is_lifecycle())
    }
}

/// Every complete event in a metrics log (a missing file is an empty log; unreadable lines are skipped).
pub fn read_events(path: &Path) -> Result<Vec<LoggedEvent>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

fn after(event: &RunEvent, step: u64) -> bool {
    match event {
        RunEvent::Step(m) => m.step > step,
        RunEvent::CheckpointSaved { step: s, .. } | RunEvent::EpochDone { step: s, .. } => {
            *s > step
        }
        _ => false,
    }
}

/// Apply the resume rule (module docs) for a resume from `step`; returns how many lines were dropped.
pub fn cut_back_to(path: &Path, step: u64) -> Result<usize, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.split_inclusive('\n') {
        let keep = line.ends_with('\n')
            && serde_json::from_str::<LoggedEvent>(line).is_ok_and(|e| !after(&e.event, step));
        if keep {
            kept.push_str(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::events::StepMetrics;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn step(n: u64) -> LoggedEvent {
        LoggedEvent {
            ts: n as f64,
            run: "r".into(),
            event: RunEvent::Step(StepMetrics {
                step: n,
                epoch: 0.0,
                loss: 1.0,
                lr: 0.1,
                grad_norm: 1.0,
                tokens_per_s: 1.0,
                step_s: 1.0,
                rss_mib: 1.0,
            }),
        }
    }

    fn ev(event: RunEvent) -> LoggedEvent {
        LoggedEvent {
            ts: 0.0,
            run: "r".into(),
            event,
        }
    }

    #[test]
    fn cut_back_drops_later_steps_and_a_torn_line_but_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&p).unwrap();
        log.append(&ev(RunEvent::RunStarted {
            total_steps: 9,
            start_step: 0,
            device: "cpu".into(),
            pid: 1,
        }))
        .unwrap();
        for n in 1..=3 {
            log.append(&step(n)).unwrap();
        }
        log.append(&ev(RunEvent::CheckpointSaved {
            step: 2,
            stage: None,
            bytes: 1,
            secs: 0.1,
        }))
        .unwrap();
        log.append(&ev(RunEvent::EpochDone { epoch: 1, step: 3 }))
            .unwrap();
        log.append(&ev(RunEvent::RunFailed {
            step: Some(3),
            reason: "x".into(),
        }))
        .unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"ts\":1,\"run\":\"r\",\"event\":\"st")
            .unwrap();
        assert_eq!(cut_back_to(&p, 2).unwrap(), 3);
        let events: Vec<RunEvent> = read_events(&p)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events.len(), 5);
        assert!(matches!(events.last(), Some(RunEvent::RunFailed { .. })));
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 5);
        assert_eq!(cut_back_to(&p, 2).unwrap(), 0);
    }
}
