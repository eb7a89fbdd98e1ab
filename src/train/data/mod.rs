//! The dataset pipeline: read a file, render the template per row, tokenize, truncate or pack, and report
//! bad rows; then a deterministic per-epoch order of micro-batches.

pub mod batches;
pub mod examples;
pub mod read;
pub mod template;

use std::fmt::Write as _;

use crate::train::TrainError;
use crate::train::settings::{DatasetSpec, OnBadRow};
use examples::{Example, TextEncoder};
use template::Template;

/// Bad rows listed in full in an error; the rest are counted.
const BAD_ROWS_SHOWN: usize = 20;

/// A dataset ready for training, and what happened on the way.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sequences: Vec<Example>,
    pub report: DataReport,
}

/// Counts reported before training starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataReport {
    pub rows_read: usize,
    pub rows_skipped: usize,
    pub rows_truncated: usize,
    /// Sequences left with no trained token (a completion cut off by truncation): dropped.
    pub dropped_without_target: usize,
    pub sequences: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// Read, render and tokenize `spec` into training sequences of at most `max_seq_len` tokens.
pub fn prepare(
    spec: &DatasetSpec,
    encoder: &dyn TextEncoder,
    max_seq_len: usize,
    packing: bool,
) -> Result<Prepared, TrainError> {
    let template = Template::parse(
        &spec.template,
        spec.completion_marker.as_deref(),
        &spec.fields,
    )
    .map_err(|e| TrainError::data(&spec.path, None, format!("template: {e}")))?;
    let read = read::read_records(
        &spec.path,
        spec.format,
        spec.limit,
        spec.on_bad_row == OnBadRow::Skip,
    )?;
    let records = read.rows;
    let mut report = DataReport {
        rows_read: records.len() + read.malformed.len(),
        ..DataReport::default()
    };
    let mut bad: Vec<template::BadRow> = read
        .malformed
        .into_iter()
        .map(|(row, reason)| template::BadRow { row, reason })
        .collect();
    let mut examples = Vec::with_capacity(records.len());
    for record in &records {
        match template.render(record) {
            Ok(rendered) => {
                let ex = examples::encode_example(&rendered, record.row, encoder, spec.train_on)
                    .map_err(|e| {
                        TrainError::data(&spec.path, Some(record.row), format!("tokenizer: {e}"))
                    })?;
                examples.push(ex);
            }
            Err(b) => bad.push(b),
        }
    }
    bad.sort_by_key(|b| b.row);
    if !bad.is_empty() && spec.on_bad_row == OnBadRow::Error {
        let mut msg = format!(
            "{} bad row(s) (set on_bad_row = \"skip\" to skip them):",
            bad.len()
        );
        for b in bad.iter().take(BAD_ROWS_SHOWN) {
            let _ = write!(msg, "\n  row {}: {}", b.row, b.reason);
        }
        if bad.len() > BAD_ROWS_SHOWN {
            let _ = write!(msg, "\n  ... and {} more", bad.len() - BAD_ROWS_SHOWN);
        }
        return Err(TrainError::data(&spec.path, None, msg));
    }
    report.rows_skipped = bad.len();
    if examples.is_empty() {
        return Err(TrainError::data(
            &spec.path,
            None,
            "no usable rows".to_string(),
        ));
    }
    let mut sequences = if packing {
        examples::pack(examples, max_seq_len)
    } else {
        report.rows_truncated = examples::truncate(&mut examples, max_seq_len);
        examples
    };
    let before = sequences.len();
    sequences.retain(|s| s.trained.iter().skip(1).any(|&t| t));
    report.dropped_without_target = before - sequences.len();
    if sequences.is_empty() {
        return Err(TrainError::data(
            &spec.path,
            None,
            format!("no row keeps a trained token within max_seq_len {max_seq_len}"),
        ));
    }
    report.sequences = sequences.len();
    report.tokens = sequences.iter().map(|s| s.ids.len()).sum();
    report.trained_tokens = sequences
        .iter()
        .map(|s| s.trained.iter().skip(1).filter(|&&t| t).count())
        .sum();
    Ok(Prepared { sequences, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::settings::TrainOn;
    use crate::train::toy::ByteEncoder;

    fn spec(path: &std::path::Path, on_bad_row: OnBadRow) -> DatasetSpec {
        DatasetSpec {
            path: path.to_owned(),
            format: None,
            limit: None,
            template: "Q:{q}\nA:{a}".into(),
            completion_marker: Some("A:".into()),
            fields: Default::default(),
            train_on: TrainOn::Completion,
            on_bad_row,
        }
    }

    #[test]
    fn bad_rows_stop_by_default_naming_file_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("math.jsonl");
        std::fs::write(
            &p,
            "{\"q\":\"1\",\"a\":\"2\"}\n{\"q\":\"1\"}\n{\"q\":5,\"a\":\"x\"}\n",
        )
        .unwrap();
        let err = prepare(&spec(&p, OnBadRow::Error), &ByteEncoder, 64, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("math.jsonl") && err.contains("2 bad row(s)"),
            "{err}"
        );
        assert!(
            err.contains("row 2: field `a` is missing")
                && err.contains("row 3: field `q` is a number"),
            "{err}"
        );
        let ok = prepare(&spec(&p, OnBadRow::Skip), &ByteEncoder, 64, false).unwrap();
        assert_eq!(
            (
                ok.report.rows_read,
                ok.report.rows_skipped,
                ok.report.sequences
            ),
            (3, 2, 1)
        );
        assert_eq!(ok.report.trained_tokens, 2, "the answer and EOS");
    }

    #[test]
    fn truncation_is_counted_and_packing_fills_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "q,a\nshort,x\na much longer question,yes\n").unwrap();
        let t = prepare(&spec(&p, OnBadRow::Error), &ByteEncoder, 16, false).unwrap();
        assert_eq!(t.report.rows_truncated, 1);
        assert_eq!(
            (t.report.dropped_without_target, t.report.sequences),
            (1, 1),
            "the long row lost its answer"
        );
        let packed = prepare(&spec(&p, OnBadRow::Error), &ByteEncoder, 16, true).unwrap();
        assert_eq!(packed.report.rows_truncated, 0);
        assert!(packed.sequences.iter().all(|s| s.ids.len() <= 16));
        // 43 tokens in chunks of 16, 16, 11; the middle chunk is all prompt and is dropped.
        let stream = "Q:short\nA:x".len() + "Q:a much longer question\nA:yes".len() + 2;
        assert_eq!(stream, 43);
        assert_eq!(packed.report.dropped_without_target, 1);
        assert_eq!(packed.report.tokens, stream - 16);
    }
}
