//! From the plan to the runner's jobs: each planned run's resolved settings in the trainer's terms.

use crate::config::{self, Config, DatasetSection, DeviceSpec, TrainSection};
use crate::model::device;
use crate::plan::{Plan, PlannedRun};
use crate::train::settings::{DataFormat, DatasetSpec, TrainSettings, Warmup};

use super::job::RunJob;

/// The devices the sweep trains on, one runner worker each: `[sweep] devices` when set, else `device`.
/// `auto` resolved (see [`device::resolve`]).
pub fn sweep_devices(config: &Config) -> Vec<DeviceSpec> {
    if config.sweep.devices.is_empty() {
        vec![device::resolve(config.sweep.device)]
    } else {
        config
            .sweep
            .devices
            .iter()
            .copied()
            .map(device::resolve)
            .collect()
    }
}

/// The trainer's settings for a run's `[train]` section (`seed` is filled in by the plan).
pub fn train_settings(t: &TrainSection, sweep_seed: u64) -> TrainSettings {
    TrainSettings {
        epochs: t.epochs,
        batch_size: t.batch_size,
        grad_accum: t.grad_accum,
        lr: t.lr,
        weight_decay: t.weight_decay,
        max_grad_norm: (t.max_grad_norm > 0.0).then_some(t.max_grad_norm),
        schedule: t.schedule,
        warmup: t
            .warmup_steps
            .map_or(Warmup::Ratio(t.warmup_ratio), Warmup::Steps),
        max_seq_len: t.max_seq_len,
        packing: t.packing,
        seed: t.seed.unwrap_or(sweep_seed),
        checkpoint_every: t.checkpoint_every,
        keep_checkpoints: t.keep_checkpoints,
        eval_at_epochs: t.eval_at_epochs.clone(),
    }
}

/// The trainer's view of a `[[dataset]]` (its path resolved against the config's directory).
pub fn dataset_spec(d: &DatasetSection, config: &Config) -> DatasetSpec {
    DatasetSpec {
        path: config.resolve_path(&d.path),
        format: match d.format {
            config::DataFormat::Auto => None,
            config::DataFormat::Jsonl => Some(DataFormat::Jsonl),
            config::DataFormat::Json => Some(DataFormat::Json),
            config::DataFormat::Csv => Some(DataFormat::Csv),
            config::DataFormat::Parquet => Some(DataFormat::Parquet),
        },
        limit: d.limit,
        template: d.template.clone(),
        completion_marker: (!d.completion_marker.is_empty()).then(|| d.completion_marker.clone()),
        fields: d.fields.clone(),
        train_on: d.train_on,
        on_bad_row: d.on_bad_row,
    }
}

/// A run's job on the sweep's first device (the runner moves it to the device of the worker that takes it).
fn job(run: &PlannedRun, config: &Config) -> RunJob {
    let device = sweep_devices(config).swap_remove(0);
    RunJob {
        run_id: run.id.clone(),
        model: run.model.clone(),
        device,
        data: dataset_spec(&run.spec.dataset, config),
        train: train_settings(&run.spec.train, config.sweep.seed),
    }
}

/// `--only` named a run the sweep does not have.
#[derive(Debug, thiserror::Error)]
#[error("no run `{id}` in this sweep; its runs are: {}", known.join(", "))]
pub struct UnknownRun {
    pub id: String,
    pub known: Vec<String>,
}

/// The jobs of the plan in order, or only the one named `only` (an unknown id lists the known ones).
pub fn jobs_from_plan(
    config: &Config,
    plan: &Plan,
    only: Option<&str>,
) -> Result<Vec<RunJob>, UnknownRun> {
    match only {
        None => Ok(plan.runs.iter().map(|r| job(r, config)).collect()),
        Some(id) => match plan.run(id) {
            Some(r) => Ok(vec![job(r, config)]),
            None => Err(UnknownRun {
                id: id.to_owned(),
                known: plan.runs.iter().map(|r| r.id.clone()).collect(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::train::settings::{ScheduleKind, TrainOn};

    const CONFIG: &str = r#"
[sweep]
name = "t"
device = "cpu"
[[model]]
id = "m"
path = "m.gguf"
[[dataset]]
id = "d"
path = "data/d.csv"
template = "{q}### Response:\n{a}"
train_on = "all"
[train]
warmup_steps = 3
max_grad_norm = 0.0
schedule = "cosine"
[matrix]
models = ["m"]
datasets = ["d"]
"#;

    #[test]
    fn planned_runs_become_jobs_with_resolved_settings() {
        let config = Config::from_source(Path::new("/exp/t.toml"), CONFIG.to_owned()).unwrap();
        let plan = Plan::from_config(&config);
        let jobs = jobs_from_plan(&config, &plan, None).unwrap();
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(
            (j.run_id.as_str(), j.device),
            (plan.runs[0].id.as_str(), DeviceSpec::Cpu)
        );
        assert_eq!(j.data.path, Path::new("/exp/data/d.csv"));
        assert_eq!(j.data.completion_marker.as_deref(), Some("### Response:\n"));
        assert_eq!(j.data.train_on, TrainOn::All);
        assert_eq!(j.train.warmup, Warmup::Steps(3));
        assert_eq!((j.train.max_grad_norm, j.train.seed), (None, 3407));
        assert_eq!(j.train.schedule, ScheduleKind::Cosine);
        let err = jobs_from_plan(&config, &plan, Some("nope")).unwrap_err();
        assert!(err.to_string().contains(&plan.runs[0].id), "{err}");
    }

    #[test]
    fn devices_win_over_device_and_never_change_a_run_id() {
        let load = |src: String| Config::from_source(Path::new("/exp/t.toml"), src).unwrap();
        let cpu = load(CONFIG.to_owned());
        let one_gpu = load(CONFIG.replace("device = \"cpu\"", "device = \"cuda:1\""));
        let two_gpus = load(CONFIG.replace(
            "device = \"cpu\"",
            "device = \"cpu\"\ndevices = [\"cuda:1\", \"cuda:0\"]",
        ));
        assert_eq!(sweep_devices(&cpu), [DeviceSpec::Cpu]);
        assert_eq!(sweep_devices(&one_gpu), [DeviceSpec::Cuda(1)]);
        assert_eq!(
            sweep_devices(&two_gpus),
            [DeviceSpec::Cuda(1), DeviceSpec::Cuda(0)]
        );
        let ids = |c: &Config| -> Vec<String> {
            Plan::from_config(c)
                .runs
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(&cpu), ids(&one_gpu));
        assert_eq!(ids(&cpu), ids(&two_gpus));
        let job = |c: &Config| jobs_from_plan(c, &Plan::from_config(c), None).unwrap();
        assert_eq!(job(&one_gpu)[0].device, DeviceSpec::Cuda(1));
        assert_eq!(job(&two_gpus)[0].device, DeviceSpec::Cuda(1));
    }
}
