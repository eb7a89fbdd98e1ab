//! Whole-config validation: section values, unique ids, matrix and override references, per-cell settings.

use std::collections::HashSet;

use super::checks::{self, Problem};
use super::diagnostic::{ConfigErrors, Diagnostic};
use super::template::Template;
use super::{Config, from_table};

pub(super) fn validate(mut config: Config) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let at = |errors: &mut Vec<Diagnostic>, prefix: &str, problems: Vec<Problem>| {
        for (key, msg) in problems {
            errors.push(config.diagnostic(&format!("{prefix}.{key}"), msg));
        }
    };
    if let Some(msg) = checks::check_id(&config.sweep.name) {
        at(
            &mut errors,
            "sweep",
            vec![("name".into(), msg.replace("id", "sweep name"))],
        );
    }
    if config.sweep.runs_dir.trim().is_empty() {
        at(
            &mut errors,
            "sweep",
            vec![("runs_dir".into(), "`runs_dir` must name a directory".into())],
        );
    }
    let devices = checks::check_devices(&config.sweep.devices);
    at(
        &mut errors,
        "sweep",
        devices
            .into_iter()
            .map(|(i, msg)| (format!("devices.{i}"), msg))
            .collect(),
    );
    for (i, m) in config.models.iter().enumerate() {
        at(&mut errors, &format!("model.{i}"), checks::model(m));
    }
    for (i, d) in config.datasets.iter().enumerate() {
        at(&mut errors, &format!("dataset.{i}"), checks::dataset(d));
    }
    at(
        &mut errors,
        "lora",
        checks::lora(&from_table(config.lora.clone())),
    );
    at(
        &mut errors,
        "train",
        checks::train(&from_table(config.train.clone())),
    );
    at(
        &mut errors,
        "eval",
        checks::eval(&from_table(config.eval.clone())),
    );
    at(&mut errors, "rubric", checks::rubric(&config.rubric));
    super::cluster::validate(&config, &mut errors);
    duplicates(&config, &mut errors);
    matrix(&config, &mut errors);
    overrides(&config, &mut errors);
    if errors.is_empty() {
        cells(&config, &mut errors);
    }
    if errors.is_empty() {
        config.warnings = warnings(&config);
        Ok(config)
    } else {
        errors.sort_by_key(|d| (d.line, d.col));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

fn duplicates(config: &Config, errors: &mut Vec<Diagnostic>) {
    let mut seen = HashSet::new();
    for (i, m) in config.models.iter().enumerate() {
        if !m.id.is_empty() && !seen.insert(&m.id) {
            errors.push(config.diagnostic(
                &format!("model.{i}.id"),
                format!("duplicate model id `{}`", m.id),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, d) in config.datasets.iter().enumerate() {
        if !d.id.is_empty() && !seen.insert(&d.id) {
            errors.push(config.diagnostic(
                &format!("dataset.{i}.id"),
                format!("duplicate dataset id `{}`", d.id),
            ));
        }
    }
}

fn matrix(config: &Config, errors: &mut Vec<Diagnostic>) {
    let m = &config.matrix;
    if m.models.is_empty() || m.datasets.is_empty() {
        // An absent [matrix] has no place of its own: point at the top of the file.
        let key = if config.spans.get("matrix").is_some() {
            "matrix"
        } else {
            "<top>"
        };
        errors.push(config.diagnostic(
            key,
            "the matrix is empty: add `[matrix]` with `models = [...]` and `datasets = [...]` naming at least one of each",
        ));
    }
    let known_models: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    let known_datasets: Vec<&str> = config.datasets.iter().map(|d| d.id.as_str()).collect();
    for (list, known, what) in [
        (&m.models, &known_models, "models"),
        (&m.datasets, &known_datasets, "datasets"),
    ] {
        let mut seen = HashSet::new();
        for (i, id) in list.iter().enumerate() {
            let key = format!("matrix.{what}.{i}");
            if !known.contains(&id.as_str()) {
                errors.push(config.diagnostic(&key, unknown(what, id, known)));
            } else if !seen.insert(id) {
                errors.push(
                    config.diagnostic(&key, format!("`{id}` is listed twice in matrix.{what}")),
                );
            }
        }
    }
}

fn unknown(what: &str, id: &str, known: &[&str]) -> String {
    let singular = what.trim_end_matches('s');
    if known.is_empty() {
        format!("unknown {singular} `{id}`: no [[{singular}]] is defined")
    } else {
        format!(
            "unknown {singular} `{id}`: expected one of {}",
            known.join(", ")
        )
    }
}

fn overrides(config: &Config, errors: &mut Vec<Diagnostic>) {
    let models: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    let datasets: Vec<&str> = config.datasets.iter().map(|d| d.id.as_str()).collect();
    for (i, o) in config.overrides.iter().enumerate() {
        if o.model.is_none() && o.dataset.is_none() {
            errors.push(config.diagnostic(
                &format!("override.{i}"),
                "an [[override]] must name a `model`, a `dataset` or both (to change every cell, edit the section itself)",
            ));
        }
        if let Some(m) = o.model.as_deref().filter(|m| !models.contains(m)) {
            errors.push(config.diagnostic(
                &format!("override.{i}.model"),
                unknown("models", m, &models),
            ));
        }
        if let Some(d) = o.dataset.as_deref().filter(|d| !datasets.contains(d)) {
            errors.push(config.diagnostic(
                &format!("override.{i}.dataset"),
                unknown("datasets", d, &datasets),
            ));
        }
    }
}

/// Values that only an override set can be checked per cell; report them at the override that set them.
fn cells(config: &Config, errors: &mut Vec<Diagnostic>) {
    let mut reported = HashSet::new();
    for (m, d) in config.cells() {
        let s = config.cell_settings(&m.id, &d.id);
        let problems = [
            ("lora", checks::lora(&s.lora)),
            ("train", checks::train(&s.train)),
            ("eval", checks::eval(&s.eval)),
        ];
        for (section, list) in problems {
            for (key, msg) in list {
                let place = blame(config, &m.id, &d.id, section, &key);
                if reported.insert(place.clone()) {
                    errors.push(
                        config.diagnostic(&place, format!("{msg} (cell {} x {})", m.id, d.id)),
                    );
                }
            }
        }
    }
}

/// Where to report a per-cell problem: the override that set the key, else the key in its section, else
/// the last override that changed the section, else the section.
fn blame(config: &Config, model: &str, dataset: &str, section: &str, key: &str) -> String {
    let overrides: Vec<(usize, &super::Override)> = config
        .matching_overrides(model, dataset)
        .filter(|(_, o)| !section_table(o, section).is_empty())
        .collect();
    if let Some((i, _)) = overrides
        .iter()
        .rev()
        .find(|(_, o)| section_table(o, section).contains_key(key))
    {
        return format!("override.{i}.{section}.{key}");
    }
    let own = format!("{section}.{key}");
    if config.spans.get(&own).is_some() {
        return own;
    }
    match overrides.last() {
        Some((i, _)) => format!("override.{i}.{section}"),
        None => section.to_owned(),
    }
}

fn section_table<'a>(o: &'a super::Override, section: &str) -> &'a toml::Table {
    match section {
        "lora" => &o.lora,
        "train" => &o.train,
        _ => &o.eval,
    }
}

fn warnings(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !config.sweep.devices.is_empty() && config.spans.get("sweep.device").is_some() {
        out.push(config.diagnostic(
            "sweep.device",
            "warning: `device` is ignored because `devices` is set",
        ));
    }
    for (i, d) in config.datasets.iter().enumerate() {
        let Some(eval) = &d.eval_template else {
            continue;
        };
        let train_prompt = d.template.split(&d.completion_marker).next().unwrap_or("");
        let train_prompt = format!("{train_prompt}{}", d.completion_marker);
        if eval != &train_prompt {
            out.push(config.diagnostic(
                &format!("dataset.{i}.eval_template"),
                format!(
                    "warning: dataset `{}` benchmarks with a prompt that differs from its training prompt (as the study did)",
                    d.id
                ),
            ));
        }
        if let (Ok(e), Ok(t)) = (Template::parse(eval), Template::parse(&d.template))
            && let Some(f) = e.fields().difference(&t.fields()).next()
        {
            out.push(config.diagnostic(
                &format!("dataset.{i}.eval_template"),
                format!(
                    "warning: eval_template uses `{{{f}}}`, which the training template does not"
                ),
            ));
        }
    }
    out
}
