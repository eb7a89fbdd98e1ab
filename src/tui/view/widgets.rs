//! Small text pieces shared by the views: progress bars, state names, number formats.

use crate::store::RunState;
use crate::tui::app::{App, Control, Owner, RunEntry};
use crate::tui::theme::Theme;
use crate::watch::format_duration;

/// A progress bar of `width` cells.
pub fn progress_bar(theme: &Theme, fraction: f64, width: usize) -> String {
    let (full, empty) = theme.bar_glyphs();
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).floor() as usize).min(width);
    format!("{}{}", full.repeat(filled), empty.repeat(width - filled))
}

pub fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "queued",
        RunState::Training => "training",
        RunState::Evaluating => "evaluating",
        RunState::Done => "done",
        RunState::Failed => "failed",
        RunState::Interrupted => "interrupted",
    }
}

/// The state shown for a run: the logged state, plus "paused" while a live runner paused it.
pub fn run_state_label(run: &RunEntry) -> String {
    let name = state_name(run.history.state);
    if run.history.loading {
        let device = run.history.device.as_deref().unwrap_or("?");
        format!("loading model on {device}")
    } else if run.history.paused && run.history.is_active() {
        format!("{name} (paused)")
    } else {
        name.to_string()
    }
}

pub fn control_label(control: Control) -> &'static str {
    match control {
        Control::Idle => "idle",
        Control::Running => "training",
        Control::Paused => "paused",
        Control::Stopping => "stopping after checkpoint",
    }
}

pub fn owner_label(owner: Owner) -> Option<String> {
    match owner {
        Owner::Other(pid) => Some(format!("read-only, trained by pid {pid}")),
        _ => None,
    }
}

/// A run's SLURM job for the screens: `job 42 RUNNING on n1 0:42`, with `(stale)` when the scheduler could
/// not be asked at the last poll, `UNKNOWN` when it forgot the job.
pub fn job_label(app: &App, run: &RunEntry) -> Option<String> {
    let job = run.job.as_ref()?;
    let stale = app.cluster.as_ref().is_some_and(|c| c.stale.is_some());
    Some(format!(
        "job {} {}{}",
        job.job_id,
        job.state_text(),
        if stale { " (stale)" } else { "" }
    ))
}

/// A run's SLURM job in a matrix cell: `#42 RUNNING`, `#43 PENDING (Priority)`, `#44 UNKNOWN`, with a `?`
/// when stale.
pub fn job_short(app: &App, run: &RunEntry) -> Option<String> {
    let job = run.job.as_ref()?;
    let stale = app.cluster.as_ref().is_some_and(|c| c.stale.is_some());
    let state = match &job.info {
        Some(i) => match &i.reason {
            Some(r) if i.state == "PENDING" => format!("PENDING ({r})"),
            _ => i.state.clone(),
        },
        None => "UNKNOWN".into(),
    };
    Some(format!(
        "#{} {state}{}",
        job.job_id,
        if stale { "?" } else { "" }
    ))
}

pub fn percent(fraction: f64) -> String {
    format!("{:.0}%", (fraction * 100.0).floor())
}

pub fn loss(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub fn eta(run: &RunEntry) -> Option<String> {
    run.history.eta_secs().map(format_duration)
}

/// Cut `s` to at most `width` characters, marking the cut with `~`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('~');
    out
}

pub fn mib(v: f64) -> String {
    if v >= 10_240.0 {
        format!("{:.1}G", v / 1024.0)
    } else if v < 10.0 {
        format!("{v:.1}M")
    } else {
        format!("{v:.0}M")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_cuts() {
        let t = Theme::new(true);
        assert_eq!(progress_bar(&t, 0.5, 10), "#####-----");
        assert_eq!(progress_bar(&t, 0.999, 10), "#########-");
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(percent(0.999), "99%");
        assert_eq!(mib(20_480.0), "20.0G");
    }
}
