//! Evaluation: question sets and answer generation for base models and fine-tuned checkpoints.

pub mod questions;
pub mod study_questions;

pub use questions::{Question, QuestionSet};
