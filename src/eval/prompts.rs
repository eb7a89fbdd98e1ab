//! The prompt each benchmark question is asked with: the dataset's eval template (by default the training
//! template up to and including its completion marker), or the model's chat template around the question.

use crate::config::template::Template;
use crate::config::{DatasetSection, PromptStyle};
use crate::eval::answers::PromptedQuestion;
use crate::eval::questions::{Question, QuestionSet};
use crate::model::text::chat::{ChatError, ChatTemplate, Message};
use crate::model::text::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("dataset {dataset}: eval template: {reason}")]
    Template { dataset: String, reason: String },
    #[error("question {question_id}: {reason}")]
    Question { question_id: String, reason: String },
    #[error(transparent)]
    Chat(#[from] ChatError),
}

/// How questions become prompt text for one (model, dataset) pair.
#[derive(Debug)]
pub enum QuestionPrompt {
    Template(Template),
    Chat(Box<ChatTemplate>),
}

impl QuestionPrompt {
    /// `chat_override`: the model's `chat_template` from experiments.toml, replacing the tokenizer's own.
    pub fn new(
        dataset: &DatasetSection,
        style: PromptStyle,
        tokenizer: &Tokenizer,
        chat_override: Option<&str>,
    ) -> Result<Self, PromptError> {
        match style {
            PromptStyle::Chat => Ok(QuestionPrompt::Chat(Box::new(match chat_override {
                Some(src) => ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token())?,
                None => ChatTemplate::from_tokenizer(tokenizer)?,
            }))),
            PromptStyle::Template => {
                let source = eval_template_source(dataset);
                Template::parse(&source)
                    .map(QuestionPrompt::Template)
                    .map_err(|reason| PromptError::Template {
                        dataset: dataset.id.clone(),
                        reason,
                    })
            }
        }
    }

    /// A raw template prompt lets the tokenizer add BOS; a rendered chat template already holds it.
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, QuestionPrompt::Template(_))
    }

    pub fn render(&self, question: &Question) -> Result<String, PromptError> {
        let bad = |reason: String| PromptError::Question {
            question_id: question.id.clone(),
            reason,
        };
        match self {
            QuestionPrompt::Template(t) => t.render(|name| question.field(name)).map_err(bad),
            QuestionPrompt::Chat(chat) => {
                let text = [
                    question.question.as_deref(),
                    question.instruction.as_deref(),
                    question.input.as_deref(),
                ]
                .into_iter()
                .flatten()
                .filter(|s| !s.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n\n");
                if text.is_empty() {
                    return Err(bad("has no question, instruction or input text".into()));
                }
                Ok(chat.render(&[Message::user(text)], true)?)
            }
        }
    }

    /// Every question of `set` with its prompt.
    pub fn prompt_all(&self, set: &QuestionSet) -> Result<Vec<PromptedQuestion>, PromptError> {
        set.questions
            .iter()
            .map(|q| {
                Ok(PromptedQuestion {
                    question_id: q.id.clone(),
                    prompt: self.render(q)?,
                })
            })
            .collect()
    }
}

/// `eval_template`, else the training template cut just after its completion marker.
pub fn eval_template_source(dataset: &DatasetSection) -> String {
    if let Some(t) = &dataset.eval_template {
        return t.clone();
    }
    match dataset.template.find(&dataset.completion_marker) {
        Some(at) if !dataset.completion_marker.is_empty() => {
            dataset.template[..at + dataset.completion_marker.len()].to_owned()
        }
        _ => dataset.template.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(template: &str) -> DatasetSection {
        DatasetSection {
            id: "arith".into(),
            template: template.into(),
            ..Default::default()
        }
    }

    fn question() -> Question {
        Question {
            id: "3".into(),
            section: None,
            question: Some("What is 2 + 2?".into()),
            instruction: None,
            input: None,
            reference: "4".into(),
        }
    }

    #[test]
    fn the_eval_prompt_is_the_training_template_up_to_the_completion_marker() {
        let d = dataset("Solve.\n### Input:\n{question}\n\n### Response:\n{answer}");
        assert_eq!(
            eval_template_source(&d),
            "Solve.\n### Input:\n{question}\n\n### Response:\n"
        );
        let t = Template::parse(&eval_template_source(&d)).unwrap();
        let text = QuestionPrompt::Template(t).render(&question()).unwrap();
        assert_eq!(
            text,
            "Solve.\n### Input:\nWhat is 2 + 2?\n\n### Response:\n"
        );
        let own = DatasetSection {
            eval_template: Some("Q: {question}\nA:".into()),
            ..d
        };
        assert_eq!(eval_template_source(&own), "Q: {question}\nA:");
    }

    #[test]
    fn a_missing_field_names_the_question() {
        let t = Template::parse("{instruction}\n### Response:\n").unwrap();
        let err = QuestionPrompt::Template(t)
            .render(&question())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("question 3:"), "{err}");
    }

    #[test]
    fn chat_prompts_wrap_the_question_as_a_user_turn() {
        let chat = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            None,
            None,
        )
        .unwrap();
        let p = QuestionPrompt::Chat(Box::new(chat));
        assert!(!p.add_special_tokens());
        assert_eq!(
            p.render(&question()).unwrap(),
            "<user>What is 2 + 2?<assistant>"
        );
    }
}
