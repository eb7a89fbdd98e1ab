//! Turns generated token ids into text pieces as they arrive, holding back partial UTF-8 characters
//! (byte-level and byte-fallback tokens can split a character across tokens).

use super::{Tokenizer, TokenizerError};

/// Incremental decoder for one sequence: push ids, get the text that became final.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Add one id; returns the newly completed text (possibly empty). Special tokens decode to nothing.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let piece = text.get(self.emitted..).unwrap_or_default().to_owned();
        self.emitted = text.len();
        Ok(piece)
    }

    /// All text decoded so far.
    pub fn text(&self) -> Result<String, TokenizerError> {
        self.tokenizer.decode(&self.ids, true)
    }
}
