//! The dashboard's disk work, off the UI loop: reading answers and the ratings journal, appending judgements
//! (fsynced) and recomputing the results table (journal replay, bootstraps, every status.json) run on one
//! named thread that answers each job with a message, so a key press never waits on the disk.

use std::sync::mpsc::{self, Receiver, Sender};

use tokio::sync::mpsc::UnboundedSender;

use crate::rating::StagePair;
use crate::rating::journal::Entry;

use super::msg::Msg;
use super::rating_files::RatingFiles;

/// One piece of disk work, answered by the message named on each.
#[derive(Debug)]
pub enum DiskJob {
    /// Answered by `Msg::RatingLoaded`.
    LoadRating { rater: String, pair: StagePair },
    /// Answered by `Msg::JudgementSaved` once the line is fsynced, or `Msg::JudgementNotSaved`.
    Save { rater: String, entry: Box<Entry> },
    /// Answered by `Msg::ResultsLoaded`; several queued at once are computed once.
    LoadResults,
}

/// The UI loop's side of the disk thread.
pub struct DiskWorker {
    jobs: Sender<DiskJob>,
}

impl DiskWorker {
    /// Start the `qlab-tui-disk` thread; it ends when this handle is dropped or the answer side closes.
    pub fn spawn(files: RatingFiles, answers: UnboundedSender<Msg>) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("qlab-tui-disk".into())
            .spawn(move || serve(&files, &rx, &answers))?;
        Ok(DiskWorker { jobs })
    }

    /// Queue a job; false when the thread is gone (its answers would never come).
    pub fn send(&self, job: DiskJob) -> bool {
        self.jobs.send(job).is_ok()
    }
}

fn serve(files: &RatingFiles, jobs: &Receiver<DiskJob>, answers: &UnboundedSender<Msg>) {
    while let Ok(first) = jobs.recv() {
        let batch: Vec<DiskJob> = std::iter::once(first).chain(jobs.try_iter()).collect();
        let mut results = false;
        for job in batch {
            let msg = match job {
                DiskJob::LoadRating { rater, pair } => files.load_rating(&rater, pair),
                DiskJob::Save { rater, entry } => files.save(&rater, *entry),
                DiskJob::LoadResults => {
                    results = true;
                    continue;
                }
            };
            if answers.send(msg).is_err() {
                return;
            }
        }
        // After the saves of this batch, so the table counts them.
        if results && answers.send(files.load_results()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_asked_several_times_at_once_are_answered_once_and_errors_come_back_as_messages() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = DiskWorker::spawn(RatingFiles::new(Err("no config".into())), tx).unwrap();
        for _ in 0..5 {
            assert!(worker.send(DiskJob::LoadResults));
        }
        assert!(worker.send(DiskJob::Save {
            rater: "ann".into(),
            entry: Box::new(Entry::Undo),
        }));
        drop(worker);
        let mut answers = Vec::new();
        while let Some(msg) = rx.blocking_recv() {
            answers.push(msg);
        }
        let results = answers
            .iter()
            .filter(|m| matches!(m, Msg::ResultsLoaded(Err(e)) if e == "no config"))
            .count();
        assert!((1..=5).contains(&results), "{answers:?}");
        assert!(
            answers
                .iter()
                .any(|m| matches!(m, Msg::JudgementNotSaved { error } if error == "no config")),
            "{answers:?}"
        );
    }
}
