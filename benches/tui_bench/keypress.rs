//! A key press on the Rating screen to the next frame, with a 10,000-judgement journal and 14 runs: the
//! score key saves a judgement (handed to the dashboard's disk thread) and the frame is drawn. Beside it,
//! the cost of the results refresh each saved judgement triggers (journal replay, bootstraps, every
//! status.json), which ran on the UI loop before the disk thread took it over. Target: < 16 ms per press.

use std::path::Path;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use qlab::config::Config;
use qlab::plan::Plan;
use qlab::rating::StagePair;
use qlab::rating::answers::{AnswerRecord, write_answers};
use qlab::rating::context::RatingContext;
use qlab::rating::journal::{self, AnswerKey, Entry, JournalLine, QuestionRef};
use qlab::store::SweepPaths;
use qlab::tui::disk_worker::{DiskJob, DiskWorker};
use qlab::tui::rating_files::RatingFiles;
use qlab::tui::view::draw;
use qlab::tui::{App, Effect, Msg, SweepInfo, Theme, update};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const MODELS: usize = 7;
const QUESTIONS: usize = 20;
const JUDGEMENTS: usize = 10_000;
const PRESSES: usize = 40;

/// A sweep of 7 models x 2 math datasets (14 runs) with base and e1 answers, and a 10,000-line journal.
fn fixture(dir: &Path) -> Config {
    let mut toml = String::from("[sweep]\nname = \"bench\"\n\n");
    for m in 0..MODELS {
        toml += &format!("[[model]]\nid = \"m{m}\"\npath = \"m{m}.gguf\"\n\n");
    }
    for d in ["a", "b"] {
        toml += &format!(
            "[[dataset]]\nid = \"{d}\"\ntask = \"math\"\npath = \"{d}.jsonl\"\n\
             template = \"{{question}}\\n### Response:\\n{{answer}}\"\nquestions = \"{d}.toml\"\n\n"
        );
        let mut q = format!("id = \"{d}\"\ntask = \"math\"\n");
        for i in 0..QUESTIONS {
            q += &format!(
                "\n[[question]]\nid = \"{i}\"\nquestion = \"Add {i} and 1.\"\nreference = \"{}\"\n",
                i + 1
            );
        }
        std::fs::write(dir.join(format!("{d}.toml")), q).expect("questions written");
    }
    let models: Vec<String> = (0..MODELS).map(|m| format!("\"m{m}\"")).collect();
    toml += &format!(
        "[train]\nepochs = 1\neval_at_epochs = [1]\n\n[matrix]\nmodels = [{}]\ndatasets = [\"a\", \"b\"]\n",
        models.join(", ")
    );
    let path = dir.join("experiments.toml");
    std::fs::write(&path, toml).expect("config written");
    let config = Config::load(&path).expect("the bench config is valid");
    let sweep = SweepPaths::new(&config.runs_dir(), &config.sweep.name);
    for run in &Plan::from_config(&config).runs {
        let answers = |stage: &str| -> Vec<AnswerRecord> {
            (0..QUESTIONS)
                .map(|i| AnswerRecord {
                    question_id: i.to_string(),
                    stage: stage.into(),
                    model: run.model.clone(),
                    prompt: String::new(),
                    answer: format!("{} + 1 = {}", i, i + 1),
                    new_tokens: Some(8),
                    secs: Some(0.1),
                })
                .collect()
        };
        let questions = run.dataset.clone();
        write_answers(
            &sweep.base_answers(&run.model, &questions, &run.eval_hash),
            &answers("base"),
        )
        .expect("answers written");
        write_answers(
            &sweep.run(&run.id).answers("e1", &questions, &run.eval_hash),
            &answers("e1"),
        )
        .expect("answers written");
    }
    let lines: Vec<JournalLine> = (0..JUDGEMENTS)
        .map(|n| {
            let answer = AnswerKey {
                item: QuestionRef {
                    task: "math".into(),
                    questions: if n % 2 == 0 { "a" } else { "b" }.into(),
                    question: (n / 2 % QUESTIONS).to_string(),
                },
                model: format!("m{}", n / 40 % MODELS),
                stage: if n % 3 == 0 { "base" } else { "e1" }.into(),
            };
            let scores = ["accuracy", "relevance", "clarity"]
                .iter()
                .map(|c| (c.to_string(), (n % 6) as f64))
                .collect();
            JournalLine::new(
                &format!("r{}", n % 3),
                "2026-12-03T00:00:00Z".into(),
                Entry::Score {
                    answer,
                    run: None,
                    scores,
                    blind: None,
                    unparsed: Default::default(),
                },
            )
        })
        .collect();
    journal::append_all(
        &sweep.ratings_journal(),
        &qlab::rating::Rubric::default(),
        &lines,
    )
    .expect("journal written");
    config
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = fixture(dir.path());
    let info = SweepInfo::from_plan(&Plan::from_config(&config), &config.runs_dir());
    let files =
        || RatingFiles::new(RatingContext::from_config(config.clone()).map_err(|e| e.to_string()));

    // What each saved judgement cost the UI loop before: the results refresh, inline.
    let inline = files();
    let refresh: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let msg = inline.load_results();
            assert!(matches!(msg, Msg::ResultsLoaded(Ok(_))), "{msg:?}");
            ms(t.elapsed())
        })
        .collect();

    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let disk = DiskWorker::spawn(files(), tx).expect("disk thread");
    let mut app = App::new(info, "bench", 0.0);
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("test terminal");
    let theme = Theme::new(false);
    let press = |app: &mut App, c: KeyCode| update(app, Msg::Key(KeyEvent::from(c)));
    // Open the Rating screen and hand it its items, as the disk thread would.
    let effects = press(&mut app, KeyCode::Char('a'));
    let Some(Effect::LoadRating { rater, pair }) = effects.into_iter().next() else {
        panic!("`a` opens the Rating screen");
    };
    assert_eq!(pair, StagePair::new("base", "e1"));
    disk.send(DiskJob::LoadRating { rater, pair });
    let loaded = answers.blocking_recv().expect("rating items");
    for effect in update(&mut app, loaded) {
        drop(effect);
    }
    let mut frames = Vec::new();
    let mut saved_after = Vec::new();
    for i in 0..PRESSES {
        let digit = char::from_digit((i % 6) as u32, 10).unwrap_or('3');
        let t = Instant::now();
        for effect in press(&mut app, KeyCode::Char(digit)) {
            match effect {
                Effect::SaveJudgement { rater, entry } => {
                    disk.send(DiskJob::Save { rater, entry });
                }
                Effect::LoadResults => {
                    disk.send(DiskJob::LoadResults);
                }
                _ => {}
            }
        }
        terminal.draw(|f| draw(f, &app, &theme)).expect("drawn");
        frames.push(ms(t.elapsed()));
        // Feed the disk thread's answers back (not part of the key-to-frame time), as the loop does.
        while let Ok(msg) = answers.try_recv() {
            if matches!(msg, Msg::JudgementSaved(_)) {
                saved_after.push(ms(t.elapsed()));
            }
            for effect in update(&mut app, msg) {
                if effect == Effect::LoadResults {
                    disk.send(DiskJob::LoadResults);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    frames.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "keypress (rating screen, {JUDGEMENTS} judgements, {} runs, 120x40): key to frame median {:.2} ms, \
         p95 {:.2} ms, max {:.2} ms (target < 16 ms); the results refresh now on the disk thread took \
         {:.1} ms median inline; judgements fsynced {} of {PRESSES} within the press's 20 ms",
        2 * MODELS,
        p(&frames, 0.5),
        p(&frames, 0.95),
        frames[frames.len() - 1],
        {
            let mut r = refresh.clone();
            r.sort_by(f64::total_cmp);
            p(&r, 0.5)
        },
        saved_after.len()
    );
}
