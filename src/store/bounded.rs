//! Reading files a user names, with a cap: a device file (`/dev/zero`), a runaway line or a file far larger
//! than its kind ever is gets an error naming the file (and the line), never an allocation abort.

use std::io::{self, BufRead, Read};
use std::path::Path;

use super::StoreError;

/// Cap on configs, question sets, templates and other hand-written text files.
pub const TEXT_FILE_LIMIT: u64 = 64 << 20;
/// Cap on one line of a journal or a dataset (a row longer than this is not a training example).
pub const LINE_LIMIT: usize = 64 << 20;

/// The whole of a text file of at most `limit` bytes; `what` names the kind of file in the error.
pub fn read_to_string(path: &Path, limit: u64, what: &str) -> Result<String, StoreError> {
    let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
            limit,
            what: what.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|e| StoreError::Line {
        path: path.to_owned(),
        line: line_of_offset(e.as_bytes(), e.utf8_error().valid_up_to()),
        message: format!("not UTF-8 text (is this really a {what}?)"),
    })
}

fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// How one capped line read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// Nothing was left to read.
    Eof,
    /// A line with its newline (kept in the buffer).
    Complete,
    /// The last bytes of the input, without a newline.
    Unterminated,
    /// More than the cap without a newline (the buffer holds the first cap + 1 bytes).
    TooLong,
}

/// Read one line into `buf` (cleared first), reading at most `max + 1` bytes.
pub fn read_line_capped<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineEnd> {
    buf.clear();
    let n = reader.take(max as u64 + 1).read_until(b'\n', buf)?;
    Ok(if n == 0 {
        LineEnd::Eof
    } else if buf.ends_with(b"\n") {
        LineEnd::Complete
    } else if n > max {
        LineEnd::TooLong
    } else {
        LineEnd::Unterminated
    })
}

/// A reader that fails (with `InvalidData`) once a line runs past `max_line` bytes or the input past
/// `max_total` bytes, for parsers that read a whole stream (CSV, a JSON array).
pub struct Capped<R> {
    inner: R,
    max_line: usize,
    max_total: u64,
    since_newline: usize,
    total: u64,
    line: usize,
}

impl<R: Read> Capped<R> {
    pub fn new(inner: R, max_line: usize, max_total: u64) -> Self {
        Capped {
            inner,
            max_line,
            max_total,
            since_newline: 0,
            total: 0,
            line: 1,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > self.max_total {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "larger than {} MiB (not a dataset file of this format? a device file?)",
                    self.max_total >> 20
                ),
            ));
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.since_newline = 0;
            } else {
                self.since_newline += 1;
                if self.since_newline > self.max_line {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {} runs past {} MiB without a newline (a runaway line? a device file?)",
                            self.line,
                            self.max_line >> 20
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_file_read_refuses_what_never_ends() {
        let err = read_to_string(Path::new("/dev/zero"), 1 << 10, "config")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/zero") && err.contains("config"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.toml");
        std::fs::write(&p, b"a = 1\n\xff\n").unwrap();
        let err = read_to_string(&p, 1 << 10, "question set")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q.toml:2") && err.contains("UTF-8"), "{err}");
        std::fs::write(&p, "ok").unwrap();
        assert_eq!(read_to_string(&p, 2, "x").unwrap(), "ok");
    }

    #[test]
    fn capped_lines_tell_complete_unterminated_and_too_long_apart() {
        let mut r = io::Cursor::new(b"ab\ncdef\ngh".to_vec());
        let mut buf = Vec::new();
        let ends: Vec<LineEnd> = (0..5)
            .map(|_| read_line_capped(&mut r, &mut buf, 3).unwrap())
            .collect();
        use LineEnd::*;
        // After a line too long, the rest of it (here its newline) is what a next read would see:
        // readers stop at the first one.
        assert_eq!(ends, [Complete, TooLong, Complete, Unterminated, Eof]);
    }

    #[test]
    fn the_capped_reader_names_the_runaway_line() {
        let mut s = String::new();
        let err = Capped::new(io::Cursor::new("a\nbbbbbb\n"), 4, 100)
            .read_to_string(&mut s)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Capped::new(std::fs::File::open("/dev/zero").unwrap(), 1 << 20, 1 << 30)
            .read_to_string(&mut s)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
