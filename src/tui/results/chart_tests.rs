use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::*;
use crate::rating::journal::{JournalLine, test_score_line};
use crate::rating::ratings::Ratings;
use crate::rating::results::build;
use crate::rating::rubric::Rubric;

/// `models` models on math with the study's shape: base low, e1 higher, e3 higher still for even models
/// and lower again (flagged) for odd ones; four questions each, so intervals are not points. On bio every
/// model is rated at base and only the first at e1.
fn tasks(models: usize) -> Vec<TaskResults> {
    let mut lines: Vec<JournalLine> = Vec::new();
    for m in 0..models {
        let model = format!("model-{m}");
        let up = m % 2 == 0;
        for q in 1..=4u32 {
            let w = f64::from(q % 2);
            let base = [1.0 + w, 2.0, 1.0];
            let e1 = [3.0 + w, 4.0, 3.0];
            let e3 = if up {
                [5.0, 5.0, 4.0 + w]
            } else {
                [2.0, 2.0 + w, 1.0]
            };
            for (stage, v) in [("base", base), ("e1", e1), ("e3", e3)] {
                lines.push(test_score_line(
                    "ann",
                    "math",
                    &model,
                    stage,
                    &q.to_string(),
                    v,
                ));
            }
        }
        lines.push(test_score_line(
            "ann",
            "bio",
            &model,
            "base",
            "1",
            [5., 5., 5.],
        ));
        if m == 0 {
            lines.push(test_score_line(
                "ann",
                "bio",
                &model,
                "e1",
                "1",
                [4., 4., 4.],
            ));
        }
    }
    build(&Ratings::replay(&lines), &Rubric::default(), &[])
}

fn press(s: &mut ResultsScreen, c: char) {
    s.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

fn draw(s: &ResultsScreen, ascii: bool) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| s.render(f, f.area(), &Theme::new(ascii)))
        .unwrap();
    let buf = t.backend().buffer();
    (0..24)
        .map(|y| (0..80).map(|x| buf[(x, y)].symbol()).collect::<String>() + "\n")
        .collect()
}

/// The math chart of the study's size: 7 models x 3 stages at 80x24.
fn math_chart() -> ResultsScreen {
    let mut s = ResultsScreen::new(tasks(7));
    press(&mut s, 'c');
    press(&mut s, 'l');
    s
}

#[test]
fn snapshot_of_the_chart_of_seven_models_at_80x24() {
    let text = draw(&math_chart(), false);
    assert!(text.contains("bars 0-5"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn snapshot_of_the_chart_of_seven_models_at_80x24_in_ascii() {
    let text = draw(&math_chart(), true);
    assert!(text.is_ascii(), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn bars_are_as_long_as_their_means_and_falls_are_flagged() {
    let s = math_chart();
    let text = draw(&s, true);
    let task = &s.tasks[s.task];
    let rows: Vec<&str> = text.lines().collect();
    let bar_of = |model: &str, stage: &str| {
        let i = task.models.iter().position(|m| m == model).unwrap();
        let j = task.stages.iter().position(|x| x == stage).unwrap();
        // Row 0 holds the tabs; each model's three bars follow one another.
        rows[1 + i * task.stages.len() + j]
    };
    // The bar starts after the label ("model-0 base "): its cells up to the last '#' or text.
    let width = |row: &str| row[13..].trim_end().len();
    let base = task.cell("model-0", "base").unwrap().mean;
    let e3 = task.cell("model-0", "e3").unwrap().mean;
    let (wb, w3) = (
        width(bar_of("model-0", "base")),
        width(bar_of("model-0", "e3")),
    );
    let e3_row = bar_of("model-0", "e3");
    assert!(
        e3_row.starts_with("          e3 ") && e3_row[13..].starts_with(&format!("{e3:.2} [")),
        "the label, then the bar with its mean and interval: {text}"
    );
    assert!(e3_row.trim_end().ends_with('#'), "{text}");
    assert!(
        ((w3 as f64 / 67.0) - e3 / 5.0).abs() < 0.02,
        "e3 bar of {w3} cells for {e3}: {text}"
    );
    assert!(wb < w3, "{text}");
    assert!(bar_of("model-1", "e3").contains(" !"), "{text}");
    assert!(!bar_of("model-0", "e3").contains('!'), "{text}");
    assert!(
        text.contains(&format!("{base:.2} [")),
        "mean and interval: {text}"
    );
}

#[test]
fn many_models_scroll_with_the_selection_and_c_goes_back_to_the_table() {
    let mut s = ResultsScreen::new(tasks(9));
    press(&mut s, 'c');
    press(&mut s, 'l');
    let text = draw(&s, false);
    assert!(text.contains("models 1-7 of 9"), "{text}");
    assert!(
        text.contains("model-0") && !text.contains("model-8"),
        "{text}"
    );
    for _ in 0..8 {
        press(&mut s, 'j');
    }
    let text = draw(&s, false);
    assert!(text.contains("models 3-9 of 9"), "{text}");
    assert!(
        text.contains("model-8") && !text.contains("model-1 "),
        "{text}"
    );
    press(&mut s, 'c');
    assert!(
        draw(&s, false).contains("Results · math"),
        "the table again"
    );
}

#[test]
fn a_stage_without_ratings_says_so() {
    let mut s = ResultsScreen::new(tasks(2));
    press(&mut s, 'c');
    let text = draw(&s, false);
    let row = text
        .lines()
        .find(|l| l.contains("not rated"))
        .unwrap_or_default();
    assert!(
        row.starts_with("          e1 not rated"),
        "model-1 at e1: {text}"
    );
}
