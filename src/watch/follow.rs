//! Following a run's metrics.jsonl as it grows, turning new lines into [`LoggedEvent`]s.

use std::path::PathBuf;

use crate::store::RunPaths;
use crate::sweep::events::LoggedEvent;

use super::WatchError;
use super::history::RunHistory;
use super::tail::LineTail;

/// New events of one metrics log, and the lines that could not be read (reported, then skipped).
#[derive(Debug, Default)]
pub struct Polled {
    pub events: Vec<LoggedEvent>,
    pub bad_lines: Vec<WatchError>,
}

/// Tails one run's metrics log.
#[derive(Debug, Clone)]
pub struct MetricsFollower {
    tail: LineTail,
}

impl MetricsFollower {
    pub fn new(run: &RunPaths) -> Self {
        MetricsFollower {
            tail: LineTail::new(run.metrics()),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.tail.path().to_owned()
    }

    /// Events appended since the last poll. An I/O error is returned; a malformed line is reported in
    /// [`Polled::bad_lines`] and skipped so one bad line does not blind the watcher.
    pub fn poll(&mut self) -> Result<Polled, WatchError> {
        let mut out = Polled::default();
        for line in self.tail.read_new()? {
            if line.text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<LoggedEvent>(&line.text) {
                Ok(e) => out.events.push(e),
                Err(source) => out.bad_lines.push(WatchError::BadLine {
                    path: self.tail.path().to_owned(),
                    line: line.number,
                    source,
                }),
            }
        }
        Ok(out)
    }

    /// Ignore what the log holds now; later polls return only newer events.
    pub fn skip_to_end(&mut self) -> Result<(), WatchError> {
        self.tail.skip_to_end()
    }
}

impl RunHistory {
    /// Rebuild a run's history from its metrics log (an empty history when there is no log yet).
    /// Returns the history and the lines that could not be read.
    pub fn load(run_id: &str, run: &RunPaths) -> Result<(RunHistory, Vec<WatchError>), WatchError> {
        let mut h = RunHistory::new(run_id);
        let polled = MetricsFollower::new(run).poll()?;
        for e in &polled.events {
            h.apply_logged(e);
        }
        Ok((h, polled.bad_lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SweepPaths;
    use crate::store::atomic::append_line_synced;
    use crate::sweep::events::RunEvent;

    fn log(run: &RunPaths, ts: f64, event: RunEvent) {
        let line = serde_json::to_string(&LoggedEvent {
            ts,
            run: "r".into(),
            event,
        })
        .unwrap();
        append_line_synced(&run.metrics(), &line).unwrap();
    }

    #[test]
    fn follows_a_growing_log_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let run = SweepPaths::new(dir.path(), "demo").run("r");
        let mut f = MetricsFollower::new(&run);
        assert!(f.poll().unwrap().events.is_empty());
        log(
            &run,
            1.0,
            RunEvent::RunStarted {
                total_steps: 5,
                start_step: 0,
                device: "cpu".into(),
                pid: 1,
            },
        );
        append_line_synced(&run.metrics(), "{\"ts\": oops}").unwrap();
        log(&run, 2.0, RunEvent::EpochDone { epoch: 1, step: 5 });
        let p = f.poll().unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.bad_lines.len(), 1);
        let msg = p.bad_lines[0].to_string();
        assert!(msg.contains("metrics.jsonl:2:"), "{msg}");
        assert!(f.poll().unwrap().events.is_empty());
        log(&run, 3.0, RunEvent::RunFinished { step: 5, secs: 2.0 });
        assert_eq!(f.poll().unwrap().events.len(), 1);
        let (h, bad) = RunHistory::load("r", &run).unwrap();
        assert_eq!(h.state, crate::store::RunState::Done);
        assert_eq!(bad.len(), 1);
    }
}
