//! The y/n dialog before the dashboard cancels or resubmits a cell's cluster job.

use ratatui::Frame;
use ratatui::text::Line;

use crate::cluster::poll::Request;
use crate::tui::app::App;
use crate::tui::keymap::Context;
use crate::tui::theme::Theme;

/// The question the dialog asks about `request`.
pub fn question(app: &App, request: &Request) -> String {
    let job = |run: &str| {
        app.run_index(run)
            .and_then(|i| app.runs[i].job.as_ref())
            .map(|j| format!("job {} ({})", j.job_id, j.state_text()))
    };
    match request {
        Request::Cancel { run } => format!(
            "Cancel SLURM {} of {run}? The run checkpoints and stops; R resubmits it later.",
            job(run).unwrap_or_else(|| "job".into())
        ),
        Request::Resubmit { run } => match job(run) {
            Some(j) => format!(
                "Submit {run} to SLURM again? Its last was {j}; it resumes from its newest checkpoint."
            ),
            None => {
                format!("Submit {run} to SLURM? It resumes from its newest checkpoint, if any.")
            }
        },
    }
}

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let Some(request) = &app.confirm else {
        return;
    };
    let question = vec![Line::from(question(app, request))];
    super::dialog::draw(frame, "SLURM", question, Context::Confirm, theme);
}
