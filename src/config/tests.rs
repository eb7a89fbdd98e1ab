//! Unit tests of config loading: defaults, overrides, and errors with places.

use std::path::Path;

use super::*;

fn load(src: &str) -> Result<Config, ConfigErrors> {
    Config::from_source(Path::new("t.toml"), src.to_owned())
}

const MINIMAL: &str = r#"
[sweep]
name = "t"

[[model]]
id = "m"
path = "m.gguf"

[[dataset]]
id = "d"
path = "d.jsonl"
template = "Q: {question}\n### Response:\n{answer}"

[matrix]
models = ["m"]
datasets = ["d"]
"#;

#[test]
fn defaults_are_the_studys_settings() {
    let c = load(MINIMAL).unwrap();
    let s = c.cell_settings("m", "d");
    assert_eq!(
        (s.lora.r, s.lora.alpha, s.lora.targets.len()),
        (16, 16.0, 7)
    );
    assert_eq!(
        (s.train.batch_size, s.train.grad_accum, s.train.lr),
        (2, 6, 2e-5)
    );
    assert_eq!(s.train.eval_at_epochs, vec![1, 3]);
    assert_eq!(c.rubric.criteria.len(), 3);
    assert_eq!(c.sweep.seed, 3407);
}

#[test]
fn overrides_patch_only_matching_cells_key_by_key() {
    let src = format!(
        "{MINIMAL}\n[[dataset]]\nid = \"e\"\npath = \"e.csv\"\ntemplate = \"{{x}}### Response:\\n{{y}}\"\n\
         [train]\nlr = 1e-4\n[[override]]\ndataset = \"e\"\ntrain = {{ batch_size = 1 }}\n"
    )
    .replace("datasets = [\"d\"]", "datasets = [\"d\", \"e\"]");
    let c = load(&src).unwrap();
    let d = c.cell_settings("m", "d");
    let e = c.cell_settings("m", "e");
    assert_eq!((d.train.batch_size, d.train.lr), (2, 1e-4));
    assert_eq!((e.train.batch_size, e.train.lr), (1, 1e-4));
    assert_eq!(c.cells().len(), 2);
}

#[test]
fn every_error_of_a_file_is_reported_with_its_place() {
    let src = MINIMAL
        .replace("[matrix]", "[lora]\nr = 0\n\n[matrix]")
        .replace("models = [\"m\"]", "models = [\"m\", \"x\"]");
    let errs = load(&src).unwrap_err();
    let text = errs.to_string();
    assert_eq!(errs.0.len(), 2, "{text}");
    assert!(
        text.contains("t.toml:15:5: `r` must be a positive integer, got 0"),
        "{text}"
    );
    assert!(
        text.contains("t.toml:18:16: unknown model `x`: expected one of m"),
        "{text}"
    );
}

#[test]
fn an_override_value_is_blamed_on_the_override() {
    let src = format!("{MINIMAL}\n[[override]]\nmodel = \"m\"\ntrain = {{ epochs = 1 }}\n");
    let text = load(&src).unwrap_err().to_string();
    assert!(text.contains("epoch 3 is outside 1..=1"), "{text}");
    assert!(
        text.contains("t.toml:20:9: epoch 3 is outside 1..=1"),
        "{text}"
    );
}

#[test]
fn eval_prompt_mismatch_is_a_warning() {
    let src = MINIMAL.replace("[matrix]", "eval_template = \"Q {question}\"\n[matrix]");
    let c = load(&src).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0]
            .message
            .contains("differs from its training prompt")
    );
}

#[test]
fn missing_files_name_the_file_and_the_remedy() {
    let c = load(MINIMAL).unwrap();
    let missing = c.missing_files();
    assert_eq!(missing.len(), 2);
    assert!(
        missing[0].to_string().starts_with("t.toml:7:8: model `m`"),
        "{}",
        missing[0]
    );
    assert!(
        missing[1].message.contains("bring the training data"),
        "{}",
        missing[1]
    );
}

#[test]
fn devices_may_repeat_the_cpu_or_list_distinct_gpus_and_win_over_device() {
    for list in [r#"["cpu", "cpu"]"#, r#"["cuda:1", "cuda:0"]"#] {
        let src = MINIMAL.replace("name = \"t\"", &format!("name = \"t\"\ndevices = {list}"));
        let c = load(&src).unwrap();
        assert_eq!(c.sweep.devices.len(), 2);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
    let src = MINIMAL.replace(
        "name = \"t\"",
        "name = \"t\"\ndevice = \"cuda:0\"\ndevices = [\"cuda:1\"]",
    );
    let c = load(&src).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(
        (c.warnings[0].line, c.warnings[0].col),
        (4, 10),
        "{}",
        c.warnings[0]
    );
    assert!(c.warnings[0].message.contains("`device` is ignored"));
}

#[test]
fn every_bad_device_entry_is_reported_at_its_place() {
    let src = MINIMAL.replace(
        "name = \"t\"",
        "name = \"t\"\ndevices = [\"cuda:0\", \"auto\", \"cuda:0\", \"cpu\"]",
    );
    let errs = load(&src).unwrap_err();
    let got: Vec<String> = errs
        .0
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].starts_with("4:22: `auto` cannot be one of `devices`"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("4:30: `cuda:0` is listed twice"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with("4:40: `cpu`: `devices` cannot mix"),
        "{got:#?}"
    );
}
