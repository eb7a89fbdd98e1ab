//! What `qlab run` shows while training: a progress bar per run on a terminal, or one plain line every few
//! steps (and every lifecycle event) otherwise. The ETA leaves out the first step (warm-up) and counts only
//! the steps of this process, so a resumed run's ETA is not skewed.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use qlab::sweep::events::{RunEvent, StepMetrics};

/// Step timing of one run in this process.
#[derive(Debug, Default, Clone)]
pub struct RunClock {
    total: u64,
    warmed_up: bool,
    timed_steps: u64,
    timed_secs: f64,
}

impl RunClock {
    fn started(total: u64) -> Self {
        RunClock {
            total,
            ..RunClock::default()
        }
    }

    /// Count a step's time, except the first one this process runs (warm-up).
    fn step(&mut self, m: &StepMetrics) {
        if self.warmed_up {
            self.timed_steps += 1;
            self.timed_secs += m.step_s;
        }
        self.warmed_up = true;
    }

    /// Remaining time after `step`, once a step past warm-up has been timed.
    pub fn eta(&self, step: u64) -> Option<Duration> {
        (self.timed_steps > 0).then(|| {
            let per_step = self.timed_secs / self.timed_steps as f64;
            Duration::from_secs_f64(per_step * self.total.saturating_sub(step) as f64)
        })
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_eta(eta: Option<Duration>) -> String {
    let Some(d) = eta else {
        return "--".to_string();
    };
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

fn lifecycle_line(run: &str, e: &RunEvent) -> Option<String> {
    Some(match e {
        RunEvent::ModelLoading { device } => format!("[{run}] loading the model on {device}"),
        RunEvent::RunStarted {
            total_steps,
            start_step: 0,
            device,
            ..
        } => {
            format!("[{run}] started: {total_steps} steps on {device}")
        }
        RunEvent::RunStarted {
            total_steps,
            start_step,
            device,
            ..
        } => {
            format!("[{run}] resumed at step {start_step}/{total_steps} on {device}")
        }
        RunEvent::CheckpointSaved {
            step,
            stage,
            bytes,
            secs,
        } => format!(
            "[{run}] checkpoint{} at step {step}: {:.1} MiB in {secs:.2}s",
            stage.as_ref().map(|s| format!(" {s}")).unwrap_or_default(),
            *bytes as f64 / 1048576.0
        ),
        RunEvent::EpochDone { epoch, step } => format!("[{run}] epoch {epoch} done at step {step}"),
        RunEvent::Paused { step } => format!("[{run}] paused at step {step}"),
        RunEvent::Resumed { step } => format!("[{run}] resumed at step {step}"),
        RunEvent::RunFinished { step, secs } => {
            format!("[{run}] finished: {step} steps in {secs:.0}s")
        }
        RunEvent::RunFailed { step, reason } => {
            format!(
                "[{run}] FAILED{}: {reason}",
                step.map(|s| format!(" after step {s}")).unwrap_or_default()
            )
        }
        RunEvent::Interrupted { step, reason } => {
            format!("[{run}] interrupted ({reason}); resumable from step {step}")
        }
        _ => return None,
    })
}

fn step_text(m: &StepMetrics, clock: &RunClock) -> String {
    format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s ETA {}",
        m.loss,
        m.lr,
        m.tokens_per_s,
        format_eta(clock.eta(m.step))
    )
}

/// Plain-text progress: lifecycle events and every `every`-th step.
pub struct PlainProgress {
    every: u64,
    clocks: HashMap<String, RunClock>,
}

impl PlainProgress {
    pub fn new(every: u64) -> Self {
        PlainProgress {
            every: every.max(1),
            clocks: HashMap::new(),
        }
    }

    /// The line to print for this event, if any.
    pub fn line(&mut self, run: &str, e: &RunEvent) -> Option<String> {
        match e {
            RunEvent::RunStarted { total_steps, .. } => {
                self.clocks
                    .insert(run.to_string(), RunClock::started(*total_steps));
            }
            RunEvent::Step(m) => {
                let clock = self.clocks.entry(run.to_string()).or_default();
                clock.step(m);
                if m.step % self.every == 0 || m.step == clock.total {
                    return Some(format!(
                        "[{run}] step {}/{} {}",
                        m.step,
                        clock.total,
                        step_text(m, clock)
                    ));
                }
                return None;
            }
            _ => {}
        }
        lifecycle_line(run, e)
    }
}

/// Progress bars, one per run, on a terminal.
pub struct BarProgress {
    multi: MultiProgress,
    bars: HashMap<String, (ProgressBar, RunClock)>,
}

impl BarProgress {
    pub fn new() -> Self {
        BarProgress {
            multi: MultiProgress::new(),
            bars: HashMap::new(),
        }
    }

    pub fn event(&mut self, run: &str, e: &RunEvent) {
        if let RunEvent::RunStarted {
            total_steps,
            start_step,
            device,
            ..
        } = e
        {
            let bar = self.multi.add(ProgressBar::new(*total_steps));
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{run} on {device}"));
            bar.set_position(*start_step);
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bars
                .insert(run.to_string(), (bar, RunClock::started(*total_steps)));
        }
        let Some((bar, clock)) = self.bars.get_mut(run) else {
            return;
        };
        match e {
            RunEvent::Step(m) => {
                clock.step(m);
                bar.set_position(m.step);
                bar.set_message(step_text(m, clock));
            }
            RunEvent::RunFinished { .. } => bar.finish(),
            RunEvent::RunFailed { .. } | RunEvent::Interrupted { .. } => bar.abandon(),
            _ => {}
        }
        if !matches!(e, RunEvent::Step(_) | RunEvent::RunStarted { .. })
            && let Some(line) = lifecycle_line(run, e)
        {
            let _ = self.multi.println(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64, secs: f64) -> RunEvent {
        RunEvent::Step(StepMetrics {
            step: n,
            epoch: 0.0,
            loss: 1.5,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens_per_s: 100.0,
            step_s: secs,
            rss_mib: 1.0,
        })
    }

    #[test]
    fn plain_lines_every_n_steps_with_an_eta_that_skips_warm_up() {
        let mut p = PlainProgress::new(2);
        let started = RunEvent::RunStarted {
            total_steps: 10,
            start_step: 4,
            device: "cpu".into(),
            pid: 1,
        };
        assert_eq!(
            p.line("r", &started).unwrap(),
            "[r] resumed at step 4/10 on cpu"
        );
        assert_eq!(p.line("r", &step(5, 30.0)), None);
        let line = p.line("r", &step(6, 2.0)).unwrap();
        assert_eq!(
            line,
            "[r] step 6/10 loss 1.5000 lr 1.00e-4 100 tok/s ETA 8s"
        );
        assert!(p.line("r", &step(10, 2.0)).unwrap().contains("ETA 0s"));
        let failed = RunEvent::RunFailed {
            step: Some(3),
            reason: "boom".into(),
        };
        assert_eq!(
            p.line("r", &failed).unwrap(),
            "[r] FAILED after step 3: boom"
        );
    }

    #[test]
    fn eta_formats() {
        assert_eq!(format_eta(None), "--");
        assert_eq!(format_eta(Some(Duration::from_secs(185))), "3m05s");
        assert_eq!(format_eta(Some(Duration::from_secs(3720))), "1h02m");
    }
}
