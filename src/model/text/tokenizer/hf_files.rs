//! A Hugging Face model directory's tokenizer: tokenizer.json, with BOS/EOS and the chat template from
//! tokenizer_config.json and the EOS ids from generation_config.json / config.json.

use std::path::Path;

use serde_json::Value;

use super::{Tokenizer, TokenizerError};

pub(super) fn from_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(TokenizerError::Missing {
            path: dir.to_owned(),
        });
    }
    let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| TokenizerError::Invalid {
        path: file.clone(),
        reason: format!("not a tokenizer.json: {e}"),
    })?;
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let token_text = |key: &str| match &config[key] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let chat_template = chat_template_of(&config)
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    let mut eos_ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        eos_ids.extend(ids_of(&read_json(&dir.join(name))?["eos_token_id"]));
    }
    Ok(Tokenizer::from_parts(
        inner,
        token_text("bos_token"),
        token_text("eos_token"),
        &eos_ids,
        chat_template,
    ))
}

/// `chat_template` is a string, or a list of `{name, template}` of which "default" is the chat one.
fn chat_template_of(config: &Value) -> Option<String> {
    match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned),
        _ => None,
    }
}

fn ids_of(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Value::Array(list) => list.iter().flat_map(ids_of).collect(),
        _ => Vec::new(),
    }
}

/// A JSON file's content, `Null` when it does not exist.
fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    match crate::store::bounded::read_to_string(path, 64 << 20, "tokenizer JSON file") {
        Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
            path: path.to_owned(),
            reason: format!("not valid JSON: {e}"),
        }),
        Err(crate::store::StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(Value::Null)
        }
        Err(e) => Err(TokenizerError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;

    fn word_level_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let vocab = [
            ("<unk>", 0),
            ("<s>", 1),
            ("</s>", 2),
            ("hello", 3),
            ("world", 4),
            ("<|im_end|>", 5),
        ]
        .into_iter()
        .map(|(t, i)| (t.to_string(), i))
        .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tok = tokenizers::Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
        tok.save(dir.path().join("tokenizer.json"), false).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
               "chat_template": [{"name": "default", "template": "{{ messages[0].content }}"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [2, 4]}"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn reads_special_tokens_template_and_stop_ids() {
        let dir = word_level_dir();
        let tok = from_dir(dir.path()).unwrap();
        assert_eq!(tok.encode("hello world", false).unwrap(), vec![3, 4]);
        assert_eq!(tok.bos_token(), Some("<s>"));
        assert_eq!(tok.eos_token(), Some("</s>"));
        assert_eq!(tok.stop_ids(), &[2, 4, 5]);
        assert_eq!(tok.chat_template(), Some("{{ messages[0].content }}"));
    }

    #[test]
    fn a_missing_or_broken_tokenizer_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains(&*dir.path().to_string_lossy()),
            "{err}"
        );
        std::fs::write(dir.path().join("tokenizer.json"), "{").unwrap();
        let err = from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("not a tokenizer.json"),
            "{err}"
        );
    }
}
