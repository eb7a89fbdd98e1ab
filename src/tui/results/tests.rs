use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::*;
use crate::rating::auto::{AutoCell, AutoCheck, AutoChecks, NoCheck};
use crate::rating::journal::{JournalLine, test_score_line};
use crate::rating::ratings::Ratings;
use crate::rating::results::build_with_checks;
use crate::rating::rubric::Rubric;

fn line(rater: &str, task: &str, model: &str, stage: &str, q: u32, v: [f64; 3]) -> JournalLine {
    test_score_line(rater, task, model, stage, &q.to_string(), v)
}

fn tasks() -> Vec<TaskResults> {
    let mut lines = Vec::new();
    for q in 1..=4 {
        let w = f64::from(q % 2);
        lines.push(line("ann", "bio", "qwen-2-7b", "base", q, [5., 5., 5. - w]));
        lines.push(line("ann", "bio", "qwen-2-7b", "e1", q, [5., 4., 4. + w]));
        lines.push(line("ann", "bio", "qwen-2-7b", "e3", q, [4., 3., 4. - w]));
        lines.push(line("bob", "bio", "qwen-2-7b", "e3", q, [4., 3. + w, 4.]));
        lines.push(line(
            "ann",
            "math",
            "llama-3.1-8b",
            "base",
            q,
            [w * 5., 2., 1.],
        ));
        lines.push(line("ann", "math", "llama-3.1-8b", "e1", q, [5., 5., 4.]));
    }
    let cell = |stage, correct| AutoCell::new("llama-3.1-8b", stage, correct, 10);
    let checks = AutoChecks::from([
        ("bio".to_string(), AutoCheck::Unchecked(NoCheck::NotNumeric)),
        (
            "math".to_string(),
            AutoCheck::Checked(vec![cell("base", 2), cell("e1", 7), cell("e3", 10)]),
        ),
    ]);
    build_with_checks(&Ratings::replay(&lines), &Rubric::default(), &[], &checks)
}

fn draw(s: &ResultsScreen) -> String {
    let mut t = Terminal::new(TestBackend::new(100, 22)).unwrap();
    t.draw(|f| s.render(f, f.area(), &Theme::new(false)))
        .unwrap();
    t.backend().to_string()
}

#[test]
fn snapshot_of_the_results_screen_with_two_raters() {
    let losses = BTreeMap::from([(("bio".to_string(), "qwen-2-7b".to_string()), 1.234)]);
    let s = ResultsScreen::new(tasks()).with_losses(losses);
    insta::assert_snapshot!(draw(&s));
}

#[test]
fn snapshot_of_a_checked_task_with_an_unrated_stage() {
    let mut s = ResultsScreen::new(tasks());
    s.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    let text = draw(&s);
    insta::assert_snapshot!(text);
    let llama: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("│llama-3.1-8b "))
        .collect();
    assert_eq!(llama.len(), 2, "a human row and an auto row: {text}");
    assert!(
        llama[0].contains("4.67 (+2.83)") && !llama[0].contains("7/10"),
        "{text}"
    );
    assert!(
        llama[1].contains("2/10 0.06-0.51") && llama[1].contains("7/10 0.40-0.89"),
        "{text}"
    );
    assert!(
        llama[1].contains("10/10 0.72-1.00"),
        "the unrated e3 is checked: {text}"
    );
}

#[test]
fn tab_switches_task_and_q_quits() {
    let mut s = ResultsScreen::new(tasks());
    assert!(draw(&s).contains("Results · bio"));
    assert_eq!(
        s.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)),
        ResultsAction::None
    );
    let text = draw(&s);
    assert!(
        text.contains("Results · math") && text.contains("llama-3.1-8b"),
        "{text}"
    );
    assert_eq!(
        s.handle_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
        ResultsAction::Quit
    );
    assert!(draw(&ResultsScreen::new(Vec::new())).contains("No ratings yet."));
}
