//! Import of the study's own data: the 42 raw benchmark files, their answers and hand scores.
//!
//! Parsing and scoring ([`read_study_dir`]) depend on nothing but the files; [`store`] writes the result
//! into a sweep as answer files and as ratings by rater `study`.

pub mod names;
pub mod parse;
pub mod store;

use std::path::{Path, PathBuf};

pub use names::{StudyFileName, parse_file_name};
pub use parse::{LayoutError, ScoreProblem, StudyAnswer, parse_benchmark};

use crate::rating::rubric::Rubric;
use crate::rating::stats::mean;

/// The rater name under which the study's hand scores are stored.
pub const STUDY_RATER: &str = "study";
/// The eval hash under which the study's answers are stored.
pub const STUDY_EVAL_HASH: &str = "study";

/// One raw file, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyFile {
    pub path: PathBuf,
    pub name: StudyFileName,
    pub answers: Vec<StudyAnswer>,
}

impl StudyFile {
    /// The study's score of this file: the mean of every kept value (all questions, all criteria).
    pub fn mean(&self) -> Option<f64> {
        let values: Vec<f64> = self
            .answers
            .iter()
            .flat_map(|a| a.scores.values().copied())
            .collect();
        mean(&values)
    }
    /// How many values were kept.
    pub fn values(&self) -> usize {
        self.answers.iter().map(|a| a.scores.len()).sum()
    }
}

/// Everything read from a study folder.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyImport {
    pub files: Vec<StudyFile>,
    pub problems: Vec<ScoreProblem>,
}

impl StudyImport {
    pub fn file(&self, model: &str, task: &str, stage: &str) -> Option<&StudyFile> {
        self.files
            .iter()
            .find(|f| f.name.model == model && f.name.task == task && f.name.stage == stage)
    }
}

/// Errors of the study import.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(
        "{0}: not a study benchmark file name (expected <HF model>-<math|bio>-benchmark.txt or lora-<model>-<Task>-e<N>-<task>-benchmark.txt)"
    )]
    FileName(PathBuf),
    #[error("{0}: no study benchmark files (*-benchmark.txt) found")]
    Empty(PathBuf),
    #[error("{first} and {second} both hold {model} {task} {stage}")]
    Duplicate {
        first: PathBuf,
        second: PathBuf,
        model: String,
        task: String,
        stage: String,
    },
    #[error(
        "{file}: the config has no run training {model} on a {task} dataset to hold these answers"
    )]
    NoRun {
        model: String,
        task: String,
        file: PathBuf,
    },
    #[error(transparent)]
    Rating(#[from] crate::rating::RatingError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Read every `*-benchmark.txt` under `dir` (its subfolders too), sorted by model, task and stage.
pub fn read_study_dir(dir: &Path, rubric: &Rubric) -> Result<StudyImport, StudyError> {
    let mut paths = Vec::new();
    collect_files(dir, &mut paths)?;
    if paths.is_empty() {
        return Err(StudyError::Empty(dir.to_owned()));
    }
    let mut files: Vec<StudyFile> = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = parse_file_name(&file_name).ok_or_else(|| StudyError::FileName(path.clone()))?;
        if let Some(other) = files.iter().find(|f| f.name == name) {
            return Err(StudyError::Duplicate {
                first: other.path.clone(),
                second: path,
                model: name.model,
                task: name.task,
                stage: name.stage,
            });
        }
        let text = crate::store::bounded::read_to_string(
            &path,
            crate::store::bounded::TEXT_FILE_LIMIT,
            "study benchmark file",
        )?;
        let (answers, file_problems) = parse_benchmark(&path, &text, rubric)?;
        problems.extend(file_problems);
        files.push(StudyFile {
            path,
            name,
            answers,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StudyImport { files, problems })
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StudyError> {
    let io = |source| StudyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("-benchmark.txt"))
        {
            out.push(p);
        }
    }
    Ok(())
}
