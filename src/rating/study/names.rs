//! The study's file names: which model, task and stage a raw benchmark file holds.
//!
//! Base files are named after the Hugging Face repository (`Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt`),
//! fine-tuned ones after the adapter (`lora-qwen-2-7b-Math-e1-math-benchmark.txt`).

/// The study's models: adapter-style id and the Hugging Face repository name of its 4-bit base.
pub const STUDY_MODELS: [(&str, &str); 7] = [
    ("llama-2-7b", "llama-2-7b-chat-bnb-4bit"),
    ("llama-3-8b", "llama-3-8b-Instruct-bnb-4bit"),
    ("llama-3.1-8b", "Meta-Llama-3.1-8B-Instruct-bnb-4bit"),
    ("gemma-7b", "gemma-7b-it-bnb-4bit"),
    ("gemma-2-9b", "gemma-2-9b-it-bnb-4bit"),
    ("mistral-7b-v0.3", "mistral-7b-instruct-v0.3-bnb-4bit"),
    ("qwen-2-7b", "Qwen2-7B-Instruct-bnb-4bit"),
];

/// The study's tasks.
pub const STUDY_TASKS: [&str; 2] = ["math", "bio"];

/// What a raw benchmark file name says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StudyFileName {
    pub model: String,
    pub task: String,
    pub stage: String,
}

/// Read model, task and stage from a file name; `None` when it is not one of the study's names.
pub fn parse_file_name(name: &str) -> Option<StudyFileName> {
    let stem = name.strip_suffix("-benchmark.txt")?;
    let (rest, task) = stem.rsplit_once('-')?;
    if !STUDY_TASKS.contains(&task) {
        return None;
    }
    let named = |model: &str, stage: &str| StudyFileName {
        model: model.into(),
        task: task.into(),
        stage: stage.into(),
    };
    if let Some(adapter) = rest.strip_prefix("lora-") {
        let (rest, stage) = adapter.rsplit_once('-')?;
        let (model, trained_on) = rest.rsplit_once('-')?;
        let epoch_stage = stage
            .strip_prefix('e')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        let known = STUDY_MODELS.iter().any(|(id, _)| *id == model);
        return (epoch_stage && known && trained_on.eq_ignore_ascii_case(task))
            .then(|| named(model, stage));
    }
    STUDY_MODELS
        .iter()
        .find(|(_, hf)| hf.eq_ignore_ascii_case(rest))
        .map(|(id, _)| named(id, "base"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_adapter_names_map_to_model_task_stage() {
        let n = parse_file_name("Meta-Llama-3.1-8B-Instruct-bnb-4bit-math-benchmark.txt").unwrap();
        assert_eq!(
            n,
            StudyFileName {
                model: "llama-3.1-8b".into(),
                task: "math".into(),
                stage: "base".into()
            }
        );
        let n = parse_file_name("lora-mistral-7b-v0.3-Bio-e3-bio-benchmark.txt").unwrap();
        assert_eq!(
            n,
            StudyFileName {
                model: "mistral-7b-v0.3".into(),
                task: "bio".into(),
                stage: "e3".into()
            }
        );
        assert_eq!(
            parse_file_name("Qwen2-7B-Instruct-bnb-4bit-bio-benchmark.txt")
                .unwrap()
                .model,
            "qwen-2-7b"
        );
    }

    #[test]
    fn other_names_are_refused() {
        for bad in [
            "notes.txt",
            "lora-qwen-2-7b-Math-e1-bio-benchmark.txt",
            "lora-phi-3-Math-e1-math-benchmark.txt",
            "lora-qwen-2-7b-Math-ex-math-benchmark.txt",
            "Qwen2-7B-Instruct-bnb-4bit-chem-benchmark.txt",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
