//! Reading dataset files (JSONL, JSON array, CSV, Parquet) into records of named cells, keeping each
//! record's row number so that a bad row can be reported precisely.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use crate::train::TrainError;
use crate::train::settings::DataFormat;

/// One cell of a record, reduced to what the template cares about.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Null,
    /// A value that is not a string; holds its type name for the error message.
    Other(&'static str),
}

/// One row of a dataset file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based: the line for JSONL and CSV (header is line 1), the element for JSON, the row for Parquet.
    pub row: usize,
    pub cells: HashMap<String, Cell>,
}

/// The format named in the spec, or guessed from the file extension.
pub fn resolve_format(path: &Path, format: Option<DataFormat>) -> Result<DataFormat, TrainError> {
    if let Some(f) = format {
        return Ok(f);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(DataFormat::Jsonl),
        "json" => Ok(DataFormat::Json),
        "csv" => Ok(DataFormat::Csv),
        "parquet" => Ok(DataFormat::Parquet),
        _ => Err(TrainError::data(
            path,
            None,
            format!(
                "cannot tell the format from extension {ext:?}; expected .jsonl, .json, .csv or .parquet, or set `format`"
            ),
        )),
    }
}

/// Read at most `limit` records from `path`.
pub fn read_records(
    path: &Path,
    format: Option<DataFormat>,
    limit: Option<usize>,
) -> Result<Vec<Record>, TrainError> {
    let limit = limit.unwrap_or(usize::MAX);
    match resolve_format(path, format)? {
        DataFormat::Jsonl => read_jsonl(path, limit),
        DataFormat::Json => read_json_array(path, limit),
        DataFormat::Csv => read_csv(path, limit),
        DataFormat::Parquet => read_parquet(path, limit),
    }
}

fn open(path: &Path) -> Result<File, TrainError> {
    File::open(path).map_err(|e| TrainError::data(path, None, format!("cannot open: {e}")))
}

fn json_cells(
    path: &Path,
    row: usize,
    value: serde_json::Value,
) -> Result<HashMap<String, Cell>, TrainError> {
    let serde_json::Value::Object(map) = value else {
        return Err(TrainError::data(
            path,
            Some(row),
            "expected a JSON object".to_string(),
        ));
    };
    Ok(map.into_iter().map(|(k, v)| (k, json_cell(v))).collect())
}

fn json_cell(v: serde_json::Value) -> Cell {
    use serde_json::Value;
    match v {
        Value::String(s) => Cell::Text(s),
        Value::Null => Cell::Null,
        Value::Bool(_) => Cell::Other("boolean"),
        Value::Number(_) => Cell::Other("number"),
        Value::Array(_) => Cell::Other("array"),
        Value::Object(_) => Cell::Other("object"),
    }
}

fn read_jsonl(path: &Path, limit: usize) -> Result<Vec<Record>, TrainError> {
    let mut out = Vec::new();
    for (i, line) in BufReader::new(open(path)?).lines().enumerate() {
        if out.len() >= limit {
            break;
        }
        let row = i + 1;
        let line =
            line.map_err(|e| TrainError::data(path, Some(row), format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line)
            .map_err(|e| TrainError::data(path, Some(row), format!("not valid JSON: {e}")))?;
        out.push(Record {
            row,
            cells: json_cells(path, row, value)?,
        });
    }
    Ok(out)
}

fn read_json_array(path: &Path, limit: usize) -> Result<Vec<Record>, TrainError> {
    let value: serde_json::Value = serde_json::from_reader(BufReader::new(open(path)?))
        .map_err(|e| TrainError::data(path, None, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(TrainError::data(
            path,
            None,
            "expected a JSON array of objects".to_string(),
        ));
    };
    items
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, v)| {
            Ok(Record {
                row: i + 1,
                cells: json_cells(path, i + 1, v)?,
            })
        })
        .collect()
}

fn read_csv(path: &Path, limit: usize) -> Result<Vec<Record>, TrainError> {
    let mut reader = csv::Reader::from_reader(open(path)?);
    let headers = reader
        .headers()
        .map_err(|e| TrainError::data(path, Some(1), format!("cannot read the CSV header: {e}")))?
        .clone();
    let mut out = Vec::new();
    for result in reader.records().take(limit) {
        let record = result.map_err(|e| {
            let row = e.position().map(|p| p.line() as usize);
            TrainError::data(path, row, format!("bad CSV record: {e}"))
        })?;
        let row = record
            .position()
            .map(|p| p.line() as usize)
            .unwrap_or(out.len() + 2);
        let cells = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), Cell::Text(v.to_string())))
            .collect();
        out.push(Record { row, cells });
    }
    Ok(out)
}

fn read_parquet(path: &Path, limit: usize) -> Result<Vec<Record>, TrainError> {
    let reader = SerializedFileReader::new(open(path)?)
        .map_err(|e| TrainError::data(path, None, format!("not a readable Parquet file: {e}")))?;
    let mut out = Vec::new();
    for (i, row) in reader.into_iter().take(limit).enumerate() {
        let row_no = i + 1;
        let row =
            row.map_err(|e| TrainError::data(path, Some(row_no), format!("cannot read row: {e}")))?;
        let cells = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), parquet_cell(field)))
            .collect();
        out.push(Record { row: row_no, cells });
    }
    Ok(out)
}

fn parquet_cell(field: &Field) -> Cell {
    match field {
        Field::Str(s) => Cell::Text(s.clone()),
        Field::Null => Cell::Null,
        Field::Bool(_) => Cell::Other("boolean"),
        Field::Bytes(_) => Cell::Other("bytes"),
        Field::Group(_) => Cell::Other("group"),
        Field::ListInternal(_) => Cell::Other("list"),
        Field::MapInternal(_) => Cell::Other("map"),
        _ => Cell::Other("number or date"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Record, k: &str) -> String {
        match &r.cells[k] {
            Cell::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jsonl_rows_are_numbered_by_line_and_limited() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"q\":\"a\",\"n\":1}\n\n{\"q\":\"b\"}\n{\"q\":\"c\"}\n",
        )
        .unwrap();
        let recs = read_records(&p, None, Some(2)).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].row, recs[1].row), (1, 3));
        assert_eq!(text(&recs[1], "q"), "b");
        assert_eq!(recs[0].cells["n"], Cell::Other("number"));
    }

    #[test]
    fn json_array_and_csv_read_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.json");
        std::fs::write(&j, r#"[{"q":"x, y","a":"1"},{"q":"z","a":null}]"#).unwrap();
        let c = dir.path().join("d.csv");
        std::fs::write(&c, "q,a\n\"x, y\",1\nz,\n").unwrap();
        let rj = read_records(&j, None, None).unwrap();
        let rc = read_records(&c, None, None).unwrap();
        assert_eq!(text(&rj[0], "q"), text(&rc[0], "q"));
        assert_eq!(rj[1].cells["a"], Cell::Null);
        assert_eq!(rc[1].cells["a"], Cell::Text(String::new()));
        assert_eq!((rc[0].row, rc[1].row), (2, 3));
    }

    #[test]
    fn parquet_strings_and_nulls_are_read() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message m { OPTIONAL BYTE_ARRAY q (UTF8); }",
            )
            .unwrap(),
        );
        let mut w =
            SerializedFileWriter::new(File::create(&p).unwrap(), schema, Default::default())
                .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(
                &[ByteArray::from("hello"), ByteArray::from("world")],
                Some(&[1, 0, 1]),
                None,
            )
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
        let recs = read_records(&p, None, None).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(text(&recs[0], "q"), "hello");
        assert_eq!(recs[1].cells["q"], Cell::Null);
        assert_eq!(recs[2].row, 3);
    }

    #[test]
    fn unknown_extension_and_bad_json_name_the_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        std::fs::write(&p, "").unwrap();
        assert!(
            read_records(&p, None, None)
                .unwrap_err()
                .to_string()
                .contains("d.txt")
        );
        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"q\":\"a\"}\n{oops\n").unwrap();
        let err = read_records(&j, None, None).unwrap_err().to_string();
        assert!(err.contains("d.jsonl") && err.contains("row 2"), "{err}");
    }
}
