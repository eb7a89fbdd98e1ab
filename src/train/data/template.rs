//! The training template: `{field}` placeholders filled from a record, and where the completion starts.

use std::collections::BTreeMap;

use super::read::{Cell, Record};

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Field(String),
}

/// A parsed template, ready to render records.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The piece in which the completion starts, and the byte offset inside it (0 for a field).
    completion_at: (usize, usize),
    /// Placeholder -> column.
    columns: BTreeMap<String, String>,
}

/// A record rendered as training text.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    /// Byte offset in `text` where the completion starts.
    pub completion_start: usize,
}

/// Why a record could not be rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub row: usize,
    pub reason: String,
}

fn parse_pieces(src: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' if chars.peek() == Some(&c) => {
                chars.next();
                text.push(c);
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') => {
                            name.push(c)
                        }
                        _ => {
                            return Err(format!(
                                "bad placeholder `{{{name}` (write `{{{{` for a literal brace)"
                            ));
                        }
                    }
                }
                if name.is_empty() {
                    return Err("empty placeholder `{}`".to_string());
                }
                if !text.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(name));
            }
            '}' => return Err("lone `}` (write `}}` for a literal brace)".to_string()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Literal(text));
    }
    Ok(pieces)
}

impl Template {
    /// Parse `text` (`{field}` placeholders, `{{` and `}}` literal braces). The completion starts right after
    /// `marker` when given (it must occur in the template's literal text), otherwise at the last placeholder.
    pub fn parse(
        text: &str,
        marker: Option<&str>,
        fields: &BTreeMap<String, String>,
    ) -> Result<Template, String> {
        let pieces = parse_pieces(text)?;
        let last_field = pieces.iter().rposition(|p| matches!(p, Piece::Field(_)));
        let Some(last_field) = last_field else {
            return Err("the template has no {field} placeholder".to_string());
        };
        let completion_at = match marker.filter(|m| !m.is_empty()) {
            Some(m) => pieces
                .iter()
                .enumerate()
                .find_map(|(i, p)| match p {
                    Piece::Literal(s) => s.find(m).map(|at| (i, at + m.len())),
                    Piece::Field(_) => None,
                })
                .ok_or_else(|| {
                    format!("the completion marker {m:?} does not occur in the template")
                })?,
            None => (last_field, 0),
        };
        let columns = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field(name) => Some((
                    name.clone(),
                    fields.get(name).cloned().unwrap_or_else(|| name.clone()),
                )),
                Piece::Literal(_) => None,
            })
            .collect();
        Ok(Template {
            pieces,
            completion_at,
            columns,
        })
    }

    /// Render one record; a missing, non-string or empty field makes the row bad.
    pub fn render(&self, record: &Record) -> Result<Rendered, BadRow> {
        let mut text = String::new();
        let mut completion_start = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            if i == self.completion_at.0 {
                completion_start = text.len() + self.completion_at.1;
            }
            match piece {
                Piece::Literal(s) => text.push_str(s),
                Piece::Field(name) => {
                    let column = &self.columns[name];
                    let bad = |what: &str| BadRow {
                        row: record.row,
                        reason: format!("field `{column}` {what}"),
                    };
                    match record.cells.get(column) {
                        None => return Err(bad("is missing")),
                        Some(Cell::Null) => return Err(bad("is null")),
                        Some(Cell::Other(ty)) => {
                            return Err(bad(&format!("is a {ty}, expected a string")));
                        }
                        Some(Cell::Text(s)) if s.trim().is_empty() => return Err(bad("is empty")),
                        Some(Cell::Text(s)) => text.push_str(s),
                    }
                }
            }
        }
        Ok(Rendered {
            text,
            completion_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of text cells.
    fn texts(pairs: &[(&str, &str)]) -> Record {
        let cells: Vec<(&str, Cell)> = pairs
            .iter()
            .map(|&(k, v)| (k, Cell::Text(v.into())))
            .collect();
        record(&cells)
    }

    fn record(pairs: &[(&str, Cell)]) -> Record {
        Record {
            row: 7,
            cells: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn renders_fields_and_finds_the_completion_after_the_marker() {
        let t =
            Template::parse("Q: {question}\nA: {answer}", Some("A: "), &BTreeMap::new()).unwrap();
        let r = t
            .render(&texts(&[("question", "2+2?"), ("answer", "4")]))
            .unwrap();
        assert_eq!(r.text, "Q: 2+2?\nA: 4");
        assert_eq!(&r.text[r.completion_start..], "4");
    }

    #[test]
    fn without_marker_the_completion_is_the_last_field_and_mapping_renames_columns() {
        let fields = BTreeMap::from([("answer".to_string(), "output".to_string())]);
        let t = Template::parse("{q} => {answer}. {{literal}}", None, &fields).unwrap();
        let r = t.render(&texts(&[("q", "x"), ("output", "y")])).unwrap();
        assert_eq!(r.text, "x => y. {literal}");
        assert_eq!(&r.text[r.completion_start..], "y. {literal}");
    }

    #[test]
    fn bad_rows_say_which_field_and_why() {
        let t = Template::parse("{a} {b}", None, &BTreeMap::new()).unwrap();
        let cases = [
            (
                record(&[("a", Cell::Text("x".into()))]),
                "field `b` is missing",
            ),
            (
                record(&[("a", Cell::Text(" ".into())), ("b", Cell::Text("y".into()))]),
                "field `a` is empty",
            ),
            (
                record(&[("a", Cell::Other("number")), ("b", Cell::Text("y".into()))]),
                "expected a string",
            ),
            (
                record(&[("a", Cell::Null), ("b", Cell::Text("y".into()))]),
                "field `a` is null",
            ),
        ];
        for (rec, want) in cases {
            let err = t.render(&rec).unwrap_err();
            assert_eq!(err.row, 7);
            assert!(err.reason.contains(want), "{} vs {want}", err.reason);
        }
    }

    #[test]
    fn a_template_needs_a_field_and_an_existing_marker() {
        assert!(Template::parse("no fields", None, &BTreeMap::new()).is_err());
        assert!(
            Template::parse("{a}", Some("###"), &BTreeMap::new())
                .unwrap_err()
                .contains("###")
        );
        assert!(
            Template::parse("{a} }", None, &BTreeMap::new())
                .unwrap_err()
                .contains("lone")
        );
    }
}
