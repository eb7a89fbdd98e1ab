//! Where a run's events go: appended to its metrics.jsonl and sent to the runner's channel, from the runner
//! thread and the telemetry thread alike.

use std::sync::Mutex;
use std::sync::mpsc::Sender;

use super::events::{LoggedEvent, RunEvent};
use super::metrics_log::MetricsLog;
use crate::store::{StoreError, now_secs};

/// One run's event destination.
pub struct EventSink {
    run: String,
    tx: Sender<(String, RunEvent)>,
    log: Mutex<MetricsLog>,
}

impl EventSink {
    pub fn new(run: &str, tx: Sender<(String, RunEvent)>, log: MetricsLog) -> Self {
        EventSink {
            run: run.to_string(),
            tx,
            log: Mutex::new(log),
        }
    }

    /// Log the event, then send it (a watcher that went away does not stop training).
    pub fn emit(&self, event: RunEvent) -> Result<(), StoreError> {
        let logged = LoggedEvent {
            ts: now_secs(),
            run: self.run.clone(),
            event,
        };
        let written = match self.log.lock() {
            Ok(mut log) => log.append(&logged),
            Err(poisoned) => poisoned.into_inner().append(&logged),
        };
        let _ = self.tx.send((logged.run, logged.event));
        written
    }
}
