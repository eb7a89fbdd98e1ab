use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::*;
use crate::rating::journal::{JournalLine, test_score_line};
use crate::rating::ratings::Ratings;
use crate::rating::results::build;
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
    build(&Ratings::replay(&lines), &Rubric::default(), &[])
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
