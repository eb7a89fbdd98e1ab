//! The hosted Rating and Results screens fed with messages: opening, scoring, the journal append as an
//! effect, saved / not saved answers, pair changes, refreshes and the way back.

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::rating::journal::QuestionRef;
use crate::rating::session::{ItemSide, RatingItem};
use crate::rating::{Entry, JournalLine, Rubric, StagePair};
use crate::sweep::events::{LoggedEvent, RunEvent};

use super::app::{App, Pane, Screen};
use super::checks::RunCheck;
use super::msg::{Effect, Msg, RatingData, ResultsData};
use super::scores::RunScores;
use super::sweep_info::{MatrixCell, SweepInfo};
use super::theme::Theme;
use super::update::update;
use super::view;

const RUN: &str = "tiny-sums-0a1b2c3d";

fn app() -> App {
    let sweep = SweepInfo {
        name: "demo".into(),
        models: vec!["tiny".into()],
        datasets: vec!["sums".into()],
        runs: vec![MatrixCell {
            id: RUN.into(),
            model: "tiny".into(),
            dataset: "sums".into(),
        }],
        runs_dir: "runs".into(),
    };
    App::new(sweep, "ann", 0.0)
}

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

fn ch(app: &mut App, c: char) -> Vec<Effect> {
    key(app, KeyCode::Char(c))
}

fn item(q: &str) -> RatingItem {
    RatingItem {
        question: QuestionRef {
            task: "math".into(),
            questions: "sums".into(),
            question: q.into(),
        },
        model: "tiny".into(),
        run: RUN.into(),
        text: format!("Add {q} and 3."),
        reference: "5".into(),
        numeric: true,
        a: ItemSide {
            stage: "e1".into(),
            answer: "5".into(),
        },
        b: ItemSide {
            stage: "base".into(),
            answer: "6".into(),
        },
    }
}

fn loaded(pair: StagePair, items: Vec<RatingItem>) -> Msg {
    Msg::RatingLoaded {
        pair,
        result: Ok(Box::new(RatingData {
            items,
            rubric: Rubric::default(),
            journal: Vec::new(),
        })),
    }
}

/// The dashboard on the Rating screen with two items of base vs e1.
fn rating_open() -> App {
    let mut app = app();
    assert_eq!(
        ch(&mut app, 'a'),
        vec![Effect::LoadRating {
            rater: "ann".into(),
            pair: StagePair::new("base", "e1"),
        }]
    );
    assert_eq!(app.screen, Screen::Rating);
    assert!(matches!(app.rating.screen, Pane::Loading));
    assert_eq!(
        update(
            &mut app,
            loaded(StagePair::default(), vec![item("1"), item("2")])
        ),
        vec![]
    );
    app
}

fn draw(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(120, 36)).unwrap();
    t.draw(|f| view::draw(f, app, &Theme::new(false))).unwrap();
    t.backend().to_string()
}

fn save_of(effects: &[Effect]) -> Entry {
    match effects {
        [Effect::SaveJudgement { rater, entry }] => {
            assert_eq!(rater, "ann");
            (**entry).clone()
        }
        other => panic!("expected one journal append, got {other:?}"),
    }
}

fn line(entry: Entry) -> Msg {
    Msg::JudgementSaved(Box::new(JournalLine::new(
        "ann",
        "2026-11-29T01:00:00Z".into(),
        entry,
    )))
}

#[test]
fn a_score_key_asks_for_the_append_and_shows_saved_only_once_it_is_on_disk() {
    let mut app = rating_open();
    let entry = save_of(&ch(&mut app, '4'));
    let Entry::Score { answer, scores, .. } = &entry else {
        panic!("{entry:?}")
    };
    assert_eq!(
        (answer.stage.as_str(), answer.item.question.as_str()),
        ("e1", "1")
    );
    assert_eq!(scores.get("Correct Answer"), Some(&4.0));
    assert_eq!(app.rating.pending.as_ref(), Some(&entry));
    let before = draw(&app);
    assert!(
        !before.contains("saved") && before.contains("Correct Answer     -"),
        "nothing shows as saved before the append answered:\n{before}"
    );
    assert_eq!(
        update(&mut app, line(entry)),
        vec![Effect::LoadResults],
        "a saved judgement refreshes the results"
    );
    assert_eq!(app.rating.pending, None);
    let after = draw(&app);
    assert!(
        after.contains("· saved") && after.contains("Correct Answer     4"),
        "{after}"
    );
}

#[test]
fn a_failed_save_shows_the_error_and_keeps_the_judgement_pending_until_saved_again() {
    let mut app = rating_open();
    let entry = save_of(&ch(&mut app, '4'));
    let error = "runs/demo/ratings.jsonl: No space left on device (os error 28)";
    assert_eq!(
        update(
            &mut app,
            Msg::JudgementNotSaved {
                error: error.into()
            }
        ),
        vec![]
    );
    assert_eq!(app.rating.pending.as_ref(), Some(&entry), "kept pending");
    let screen = draw(&app);
    assert!(
        screen.contains("NOT SAVED: runs/demo/ratings.jsonl: No space left")
            && screen.contains("a judgement is NOT SAVED")
            && screen.contains("Correct Answer     -"),
        "{screen}"
    );
    assert_eq!(
        ch(&mut app, '3'),
        vec![],
        "no new judgement while one is unsaved"
    );
    assert!(draw(&app).contains("w saves it again"));
    assert_eq!(save_of(&ch(&mut app, 'w')), entry, "w sends the same one");
    update(&mut app, line(entry));
    assert_eq!(app.rating.pending, None);
    assert!(draw(&app).contains("Correct Answer     4"));
    assert_eq!(ch(&mut app, 'w'), vec![]);
    assert_eq!(app.notice.as_deref(), Some("nothing waits to be saved"));
}

#[test]
fn v_cycles_the_pair_and_answers_for_another_pair_are_dropped() {
    let mut app = rating_open();
    let load = |pair: &str| {
        vec![Effect::LoadRating {
            rater: "ann".into(),
            pair: pair.parse().unwrap(),
        }]
    };
    assert_eq!(ch(&mut app, 'v'), load("base-e3"));
    update(&mut app, loaded(StagePair::default(), vec![item("1")]));
    assert!(
        matches!(app.rating.screen, Pane::Loading),
        "a stale base-e1 answer is dropped"
    );
    update(&mut app, loaded("base-e3".parse().unwrap(), Vec::new()));
    let empty = draw(&app);
    assert!(
        empty.contains("base vs e3") && empty.contains("qlab eval"),
        "an empty pair says what to run:\n{empty}"
    );
    assert_eq!(ch(&mut app, 'v'), load("e1-e3"));
    assert_eq!(ch(&mut app, 'v'), load("base-e1"));
    update(
        &mut app,
        Msg::RatingLoaded {
            pair: StagePair::default(),
            result: Err("sums.toml: question set is missing".into()),
        },
    );
    assert!(draw(&app).contains("The answers could not be read: sums.toml"));
}

#[test]
fn esc_returns_to_the_screen_the_hosted_screens_were_opened_from() {
    let mut app = app();
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Run(0));
    ch(&mut app, 'a');
    assert_eq!(app.screen, Screen::Rating);
    assert_eq!(ch(&mut app, 't'), vec![Effect::LoadResults]);
    assert_eq!(app.screen, Screen::Results);
    ch(&mut app, 'a');
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Run(0), "back where they were opened");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Sweep);
    assert_eq!(ch(&mut app, 'q'), vec![Effect::Quit]);
}

#[test]
fn while_a_note_is_typed_every_key_is_text() {
    let mut app = rating_open();
    assert_eq!(ch(&mut app, 'c'), vec![]);
    for c in "q?vw".chars() {
        assert_eq!(ch(&mut app, c), vec![], "{c} is text");
    }
    key(&mut app, KeyCode::Esc);
    assert_eq!(
        app.screen,
        Screen::Rating,
        "Esc ends the note, not the screen"
    );
    ch(&mut app, 'c');
    for c in "q?".chars() {
        ch(&mut app, c);
    }
    let note = save_of(&key(&mut app, KeyCode::Enter));
    assert!(
        matches!(&note, Entry::Note { text, .. } if text == "q?"),
        "{note:?}"
    );
    assert!(!app.quit && app.overlay.is_none());
}

#[test]
fn results_feed_the_results_screen_and_the_cell_scores_and_refresh_when_runs_end() {
    let mut app = app();
    let data = |scores: Vec<RunScores>| {
        let checks = scores
            .iter()
            .map(|s| {
                let tally = crate::rating::auto::Tally { correct: 7, n: 10 };
                (s.run.clone(), RunCheck::Stages(vec![("e1".into(), tally)]))
            })
            .collect();
        Msg::ResultsLoaded(Ok(Box::new(ResultsData {
            tasks: Vec::new(),
            losses: BTreeMap::new(),
            scores,
            checks,
        })))
    };
    let rated = RunScores {
        run: RUN.into(),
        stages: vec![("e1".into(), 2.5), ("e3".into(), 3.5)],
    };
    update(&mut app, data(vec![rated]));
    assert_eq!(app.runs[0].score(), Some(3.5), "the latest stage's");
    assert_eq!(app.runs[0].scores.len(), 2);
    assert!(
        matches!(&app.runs[0].check, Some(RunCheck::Stages(s)) if s[0].1.correct == 7),
        "the cell's check comes with the results"
    );
    assert!(matches!(app.results, Pane::Ready(_)));
    assert_eq!(ch(&mut app, 't'), vec![], "already loaded");
    assert!(draw(&app).contains("No ratings yet"));
    let finished = LoggedEvent {
        ts: 1.0,
        run: RUN.into(),
        event: RunEvent::RunFinished { step: 9, secs: 1.0 },
    };
    assert_eq!(
        update(&mut app, Msg::Followed(finished)),
        vec![Effect::LoadResults]
    );
    update(&mut app, data(Vec::new()));
    assert_eq!(
        app.runs[0].score(),
        None,
        "an undone rating takes the score away"
    );
    assert_eq!(app.runs[0].check, None);
    update(
        &mut app,
        Msg::ResultsLoaded(Err(
            "runs/demo/ratings.jsonl:3: not a ratings journal line".into()
        )),
    );
    assert!(draw(&app).contains("ratings.jsonl:3"));
}

#[test]
fn an_empty_rating_screen_reloads_when_a_run_has_answered() {
    let mut app = app();
    ch(&mut app, 'a');
    update(&mut app, loaded(StagePair::default(), Vec::new()));
    let answered = Msg::Runner {
        run: RUN.into(),
        event: RunEvent::EvalDone { stage: "e1".into() },
        ts: 1.0,
    };
    assert_eq!(
        update(&mut app, answered),
        vec![
            Effect::LoadResults,
            Effect::LoadRating {
                rater: "ann".into(),
                pair: StagePair::default()
            }
        ]
    );
}
