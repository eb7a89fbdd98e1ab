//! The sweep runner: a named OS thread that owns model state, its typed commands and events.

pub mod events;
