//! The rating commands end to end through the real binary: the study import and its results, exports
//! (on the project's fixtures, and on the study's files when QLAB_STUDY_DATA names them), and a keyboard
//! rating in `qlab rate` that survives SIGKILL (driven in tmux).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use calamine::{Reader, Xlsx, open_workbook};
use common::{Tmux, rating_sweep, study_data};
use qlab::config::Config;
use qlab::rating::answers::{AnswerRecord, write_answers};
use qlab::rating::journal::{self, Entry};
use qlab::store::SweepPaths;

fn qlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qlab"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// A model's row in a task's table: (task, model, means at base, e1, e3, changes from base at e1, e3).
type TableRow = (
    &'static str,
    &'static str,
    [&'static str; 3],
    [&'static str; 2],
);

/// What `import-study`, `results` and `export results` must show for one folder of raw files.
struct StudyTable {
    files: usize,
    answers: usize,
    /// `file:line` of the first cell reported and left unrated, and how many are.
    first_problem: &'static str,
    problems: usize,
    models: usize,
    questions: usize,
    /// A row whose e3 rises above its e1, and one whose e3 falls below it (flagged `!`).
    rises: TableRow,
    falls: TableRow,
}

/// The fixtures of tests/fixtures/study (means computed by hand from their cells).
const FIXTURES: StudyTable = StudyTable {
    files: 12,
    answers: 36,
    first_problem: "Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt:26",
    problems: 3,
    models: 2,
    questions: 3,
    rises: (
        "math",
        "llama-3-8b",
        ["1.33", "3.00", "4.50"],
        ["+1.67", "+3.17"],
    ),
    falls: (
        "bio",
        "qwen-2-7b",
        ["4.89", "4.44", "3.50"],
        ["-0.44", "-1.39"],
    ),
};

/// The study's 42 files (opt-in: QLAB_STUDY_DATA), as the study's table gives them.
const STUDY: StudyTable = StudyTable {
    files: 42,
    answers: 420,
    first_problem: "Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt:148",
    problems: 3,
    models: 7,
    questions: 10,
    rises: (
        "math",
        "llama-3.1-8b",
        ["1.73", "3.67", "4.97"],
        ["+1.93", "+3.23"],
    ),
    falls: (
        "bio",
        "qwen-2-7b",
        ["4.80", "4.43", "3.93"],
        ["-0.37", "-0.87"],
    ),
};

fn import_study_then_results_and_exports_show_the_table(raw: &Path, e: &StudyTable) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("study.toml");
    std::fs::copy(repo().join("examples/study.toml"), &config).unwrap();
    // The question sets first, as the README says: the automatic check reads their references.
    let questions = raw.parent().unwrap().join("seed-questions");
    std::fs::create_dir(dir.path().join("questions")).unwrap();
    for (src, out) in [
        ("Maths Benchmark.txt", "study-math.toml"),
        ("bio benchmark.txt", "study-bio.toml"),
    ] {
        run_ok(
            qlab()
                .arg("import-questions")
                .arg(questions.join(src))
                .arg("--out")
                .arg(dir.path().join("questions").join(out)),
        );
    }
    let (stdout, stderr) = run_ok(
        qlab()
            .arg("import-study")
            .arg(raw)
            .arg("--config")
            .arg(&config),
    );
    assert!(
        stdout.contains(&format!("imported {} files", e.files))
            && stdout.contains(&format!("{} ratings written", e.answers)),
        "{stdout}"
    );
    assert!(stderr.contains(e.first_problem), "{stderr}");
    assert_eq!(
        stderr.matches("left unrated").count(),
        e.problems,
        "{stderr}"
    );

    let (json, _) = run_ok(
        qlab()
            .arg("results")
            .arg(&config)
            .args(["--format", "json"]),
    );
    let cells: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(cells.len(), e.files);
    let means = |(task, model, ..): TableRow| {
        ["base", "e1", "e3"].map(|stage| {
            let c = cells
                .iter()
                .find(|c| c["task"] == task && c["model"] == model && c["stage"] == stage)
                .unwrap();
            format!("{:.2}", c["mean"].as_f64().unwrap())
        })
    };
    assert_eq!(means(e.rises), e.rises.2);
    assert_eq!(means(e.falls), e.falls.2);
    let first = &cells[0];
    assert_eq!(first["n"], e.questions);
    assert_eq!(first["criteria"].as_object().unwrap().len(), 3);
    // The automatic check: every math answer checked, a fraction beside (not in) the human mean; bio
    // has no check.
    for c in &cells {
        match c["task"].as_str().unwrap() {
            "math" => {
                assert_eq!(c["auto"]["n"], e.questions, "{c}");
                let f = c["auto"]["mean"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&f), "{c}");
            }
            _ => assert!(c["auto"].is_null(), "{c}"),
        }
    }

    let (table, _) = run_ok(qlab().arg("results").arg(&config));
    let (_, model, [base, e1, e3], [to_e1, to_e3]) = e.rises;
    let rising = table
        .lines()
        .find(|l| l.starts_with(model) && l.contains(base))
        .unwrap();
    let (e1_text, e3_text) = (format!("{e1} ({to_e1})"), format!("{e3} ({to_e3})"));
    assert!(
        rising.contains(&e1_text) && rising.contains(&e3_text) && !rising.contains('!'),
        "{table}"
    );
    let (_, falling_model, [falling_base, falling_e1, falling_e3], [falling_to_e1, falling_to_e3]) =
        e.falls;
    let falling = table
        .lines()
        .filter(|l| l.starts_with(falling_model))
        .find(|l| l.contains(falling_base))
        .unwrap();
    assert!(
        falling.contains(&format!("{falling_e1} ({falling_to_e1})"))
            && falling.contains(&format!("{falling_e3} ({falling_to_e3}) !")),
        "{table}"
    );
    let bio_block = table.split("task math").next().unwrap();
    assert!(
        bio_block.contains("auto: no automatic check for this task"),
        "{table}"
    );
    let math_block = table.split("task math").nth(1).unwrap();
    let auto_rows = math_block.split("auto: exact answer").nth(1).unwrap();
    let auto_row = auto_rows.lines().find(|l| l.starts_with(model)).unwrap();
    assert_eq!(
        auto_row
            .split_whitespace()
            .filter(|x| x.ends_with(&format!("/{}", e.questions)))
            .count(),
        3,
        "a count per stage: {table}"
    );
    let after_rising = table.lines().skip_while(|l| *l != rising).nth(1).unwrap();
    assert!(
        after_rising.starts_with("  95% CI") && after_rising.matches('-').count() == 3,
        "each model's row is followed by its cells' bootstrap intervals: {table}"
    );

    let xlsx = dir.path().join("study.xlsx");
    let md = dir.path().join("study.md");
    run_ok(
        qlab()
            .args(["export", "results", "--config"])
            .arg(&config)
            .arg("--xlsx")
            .arg(&xlsx)
            .arg("--md")
            .arg(&md),
    );
    let mut book: Xlsx<_> = open_workbook(&xlsx).unwrap();
    assert_eq!(book.sheet_names(), ["bio", "math", "Summary"]);
    assert_eq!(
        book.worksheet_range("math").unwrap().rows().count(),
        1 + e.models * 3 * e.questions
    );
    assert_eq!(
        book.worksheet_range("Summary").unwrap().rows().count(),
        1 + e.files
    );
    let md_row = format!("| {model} | {base} | {e1_text} | {e3_text} |");
    assert!(std::fs::read_to_string(&md).unwrap().contains(&md_row));
    // CONFIG positional, as in every other command, gives the same table.
    let md_again = dir.path().join("again.md");
    run_ok(
        qlab()
            .args(["export", "results"])
            .arg(&config)
            .arg("--md")
            .arg(&md_again),
    );
    assert_eq!(
        std::fs::read_to_string(&md_again).unwrap(),
        std::fs::read_to_string(&md).unwrap()
    );
    the_figure_shows_the_table(&config, dir.path(), e);
}

/// `export results --svg/--png`: in the SVG, each task's panel, the axis names, the stages' legend, and the
/// bars of a rising and a falling model as high as their means; the PNG decodes at the same size.
fn the_figure_shows_the_table(config: &Path, dir: &Path, e: &StudyTable) {
    let (svg, png) = (dir.join("study.svg"), dir.join("study.png"));
    run_ok(
        qlab()
            .args(["export", "results"])
            .arg(config)
            .arg("--svg")
            .arg(&svg)
            .arg("--png")
            .arg(&png),
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let num = |n: &roxmltree::Node, a: &str| -> f64 { n.attribute(a).unwrap().parse().unwrap() };
    let root = doc.root_element();
    let (width, height) = (num(&root, "width"), num(&root, "height"));
    let texts: Vec<(String, f64, f64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| Some((n.text()?.trim().to_owned(), num(&n, "x"), num(&n, "y"))))
        .collect();
    let count = |s: &str| texts.iter().filter(|t| t.0 == s).count();
    assert_eq!((count("model"), count("score (0-5)")), (2, 2), "{texts:?}");
    for stage in ["base", "e1", "e3"] {
        assert_eq!(count(stage), 2, "{stage} in each panel's legend");
    }
    let panel_h = height / 2.0;
    // Each bar: (fill, x, y, width, height); a stage's colour is the one its legend dot has.
    let bars: Vec<(String, f64, f64, f64, f64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") != Some("#FFFFFF"))
        .map(|n| {
            let fill = n.attribute("fill").unwrap_or_default().to_owned();
            (
                fill,
                num(&n, "x"),
                num(&n, "y"),
                num(&n, "width"),
                num(&n, "height"),
            )
        })
        .collect();
    assert_eq!(bars.len(), e.files, "one bar per model, stage and task");
    for (task, model, means, _) in [e.rises, e.falls] {
        let panel = texts.iter().find(|t| t.0 == task).unwrap().2 / panel_h;
        let in_panel = |y: f64| (y / panel_h).floor() == panel.floor();
        let label = texts
            .iter()
            .find(|t| t.0 == model && in_panel(t.2))
            .unwrap_or_else(|| panic!("{model} under the {task} panel: {texts:?}"));
        let mut group: Vec<_> = bars
            .iter()
            .filter(|b| in_panel(b.2) && (b.1 + b.3 / 2.0 - label.1).abs() < 60.0)
            .collect();
        group.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(group.len(), 3, "{model}'s bars on {task}: {group:?}");
        let px_per_point: Vec<f64> = group
            .iter()
            .zip(means)
            .map(|(b, mean)| b.4 / mean.parse::<f64>().unwrap())
            .collect();
        let spread = px_per_point.iter().cloned().fold(f64::MIN, f64::max)
            - px_per_point.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread < 1.5,
            "{model} on {task}: heights {group:?} for means {means:?}"
        );
        let fills: Vec<&str> = group.iter().map(|b| b.0.as_str()).collect();
        assert!(
            fills[0] != fills[1] && fills[1] != fills[2],
            "a colour per stage: {fills:?}"
        );
    }

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(
        (f64::from(info.width), f64::from(info.height)),
        (width, height)
    );
    let rgb = &pixels[..info.buffer_size()];
    let white = rgb.chunks(3).filter(|p| p == &[255, 255, 255]).count();
    let total = rgb.len() / 3;
    assert!(
        white > total / 3 && white < total * 19 / 20,
        "{white} white of {total}"
    );
}

#[test]
fn import_study_then_results_and_exports_show_the_fixtures_table() {
    import_study_then_results_and_exports_show_the_table(
        &study_data::fixtures().join("seed-benchmarks"),
        &FIXTURES,
    );
}

#[test]
fn study_data_import_study_then_results_and_exports_show_the_studys_table() {
    let Some(data) = study_data::dir_or_skip(
        "study_data_import_study_then_results_and_exports_show_the_studys_table",
    ) else {
        return;
    };
    import_study_then_results_and_exports_show_the_table(&data.join("seed-benchmarks"), &STUDY);
}

/// A sweep with answers and no rating: `qlab results` shows the automatic check in every format.
#[test]
fn results_show_the_automatic_check_before_any_rating() {
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    // Base answers "It is 6." / "It is 8." (1 of 2 right); e1 made right on both, so stages differ.
    let cfg = Config::load(&config).unwrap();
    let run = &qlab::plan::Plan::from_config(&cfg).runs[0];
    let sweep = SweepPaths::new(&cfg.runs_dir(), &cfg.sweep.name);
    let e1 = sweep.run(&run.id).answers("e1", "sums", &run.eval_hash);
    let record = |q: &str, text: &str| AnswerRecord {
        question_id: q.into(),
        stage: "e1".into(),
        model: "tiny".into(),
        prompt: String::new(),
        answer: text.into(),
        new_tokens: None,
        secs: None,
    };
    write_answers(&e1, &[record("1", "2 + 3 = 5"), record("2", "So it is 8.")]).unwrap();
    let results = |format: &str| {
        let out = assert_cmd::Command::cargo_bin("qlab")
            .unwrap()
            .arg("results")
            .arg(&config)
            .args(["--format", format])
            .assert()
            .success();
        let o = out.get_output();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    let (table, stderr) = results("table");
    assert!(stderr.contains("no ratings yet"), "{stderr}");
    let auto = table.split("auto: exact answer").nth(1).expect(&table);
    let row: Vec<&str> = auto
        .lines()
        .find(|l| l.starts_with("tiny"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["tiny", "1/2", "2/2"], "{table}");
    assert!(
        table.starts_with("task math\nmodel     base       e1\nno ratings yet\n"),
        "{table}"
    );

    let (json, _) = results("json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let stages: Vec<(&str, serde_json::Value, &serde_json::Value)> = rows
        .iter()
        .map(|r| (r["stage"].as_str().unwrap(), r["mean"].clone(), &r["auto"]))
        .collect();
    assert_eq!(
        stages,
        [
            (
                "base",
                serde_json::Value::Null,
                &serde_json::json!({"mean": 0.5, "n": 2})
            ),
            (
                "e1",
                serde_json::Value::Null,
                &serde_json::json!({"mean": 1.0, "n": 2})
            ),
        ]
    );

    let (csv, _) = results("csv");
    assert!(
        csv.lines()
            .nth(2)
            .unwrap()
            .ends_with(",exact answer,1.0000,2,0.3424,1.0000"),
        "{csv}"
    );
    let (md, _) = results("md");
    assert!(
        md.contains("| tiny | 1/2 (0.09-0.91) | 2/2 (0.34-1.00) |"),
        "{md}"
    );
}

#[test]
fn a_rating_made_with_the_keyboard_survives_sigkill() {
    if !Tmux::available() {
        eprintln!("SKIPPED: tmux is not installed (the rating test drives the binary in tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let command = format!(
        "exec {} rate {} --rater tester",
        env!("CARGO_BIN_EXE_qlab"),
        config.display()
    );
    let wait = Duration::from_secs(20);
    let tmux = Tmux::start("rate", &command, (150, 45));
    tmux.wait_for("the first item", wait, |s| s.contains("item 1/2"));
    tmux.send("4");
    tmux.wait_for("the score saved", wait, |s| s.contains("saved"));
    let pid = tmux.display("#{pane_pid}");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(tmux);

    let cfg = Config::load(&config).unwrap();
    let journal_path = SweepPaths::new(&cfg.runs_dir(), "rate-test").ratings_journal();
    let lines = journal::read(&journal_path, &qlab::rating::Rubric::default()).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let Entry::Score {
        scores,
        blind,
        answer,
        ..
    } = &lines[0].entry
    else {
        panic!("{lines:?}")
    };
    assert_eq!(lines[0].rater, "tester");
    assert_eq!(scores.get("Correct Answer"), Some(&4.0));
    assert_eq!(answer.item.question, "1");
    assert_eq!(
        blind.as_ref().unwrap().a,
        answer.stage,
        "A was focused, so A's answer was scored"
    );

    let tmux = Tmux::start("rate-again", &command, (150, 45));
    let screen = tmux.wait_for("the first item again", wait, |s| s.contains("item 1/2"));
    assert!(screen.contains("Correct Answer     4"), "{screen}");
    assert!(
        screen.contains("rated 0/2") && screen.contains("rater tester"),
        "{screen}"
    );
}
