//! Config fixtures: every valid file loads; every invalid file fails with exactly the errors its
//! `# expect: LINE:COL: message` header lines name. Also the configs the project ships.

use std::path::{Path, PathBuf};

use qlab::config::Config;
use qlab::plan::Plan;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_load() {
    let files = fixtures("valid");
    assert!(files.len() >= 2);
    for f in files {
        if let Err(e) = Config::load(&f) {
            panic!("{} should be valid:\n{e}", f.display());
        }
    }
}

#[test]
fn invalid_fixtures_fail_with_the_expected_messages_and_places() {
    let files = fixtures("invalid");
    assert!(files.len() >= 15, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for f in files {
        let source = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let errors = match Config::load(&f) {
            Ok(_) => panic!("{} should be invalid", f.display()),
            Err(e) => e.0,
        };
        let got: Vec<String> = errors
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect();
        let all_found = expected
            .iter()
            .all(|want| got.iter().any(|g| g.starts_with(want)));
        if got.len() != expected.len() || !all_found {
            failures.push(format!(
                "{}: expected {expected:#?}\ngot {got:#?}",
                f.display()
            ));
        }
        assert!(
            errors.iter().all(|d| d.path == f),
            "diagnostics name the file"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn full_fixture_overrides_reach_their_cells() {
    let c =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/full.toml"))
            .unwrap();
    assert_eq!(c.cell_settings("hub", "csv").train.batch_size, 1);
    assert_eq!(c.cell_settings("local", "csv").train.batch_size, 4);
    assert_eq!(c.cell_settings("wheel", "pq").lora.r, 4);
    assert_eq!(c.cell_settings("wheel", "csv").lora.r, 8);
    assert_eq!(c.cell_settings("wheel", "pq").eval.max_new_tokens, 32);
    assert!(!c.cell_settings("wheel", "pq").train.cpu_bf16);
    assert_eq!(Plan::from_config(&c).runs.len(), 6);
}

#[test]
fn the_shipped_demo_config_is_valid_and_complete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Config::load(&root.join("experiments.toml")).unwrap();
    assert!(c.missing_files().is_empty(), "{:?}", c.missing_files());
    let plan = Plan::from_config(&c);
    assert_eq!(plan.runs.len(), 2);
    // The arithmetic cell's override: three epochs, answered after each; the bio cell keeps two.
    assert_eq!(plan.runs[0].stages, ["base", "e1", "e2", "e3"]);
    assert_eq!(plan.runs[1].stages, ["base", "e1", "e2"]);
    assert_eq!(c.cell_settings("smollm2-135m", "arith").train.lr, 2e-3);
}

#[test]
fn the_study_config_plans_fourteen_runs_without_any_weights() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Config::load(&root.join("examples/study.toml")).unwrap();
    let plan = Plan::from_config(&c);
    assert_eq!(plan.runs.len(), 14);
    assert!(plan.runs.iter().all(|r| r.stages == ["base", "e1", "e3"]));
    let s = &plan.runs[0].spec;
    assert_eq!(
        (s.lora.r, s.train.batch_size, s.train.grad_accum, s.train.lr),
        (16, 2, 6, 2e-5)
    );
    // Both eval prompts differ from the training prompts, as in the study: flagged, not fatal.
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    let missing: Vec<String> = c
        .missing_files()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    assert_eq!(missing.len(), 4, "{missing:#?}");
    assert!(missing.iter().any(|m| m.contains("import-questions")));
}
