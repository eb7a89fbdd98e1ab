//! Chat prompts rendered with the model's own Jinja chat template (tokenizer_config.json or GGUF
//! `tokenizer.chat_template`), as transformers' `apply_chat_template` does, with minijinja + Python methods.

use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// Errors of chat templates: a model without one, a template that does not parse, or one that refuses
/// the conversation (`raise_exception`).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(
        "the model has no chat template (expected tokenizer_config.json `chat_template` or GGUF `tokenizer.chat_template`); use a raw prompt"
    )]
    NoTemplate,
    #[error("chat template: {0:#}")]
    Template(#[from] Error),
}

/// A compiled chat template with the model's BOS/EOS texts.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compile `source` with Jinja's settings as transformers uses them (trim_blocks, lstrip_blocks).
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            bos: bos.unwrap_or_default().to_owned(),
            eos: eos.unwrap_or_default().to_owned(),
        })
    }

    /// The template the tokenizer's model ships with.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let source = tokenizer.chat_template().ok_or(ChatError::NoTemplate)?;
        Self::new(source, tokenizer.bos_token(), tokenizer.eos_token())
    }

    /// The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self.env.get_template(NAME)?;
        Ok(template.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}{% else %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

    #[test]
    fn renders_chatml_with_a_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, Some("<|im_end|>")).unwrap();
        let text = t.render(&[Message::user("What is 12 * 7?")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = t.render(&[Message::user("hi")], false).unwrap();
        assert!(no_prompt.ends_with("hi<|im_end|>\n"), "{no_prompt}");
    }

    #[test]
    fn python_string_methods_and_special_tokens_work() {
        let t = ChatTemplate::new(LLAMA2, Some("<s>"), Some("</s>")).unwrap();
        let text = t
            .render(
                &[
                    Message::user("  hi "),
                    Message::assistant("hello"),
                    Message::user("x"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(text, "<s>[INST] hi [/INST] hello </s><s>[INST] x [/INST]");
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate::new(LLAMA2, Some("<s>"), Some("</s>")).unwrap();
        let err = t
            .render(&[Message::system("s"), Message::user("u")], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("System role not supported"), "{err}");
    }

    #[test]
    fn a_broken_template_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("chat template"), "{err}");
    }
}
