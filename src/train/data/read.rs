//! Reading dataset files (JSONL, JSON array, CSV, Parquet) into records of named cells, keeping each
//! record's row number so that a bad row can be reported precisely.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use crate::store::bounded::{Capped, LINE_LIMIT, LineEnd, read_line_capped};
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

/// Cap on a JSON-array dataset, parsed whole (JSONL, CSV and Parquet are read row by row).
const JSON_ARRAY_LIMIT: u64 = 2 << 30;

/// The records of a file, and the rows that could not be read as records (kept only when skipping).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub rows: Vec<Record>,
    /// (row, why) of each malformed row skipped.
    pub malformed: Vec<(usize, String)>,
}

/// Read at most `limit` records from `path`. A malformed row (bad JSON, not an object, a broken CSV
/// record) is an error naming the file and row, or with `skip_malformed` is listed and skipped. A row or
/// file that never ends (a device file, a runaway line) is an error, never an allocation abort.
pub fn read_records(
    path: &Path,
    format: Option<DataFormat>,
    limit: Option<usize>,
    skip_malformed: bool,
) -> Result<Records, TrainError> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Rows {
        path,
        skip_malformed,
        records: Records::default(),
    };
    match resolve_format(path, format)? {
        DataFormat::Jsonl => read_jsonl(&mut out, limit)?,
        DataFormat::Json => read_json_array(&mut out, limit)?,
        DataFormat::Csv => read_csv(&mut out, limit)?,
        DataFormat::Parquet => out.records.rows = read_parquet(path, limit)?,
    }
    Ok(out.records)
}

/// Records being read, and what to do with a malformed one.
struct Rows<'a> {
    path: &'a Path,
    skip_malformed: bool,
    records: Records,
}

impl Rows<'_> {
    fn malformed(&mut self, row: usize, why: String) -> Result<(), TrainError> {
        if self.skip_malformed {
            self.records.malformed.push((row, why));
            Ok(())
        } else {
            Err(TrainError::data(self.path, Some(row), why))
        }
    }

    fn push_json(&mut self, row: usize, value: serde_json::Value) -> Result<(), TrainError> {
        match json_cells(value) {
            Some(cells) => {
                self.records.rows.push(Record { row, cells });
                Ok(())
            }
            None => self.malformed(row, "expected a JSON object".into()),
        }
    }

    fn len(&self) -> usize {
        self.records.rows.len() + self.records.malformed.len()
    }
}

fn open(path: &Path) -> Result<File, TrainError> {
    File::open(path).map_err(|e| TrainError::data(path, None, format!("cannot open: {e}")))
}

fn json_cells(value: serde_json::Value) -> Option<HashMap<String, Cell>> {
    let serde_json::Value::Object(map) = value else {
        return None;
    };
    Some(map.into_iter().map(|(k, v)| (k, json_cell(v))).collect())
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

fn read_jsonl(out: &mut Rows, limit: usize) -> Result<(), TrainError> {
    let path = out.path;
    let mut reader = BufReader::new(open(path)?);
    let mut buf = Vec::new();
    for row in 1.. {
        if out.len() >= limit {
            break;
        }
        let end = read_line_capped(&mut reader, &mut buf, LINE_LIMIT)
            .map_err(|e| TrainError::data(path, Some(row), format!("cannot read: {e}")))?;
        match end {
            LineEnd::Eof => break,
            LineEnd::TooLong => {
                return Err(TrainError::data(
                    path,
                    Some(row),
                    format!(
                        "runs past {} MiB without a newline (a runaway line? a device file?)",
                        LINE_LIMIT >> 20
                    ),
                ));
            }
            LineEnd::Complete | LineEnd::Unterminated => {}
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            out.malformed(row, "not UTF-8 text".into())?;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(value) => out.push_json(row, value)?,
            Err(e) => out.malformed(row, format!("not valid JSON: {e}"))?,
        }
    }
    Ok(())
}

fn read_json_array(out: &mut Rows, limit: usize) -> Result<(), TrainError> {
    let path = out.path;
    let reader = Capped::new(BufReader::new(open(path)?), usize::MAX, JSON_ARRAY_LIMIT);
    let value: serde_json::Value = serde_json::from_reader(reader)
        .map_err(|e| TrainError::data(path, None, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(TrainError::data(
            path,
            None,
            "expected a JSON array of objects".to_string(),
        ));
    };
    for (i, v) in items.into_iter().take(limit).enumerate() {
        out.push_json(i + 1, v)?;
    }
    Ok(())
}

fn read_csv(out: &mut Rows, limit: usize) -> Result<(), TrainError> {
    let path = out.path;
    let capped = Capped::new(open(path)?, LINE_LIMIT, u64::MAX);
    let mut reader = csv::Reader::from_reader(capped);
    let headers = reader
        .headers()
        .map_err(|e| TrainError::data(path, Some(1), format!("cannot read the CSV header: {e}")))?
        .clone();
    let mut record = csv::StringRecord::new();
    while out.len() < limit {
        let row = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let row = record.position().map(|p| p.line() as usize).unwrap_or(row);
                let cells = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.to_string(), Cell::Text(v.to_string())))
                    .collect();
                out.records.rows.push(Record { row, cells });
            }
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(TrainError::data(
                    path,
                    Some(row),
                    format!("cannot read: {e}"),
                ));
            }
            Err(e) => {
                let row = e.position().map(|p| p.line() as usize).unwrap_or(row);
                out.malformed(row, format!("bad CSV record: {e}"))?;
            }
        }
    }
    Ok(())
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
        let recs = read_records(&p, None, Some(2), false).unwrap().rows;
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
        let rj = read_records(&j, None, None, false).unwrap().rows;
        let rc = read_records(&c, None, None, false).unwrap().rows;
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
        let recs = read_records(&p, None, None, false).unwrap().rows;
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
            read_records(&p, None, None, false)
                .unwrap_err()
                .to_string()
                .contains("d.txt")
        );
        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"q\":\"a\"}\n{oops\n").unwrap();
        let err = read_records(&j, None, None, false).unwrap_err().to_string();
        assert!(err.contains("d.jsonl") && err.contains("row 2"), "{err}");
    }

    #[test]
    fn malformed_rows_are_skipped_when_asked_and_endless_rows_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"q\":\"a\"}\n{oops\n[1]\n{\"q\":\"b\"}").unwrap();
        let r = read_records(&j, None, None, true).unwrap();
        assert_eq!(r.rows.len(), 2);
        let rows: Vec<usize> = r.malformed.iter().map(|(row, _)| *row).collect();
        assert_eq!(rows, [2, 3]);
        let c = dir.path().join("d.csv");
        std::fs::write(&c, "q,a\nx,1\ny,2,3\nz,4\n").unwrap();
        let r = read_records(&c, None, None, true).unwrap();
        assert_eq!((r.rows.len(), r.malformed.len()), (2, 1));
        let err = read_records(&c, None, None, false).unwrap_err().to_string();
        assert!(err.contains("d.csv, row 3"), "{err}");
        for format in [DataFormat::Jsonl, DataFormat::Csv, DataFormat::Json] {
            let err = read_records(Path::new("/dev/zero"), Some(format), None, true)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/dev/zero"), "{format:?}: {err}");
        }
    }
}
