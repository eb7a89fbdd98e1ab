//! The sweep runner: named OS threads, one per device, that own model state, its typed commands and events, the run
//! directories' logs, locks and status, and the reconciliation of plan versus run directories.

pub mod control;
pub mod eval_run;
pub mod events;
pub mod from_plan;
pub mod job;
pub mod metrics_log;
pub mod model_loader;
pub mod panic_guard;
pub mod plan_evaluator;
pub mod reconcile;
pub mod runner;
pub mod setup;
pub mod sink;
pub mod telemetry;
pub mod toy;
pub mod train_run;
mod worker;
