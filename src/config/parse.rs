//! Reading experiments.toml: section by section, so that one bad section does not hide the errors of others,
//! keeping the place of every key for later messages.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::cluster::ClusterSection;
use super::diagnostic::Diagnostic;
use super::schema::*;

/// Byte spans of every key's value, by dotted path (`model.0.path`, `lora.r`, `override.1.train.lr`).
#[derive(Debug, Clone, Default)]
pub struct SpanIndex(HashMap<String, Range<usize>>);

impl SpanIndex {
    pub fn get(&self, path: &str) -> Option<Range<usize>> {
        self.0.get(path).cloned()
    }

    fn record(&mut self, prefix: &str, value: &Spanned<DeValue<'_>>) {
        self.0.insert(prefix.to_owned(), value.span());
        match value.get_ref() {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    self.record(&join(prefix, k.get_ref()), v);
                }
            }
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.record(&join(prefix, &i.to_string()), v);
                }
            }
            _ => {}
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A `[[override]]` block: settings that change for the cells it matches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Override {
    pub model: Option<String>,
    pub dataset: Option<String>,
    pub lora: toml::Table,
    pub train: toml::Table,
    pub eval: toml::Table,
    pub cluster: toml::Table,
}

/// The sections of a file as parsed, before any cross-section check.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub sweep: SweepSection,
    pub models: Vec<ModelSection>,
    pub datasets: Vec<DatasetSection>,
    pub lora: toml::Table,
    pub train: toml::Table,
    pub eval: toml::Table,
    pub rubric: RubricSection,
    pub matrix: MatrixSection,
    pub overrides: Vec<Override>,
    pub cluster: toml::Table,
    pub spans: SpanIndex,
}

const SECTIONS: &str =
    "sweep, model, dataset, lora, train, eval, rubric, matrix, override, cluster";

/// Parse `source`; every syntax and schema error of the file is returned at once.
pub fn parse(path: &Path, source: &str) -> Result<Parsed, Vec<Diagnostic>> {
    let (root, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| Diagnostic::at(path, source, e.span(), e.message().trim()))
            .collect());
    }
    let mut cx = Cx {
        path,
        source,
        errors: Vec::new(),
    };
    let mut out = Parsed::default();
    for (key, value) in root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        out.spans.record(name, value);
        match name {
            "sweep" => out.sweep = cx.section(value).unwrap_or_default(),
            "model" => out.models = cx.array(value, "model", |cx, v| cx.section(v)),
            "dataset" => out.datasets = cx.array(value, "dataset", |cx, v| cx.section(v)),
            "lora" => out.lora = cx.raw_section::<LoraSection>(value),
            "train" => out.train = cx.raw_section::<TrainSection>(value),
            "eval" => out.eval = cx.raw_section::<EvalSection>(value),
            "rubric" => out.rubric = cx.section(value).unwrap_or_default(),
            "matrix" => out.matrix = cx.section(value).unwrap_or_default(),
            "override" => out.overrides = cx.array(value, "override", Cx::override_block),
            "cluster" => out.cluster = cx.raw_section::<ClusterSection>(value),
            other => cx.error(
                Some(key.span()),
                format!("unknown section `{other}`: expected one of {SECTIONS}"),
            ),
        }
    }
    if cx.errors.is_empty() {
        Ok(out)
    } else {
        Err(cx.errors)
    }
}

struct Cx<'a> {
    path: &'a Path,
    source: &'a str,
    errors: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.path, self.source, span, message));
    }

    fn section<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'_>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(e.span().or(Some(value.span())), e.message().trim());
                None
            }
        }
    }

    /// Check a section against its schema but keep it as a table, so overrides can patch it key by key.
    fn raw_section<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'_>>) -> toml::Table {
        if self.section::<T>(value).is_none() {
            return toml::Table::new();
        }
        match toml::Table::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(t) => t,
            Err(e) => {
                self.error(Some(value.span()), e.message().trim());
                toml::Table::new()
            }
        }
    }

    fn array<T>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        name: &str,
        mut item: impl FnMut(&mut Self, &Spanned<DeValue<'_>>) -> Option<T>,
    ) -> Vec<T> {
        match value.get_ref() {
            DeValue::Array(items) => items.iter().filter_map(|v| item(self, v)).collect(),
            _ => {
                self.error(
                    Some(value.span()),
                    format!("`{name}` must be an array of tables: write `[[{name}]]`"),
                );
                Vec::new()
            }
        }
    }

    fn override_block(&mut self, value: &Spanned<DeValue<'_>>) -> Option<Override> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                Some(value.span()),
                "an `[[override]]` entry must be a table",
            );
            return None;
        };
        let mut out = Override::default();
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "model" => out.model = self.section(v),
                "dataset" => out.dataset = self.section(v),
                "lora" => out.lora = self.raw_section::<LoraSection>(v),
                "train" => out.train = self.raw_section::<TrainSection>(v),
                "eval" => out.eval = self.raw_section::<EvalSection>(v),
                "cluster" => out.cluster = self.raw_section::<ClusterSection>(v),
                other => self.error(
                    Some(key.span()),
                    format!("unknown key `{other}` in [[override]]: expected model, dataset, lora, train, eval or cluster"),
                ),
            }
        }
        Some(out)
    }
}
