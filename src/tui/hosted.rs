//! The Rating and Results screens hosted in the dashboard's update: opening them, routing keys to them,
//! and the messages that answer their loads and journal appends. Pure like `update`: reading answers,
//! appending judgements and computing results are effects the event loop performs.

use crossterm::event::{KeyEvent, KeyEventKind};

use crate::rating::{JournalLine, Ratings, StagePair};

use super::app::{App, Pane, STAGE_PAIRS, Screen};
use super::msg::{Effect, RatingData, ResultsData};
use super::rating::{RatingAction, RatingScreen};
use super::results::{ResultsAction, ResultsScreen};

/// Shown when a judgement is made while an earlier one is still not on disk.
const UNSAVED_FIRST: &str = "the last judgement is NOT SAVED: w saves it again";

/// Open the Rating screen, loading its items unless it already has some.
pub fn open_rating(app: &mut App) -> Vec<Effect> {
    enter(app, Screen::Rating);
    match &app.rating.screen {
        Pane::Loading => Vec::new(),
        Pane::Ready(s) if s.progress().1 > 0 => Vec::new(),
        _ => load_rating(app),
    }
}

/// Open the Results screen (its table is loaded at start and refreshed since).
pub fn open_results(app: &mut App) -> Vec<Effect> {
    enter(app, Screen::Results);
    match app.results {
        Pane::NotLoaded | Pane::Failed(_) => {
            app.results = Pane::Loading;
            vec![Effect::LoadResults]
        }
        _ => Vec::new(),
    }
}

/// Leave a hosted screen for the screen it was opened from.
pub fn back(app: &mut App) {
    app.screen = app.back_to;
}

fn enter(app: &mut App, screen: Screen) {
    if matches!(app.screen, Screen::Sweep | Screen::Run(_)) {
        app.back_to = app.screen;
    }
    app.screen = screen;
}

fn load_rating(app: &mut App) -> Vec<Effect> {
    app.rating.screen = Pane::Loading;
    vec![Effect::LoadRating {
        rater: app.rating.rater.clone(),
        pair: app.rating.pair.clone(),
    }]
}

/// Compare the next pair of stages: base-e1, base-e3, e1-e3, then base-e1 again.
pub fn next_pair(app: &mut App) -> Vec<Effect> {
    let at = STAGE_PAIRS
        .iter()
        .position(|(a, b)| app.rating.pair == StagePair::new(a, b));
    let (a, b) = STAGE_PAIRS[at.map_or(0, |i| (i + 1) % STAGE_PAIRS.len())];
    app.rating.pair = StagePair::new(a, b);
    load_rating(app)
}

/// A key the dashboard does not bind, for the rating screen.
pub fn rating_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let Pane::Ready(screen) = &mut app.rating.screen else {
        return Vec::new();
    };
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    app.dirty = true;
    match screen.handle_key(key) {
        RatingAction::None => Vec::new(),
        RatingAction::Quit => {
            back(app);
            Vec::new()
        }
        RatingAction::Record(entry) => {
            if app.rating.pending.is_some() {
                screen.refuse(UNSAVED_FIRST);
                return Vec::new();
            }
            app.rating.pending = Some((*entry).clone());
            vec![Effect::SaveJudgement {
                rater: app.rating.rater.clone(),
                entry,
            }]
        }
    }
}

/// Ask again to append the judgement whose append failed.
pub fn save_again(app: &mut App) -> Vec<Effect> {
    match &app.rating.pending {
        Some(entry) => vec![Effect::SaveJudgement {
            rater: app.rating.rater.clone(),
            entry: Box::new(entry.clone()),
        }],
        None => {
            app.notice = Some("nothing waits to be saved".into());
            Vec::new()
        }
    }
}

/// A key the dashboard does not bind, for the results screen.
pub fn results_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let Pane::Ready(screen) = &mut app.results else {
        return Vec::new();
    };
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    app.dirty = true;
    if screen.handle_key(key) == ResultsAction::Quit {
        back(app);
    }
    Vec::new()
}

/// The items of `pair` arrived; answers for a pair no longer selected are dropped.
pub fn rating_loaded(
    app: &mut App,
    pair: StagePair,
    result: Result<Box<RatingData>, String>,
) -> Vec<Effect> {
    if pair != app.rating.pair {
        return Vec::new();
    }
    app.rating.screen = match result {
        Ok(data) => {
            let RatingData {
                items,
                rubric,
                journal,
            } = *data;
            let ratings = Ratings::replay(&journal);
            Pane::Ready(RatingScreen::new(
                items,
                rubric,
                &app.rating.rater,
                true,
                ratings,
            ))
        }
        Err(e) => Pane::Failed(e),
    };
    app.dirty = true;
    Vec::new()
}

/// The pending judgement is on disk: only now does the screen show it as saved.
pub fn judgement_saved(app: &mut App, line: JournalLine) -> Vec<Effect> {
    app.rating.pending = None;
    if let Pane::Ready(screen) = &mut app.rating.screen {
        screen.saved(line);
    }
    app.dirty = true;
    vec![Effect::LoadResults]
}

/// The append failed: say so where the researcher looks, keep the judgement pending.
pub fn judgement_not_saved(app: &mut App, error: &str) -> Vec<Effect> {
    match &mut app.rating.screen {
        Pane::Ready(screen) => screen.save_failed(&format!("{error} (w saves it again)")),
        _ => app.notice = Some(format!("judgement NOT SAVED: {error}")),
    }
    app.dirty = true;
    Vec::new()
}

/// A new results table: the Results screen and the Sweep screen's cell scores both come from it.
pub fn results_loaded(app: &mut App, result: Result<Box<ResultsData>, String>) -> Vec<Effect> {
    app.dirty = true;
    let data = match result {
        Ok(data) => *data,
        Err(e) => {
            app.results = Pane::Failed(e);
            return Vec::new();
        }
    };
    for run in &mut app.runs {
        run.scores = data
            .scores
            .iter()
            .find(|s| s.run == run.plan.id)
            .map_or_else(Vec::new, |s| s.stages.clone());
        run.check = data
            .checks
            .iter()
            .find(|(id, _)| *id == run.plan.id)
            .map(|(_, c)| c.clone());
    }
    match &mut app.results {
        Pane::Ready(screen) => screen.update(data.tasks, data.losses),
        _ => app.results = Pane::Ready(ResultsScreen::new(data.tasks).with_losses(data.losses)),
    }
    Vec::new()
}

/// A run finished training or answering: refresh the results (losses, scores), and reload an open
/// rating screen that had nothing to rate, since the run's answers may be there now.
pub fn run_ended(app: &mut App) -> Vec<Effect> {
    let mut effects = vec![Effect::LoadResults];
    let nothing_to_rate = match &app.rating.screen {
        Pane::Ready(s) => s.progress().1 == 0,
        Pane::Failed(_) => true,
        Pane::NotLoaded | Pane::Loading => false,
    };
    if app.screen == Screen::Rating && nothing_to_rate {
        effects.extend(load_rating(app));
    }
    effects
}
