//! Training: dataset pipeline, optimizer with savable state, schedules, the trainer loop, checkpoints and resume.
