//! Learning-rate schedules (linear, cosine, constant) with warmup, as a pure function of the step.

use serde::{Deserialize, Serialize};

use super::settings::{ScheduleKind, Warmup};

/// The learning rate of every step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    pub fn new(kind: ScheduleKind, base_lr: f64, warmup: Warmup, total_steps: u64) -> Self {
        let warmup_steps = match warmup {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
        }
        .min(total_steps);
        Schedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// Learning rate used by optimizer step `step` (1-based), as Hugging Face's schedulers compute it.
    pub fn lr(&self, step: u64) -> f64 {
        let s = step.saturating_sub(1) as f64;
        let warm = self.warmup_steps as f64;
        if s < warm {
            return self.base_lr * s / warm.max(1.0);
        }
        let decay_steps = (self.total_steps as f64 - warm).max(1.0);
        let progress = ((s - warm) / decay_steps).clamp(0.0, 1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_with_warmup_ratio_rises_then_falls_to_zero() {
        let s = Schedule::new(ScheduleKind::Linear, 1.0, Warmup::Ratio(0.1), 100);
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(1), 0.0);
        assert!((s.lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(11), 1.0);
        assert!((s.lr(56) - 0.5).abs() < 1e-12);
        assert!(s.lr(100) > 0.0 && s.lr(100) < 0.02);
    }

    #[test]
    fn cosine_and_constant_shapes() {
        let c = Schedule::new(ScheduleKind::Cosine, 2.0, Warmup::Steps(0), 10);
        assert_eq!(c.lr(1), 2.0);
        assert!((c.lr(6) - 1.0).abs() < 1e-12);
        let k = Schedule::new(ScheduleKind::Constant, 3.0, Warmup::Steps(2), 10);
        assert_eq!((k.lr(2), k.lr(3), k.lr(10)), (1.5, 3.0, 3.0));
    }
}
