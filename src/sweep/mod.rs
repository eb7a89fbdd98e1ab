//! The sweep runner: a named OS thread that owns model state, its typed commands and events, the run
//! directories' logs, locks and status, and the reconciliation of plan versus run directories.

pub mod control;
pub mod events;
pub mod job;
pub mod lock;
pub mod metrics_log;
pub mod reconcile;
pub mod runner;
pub mod sink;
pub mod telemetry;
pub mod train_run;
