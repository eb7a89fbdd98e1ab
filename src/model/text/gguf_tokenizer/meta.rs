//! Typed reads of GGUF metadata keys, each error naming the file, the key and the type expected.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::model::text::tokenizer::TokenizerError;

pub(super) struct Meta<'a> {
    pub map: &'a HashMap<String, Value>,
    pub path: &'a Path,
}

impl Meta<'_> {
    fn err(&self, key: &str, expected: &str) -> TokenizerError {
        TokenizerError::GgufKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>, TokenizerError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v.to_vec().map(Some).map_err(|_| self.err(key, "an array")),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>, TokenizerError> {
        let list = self
            .array(key)?
            .ok_or_else(|| self.err(key, "an array of strings (the key is missing)"))?;
        list.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| self.err(key, "an array of strings"))
            })
            .collect()
    }

    pub fn opt_i32s(&self, key: &str) -> Result<Option<Vec<i32>>, TokenizerError> {
        let Some(list) = self.array(key)? else {
            return Ok(None);
        };
        list.iter()
            .map(|v| {
                int(v)
                    .map(|i| i as i32)
                    .ok_or_else(|| self.err(key, "an array of integers"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn opt_f32s(&self, key: &str) -> Result<Option<Vec<f32>>, TokenizerError> {
        let Some(list) = self.array(key)? else {
            return Ok(None);
        };
        list.iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(self.err(key, "an array of floats")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn string(&self, key: &str) -> Result<String, TokenizerError> {
        self.opt_string(key)?
            .ok_or_else(|| self.err(key, "a string (the key is missing)"))
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<String>, TokenizerError> {
        self.map
            .get(key)
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| self.err(key, "a string"))
            })
            .transpose()
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, TokenizerError> {
        self.map
            .get(key)
            .map(|v| {
                int(v)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| self.err(key, "a token id"))
            })
            .transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        self.map
            .get(key)
            .map(|v| v.to_bool().map_err(|_| self.err(key, "a boolean")))
            .transpose()
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(*x as i64),
        Value::I8(x) => Some(*x as i64),
        Value::U16(x) => Some(*x as i64),
        Value::I16(x) => Some(*x as i64),
        Value::U32(x) => Some(*x as i64),
        Value::I32(x) => Some(*x as i64),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}
