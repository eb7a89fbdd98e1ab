//! qlab: run QLoRA fine-tuning studies end to end: configure, train, generate, rate, report.
//!
//! Dependency direction (downward only): tui -> sweep -> {train, eval} -> model;
//! rating, store, config and plan import neither tui nor model.

pub mod config;
pub mod demo_data;
pub mod eval;
pub mod model;
pub mod plan;
pub mod rating;
pub mod source;
pub mod store;
pub mod sweep;
pub mod train;
pub mod tui;
pub mod watch;
