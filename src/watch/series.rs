//! A plot series whose memory stays bounded for any run length: the full history downsampled by halving,
//! plus a dense window of the most recent points (burn-train's scheme).

use std::collections::VecDeque;

/// Points kept for the whole history: when `2 * FULL_TARGET` are held, every other one is dropped.
pub const FULL_TARGET: usize = 250;
/// Points kept at full resolution at the end of the series.
pub const RECENT_CAP: usize = 1000;

/// An `(x, y)` series with at most `2 * FULL_TARGET + RECENT_CAP` points in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    full: Vec<(f64, f64)>,
    /// Keep one point of every `stride` pushed into `full` (doubles on each halving).
    stride: u64,
    pushed: u64,
    recent: VecDeque<(f64, f64)>,
}

impl Series {
    pub fn new() -> Self {
        Series {
            stride: 1,
            ..Default::default()
        }
    }

    /// Append a point; `x` must not decrease.
    pub fn push(&mut self, x: f64, y: f64) {
        if self.stride == 0 {
            self.stride = 1;
        }
        if self.pushed.is_multiple_of(self.stride) {
            self.full.push((x, y));
            if self.full.len() >= 2 * FULL_TARGET {
                let kept: Vec<_> = self.full.iter().copied().step_by(2).collect();
                self.full = kept;
                self.stride *= 2;
            }
        }
        self.pushed += 1;
        self.recent.push_back((x, y));
        if self.recent.len() > RECENT_CAP {
            self.recent.pop_front();
        }
    }

    /// Append a point, or replace the last one when it has the same `x` (samples taken within one step).
    pub fn set_at(&mut self, x: f64, y: f64) {
        match self.recent.back_mut() {
            Some(last) if last.0 == x => last.1 = y,
            _ => self.push(x, y),
        }
    }

    /// Points pushed since creation (not the number kept).
    pub fn len(&self) -> u64 {
        self.pushed
    }

    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    pub fn last(&self) -> Option<(f64, f64)> {
        self.recent.back().copied()
    }

    /// Points held in memory.
    pub fn kept(&self) -> usize {
        self.full.len() + self.recent.len()
    }

    /// The points to draw, in order: the downsampled history before the recent window, then the window.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let window_start = self.recent.front().map(|p| p.0).unwrap_or(f64::INFINITY);
        let mut out: Vec<(f64, f64)> = self
            .full
            .iter()
            .copied()
            .filter(|p| p.0 < window_start)
            .collect();
        out.extend(self.recent.iter().copied());
        out
    }

    /// Smallest and largest finite `y` held, or `None` when there is none.
    pub fn y_bounds(&self) -> Option<(f64, f64)> {
        self.full
            .iter()
            .chain(self.recent.iter())
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold(None, |acc, y| match acc {
                None => Some((y, y)),
                Some((lo, hi)) => Some((lo.min(y), hi.max(y))),
            })
    }

    /// First and last `x` held.
    pub fn x_bounds(&self) -> Option<(f64, f64)> {
        let first = self.full.first().or(self.recent.front())?;
        let last = self.recent.back()?;
        Some((first.0, last.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stays_bounded_for_a_million_points() {
        let mut s = Series::new();
        for i in 0..1_000_000u64 {
            s.push(i as f64, (i % 7) as f64);
        }
        assert!(s.kept() <= 2 * FULL_TARGET + RECENT_CAP, "{}", s.kept());
        assert_eq!(s.len(), 1_000_000);
        assert_eq!(s.x_bounds(), Some((0.0, 999_999.0)));
        let pts = s.points();
        assert!(
            pts.windows(2).all(|w| w[0].0 < w[1].0),
            "points are strictly increasing in x"
        );
        assert_eq!(pts.last(), Some(&(999_999.0, (999_999 % 7) as f64)));
        assert!(
            pts.len() > RECENT_CAP + FULL_TARGET / 2,
            "history before the window is kept: {}",
            pts.len()
        );
    }

    #[test]
    fn short_series_keeps_every_point_once() {
        let mut s = Series::new();
        for i in 0..10 {
            s.push(i as f64, i as f64 * 2.0);
        }
        assert_eq!(s.points().len(), 10);
        assert_eq!(s.y_bounds(), Some((0.0, 18.0)));
    }

    #[test]
    fn set_at_replaces_a_sample_of_the_same_step() {
        let mut s = Series::new();
        s.set_at(1.0, 10.0);
        s.set_at(1.0, 12.0);
        s.set_at(2.0, 5.0);
        assert_eq!(s.points(), vec![(1.0, 12.0), (2.0, 5.0)]);
    }

    #[test]
    fn non_finite_values_do_not_poison_bounds() {
        let mut s = Series::new();
        s.push(0.0, f64::NAN);
        s.push(1.0, 3.0);
        assert_eq!(s.y_bounds(), Some((3.0, 3.0)));
    }
}
