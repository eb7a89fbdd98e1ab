//! Generated bad input, 100,000 cases per reader: mutations of valid configs, dataset rows, question files,
//! journal lines and GGUF / safetensors headers (bytes flipped, cut, repeated, spliced with tokens that
//! break parsers: `inf`, `nan`, huge numbers, brackets, NUL). Every reader must answer with a value or an
//! error: a panic fails the test, an allocation abort kills it. Seeded, so a failure replays.

use std::io::Cursor;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CASES: usize = 100_000;

const TOKENS: &[&[u8]] = &[
    b"inf",
    b"nan",
    b"-inf",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551615",
    b"9223372036854775808",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"]]",
    b"=",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\\",
    b"\xff\xfe",
    b"[[model]]",
    b"[lora]",
    b"r = ",
    b"{x}",
    b"{{",
    b"}}",
    b"\"\"\"",
    b"#",
    b"\xe2\x80\xae",
];

/// One mutation of `seed`: a few random edits.
fn mutate(rng: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..6) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            1 => b.truncate(at),
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                b.splice(at..at, t.iter().copied());
            }
            3 if !b.is_empty() => {
                let end = rng.random_range(at.min(b.len() - 1)..b.len());
                b.drain(at.min(end)..end);
            }
            4 => {
                let from = rng.random_range(0..=b.len());
                let piece: Vec<u8> = b[from..(from + 16).min(b.len())].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                let n: u64 = if rng.random() {
                    rng.random()
                } else {
                    rng.random_range(0..1 << 20)
                };
                let digits = n.to_string();
                b.splice(at..at, digits.bytes());
            }
        }
    }
    b
}

const CONFIG: &str = include_str!("fixtures/valid/full.toml");

#[test]
fn the_config_reader_answers_every_generated_file() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut refused = 0;
    for _ in 0..CASES {
        let text = String::from_utf8_lossy(&mutate(&mut rng, CONFIG.as_bytes())).into_owned();
        if qlab::config::Config::from_source(Path::new("g.toml"), text).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > CASES / 2,
        "only {refused} refused: the mutations are too mild"
    );
}

const QUESTIONS: &str = "id = \"s\"\ntask = \"math\"\n[[question]]\nid = \"1\"\nsection = \"a\"\nquestion = \"2+2?\"\n\
reference = \"4\"\n[[question]]\nid = \"2\"\ninstruction = \"Explain.\"\ninput = \"x\"\nreference = \"y\"\n";

#[test]
fn the_question_file_reader_answers_every_generated_file() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut refused = 0;
    for _ in 0..CASES {
        let text = String::from_utf8_lossy(&mutate(&mut rng, QUESTIONS.as_bytes())).into_owned();
        if qlab::eval::QuestionSet::parse(Path::new("q.toml"), &text).is_err() {
            refused += 1;
        }
    }
    assert!(refused > CASES / 4, "only {refused} refused");
}

const ROW: &str = "{\"question\": \"Ava has 23 apples.\", \"answer\": \"37\", \"n\": 1}";
const CSV_ROW: &str = "\"Ava, 23 apples\",37,1";
const LINE: &str = r#"{"rater":"ann","time":"2026-01-01T00:00:00Z","kind":"score","answer":{"task":"math","questions":"math","question":"3","model":"m","stage":"e1"},"scores":{"Helpfulness":4.0}}"#;

/// `CASES` generated lines in files of 1,000, each file handed to `read` with whether it ends in a torn
/// line; `text` keeps the lines valid UTF-8.
fn generated_files(
    seed: u64,
    line: &str,
    header: &str,
    ext: &str,
    text: bool,
    mut read: impl FnMut(&Path, bool),
) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for f in 0..CASES / 1000 {
        let mut bytes = header.as_bytes().to_vec();
        for _ in 0..1000 {
            let mut l = mutate(&mut rng, line.as_bytes());
            if text {
                l = String::from_utf8_lossy(&l).into_owned().into_bytes();
            }
            l.retain(|&b| b != b'\n');
            bytes.extend(l);
            bytes.push(b'\n');
        }
        if f % 2 == 1 {
            // Every other file ends in a torn line.
            bytes.extend(&line.as_bytes()[..line.len() / 2]);
        }
        let path = dir.path().join(format!("g{f}.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        read(&path, f % 2 == 1);
    }
}

#[test]
fn the_dataset_readers_answer_every_generated_row() {
    use qlab::train::data::read::read_records;
    let mut rows = 0;
    generated_files(3, ROW, "", "jsonl", false, |p, _| {
        rows += read_records(p, None, None, true).unwrap().rows.len();
        let _ = read_records(p, None, None, false);
    });
    assert!(rows > 1000, "only {rows} rows read");
    generated_files(4, CSV_ROW, "question,answer,n\n", "csv", false, |p, _| {
        let _ = read_records(p, None, None, true);
    });
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dir = tempfile::tempdir().unwrap();
    let array = format!("[{ROW}, {ROW}, {ROW}]");
    for i in 0..CASES / 100 {
        let p = dir.path().join(format!("a{i}.json"));
        std::fs::write(&p, mutate(&mut rng, array.as_bytes())).unwrap();
        let _ = read_records(&p, None, None, true);
    }
}

#[test]
fn the_journal_reader_and_writer_answer_every_generated_line() {
    let rubric = qlab::rating::Rubric::default();
    let mut read = 0;
    generated_files(6, LINE, "", "jsonl", true, |p, torn| {
        let journal = qlab::store::jsonl::read(p).unwrap();
        assert_eq!(journal.torn.is_some(), torn);
        read += journal.lines.len();
        let _ = qlab::rating::journal::read(p, &rubric);
        let before = journal.lines;
        qlab::store::atomic::append_line_synced(p, LINE).unwrap();
        let after = qlab::store::jsonl::read(p).unwrap();
        assert!(after.torn.is_none());
        assert_eq!(after.lines.len(), before.len() + 1);
        assert_eq!(
            after.lines[..before.len()],
            before[..],
            "earlier lines stay as they were"
        );
    });
    assert!(read >= CASES * 9 / 10, "{read} lines read");
}

/// A small valid GGUF: a few metadata entries of each kind and two tensors.
fn gguf() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    string(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["a", "bc", "<s>"] {
        string(&mut b, t);
    }
    string(&mut b, "llama.rope.freq_base");
    b.extend(6u32.to_le_bytes());
    b.extend(10000f32.to_le_bytes());
    for (name, offset) in [("token_embd.weight", 0u64), ("output_norm.weight", 64)] {
        string(&mut b, name);
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend([0u8; 128]);
    b
}

#[test]
fn the_gguf_header_check_keeps_candle_from_every_generated_header() {
    use candle_core::quantized::gguf_file::Content;
    let seed = gguf();
    assert!(Content::read(&mut Cursor::new(&seed)).is_ok());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut passed = 0;
    for _ in 0..CASES {
        let bytes = mutate(&mut rng, &seed);
        let checked =
            qlab::store::gguf_header::check_header(Cursor::new(&bytes), bytes.len() as u64);
        if checked.is_ok() {
            passed += 1;
            // What the check lets through, candle reads without an abort.
            let _ = Content::read(&mut Cursor::new(&bytes));
        }
    }
    assert!(passed > 0 && passed < CASES, "{passed} passed");
}

#[test]
fn the_safetensors_reader_answers_every_generated_header() {
    let tensor = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        (vec![0u8; n * 4], shape)
    };
    let (a, sa) = tensor(vec![4, 4]);
    let (b, sb) = tensor(vec![8]);
    let views = [
        (
            "a",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sa, &a).unwrap(),
        ),
        (
            "b",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sb, &b).unwrap(),
        ),
    ];
    let seed = safetensors::serialize(views, None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut refused = 0;
    for i in 0..CASES {
        let mut bytes = mutate(&mut rng, &seed);
        if i % 10 == 0 && bytes.len() >= 8 {
            // A header length no file holds.
            let n: u64 = rng.random();
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        if safetensors::SafeTensors::deserialize(&bytes).is_err() {
            refused += 1;
        }
    }
    assert!(refused > CASES / 2, "only {refused} refused");
}
