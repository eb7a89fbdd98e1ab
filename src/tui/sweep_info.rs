//! What the dashboard needs to know about a sweep before anything runs: its matrix of models x datasets and
//! the run id of each cell, plus where its run directories live.

use std::path::PathBuf;

use crate::store::SweepPaths;

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixCell {
    pub id: String,
    pub model: String,
    pub dataset: String,
}

/// The sweep as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepInfo {
    pub name: String,
    /// Rows of the matrix, in config order.
    pub models: Vec<String>,
    /// Columns of the matrix, in config order.
    pub datasets: Vec<String>,
    pub runs: Vec<MatrixCell>,
    /// The runs/ directory that holds `<sweep>/<run-id>/`.
    pub runs_dir: PathBuf,
}

impl SweepInfo {
    pub fn paths(&self) -> SweepPaths {
        SweepPaths::new(&self.runs_dir, &self.name)
    }
}
