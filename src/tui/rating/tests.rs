use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::*;
use crate::rating::journal::QuestionRef;

fn item(q: &str, a_stage: &str, b_stage: &str) -> RatingItem {
    RatingItem {
        question: QuestionRef { task: "math".into(), questions: "math".into(), question: q.into() },
        model: "llama-3.1-8b".into(),
        run: "llama-3.1-8b-orca-1a2b".into(),
        text: "What is the sum of the largest number and the second smallest of 10, 11, 12, 13 and 14?".into(),
        reference: "14 + 11 = 25.".into(),
        numeric: true,
        a: ItemSide { stage: a_stage.into(), answer: "The largest is 14, the second smallest 11.\nSo 14 + 11 = 25.".into() },
        b: ItemSide { stage: b_stage.into(), answer: "14 + 12 = 26.\nTherefore, the sum is 26.".into() },
    }
}

fn screen() -> RatingScreen {
    let items = vec![item("1", "e1", "base"), item("2", "base", "e1")];
    RatingScreen::new(items, Rubric::default(), "ann", true, Ratings::default())
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// Press a key; a Record is "written" and handed back as saved, as the host does.
fn press(s: &mut RatingScreen, c: KeyCode) -> RatingAction {
    let action = s.handle_key(key(c));
    if let RatingAction::Record(entry) = &action {
        s.saved(JournalLine::new(
            "ann",
            "2026-01-01T00:00:00Z".into(),
            (**entry).clone(),
        ));
    }
    action
}

fn type_keys(s: &mut RatingScreen, keys: &str) {
    for c in keys.chars() {
        press(s, KeyCode::Char(c));
    }
}

fn draw(s: &RatingScreen) -> String {
    let mut t = Terminal::new(TestBackend::new(110, 30)).unwrap();
    t.draw(|f| s.render(f, f.area())).unwrap();
    t.backend().to_string()
}

fn recorded(action: RatingAction) -> Entry {
    match action {
        RatingAction::Record(entry) => *entry,
        other => panic!("expected a judgement, got {other:?}"),
    }
}

#[test]
fn a_digit_scores_the_focused_criterion_of_the_focused_side_with_the_blind_layout() {
    let mut s = screen();
    let Entry::Score {
        answer,
        scores,
        blind,
        run,
        ..
    } = recorded(press(&mut s, KeyCode::Char('4')))
    else {
        panic!("not a score")
    };
    assert_eq!(answer.stage, "e1");
    assert_eq!(scores, [("Correct Answer".to_string(), 4.0)].into());
    assert_eq!(blind.unwrap().a, "e1");
    assert_eq!(run.as_deref(), Some("llama-3.1-8b-orca-1a2b"));
    press(&mut s, KeyCode::Tab);
    press(&mut s, KeyCode::Char('j'));
    let Entry::Score { answer, scores, .. } = recorded(press(&mut s, KeyCode::Char('2'))) else {
        panic!("not a score")
    };
    assert_eq!(answer.stage, "base");
    assert_eq!(scores, [("Correct Reasoning".to_string(), 2.0)].into());
    assert_eq!(press(&mut s, KeyCode::Char('7')), RatingAction::None);
    assert!(s.status.as_deref().unwrap().contains("not on the scale"));
}

#[test]
fn labels_stay_hidden_until_the_item_is_fully_scored_then_progress_counts_it() {
    let mut s = screen();
    type_keys(&mut s, "5j5j5");
    press(&mut s, KeyCode::Char('l'));
    type_keys(&mut s, "0k0");
    let partial = draw(&s);
    assert!(
        partial.contains(" A ") && !partial.contains("A = e1"),
        "{partial}"
    );
    assert!(partial.contains("check: shown after scoring"));
    assert_eq!(s.progress(), (0, 2));
    press(&mut s, KeyCode::Char('k'));
    press(&mut s, KeyCode::Char('0'));
    assert_eq!(s.progress(), (1, 2));
    let done = draw(&s);
    assert!(
        done.contains("A = e1") && done.contains("B = base"),
        "{done}"
    );
    assert!(
        done.contains("final number matches the reference")
            && done.contains("final number differs")
    );
}

#[test]
fn undo_note_flag_and_next_unrated() {
    let mut s = screen();
    press(&mut s, KeyCode::Char('3'));
    assert_eq!(recorded(press(&mut s, KeyCode::Char('u'))), Entry::Undo);
    assert!(s.focused_scores().is_none());
    assert_eq!(press(&mut s, KeyCode::Char('u')), RatingAction::None);
    press(&mut s, KeyCode::Char('c'));
    type_keys(&mut s, "388 not 252");
    let action = press(&mut s, KeyCode::Enter);
    assert!(matches!(recorded(action), Entry::Note { ref text, .. } if text == "388 not 252"));
    let flag = recorded(press(&mut s, KeyCode::Char('r')));
    assert!(matches!(flag, Entry::ReferenceWrong { wrong: true, .. }));
    assert!(draw(&s).contains("flagged: reference is wrong"));
    press(&mut s, KeyCode::Enter);
    assert_eq!(s.current().unwrap().question.question, "2");
    assert_eq!(press(&mut s, KeyCode::Char('q')), RatingAction::Quit);
}

#[test]
fn opens_at_the_first_unrated_item() {
    let mut s = screen();
    type_keys(&mut s, "5j5j5");
    press(&mut s, KeyCode::Tab);
    type_keys(&mut s, "5k5k5");
    let ratings = s.ratings.clone();
    let reopened = RatingScreen::new(
        vec![item("1", "e1", "base"), item("2", "base", "e1")],
        Rubric::default(),
        "ann",
        true,
        ratings,
    );
    assert_eq!(reopened.current().unwrap().question.question, "2");
}

#[test]
fn snapshot_of_the_rating_screen() {
    let mut s = screen();
    type_keys(&mut s, "5j4");
    insta::assert_snapshot!(draw(&s));
}

#[test]
fn half_points_add_to_the_focused_score_when_the_rubric_allows_them() {
    let rubric = Rubric {
        step: 0.5,
        ..Rubric::default()
    };
    let mut s = RatingScreen::new(
        vec![item("1", "e1", "base")],
        rubric,
        "ann",
        true,
        Ratings::default(),
    );
    press(&mut s, KeyCode::Char('4'));
    let Entry::Score { scores, .. } = recorded(press(&mut s, KeyCode::Char('.'))) else {
        panic!("not a score")
    };
    assert_eq!(scores["Correct Answer"], 4.5);
    press(&mut s, KeyCode::Char('5'));
    assert_eq!(press(&mut s, KeyCode::Char('.')), RatingAction::None);
    let mut whole = screen();
    press(&mut whole, KeyCode::Char('4'));
    assert_eq!(press(&mut whole, KeyCode::Char('.')), RatingAction::None);
}
