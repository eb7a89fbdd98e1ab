//! Local files a config names (model paths, datasets, question sets, chat templates): which are missing,
//! and how a user gets each. Remote sources (hf, pypi) are the model engine's to check.

use super::Config;
use super::diagnostic::Diagnostic;

pub(super) fn missing(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let used_models: Vec<&str> = config.matrix.models.iter().map(String::as_str).collect();
    let used_datasets: Vec<&str> = config.matrix.datasets.iter().map(String::as_str).collect();
    for (i, m) in config
        .models
        .iter()
        .enumerate()
        .filter(|(_, m)| used_models.contains(&m.id.as_str()))
    {
        if let Some(p) = &m.path
            && !config.resolve_path(p).exists()
        {
            out.push(config.diagnostic(
                &format!("model.{i}.path"),
                format!(
                    "model `{}`: {} does not exist; expected a Hugging Face safetensors directory (config.json + \
                     *.safetensors), a bitsandbytes 4-bit directory, or a .gguf file (or use `hf = \"org/name\"`)",
                    m.id,
                    config.resolve_path(p).display()
                ),
            ));
        }
        if let Some(t) = m
            .chat_template
            .as_deref()
            .filter(|t| !matches!(*t, "auto" | "none"))
            && !config.resolve_path(t).exists()
        {
            out.push(config.diagnostic(
                &format!("model.{i}.chat_template"),
                format!(
                    "chat template file {} does not exist (use `auto`, `none` or a Jinja file)",
                    config.resolve_path(t).display()
                ),
            ));
        }
    }
    for (i, d) in config
        .datasets
        .iter()
        .enumerate()
        .filter(|(_, d)| used_datasets.contains(&d.id.as_str()))
    {
        let path = config.resolve_path(&d.path);
        if !path.exists() {
            out.push(config.diagnostic(
                &format!("dataset.{i}.path"),
                format!(
                    "dataset `{}`: {} does not exist; bring the training data as a local JSONL, JSON, CSV or Parquet \
                     file (a Hugging Face dataset exports with `ds.to_json(\"{}\")` or `ds.to_parquet(...)`)",
                    d.id,
                    path.display(),
                    d.path
                ),
            ));
        }
        if let Some(q) = &d.questions
            && !config.resolve_path(q).exists()
        {
            out.push(config.diagnostic(
                &format!("dataset.{i}.questions"),
                format!(
                    "question set {} does not exist; write one (see questions/*.toml) or convert the study's text \
                     files with `qlab import-questions SRC --out {q}`",
                    config.resolve_path(q).display()
                ),
            ));
        }
    }
    out
}
