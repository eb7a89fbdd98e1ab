//! Parts of the dashboard benchmark.

pub mod cpu;
pub mod keypress;
pub mod render;
