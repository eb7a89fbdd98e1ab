//! Parts of the dashboard benchmark.

pub mod render;
