//! Answers against the toy decoder and a word-level tokenizer over its 16 tokens.

use std::collections::HashMap;

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use super::*;
use crate::model::generate::Sampling;
use crate::model::generate::toy::{ToyLm, VOCAB};

fn toy_tokenizer() -> Tokenizer {
    let vocab: HashMap<String, u32> = (0..VOCAB).map(|i| (format!("t{i}"), i)).collect();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("t0".into())
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(Whitespace {}));
    Tokenizer::from_parts(inner, None, None, &[], None)
}

fn questions() -> Vec<PromptedQuestion> {
    ["t1 t2", "t3", "t4 t4 t9", "t7 t1", "t2 t2"]
        .iter()
        .enumerate()
        .map(|(i, p)| PromptedQuestion {
            question_id: (i + 1).to_string(),
            prompt: p.to_string(),
        })
        .collect()
}

static OPTS: GenerateOptions = GenerateOptions {
    max_new_tokens: 6,
    sampling: Sampling::Greedy,
    stop_ids: vec![],
    pad_id: 0,
};

fn job<'a>(out: &'a Path, batch_size: usize) -> AnswerJob<'a> {
    AnswerJob {
        model_id: "toy",
        stage: "e1",
        out,
        batch_size,
        generation: &OPTS,
        add_special_tokens: true,
        stop: None,
    }
}

fn run(out: &Path, batch_size: usize) -> (AnswersSummary, Vec<String>) {
    let mut order = Vec::new();
    let summary = answer_questions(
        &mut ToyLm::new(),
        &toy_tokenizer(),
        &questions(),
        &job(out, batch_size),
        &mut |r| order.push(r.question_id.clone()),
    )
    .unwrap();
    (summary, order)
}

#[test]
fn every_question_gets_one_durable_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answers").join("e1").join("math-ff.jsonl");
    let (summary, order) = run(&out, 2);
    assert_eq!(
        summary,
        AnswersSummary {
            written: 5,
            already_done: 0
        }
    );
    let records = read_answers(&out).unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.question_id.clone())
            .collect::<Vec<_>>(),
        order
    );
    let first = records.iter().find(|r| r.question_id == "1").unwrap();
    assert_eq!(
        (
            first.stage.as_str(),
            first.model.as_str(),
            first.prompt.as_str()
        ),
        ("e1", "toy", "t1 t2")
    );
    assert_eq!(first.new_tokens, 6);
    assert_eq!(
        first.answer.split_whitespace().count(),
        6,
        "{}",
        first.answer
    );
    let line = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    for key in [
        "\"question_id\":",
        "\"stage\":",
        "\"model\":",
        "\"prompt\":",
        "\"answer\":",
        "\"new_tokens\":",
        "\"secs\":",
    ] {
        assert!(line.contains(key), "{line}");
    }
}

#[test]
fn answers_do_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let (one, three) = (dir.path().join("b1.jsonl"), dir.path().join("b3.jsonl"));
    run(&one, 1);
    run(&three, 3);
    let by_id = |p: &Path| {
        read_answers(p)
            .unwrap()
            .into_iter()
            .map(|r| (r.question_id, r.answer))
            .collect::<HashMap<_, _>>()
    };
    assert_eq!(by_id(&one), by_id(&three));
}

#[test]
fn an_interrupted_file_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jsonl");
    run(&full, 2);
    let text = std::fs::read_to_string(&full).unwrap();
    let mut lines = text.lines();
    let (first, second) = (lines.next().unwrap(), lines.next().unwrap());
    let out = dir.path().join("resumed.jsonl");
    std::fs::write(&out, format!("{first}\n{}", &second[..second.len() / 2])).unwrap();
    let (summary, _) = run(&out, 2);
    assert_eq!(
        summary,
        AnswersSummary {
            written: 4,
            already_done: 1
        }
    );
    let mut ids: Vec<String> = read_answers(&out)
        .unwrap()
        .into_iter()
        .map(|r| r.question_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    assert_eq!(
        run(&out, 2).0,
        AnswersSummary {
            written: 0,
            already_done: 5
        }
    );
}

#[test]
fn a_corrupt_line_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.jsonl");
    std::fs::write(&out, "{\"question_id\": 1}\n").unwrap();
    let err = read_answers(&out).unwrap_err().to_string();
    assert!(
        err.contains("a.jsonl:1:") && err.contains("not an answer record"),
        "{err}"
    );
}

#[test]
fn a_stop_ends_the_call_between_batches_and_the_next_call_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("math-ff.jsonl");
    let stop = AtomicBool::new(false);
    let stopping = AnswerJob {
        stop: Some(&stop),
        ..job(&out, 2)
    };
    let err = answer_questions(
        &mut ToyLm::new(),
        &toy_tokenizer(),
        &questions(),
        &stopping,
        &mut |_| stop.store(true, Ordering::SeqCst),
    )
    .unwrap_err();
    assert!(matches!(err, AnswersError::Stopped), "{err}");
    // The first batch of two was written before the stop was seen.
    assert_eq!(read_answers(&out).unwrap().len(), 2);
    let (summary, _) = run(&out, 2);
    assert_eq!(
        summary,
        AnswersSummary {
            written: 3,
            already_done: 2
        }
    );
}
