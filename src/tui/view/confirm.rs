//! The y/n dialog before the dashboard cancels or resubmits a cell's cluster job.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::cluster::poll::Request;
use crate::tui::app::App;
use crate::tui::keymap::{self, Context};
use crate::tui::theme::Theme;

use super::help::centered;

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
    let mut lines = vec![Line::from(question(app, request)), Line::from("")];
    for b in keymap::bindings(Context::Confirm).filter(|b| b.hint.is_some()) {
        lines.push(Line::from(vec![
            Span::styled(format!(" {}  ", keymap::key_label(b)), theme.key()),
            Span::raw(b.describe),
        ]));
    }
    let area = centered(frame.area(), 64, lines.len() as u16 + 4);
    let block = Block::bordered()
        .border_set(theme.border())
        .title(Line::styled(" SLURM ", theme.title()));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        area,
    );
}
