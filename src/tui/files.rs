//! The dashboard's file side: follows the metrics logs of runs this process does not train, reads lock
//! holders and log tails, and turns all of it into messages. Used by the event loop only.

use crate::store::{RunPaths, lock};
use crate::watch::MetricsFollower;
use crate::watch::tail::last_lines;

use super::msg::Msg;
use super::sweep_info::SweepInfo;

/// Lines of run.log kept for the Run screen.
const LOG_LINES: usize = 40;

struct Followed {
    run: String,
    paths: RunPaths,
    follower: MetricsFollower,
    /// Trained by this process: its events come from the runner channel instead.
    ours: bool,
}

/// All run directories of the sweep.
pub struct RunFiles {
    runs: Vec<Followed>,
}

impl RunFiles {
    pub fn new(sweep: &SweepInfo) -> Self {
        let paths = sweep.paths();
        let runs = sweep
            .runs
            .iter()
            .map(|p| {
                let rp = paths.run(&p.id);
                Followed {
                    run: p.id.clone(),
                    follower: MetricsFollower::new(&rp),
                    paths: rp,
                    ours: false,
                }
            })
            .collect();
        RunFiles { runs }
    }

    /// New events of every followed log, as messages; unreadable lines become a notice (and a log line).
    pub fn poll(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        for f in self.runs.iter_mut().filter(|f| !f.ours) {
            match f.follower.poll() {
                Ok(p) => {
                    out.extend(p.events.into_iter().map(Msg::Followed));
                    if let Some(first) = p.bad_lines.first() {
                        for bad in &p.bad_lines {
                            tracing::warn!("{bad}");
                        }
                        out.push(Msg::Notice(first.to_string()));
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    out.push(Msg::Notice(e.to_string()));
                }
            }
        }
        out
    }

    /// Live holders of each run's lock, leaving out this process.
    pub fn lock_holders(&self) -> Msg {
        let me = std::process::id();
        Msg::LockHolders(
            self.runs
                .iter()
                .map(|f| {
                    (
                        f.run.clone(),
                        lock::holder(&f.paths).filter(|&pid| pid != me),
                    )
                })
                .collect(),
        )
    }

    /// Mark runs as trained by this process (`true`) or followed from their files again (`false`); when
    /// following resumes, what the runner already reported over its channel is skipped.
    pub fn set_ours(&mut self, runs: &[String], ours: bool) {
        for f in self.runs.iter_mut().filter(|f| runs.contains(&f.run)) {
            if f.ours
                && !ours
                && let Err(e) = f.follower.skip_to_end()
            {
                tracing::warn!("{e}");
            }
            f.ours = ours;
        }
    }

    /// Runs currently trained by this process.
    pub fn ours(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|f| f.ours)
            .map(|f| f.run.clone())
            .collect()
    }

    /// The tail of a run's run.log as a message.
    pub fn log_tail(&self, run: &str) -> Option<Msg> {
        let f = self.runs.iter().find(|f| f.run == run)?;
        match last_lines(&f.paths.log(), LOG_LINES) {
            Ok(lines) => Some(Msg::LogTail {
                run: run.to_string(),
                lines,
            }),
            Err(e) => Some(Msg::Notice(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::atomic::append_line_synced;
    use crate::sweep::events::{LoggedEvent, RunEvent};
    use crate::tui::sweep_info::MatrixCell;

    fn sweep(dir: &std::path::Path) -> SweepInfo {
        let runs = vec![MatrixCell {
            id: "m-d-00000000".into(),
            model: "m".into(),
            dataset: "d".into(),
        }];
        SweepInfo {
            name: "s".into(),
            models: vec!["m".into()],
            datasets: vec!["d".into()],
            runs,
            runs_dir: dir.to_owned(),
        }
    }

    fn log(info: &SweepInfo, event: RunEvent) {
        let line = serde_json::to_string(&LoggedEvent {
            ts: 1.0,
            run: "m-d-00000000".into(),
            event,
        })
        .unwrap();
        append_line_synced(&info.paths().run("m-d-00000000").metrics(), &line).unwrap();
    }

    #[test]
    fn runs_trained_here_are_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let info = sweep(dir.path());
        let mut files = RunFiles::new(&info);
        log(&info, RunEvent::EpochDone { epoch: 1, step: 1 });
        assert_eq!(files.poll().len(), 1);
        files.set_ours(&["m-d-00000000".into()], true);
        log(&info, RunEvent::EpochDone { epoch: 2, step: 2 });
        assert!(
            files.poll().is_empty(),
            "our runner reports this run over its channel"
        );
        files.set_ours(&["m-d-00000000".into()], false);
        assert!(
            files.poll().is_empty(),
            "what the runner already reported is skipped"
        );
        log(&info, RunEvent::EpochDone { epoch: 3, step: 3 });
        assert_eq!(files.poll().len(), 1);
    }

    #[test]
    fn bad_lines_become_a_notice_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let info = sweep(dir.path());
        let mut files = RunFiles::new(&info);
        append_line_synced(&info.paths().run("m-d-00000000").metrics(), "garbage").unwrap();
        let msgs = files.poll();
        let [Msg::Notice(text)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert!(text.contains("metrics.jsonl:1:"), "{text}");
    }

    #[test]
    fn log_tail_and_lock_holders() {
        let dir = tempfile::tempdir().unwrap();
        let info = sweep(dir.path());
        let files = RunFiles::new(&info);
        let run = info.paths().run("m-d-00000000");
        std::fs::create_dir_all(&run.root).unwrap();
        std::fs::write(run.log(), "one\ntwo\n").unwrap();
        assert_eq!(
            files.log_tail("m-d-00000000"),
            Some(Msg::LogTail {
                run: "m-d-00000000".into(),
                lines: vec!["one".into(), "two".into()]
            })
        );
        assert_eq!(
            files.lock_holders(),
            Msg::LockHolders(vec![("m-d-00000000".into(), None)])
        );
    }
}
