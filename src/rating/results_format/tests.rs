use super::*;
use crate::rating::auto::{AutoCell, AutoCheck, AutoChecks, NoCheck};
use crate::rating::journal::test_score_line;
use crate::rating::ratings::Ratings;
use crate::rating::results::{build, build_with_checks};
use crate::rating::rubric::Rubric;

fn tasks() -> Vec<TaskResults> {
    let line = |rater: &str, stage: &str, q: u32, v: f64| {
        test_score_line(rater, "math", "m1", stage, &q.to_string(), [v; 3])
    };
    let mut lines = Vec::new();
    for q in 0..4 {
        lines.push(line("ann", "base", q, 1.0));
        lines.push(line("ann", "e1", q, 4.0));
        lines.push(line("ann", "e3", q, 3.0));
        lines.push(line("bob", "e3", q, f64::from(q)));
    }
    build(&Ratings::replay(&lines), &Rubric::default(), &[])
}

#[test]
fn table_and_markdown_show_change_flag_and_agreement() {
    let t = render(&tasks(), Format::Table).unwrap();
    assert!(
        t.starts_with(
            "task math\n\
             model     base       e1            e3\n\
             m1        1.00       4.00 (+3.00)  2.25 (+1.25) !\n  \
             95% CI  1.00-1.00  4.00-4.00     "
        ),
        "{t}"
    );
    assert!(!t.contains("loss"), "no loss column without losses: {t}");
    let losses = Losses::from([(("math".to_string(), "m1".to_string()), 0.4321)]);
    let with_loss = render_table(&tasks(), &losses);
    assert!(
        with_loss.contains("e3              loss\n")
            && with_loss.contains("2.25 (+1.25) !  0.432\n"),
        "{with_loss}"
    );
    assert!(
        t.contains("Krippendorff's alpha (ordinal), overall: ")
            && t.contains("rater bob: mean 1.50 over 12 values"),
        "{t}"
    );
    let md = render(&tasks(), Format::Markdown).unwrap();
    assert!(md.contains("| model | base | e1 | e3 |\n|---|---|---|---|\n| m1 | 1.00 | 4.00 (+3.00) | 2.25 (+1.25) ! |"), "{md}");
}

#[test]
fn csv_and_json_carry_every_cell() {
    let csv = render(&tasks(), Format::Csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with(
        "task,model,stage,mean,n,ci_low,ci_high,change_from_base,falls_after_e1,Correct Answer"
    ));
    assert!(lines[3].starts_with("math,m1,e3,2.2500,4,"), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&render(&tasks(), Format::Json).unwrap()).unwrap();
    let e1 = &json[1];
    assert_eq!(e1["task"], "math");
    assert_eq!(e1["stage"], "e1");
    assert_eq!(e1["mean"], 4.0);
    assert_eq!(e1["n"], 4);
    assert_eq!(e1["criteria"]["Helpfulness"], 4.0);
    assert_eq!(e1.as_object().unwrap().len(), 7, "{e1}");
    assert!(e1["auto"].is_null(), "no check gathered: {e1}");
}

/// A checked math task (rated at base, e1, e3; answers also checked at e5, not yet rated, and for a model
/// nobody rated) and a rated bio task with no check.
fn tasks_with_checks() -> Vec<TaskResults> {
    let mut lines = Vec::new();
    for q in 0..4 {
        for (stage, v) in [("base", 1.0), ("e1", 4.0), ("e3", 3.0)] {
            lines.push(test_score_line(
                "ann",
                "math",
                "m1",
                stage,
                &q.to_string(),
                [v; 3],
            ));
        }
        lines.push(test_score_line(
            "ann",
            "bio",
            "m1",
            "e1",
            &q.to_string(),
            [5.0; 3],
        ));
    }
    let cell = AutoCell::new;
    let checks = AutoChecks::from([
        (
            "math".to_string(),
            AutoCheck::Checked(vec![
                cell("m1", "base", 0, 4),
                cell("m1", "e1", 3, 4),
                cell("m1", "e3", 2, 4),
                cell("m1", "e5", 4, 4),
                cell("m2", "e1", 1, 4),
            ]),
        ),
        ("bio".to_string(), AutoCheck::Unchecked(NoCheck::NotNumeric)),
    ]);
    build_with_checks(
        &Ratings::replay(&lines),
        &Rubric::default(),
        &["m1".into()],
        &checks,
    )
}

#[test]
fn the_table_shows_the_check_as_its_own_block_and_says_when_there_is_none() {
    let t = render(&tasks_with_checks(), Format::Table).unwrap();
    insta::assert_snapshot!(t);
    let math = t.split("task math\n").nth(1).unwrap();
    let auto_block = math.split("auto: exact answer").nth(1).unwrap();
    assert!(
        auto_block.contains("m1        0/4        3/4           2/4             4/4\n"),
        "{t}"
    );
    assert!(
        auto_block.contains("  95% CI  0.00-0.49  0.30-0.95     0.15-0.85       0.51-1.00\n"),
        "{t}"
    );
    let human = math.split("auto: exact answer").next().unwrap();
    assert!(
        human.contains("m1        1.00       4.00 (+3.00)  3.00 (+2.00) !  -\n"),
        "the check never moves the human mean: {t}"
    );
    assert!(
        t.contains("task bio\n") && t.contains("auto: no automatic check for this task"),
        "{t}"
    );
}

#[test]
fn markdown_gives_the_check_its_own_table() {
    let md = render(&tasks_with_checks(), Format::Markdown).unwrap();
    insta::assert_snapshot!(md);
    assert!(
        md.contains(
            "| m1 | 0/4 (0.00-0.49) | 3/4 (0.30-0.95) | 2/4 (0.15-0.85) | 4/4 (0.51-1.00) |"
        ),
        "{md}"
    );
    assert!(
        md.contains("auto: no automatic check for this task"),
        "{md}"
    );
}

#[test]
fn csv_appends_the_check_columns_and_lists_checked_cells_not_yet_rated() {
    let csv = render(&tasks_with_checks(), Format::Csv).unwrap();
    insta::assert_snapshot!(csv);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header[header.len() - 5..],
        [
            "auto_check",
            "auto_mean",
            "auto_n",
            "auto_ci_low",
            "auto_ci_high"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let row = |task: &str, model: &str, stage: &str| {
        rows.iter()
            .find(|r| &r[0] == task && &r[1] == model && &r[2] == stage)
            .unwrap_or_else(|| panic!("no row {task} {model} {stage}: {csv}"))
    };
    let at = |r: &csv::StringRecord, name: &str| {
        r[header.iter().position(|h| h == name).unwrap()].to_owned()
    };
    let e1 = row("math", "m1", "e1");
    assert_eq!(
        (at(e1, "mean"), at(e1, "auto_mean"), at(e1, "auto_n")),
        ("4.0000".into(), "0.7500".into(), "4".into())
    );
    let e5 = row("math", "m1", "e5");
    assert_eq!(
        (at(e5, "mean"), at(e5, "n"), at(e5, "auto_mean")),
        (String::new(), "0".into(), "1.0000".into())
    );
    let bio = row("bio", "m1", "e1");
    assert!(
        at(bio, "auto_check").starts_with("no automatic check"),
        "{csv}"
    );
    assert_eq!(at(bio, "auto_mean"), "");
    assert_eq!(
        rows.len(),
        4 + 1 + 1,
        "math m1 x 4 stages, math m2 e1, bio m1 e1"
    );
}

#[test]
fn json_adds_auto_to_every_row_and_null_where_the_task_has_no_check() {
    let json = render(&tasks_with_checks(), Format::Json).unwrap();
    insta::assert_snapshot!(json);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let row = |task: &str, model: &str, stage: &str| {
        rows.iter()
            .find(|r| r["task"] == task && r["model"] == model && r["stage"] == stage)
            .unwrap()
    };
    let e1 = row("math", "m1", "e1");
    assert_eq!(e1["mean"], 4.0);
    assert_eq!(e1["auto"], serde_json::json!({"mean": 0.75, "n": 4}));
    let e5 = row("math", "m1", "e5");
    assert!(e5["mean"].is_null() && e5["n"] == 0, "{e5}");
    assert_eq!(e5["auto"]["mean"], 1.0);
    assert!(row("bio", "m1", "e1")["auto"].is_null());
    // Additive: the rated rows come first, in the order and with the fields they always had.
    let rated: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| !r["mean"].is_null())
        .map(|r| (r["task"].as_str().unwrap(), r["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rated,
        [
            ("bio", "e1"),
            ("math", "base"),
            ("math", "e1"),
            ("math", "e3")
        ]
    );
}
