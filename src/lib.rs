//! qlab: run QLoRA fine-tuning studies end to end: configure, train, generate, rate, report.
//!
//! Dependency direction (downward only): tui -> cluster -> sweep -> {train, eval} -> model -> store / config;
//! rating, store, config, plan and source import neither tui nor model (README "Architecture";
//! tests/architecture.rs checks it).

pub mod allocator;
pub mod cluster;
pub mod config;
pub mod demo_data;
pub mod eval;
pub mod model;
pub mod plan;
pub mod preflight;
pub mod rating;
pub mod source;
pub mod store;
pub mod sweep;
pub mod train;
pub mod tui;
pub mod watch;
