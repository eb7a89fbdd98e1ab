//! Base and stage answers on the tiny llama fixture with its PEFT adapter as the e1 checkpoint.

use std::path::Path;

use candle_core::Device;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use super::*;
use crate::config::{DatasetSection, LoraSection, ModelSection, TrainSection};
use crate::eval::answers::read_answers;
use crate::model::{Quant, load_model};
use crate::plan::RunSpec;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

/// Word-level tokenizer over the fixture's 128 ids (`w0` .. `w127`).
fn tokenizer() -> Tokenizer {
    let vocab = (0..128u32).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("w0".into())
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(Whitespace {}));
    Tokenizer::from_parts(inner, None, None, &[], None)
}

fn planned_run() -> PlannedRun {
    let spec = RunSpec {
        sweep: "t".into(),
        model: ModelSection {
            id: "tiny".into(),
            ..Default::default()
        },
        dataset: DatasetSection {
            id: "d".into(),
            ..Default::default()
        },
        lora: LoraSection::default(),
        train: TrainSection::default(),
        eval: EvalSection {
            max_new_tokens: 5,
            batch_size: 2,
            ..Default::default()
        },
    };
    PlannedRun {
        id: "tiny-d-0000".into(),
        model: "tiny".into(),
        dataset: "d".into(),
        task: "d".into(),
        stages: vec!["base".into(), "e1".into(), "e2".into()],
        eval_hash: "ee".into(),
        spec,
    }
}

fn questions() -> Vec<PromptedQuestion> {
    ["w5 w9 w17", "w3", "w40 w41", "w7 w7 w7 w2"]
        .iter()
        .enumerate()
        .map(|(i, p)| PromptedQuestion {
            question_id: format!("q{i}"),
            prompt: p.to_string(),
        })
        .collect()
}

#[test]
fn base_and_trained_stages_get_their_own_files_and_untrained_ones_wait() {
    let runs = tempfile::tempdir().unwrap();
    let sweep = SweepPaths::new(runs.path(), "t");
    let run = planned_run();
    let stage_dir = sweep.run(&run.id).stage_adapter("e1");
    std::fs::create_dir_all(&stage_dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture().join("adapter").join(f), stage_dir.join(f)).unwrap();
    }
    let tok = tokenizer();
    let opts = generation_options(&run.spec.eval, &tok);
    assert_eq!(opts.sampling, Sampling::Greedy);
    let (sets, waiting) = answer_sets(&sweep, &run, "qs", &questions(), &opts, true);
    assert_eq!(waiting, ["e2"]);
    assert_eq!(
        sets.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(),
        ["base", "e1"]
    );

    let mut lm = DecoderLm::new(load_model(&fixture(), Quant::None, &Device::Cpu).unwrap());
    let mut seen = 0;
    let done = run_answer_sets(&mut lm, &tok, "tiny", sets.clone(), None, &mut |_| {
        seen += 1
    })
    .unwrap();
    assert_eq!(seen, 8);
    assert_eq!(done.len(), 2);
    let base = read_answers(&sweep.base_answers("tiny", "qs", "ee")).unwrap();
    let e1 = read_answers(&sweep.run(&run.id).answers("e1", "qs", "ee")).unwrap();
    assert_eq!((base.len(), e1.len()), (4, 4));
    assert!(
        base.iter()
            .all(|a| a.stage == "base" && a.model == "tiny" && a.new_tokens == 5)
    );
    assert!(e1.iter().all(|a| a.stage == "e1"));
    let answers = |v: &[AnswerRecord]| {
        let mut v: Vec<(String, String)> = v
            .iter()
            .map(|a| (a.question_id.clone(), a.answer.clone()))
            .collect();
        v.sort();
        v
    };
    assert_ne!(
        answers(&base),
        answers(&e1),
        "the e1 adapter changes the answers"
    );

    let mut lm = DecoderLm::new(load_model(&fixture(), Quant::None, &Device::Cpu).unwrap());
    let again = run_answer_sets(&mut lm, &tok, "tiny", sets, None, &mut |_| {}).unwrap();
    assert!(
        again
            .iter()
            .all(|(_, _, s)| s.written == 0 && s.already_done == 4),
        "{again:?}"
    );
}

#[test]
fn sampling_settings_come_from_the_eval_section() {
    let eval = EvalSection {
        temperature: 0.7,
        top_p: 0.9,
        seed: 11,
        ..Default::default()
    };
    let opts = generation_options(&eval, &tokenizer());
    assert_eq!(
        opts.sampling,
        Sampling::Sample {
            temperature: 0.7,
            top_p: Some(0.9),
            seed: 11
        }
    );
    let full = EvalSection {
        temperature: 0.7,
        top_p: 1.0,
        ..Default::default()
    };
    assert!(matches!(
        generation_options(&full, &tokenizer()).sampling,
        Sampling::Sample { top_p: None, .. }
    ));
}
