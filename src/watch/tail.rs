//! Incremental reading of an append-only text file: each call returns only the complete lines written since
//! the last one. A partial last line waits for its newline; a truncated or replaced file is read again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::WatchError;

/// Follows one file by byte offset.
#[derive(Debug, Clone)]
pub struct LineTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Number of complete lines returned so far (1-based line number of the last one).
    lines_read: u64,
}

/// A line with its 1-based number in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedLine {
    pub number: u64,
    pub text: String,
}

impl LineTail {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LineTail {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            lines_read: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Skip everything written so far: later reads return only what comes after now.
    pub fn skip_to_end(&mut self) -> Result<(), WatchError> {
        self.read_new().map(drop)
    }

    /// Complete lines appended since the last call; empty when the file does not exist (yet).
    pub fn read_new(&mut self) -> Result<Vec<NumberedLine>, WatchError> {
        let Some(len) = self.file_len()? else {
            return Ok(Vec::new());
        };
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.lines_read = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        let io = |e| WatchError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset)
            .read_to_end(&mut buf)
            .map_err(io)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        let body = &complete[..complete.len() - 1];
        let out: Vec<NumberedLine> = body
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, raw)| NumberedLine {
                number: self.lines_read + i as u64 + 1,
                text: String::from_utf8_lossy(raw)
                    .trim_end_matches('\r')
                    .to_owned(),
            })
            .collect();
        self.lines_read += out.len() as u64;
        Ok(out)
    }

    fn file_len(&self) -> Result<Option<u64>, WatchError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(WatchError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }
}

/// The last `n` lines of a text file (reading at most its final 64 KiB); empty when it does not exist.
pub fn last_lines(path: &Path, n: usize) -> Result<Vec<String>, WatchError> {
    const WINDOW: u64 = 64 * 1024;
    let io = |e| WatchError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(WINDOW);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn returns_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut t = LineTail::new(&p);
        assert!(
            t.read_new().unwrap().is_empty(),
            "missing file reads as empty"
        );
        append(&p, "a\nb\npar");
        let numbered = |t: &mut LineTail| -> Vec<(u64, String)> {
            t.read_new()
                .unwrap()
                .into_iter()
                .map(|l| (l.number, l.text))
                .collect()
        };
        assert_eq!(numbered(&mut t), vec![(1, "a".into()), (2, "b".into())]);
        assert!(t.read_new().unwrap().is_empty(), "a partial line waits");
        append(&p, "tial\nc\n");
        assert_eq!(
            numbered(&mut t),
            vec![(3, "partial".into()), (4, "c".into())]
        );
    }

    #[test]
    fn a_truncated_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        append(&p, "one\ntwo\n");
        let mut t = LineTail::new(&p);
        assert_eq!(t.read_new().unwrap().len(), 2);
        std::fs::write(&p, "x\n").unwrap();
        let got = t.read_new().unwrap();
        assert_eq!(
            got,
            vec![NumberedLine {
                number: 1,
                text: "x".into()
            }]
        );
    }

    #[test]
    fn skip_to_end_ignores_history() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        append(&p, "old\n");
        let mut t = LineTail::new(&p);
        t.skip_to_end().unwrap();
        append(&p, "new\n");
        assert_eq!(t.read_new().unwrap()[0].text, "new");
    }

    #[test]
    fn last_lines_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.log");
        append(
            &p,
            &(1..=50).map(|i| format!("line {i}\n")).collect::<String>(),
        );
        assert_eq!(last_lines(&p, 2).unwrap(), vec!["line 49", "line 50"]);
        assert!(last_lines(&dir.path().join("none"), 3).unwrap().is_empty());
    }
}
