//! The append-only JSONL journals qlab keeps (ratings, metrics logs, answers), read and written one way.
//!
//! A crash or a full disk mid-append leaves a torn last line: bytes without their newline. Readers skip it
//! and report it once (file and line); every writer first moves such a tail aside to `<file>.torn` (saying
//! so), then appends on a fresh line, under an exclusive lock, so that no judgement is ever written onto
//! a torn line and lost with it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use super::bounded::{LINE_LIMIT, LineEnd, read_line_capped};

/// One complete line of a journal with its 1-based number (blank lines are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub text: String,
}

/// A last line without its newline: what a crash or a full disk mid-append leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub line: usize,
    pub bytes: usize,
}

/// The complete lines of a journal, and its torn tail if it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub lines: Vec<Line>,
    pub torn: Option<TornTail>,
}

/// Read a journal; a missing file is an empty journal. A torn tail is reported once (see [`notices`]).
pub fn read(path: &Path) -> Result<Journal, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut journal = Journal::default();
    let mut buf = Vec::new();
    for number in 1.. {
        let end = read_line_capped(&mut reader, &mut buf, LINE_LIMIT)
            .map_err(|e| StoreError::io(path, e))?;
        match end {
            LineEnd::Eof => break,
            LineEnd::TooLong => {
                return Err(StoreError::Line {
                    path: path.to_owned(),
                    line: number,
                    message: format!(
                        "runs past {} MiB without a newline (not a journal?)",
                        LINE_LIMIT >> 20
                    ),
                });
            }
            LineEnd::Unterminated => {
                let torn = TornTail {
                    path: path.to_owned(),
                    line: number,
                    bytes: buf.len(),
                };
                notice(
                    (path.to_owned(), number, "read"),
                    format!(
                        "{}:{number}: torn last line ({} bytes without a newline: a crash or a full disk mid-append), ignored",
                        path.display(),
                        torn.bytes
                    ),
                );
                journal.torn = Some(torn);
                break;
            }
            LineEnd::Complete => {
                let text = std::str::from_utf8(&buf).map_err(|_| StoreError::Line {
                    path: path.to_owned(),
                    line: number,
                    message: "not UTF-8 text".into(),
                })?;
                if !text.trim().is_empty() {
                    journal.lines.push(Line {
                        number,
                        text: text.trim_end_matches(['\n', '\r']).to_owned(),
                    });
                }
            }
        }
    }
    Ok(journal)
}

/// An open journal, appending whole lines; before each append, under an exclusive lock, a torn tail is
/// moved to `<path>.torn`.
#[derive(Debug)]
pub struct Appender {
    path: PathBuf,
    file: File,
}

impl Appender {
    /// Open (creating it and its directory) for appending.
    pub fn open(path: &Path) -> Result<Appender, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        Ok(Appender {
            path: path.to_owned(),
            file,
        })
    }

    /// Append `lines` (each gets its newline) in one write; `sync` fsyncs it before returning.
    pub fn append(&mut self, lines: &[&str], sync: bool) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let io = |e| StoreError::io(&self.path, e);
        self.file.lock().map_err(io)?;
        let written = repair_tail(&self.path, &self.file).and_then(|()| {
            self.file
                .write_all(&buf)
                .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) })
                .map_err(io)
        });
        let _ = self.file.unlock();
        written
    }
}

/// Append `lines` to the journal at `path` in one write and fsync it: when this returns Ok they survive a
/// crash.
pub fn append_synced(path: &Path, lines: &[&str]) -> Result<(), StoreError> {
    Appender::open(path)?.append(lines, true)
}

/// Move a torn tail (bytes after the last newline) to `<path>.torn` and cut it off; call under the lock.
fn repair_tail(path: &Path, file: &File) -> Result<(), StoreError> {
    let io = |e| StoreError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    if len == 0 || last_byte(file, len - 1).map_err(io)? == b'\n' {
        return Ok(());
    }
    let (start, line) = tail_start(file, len).map_err(io)?;
    let mut torn = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(start)).map_err(io)?;
    reader
        .take(len - start)
        .read_to_end(&mut torn)
        .map_err(io)?;
    torn.push(b'\n');
    let aside = torn_path(path);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&aside)
        .and_then(|mut f| f.write_all(&torn).and_then(|()| f.sync_data()))
        .map_err(|e| StoreError::io(&aside, e))?;
    file.set_len(start)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    notice(
        (path.to_owned(), line, "moved"),
        format!(
            "{}:{line}: torn last line ({} bytes without a newline: a crash or a full disk mid-append) moved to {}; \
             new lines start on a fresh line",
            path.display(),
            len - start,
            aside.display()
        ),
    );
    Ok(())
}

/// Where a torn tail of `path` is kept.
pub fn torn_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".torn");
    path.with_file_name(name)
}

fn last_byte(file: &File, at: u64) -> std::io::Result<u8> {
    let mut b = [0u8];
    file.read_exact_at(&mut b, at)?;
    Ok(b[0])
}

/// The offset just after the last newline before `len`, and the 1-based number of the line starting there.
fn tail_start(file: &File, len: u64) -> std::io::Result<(u64, usize)> {
    let mut buf = vec![0u8; 64 << 10];
    let mut start = None;
    let mut newlines = 0usize;
    let mut end = len;
    while end > 0 {
        let from = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - from) as usize];
        file.read_exact_at(chunk, from)?;
        if start.is_none()
            && let Some(i) = chunk.iter().rposition(|&b| b == b'\n')
        {
            start = Some(from + i as u64 + 1);
            newlines += chunk[..i].iter().filter(|&&b| b == b'\n').count() + 1;
        } else if start.is_some() {
            newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        }
        end = from;
    }
    Ok((start.unwrap_or(0), newlines + 1))
}

/// What readers and writers found and did to journals, each said once per process.
type NoticeKey = (PathBuf, usize, &'static str);
static NOTICES: Mutex<(Vec<String>, Option<HashSet<NoticeKey>>)> = Mutex::new((Vec::new(), None));

fn notice(key: NoticeKey, message: String) {
    let Ok(mut n) = NOTICES.lock() else { return };
    if n.1.get_or_insert_with(HashSet::new).insert(key) {
        tracing::warn!("{message}");
        n.0.push(message);
    }
}

/// The notices not yet taken (torn tails found or moved aside), for the user's eyes: the CLI prints them.
pub fn notices() -> Vec<String> {
    NOTICES
        .lock()
        .map(|mut n| std::mem::take(&mut n.0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_read_as_such_and_moved_aside_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.jsonl");
        append_synced(&p, &["{\"a\":1}", "{\"a\":2}"]).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"a\":3, \"tor").unwrap();
        let j = read(&p).unwrap();
        assert_eq!(j.lines.len(), 2);
        assert_eq!(j.torn.as_ref().map(|t| (t.line, t.bytes)), Some((3, 12)));
        append_synced(&p, &["{\"a\":4}"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":4}\n"
        );
        assert_eq!(
            std::fs::read_to_string(torn_path(&p)).unwrap(),
            "{\"a\":3, \"tor\n"
        );
        let said = notices().join("\n");
        assert!(said.contains("ratings.jsonl:3: torn last line"), "{said}");
        assert!(said.contains("moved to"), "{said}");
    }

    #[test]
    fn a_file_that_is_all_torn_tail_and_a_long_one_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("answers.jsonl");
        std::fs::write(&p, "no newline at all").unwrap();
        append_synced(&p, &["x"]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x\n");
        let mut long = "l\n".repeat(70_000);
        long.push_str("torn");
        std::fs::write(&p, &long).unwrap();
        let mut a = Appender::open(&p).unwrap();
        a.append(&["y"], false).unwrap();
        let j = read(&p).unwrap();
        assert_eq!((j.lines.len(), j.torn), (70_001, None));
        assert_eq!(
            std::fs::read_to_string(torn_path(&p)).unwrap(),
            "no newline at all\ntorn\n"
        );
    }

    #[test]
    fn lines_are_numbered_as_in_the_file_and_bad_text_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, "1\n\n2\r\nx\n").unwrap();
        let numbered: Vec<(usize, String)> = read(&p)
            .unwrap()
            .lines
            .into_iter()
            .map(|l| (l.number, l.text))
            .collect();
        assert_eq!(
            numbered,
            [(1, "1".into()), (3, "2".into()), (4, "x".into())]
        );
        std::fs::write(&p, b"1\n\xff\n").unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2: ", p.display())), "{err}");
        assert!(read(&dir.path().join("none")).unwrap().lines.is_empty());
    }
}
