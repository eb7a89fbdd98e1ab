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
    use std::path::Path;

    use super::*;
    use crate::store::RunState;
    use crate::sweep::job::LoadedModel;
    use crate::train::settings::{
        DatasetSpec, OnBadRow, ScheduleKind, TrainOn, TrainSettings, Warmup,
    };
    use crate::train::toy::{ByteEncoder, ToyConfig, ToyModel};
    use crate::tui::app::{App, Control};
    use crate::tui::msg::{Effect, Msg};
    use crate::tui::sweep_info::{MatrixCell, SweepInfo};
    use crate::tui::update::update;

    struct ToyLoader;

    impl ModelLoader for ToyLoader {
        fn load(&self, _job: &RunJob) -> Result<LoadedModel, String> {
            let model = ToyModel::new(ToyConfig {
                vocab: 257,
                hidden: 32,
                rank: 4,
                seed: 5,
            })
            .map_err(|e| e.to_string())?;
            Ok(LoadedModel {
                model: Box::new(model),
                encoder: Box::new(ByteEncoder),
                pad_id: 0,
            })
        }
    }

    fn job(id: &str, data: &Path) -> RunJob {
        RunJob {
            run_id: id.into(),
            model: "toy".into(),
            device: "cpu".into(),
            data: DatasetSpec {
                path: data.to_owned(),
                format: None,
                limit: None,
                template: "### Instruction:\n{instruction}\n### Response:\n{output}".into(),
                completion_marker: Some("### Response:\n".into()),
                fields: Default::default(),
                train_on: TrainOn::Completion,
                on_bad_row: OnBadRow::Error,
            },
            train: TrainSettings {
                epochs: 1,
                batch_size: 1,
                grad_accum: 1,
                lr: 0.01,
                weight_decay: 0.0,
                max_grad_norm: None,
                schedule: ScheduleKind::Linear,
                warmup: Warmup::Steps(2),
                max_seq_len: 64,
                packing: false,
                seed: 1,
                checkpoint_every: 5,
                keep_checkpoints: 1,
                eval_at_epochs: vec![],
            },
        }
    }

    #[test]
    fn the_dashboard_drives_the_real_runner_and_fills_its_cells() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.csv");
        let rows: String = (0..12)
            .map(|i| format!("name the number {i},it is {}\n", i * 3))
            .collect();
        std::fs::write(&data, format!("instruction,output\n{rows}")).unwrap();
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
        let jobs = vec![job("toy-a", &data), job("toy-b", &data)];
        let mut trainer = RunnerTrainer::new(
            info.paths(),
            jobs,
            Arc::new(ToyLoader),
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
}
