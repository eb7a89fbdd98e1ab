//! Evaluation: question sets and answer generation for base models and fine-tuned checkpoints.

pub mod answers;
pub mod bench;
pub mod evaluate;
pub mod prompts;
pub mod questions;
pub mod sources;
pub mod stages;
pub mod study_questions;

pub use questions::{Question, QuestionSet};
