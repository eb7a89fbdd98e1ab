//! The dashboard: app state fed by runner events and run files, a keymap as data, an event loop that
//! draws only when something changed, and one file per view. Never calls candle.

pub mod app;
pub mod checks;
pub mod disk_worker;
pub mod event_loop;
pub mod files;
pub mod hosted;
pub mod keymap;
pub mod launch;
pub mod msg;
pub mod rating;
pub mod rating_files;
pub mod results;
pub mod runner_trainer;
pub mod scores;
pub mod sweep_info;
pub mod terminal;
pub mod theme;
pub mod trainer;
pub mod update;
pub mod view;

#[cfg(test)]
mod hosted_tests;
#[cfg(test)]
mod update_tests;

pub use app::{App, Screen};
pub use msg::{Effect, Msg, RatingData, ResultsData};
pub use sweep_info::{MatrixCell, SweepInfo};
pub use theme::Theme;
pub use trainer::Trainer;
pub use update::update;
