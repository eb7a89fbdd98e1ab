//! What the dashboard needs to know about a sweep before anything runs: its matrix of models x datasets and
//! the run id of each cell, plus where its run directories live.

use std::path::{Path, PathBuf};

use crate::plan::Plan;
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
    /// The matrix of a plan: models and datasets in the order their runs appear.
    pub fn from_plan(plan: &Plan, runs_dir: &Path) -> Self {
        let mut models: Vec<String> = Vec::new();
        let mut datasets: Vec<String> = Vec::new();
        for r in &plan.runs {
            if !models.contains(&r.model) {
                models.push(r.model.clone());
            }
            if !datasets.contains(&r.dataset) {
                datasets.push(r.dataset.clone());
            }
        }
        let runs = plan
            .runs
            .iter()
            .map(|r| MatrixCell {
                id: r.id.clone(),
                model: r.model.clone(),
                dataset: r.dataset.clone(),
            })
            .collect();
        SweepInfo {
            name: plan.sweep.clone(),
            models,
            datasets,
            runs,
            runs_dir: runs_dir.to_owned(),
        }
    }

    pub fn paths(&self) -> SweepPaths {
        SweepPaths::new(&self.runs_dir, &self.name)
    }
}
