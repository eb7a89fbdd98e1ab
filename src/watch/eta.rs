//! An honest time-to-finish estimate: warm-up steps are left out of the rate, a resumed run counts only the
//! steps it trained itself, paused time is not counted, and progress never reads 100% before the end.
//!
//! Feed it wall-clock seconds (for instance the `ts` of logged events) with [`Eta::start`], [`Eta::step`],
//! [`Eta::pause`]; read [`Eta::remaining_secs`]. Pure: no clock of its own.

/// Steps after each (re)start whose time is not used for the rate (compilation, allocation, caches).
pub const WARMUP_STEPS: u64 = 2;

/// One stretch of uninterrupted training.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    /// Warm-up steps still to be seen before timing starts.
    warm_left: u64,
    /// Step and time where timing started.
    anchor: Option<(u64, f64)>,
    last: Option<(u64, f64)>,
}

/// Estimated remaining time of a run, from timed steps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Eta {
    total_steps: u64,
    last_step: u64,
    /// Steps and seconds of closed segments (before a pause or a restart).
    timed_steps: u64,
    timed_secs: f64,
    segment: Option<Segment>,
}

impl Eta {
    pub fn new() -> Self {
        Eta::default()
    }

    /// A (re)start at `start_step` (0 when fresh, the checkpoint's step when resuming).
    pub fn start(&mut self, start_step: u64, total_steps: u64) {
        self.close_segment();
        self.total_steps = total_steps;
        self.last_step = start_step;
        self.segment = Some(Segment {
            warm_left: WARMUP_STEPS,
            anchor: None,
            last: None,
        });
    }

    /// Training continues after a pause: timing restarts at the next step, with no warm-up.
    pub fn resume(&mut self) {
        self.close_segment();
        self.segment = Some(Segment {
            warm_left: 0,
            anchor: None,
            last: None,
        });
    }

    /// Training pauses (or stops): the time until the next start or resume is not counted.
    pub fn pause(&mut self) {
        self.close_segment();
    }

    /// Step `step` completed at wall-clock time `t` (seconds).
    pub fn step(&mut self, step: u64, t: f64) {
        self.last_step = step;
        let Some(seg) = self.segment.as_mut() else {
            self.segment = Some(Segment {
                warm_left: 0,
                anchor: Some((step, t)),
                last: None,
            });
            return;
        };
        if seg.warm_left > 0 {
            seg.warm_left -= 1;
            if seg.warm_left == 0 {
                seg.anchor = Some((step, t));
            }
            return;
        }
        match seg.anchor {
            None => seg.anchor = Some((step, t)),
            Some(_) => seg.last = Some((step, t)),
        }
    }

    /// Timed steps per second, once at least one step after warm-up has been timed.
    pub fn steps_per_sec(&self) -> Option<f64> {
        let (mut steps, mut secs) = (self.timed_steps, self.timed_secs);
        if let Some((s, t)) = self.segment.as_ref().and_then(Segment::timed) {
            steps += s;
            secs += t;
        }
        (steps > 0 && secs > 0.0).then(|| steps as f64 / secs)
    }

    /// Seconds left, or `None` while no rate is known yet.
    pub fn remaining_secs(&self) -> Option<f64> {
        let left = self.total_steps.saturating_sub(self.last_step);
        if left == 0 {
            return Some(0.0);
        }
        self.steps_per_sec().map(|r| left as f64 / r)
    }

    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    fn close_segment(&mut self) {
        if let Some((s, t)) = self.segment.take().as_ref().and_then(Segment::timed) {
            self.timed_steps += s;
            self.timed_secs += t;
        }
    }
}

impl Segment {
    fn timed(&self) -> Option<(u64, f64)> {
        let ((s0, t0), (s1, t1)) = (self.anchor?, self.last?);
        (s1 > s0 && t1 > t0).then(|| (s1 - s0, t1 - t0))
    }
}

/// Fraction done for a progress bar: `step / total`, held below 1.0 until the run is really `finished`.
pub fn progress_fraction(step: u64, total: u64, finished: bool) -> f64 {
    if finished {
        return 1.0;
    }
    if total == 0 {
        return 0.0;
    }
    (step as f64 / total as f64).clamp(0.0, 0.999)
}

/// A short human duration: `45s`, `3m05s`, `2h07m`, `3d04h`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_left_out_of_the_rate() {
        let mut eta = Eta::new();
        eta.start(0, 100);
        // Two slow warm-up steps (10 s each), then 1 step per second.
        eta.step(1, 10.0);
        eta.step(2, 20.0);
        assert_eq!(eta.remaining_secs(), None, "no rate before a timed step");
        for s in 3..=12 {
            eta.step(s, 20.0 + (s - 2) as f64);
        }
        let left = eta.remaining_secs().unwrap();
        assert!((left - 88.0).abs() < 1e-9, "{left}");
    }

    #[test]
    fn a_resumed_run_counts_only_its_own_steps() {
        let mut eta = Eta::new();
        eta.start(500, 1000);
        // Resumed at step 500 at t=1000; 2 warm-up steps, then 2 steps per second.
        eta.step(501, 1005.0);
        eta.step(502, 1006.0);
        for i in 1..=10u64 {
            eta.step(502 + i, 1006.0 + i as f64 * 0.5);
        }
        assert!((eta.steps_per_sec().unwrap() - 2.0).abs() < 1e-9);
        assert!((eta.remaining_secs().unwrap() - 244.0).abs() < 1e-9);
    }

    #[test]
    fn paused_time_is_not_counted() {
        let mut eta = Eta::new();
        eta.start(0, 100);
        for s in 1..=12 {
            eta.step(s, s as f64);
        }
        eta.pause();
        eta.resume();
        // An hour later, training continues at the same pace.
        for s in 13..=22 {
            eta.step(s, 3600.0 + s as f64);
        }
        assert!(
            (eta.steps_per_sec().unwrap() - 1.0).abs() < 1e-9,
            "{:?}",
            eta.steps_per_sec()
        );
        assert!((eta.remaining_secs().unwrap() - 78.0).abs() < 1e-9);
    }

    #[test]
    fn progress_never_reads_full_before_the_end() {
        assert_eq!(progress_fraction(100, 100, false), 0.999);
        assert_eq!(progress_fraction(100, 100, true), 1.0);
        assert_eq!(progress_fraction(0, 0, false), 0.0);
        assert_eq!(progress_fraction(50, 100, false), 0.5);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(45.2), "45s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(7620.0), "2h07m");
        assert_eq!(format_duration(273_600.0), "3d04h");
        assert_eq!(format_duration(f64::NAN), "?");
    }
}
