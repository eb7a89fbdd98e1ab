//! Evaluation: question sets and answer generation for base models and fine-tuned checkpoints.

pub mod answers;
