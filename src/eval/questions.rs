//! Question sets in qlab's own format (`questions/*.toml`): the benchmark a task is judged on.
//!
//! ```toml
//! id = "math"            # defaults to the file stem
//! task = "math"          # defaults to the id
//! [[question]]
//! id = "1"
//! section = "Questions From Training Data"
//! question = "What is 2 + 2?"          # or: instruction = "...", input = "..."
//! reference = "2 + 2 = 4."
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{ConfigErrors, Diagnostic};
use crate::store::{StoreError, bounded};

/// One benchmark question with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub reference: String,
}

impl Question {
    /// The value of a prompt field (`question`, `instruction`, `input`) for template rendering.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "question" => self.question.as_deref(),
            "instruction" => self.instruction.as_deref(),
            "input" => self.input.as_deref(),
            _ => None,
        }
    }
}

/// A question set as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionSet {
    pub id: String,
    pub task: String,
    #[serde(rename = "question")]
    pub questions: Vec<Question>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    id: Option<String>,
    task: Option<String>,
    #[serde(default)]
    question: Vec<Spanned<Question>>,
}

impl QuestionSet {
    /// Load and check a question set; every problem is reported with its line and column.
    pub fn load(path: &Path) -> Result<QuestionSet, ConfigErrors> {
        let source = bounded::read_to_string(path, bounded::TEXT_FILE_LIMIT, "question set")
            .map_err(|e| {
                let message = match e {
                    StoreError::Io { source, .. } => format!("cannot read question set: {source}"),
                    StoreError::Line { line, message, .. } => format!("line {line}: {message}"),
                    StoreError::TooLarge { limit, .. } => format!(
                        "larger than {} MiB: not a question set (a device file?)",
                        limit >> 20
                    ),
                    other => other.to_string(),
                };
                ConfigErrors(vec![Diagnostic::at(path, "", None, message)])
            })?;
        Self::parse(path, &source)
    }

    pub fn parse(path: &Path, source: &str) -> Result<QuestionSet, ConfigErrors> {
        let raw: RawSet = toml::from_str(source).map_err(|e| {
            ConfigErrors(vec![Diagnostic::at(
                path,
                source,
                e.span(),
                e.message().trim(),
            )])
        })?;
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for q in &raw.question {
            let at = |msg: String| Diagnostic::at(path, source, Some(q.span()), msg);
            let inner = q.get_ref();
            if inner.id.is_empty() || !seen.insert(inner.id.clone()) {
                errors.push(at(format!(
                    "question id `{}` is empty or used twice",
                    inner.id
                )));
            }
            match (&inner.question, &inner.instruction) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => errors.push(at(format!(
                    "question `{}` needs either `question` or `instruction` (with an optional `input`), not both or neither",
                    inner.id
                ))),
            }
            if inner.question.is_some() && inner.input.is_some() {
                errors.push(at(format!(
                    "question `{}`: `input` goes with `instruction`, not `question`",
                    inner.id
                )));
            }
        }
        if raw.question.is_empty() {
            errors.push(Diagnostic::at(
                path,
                source,
                None,
                "no [[question]] in the file",
            ));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let id = raw.id.unwrap_or_else(|| {
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("questions")
                .to_owned()
        });
        Ok(QuestionSet {
            task: raw.task.unwrap_or_else(|| id.clone()),
            id,
            questions: raw.question.into_iter().map(Spanned::into_inner).collect(),
        })
    }

    /// The set as TOML in the format `load` reads.
    pub fn to_toml(&self) -> String {
        // A struct of strings and vectors always serializes.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_both_prompt_shapes_and_round_trips() {
        let src = "id = \"s\"\n[[question]]\nid = \"1\"\nquestion = \"2+2?\"\nreference = \"4\"\n\
                   [[question]]\nid = \"2\"\ninstruction = \"Explain.\"\ninput = \"\"\nreference = \"Because.\"\n";
        let set = QuestionSet::parse(Path::new("s.toml"), src).unwrap();
        assert_eq!(
            (set.id.as_str(), set.task.as_str(), set.questions.len()),
            ("s", "s", 2)
        );
        assert_eq!(set.questions[1].field("input"), Some(""));
        let again = QuestionSet::parse(Path::new("s.toml"), &set.to_toml()).unwrap();
        assert_eq!(again, set);
    }

    #[test]
    fn errors_name_the_question_and_its_line() {
        let src = "[[question]]\nid = \"1\"\nreference = \"4\"\n\n[[question]]\nid = \"1\"\nquestion = \"q\"\nreference = \"r\"\n";
        let err = QuestionSet::parse(Path::new("s.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.toml:1:1: question `1` needs either"),
            "{err}"
        );
        assert!(
            err.contains("s.toml:5:1: question id `1` is empty or used twice"),
            "{err}"
        );
        let err = QuestionSet::parse(Path::new("s.toml"), "[[question]]\nid = \"1\"\nbogus = 1\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("s.toml:3:1: unknown field `bogus`"),
            "{err}"
        );
    }
}
