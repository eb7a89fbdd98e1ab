//! The dashboard: app state fed by runner events and stores, keymap, event loop and one file per view.

pub mod rating;
pub mod results;
