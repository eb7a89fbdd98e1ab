//! The sweep runner (`sweep::runner`) as the dashboard's [`Trainer`]: each start spawns a runner thread on
//! the chosen runs; commands go to the runner in progress.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};

use crate::store::SweepPaths;
use crate::sweep::events::{RunEvent, RunnerCommand};
use crate::sweep::job::{ModelLoader, RunJob};
use crate::sweep::runner::{Runner, RunnerHandle, RunnerOptions};

use super::trainer::{StartError, Trainer};

/// Trains a sweep's runs on runner threads of this process.
pub struct RunnerTrainer {
    sweep: SweepPaths,
    jobs: Vec<RunJob>,
    loader: Arc<dyn ModelLoader>,
    options: RunnerOptions,
    handle: Option<RunnerHandle>,
}

impl RunnerTrainer {
    pub fn new(
        sweep: SweepPaths,
        jobs: Vec<RunJob>,
        loader: Arc<dyn ModelLoader>,
        options: RunnerOptions,
    ) -> Self {
        RunnerTrainer {
            sweep,
            jobs,
            loader,
            options,
            handle: None,
        }
    }
}

impl Trainer for RunnerTrainer {
    fn start(&mut self, runs: &[String]) -> Result<Receiver<(String, RunEvent)>, StartError> {
        if self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            return Err("a runner is already training in this process".into());
        }
        let jobs: Vec<RunJob> = runs
            .iter()
            .filter_map(|id| self.jobs.iter().find(|j| &j.run_id == id).cloned())
            .collect();
        if jobs.len() != runs.len() {
            return Err(format!(
                "{} of the {} runs asked for are not in the plan",
                runs.len() - jobs.len(),
                runs.len()
            )
            .into());
        }
        let mut handle = Runner::spawn(
            self.sweep.clone(),
            jobs,
            self.loader.clone(),
            self.options.clone(),
        )?;
        // The dashboard reads events from its own forwarding thread; the handle keeps the command side.
        let (_unused, placeholder) = mpsc::channel();
        let events = std::mem::replace(&mut handle.events, placeholder);
        self.handle = Some(handle);
        Ok(events)
    }

    fn send(&mut self, command: RunnerCommand) {
        if let Some(h) = &self.handle {
            h.send(command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunState;
    use crate::sweep::job::LoadError;
    use crate::sweep::toy::{ToyLoader, toy_job, write_toy_csv};
    use crate::tui::app::{App, Control};
    use crate::tui::msg::{Effect, Msg};
    use crate::tui::sweep_info::{MatrixCell, SweepInfo};
    use crate::tui::update::update;

    #[test]
    fn the_dashboard_drives_the_real_runner_and_fills_its_cells() {
        let dir = tempfile::tempdir().unwrap();
        let data = write_toy_csv(dir.path(), 12).unwrap();
        let cells = vec![
            MatrixCell {
                id: "toy-a".into(),
                model: "toy".into(),
                dataset: "a".into(),
            },
            MatrixCell {
                id: "toy-b".into(),
                model: "toy".into(),
                dataset: "b".into(),
            },
        ];
        let info = SweepInfo {
            name: "s".into(),
            models: vec!["toy".into()],
            datasets: vec!["a".into(), "b".into()],
            runs: cells,
            runs_dir: dir.path().to_owned(),
        };
        let jobs = vec![toy_job("toy-a", &data, 1), toy_job("toy-b", &data, 1)];
        let mut trainer = RunnerTrainer::new(
            info.paths(),
            jobs,
            Arc::new(ToyLoader {
                hidden: 32,
                seed: 5,
            }),
            RunnerOptions::default(),
        );
        let mut app = App::new(info, "ann", 0.0);
        let effects = update(
            &mut app,
            Msg::Key(crossterm::event::KeyEvent::from(
                crossterm::event::KeyCode::Char('s'),
            )),
        );
        let [Effect::StartRuns(runs)] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        let events = trainer.start(runs).unwrap();
        for (i, (run, event)) in events.iter().enumerate() {
            update(
                &mut app,
                Msg::Runner {
                    run,
                    event,
                    ts: i as f64,
                },
            );
        }
        update(&mut app, Msg::RunnerExited);
        assert_eq!(app.control, Control::Idle);
        for r in &app.runs {
            assert_eq!(r.history.state, RunState::Done, "{}", r.plan.id);
            assert_eq!(r.history.step, 12);
            assert_eq!(r.history.graphs.loss.len(), 12);
            assert!(!r.history.checkpoints.is_empty());
        }
        assert!(
            trainer.start(&["toy-c".to_string()]).is_err(),
            "an unknown run is refused"
        );
    }

    /// A loader whose model code panics for one run, as a kernel's shape assertion would.
    struct PanicsFor(&'static str, ToyLoader);

    impl ModelLoader for PanicsFor {
        fn load(&self, job: &RunJob) -> Result<crate::sweep::job::LoadedModel, LoadError> {
            assert_ne!(job.run_id, self.0, "index 7 out of range in a kernel");
            self.1.load(job)
        }
    }

    #[test]
    fn a_panic_in_a_run_fails_that_run_and_the_sweep_and_dashboard_go_on() {
        crate::sweep::panic_guard::install_hook();
        let dir = tempfile::tempdir().unwrap();
        let data = write_toy_csv(dir.path(), 12).unwrap();
        let cell = |id: &str, dataset: &str| MatrixCell {
            id: id.into(),
            model: "toy".into(),
            dataset: dataset.into(),
        };
        let info = SweepInfo {
            name: "s".into(),
            models: vec!["toy".into()],
            datasets: vec!["a".into(), "b".into()],
            runs: vec![cell("toy-a", "a"), cell("toy-b", "b")],
            runs_dir: dir.path().to_owned(),
        };
        let jobs = vec![toy_job("toy-a", &data, 1), toy_job("toy-b", &data, 1)];
        let loader = PanicsFor(
            "toy-a",
            ToyLoader {
                hidden: 16,
                seed: 5,
            },
        );
        let sweep = info.paths();
        let mut trainer = RunnerTrainer::new(
            sweep.clone(),
            jobs,
            Arc::new(loader),
            RunnerOptions::default(),
        );
        let mut app = App::new(info, "ann", 0.0);
        let key = crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('s'));
        let effects = update(&mut app, Msg::Key(key));
        let [Effect::StartRuns(runs)] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        let events = trainer.start(runs).unwrap();
        for (i, (run, event)) in events.iter().enumerate() {
            let ts = i as f64;
            update(&mut app, Msg::Runner { run, event, ts });
        }
        update(&mut app, Msg::RunnerExited);
        assert_eq!(app.control, Control::Idle);
        let failed = &app.runs[0].history;
        assert_eq!(failed.state, RunState::Failed);
        let reason = failed.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("panicked") && reason.contains("index 7 out of range"),
            "{reason}"
        );
        assert!(!failed.loading);
        assert_eq!(app.runs[1].history.state, RunState::Done);
        let status: crate::store::RunStatus =
            crate::store::atomic::read_json(&sweep.run("toy-a").status())
                .unwrap()
                .unwrap();
        assert_eq!(status.state, RunState::Failed);
        assert!(
            crate::store::lock::holder(&sweep.run("toy-a")).is_none(),
            "the panicked run's lock is released"
        );
    }
}
