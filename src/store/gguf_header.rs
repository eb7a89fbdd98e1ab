//! A sanity walk over a GGUF header before candle reads it: every string length, array count, tensor
//! count and tensor size must fit in the file, so that a damaged or hostile header gets an error naming the
//! file and the field instead of an allocation abort.

use std::io::{BufReader, Read};
use std::path::Path;

/// Strings longer than this are not GGUF keys or token texts.
const MAX_STRING: u64 = 1 << 24;
/// Arrays nested deeper than this are not GGUF metadata.
const MAX_DEPTH: usize = 4;

struct Walk<R> {
    reader: R,
    pos: u64,
    len: u64,
    /// GGUF v1 stores lengths and counts as u32; v2 and v3 as u64.
    v1: bool,
}

impl<R: Read> Walk<R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| format!("the file ends inside {what} at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// A length or count: u32 in v1, u64 later.
    fn count(&mut self, what: &str) -> Result<u64, String> {
        if self.v1 {
            self.u32(what).map(u64::from)
        } else {
            self.u64(what)
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// A count of items of at least `min_size` bytes each that must fit in the rest of the file.
    fn fitting(&mut self, what: &str, min_size: u64) -> Result<u64, String> {
        let at = self.pos;
        let n = self.count(what)?;
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(format!(
                "{what} at byte {at} is {n}, more than the {} bytes left in the file hold",
                self.remaining()
            ));
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if copied < n {
            return Err(format!("the file ends inside {what} at byte {}", self.pos));
        }
        self.pos += n;
        Ok(())
    }

    /// A metadata key: its bytes when short enough to be one qlab looks at, else skipped.
    fn key(&mut self) -> Result<Vec<u8>, String> {
        let at = self.pos;
        let n = self.fitting("the length of a metadata key", 1)?;
        if n > 64 {
            if n > MAX_STRING {
                return Err(format!(
                    "a metadata key at byte {at} claims {n} bytes (more than {MAX_STRING})"
                ));
            }
            self.skip(n, "a metadata key")?;
            return Ok(Vec::new());
        }
        let mut key = vec![0u8; n as usize];
        self.reader
            .read_exact(&mut key)
            .map_err(|_| format!("the file ends inside a metadata key at byte {}", self.pos))?;
        self.pos += n;
        Ok(key)
    }

    fn string(&mut self, what: &str) -> Result<(), String> {
        let at = self.pos;
        let n = self.fitting(&format!("the length of {what}"), 1)?;
        if n > MAX_STRING {
            return Err(format!(
                "{what} at byte {at} claims {n} bytes (more than {MAX_STRING})"
            ));
        }
        self.skip(n, what)
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<(), String> {
        match ty {
            0 | 1 | 7 => self.skip(1, "a metadata value"),
            2 | 3 => self.skip(2, "a metadata value"),
            4..=6 => self.skip(4, "a metadata value"),
            10..=12 => self.skip(8, "a metadata value"),
            8 => self.string("a metadata string"),
            9 if depth < MAX_DEPTH => {
                let inner = self.u32("an array's type")?;
                let size = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 | 9 if self.v1 => 4,
                    8 | 9 => 8,
                    other => return Err(format!("unknown metadata type {other} in an array")),
                };
                let n = self.fitting("an array's length", size)?;
                for _ in 0..n {
                    self.value(inner, depth + 1)?;
                }
                Ok(())
            }
            9 => Err("metadata arrays nested too deep".into()),
            other => Err(format!("unknown metadata type {other}")),
        }
    }
}

/// (elements per block, bytes per block) of a ggml tensor type.
fn ggml_block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        _ => return None,
    })
}

/// Check the header of the GGUF file at `path` (see the module docs); the error says what is wrong, for
/// the caller to put after the file's name.
pub fn check(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    check_header(BufReader::new(file), len)
        .map_err(|what| format!("not a valid GGUF header: {what}"))
}

/// Walk a GGUF header read from `reader`, a file of `len` bytes; the error says which field is wrong.
pub fn check_header<R: Read>(reader: R, len: u64) -> Result<(), String> {
    walk_header(&mut Walk {
        reader,
        pos: 0,
        len,
        v1: false,
    })
}

fn walk_header<R: Read>(w: &mut Walk<R>) -> Result<(), String> {
    if &w.bytes::<4>("the magic number")? != b"GGUF" {
        return Err("the file does not start with `GGUF`".into());
    }
    let version = w.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("version {version} (expected 1, 2 or 3)"));
    }
    w.v1 = version == 1;
    let count_size = if w.v1 { 4 } else { 8 };
    // A tensor's info holds at least a name length, a dimension count, a type and an offset.
    let tensors = w.fitting("the tensor count", count_size + 4 + 4 + 8)?;
    // A metadata entry holds at least a key length and a type.
    let entries = w.fitting("the metadata count", count_size + 4)?;
    for _ in 0..entries {
        let at = w.pos;
        let key = w.key()?;
        let ty = w.u32("a metadata type")?;
        if key == b"general.alignment" && ty <= 5 {
            // Tensor data is aligned to this: candle divides by it.
            let size = [1, 1, 2, 2, 4, 4][ty as usize];
            let mut v = [0u8; 8];
            w.reader
                .read_exact(&mut v[..size])
                .map_err(|_| format!("the file ends inside general.alignment at byte {}", w.pos))?;
            w.pos += size as u64;
            if u64::from_le_bytes(v) == 0 {
                return Err(format!("general.alignment at byte {at} is 0"));
            }
        } else {
            w.value(ty, 0)?;
        }
    }
    for _ in 0..tensors {
        w.string("a tensor name")?;
        let at = w.pos;
        let dims = w.u32("a tensor's dimension count")?;
        if dims == 0 || dims > 4 {
            return Err(format!(
                "a tensor at byte {at} has {dims} dimensions (expected 1 to 4)"
            ));
        }
        let mut elems: u64 = 1;
        for _ in 0..dims {
            let d = w.count("a tensor dimension")?;
            elems = elems.saturating_mul(d);
        }
        let ty = w.u32("a tensor type")?;
        let offset = w.u64("a tensor offset")?;
        // The bytes a tensor of this type takes; an unknown type is left for the reader to refuse.
        let bytes = ggml_block(ty).map_or(0, |(block, size)| {
            elems.div_ceil(block).saturating_mul(size)
        });
        if offset.saturating_add(bytes) > w.len {
            return Err(format!(
                "a tensor at byte {at} claims {elems} elements ({bytes} bytes) at offset {offset}, more than a {}-byte file holds",
                w.len
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tensors: u64, entries: u64, rest: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(entries.to_le_bytes());
        b.extend(rest);
        b
    }

    fn check_bytes(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        match check(&p) {
            Ok(()) => "ok".into(),
            Err(e) => e,
        }
    }

    #[test]
    fn counts_and_lengths_that_do_not_fit_the_file_are_refused() {
        assert_eq!(check_bytes(&header(0, 0, &[])), "ok");
        assert!(check_bytes(&header(u64::MAX, 0, &[])).contains("the tensor count"));
        assert!(check_bytes(&header(0, 1 << 40, &[])).contains("the metadata count"));
        let mut key = (u64::MAX - 3).to_le_bytes().to_vec();
        key.extend([0; 16]);
        assert!(check_bytes(&header(0, 1, &key)).contains("the length of a metadata key"));
        let mut arr = 1u64.to_le_bytes().to_vec();
        arr.extend(b"k");
        arr.extend(9u32.to_le_bytes());
        arr.extend(8u32.to_le_bytes());
        arr.extend((1u64 << 60).to_le_bytes());
        assert!(check_bytes(&header(0, 1, &arr)).contains("an array's length"));
        assert!(check_bytes(b"GGML").contains("does not start with `GGUF`"));
        assert!(check_bytes(b"GG").contains("ends inside the magic"));
        let mut align = 17u64.to_le_bytes().to_vec();
        align.extend(b"general.alignment");
        align.extend(4u32.to_le_bytes());
        align.extend(0u32.to_le_bytes());
        assert!(check_bytes(&header(0, 1, &align)).contains("general.alignment at byte 24 is 0"));
    }

    #[test]
    fn a_tensor_larger_than_the_file_is_refused() {
        let mut t = 1u64.to_le_bytes().to_vec();
        t.extend(b"w");
        t.extend(2u32.to_le_bytes());
        t.extend((1u64 << 40).to_le_bytes());
        t.extend((1u64 << 40).to_le_bytes());
        t.extend(0u32.to_le_bytes());
        t.extend(0u64.to_le_bytes());
        let err = check_bytes(&header(1, 0, &t));
        assert!(err.contains("claims") && err.contains("elements"), "{err}");
    }
}
