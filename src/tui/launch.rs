//! Opening the dashboard on a real terminal: runtime, terminal take-over, signal forwarding, the event
//! loop, and the terminal given back however the loop ends.

use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;

use super::app::App;
use super::event_loop::{self, Exit, LoopOptions};
use super::rating_files::RatingFiles;
use super::sweep_info::SweepInfo;
use super::terminal;
use super::theme::Theme;
use super::trainer::Trainer;
use crate::rating::context::RatingContext;
use crate::store::now_secs;

/// What the dashboard is opened with.
pub struct Launch {
    pub sweep: SweepInfo,
    pub theme: Theme,
    /// This process's trainer; `None` opens a watch-only dashboard.
    pub trainer: Option<Box<dyn Trainer>>,
    /// The command that continues the sweep in the background, e.g. `qlab run CONFIG --detach`.
    pub detach_command: Option<Vec<String>>,
    /// The sweep's rating context, or why it could not be made from the config.
    pub ratings: Result<RatingContext, String>,
    /// Who rates on the Rating screen.
    pub rater: String,
    /// A SLURM sweep: submits and polls its cells' jobs.
    pub cluster: Option<std::sync::Arc<crate::cluster::submit::Submitter>>,
}

/// Run the dashboard on this process's terminal until the researcher quits.
pub fn launch(l: Launch) -> std::io::Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (sig_tx, sig_rx) = unbounded_channel();
    terminal::forward_signals(sig_tx)?;
    let opts = LoopOptions {
        theme: l.theme,
        frame_interval: Duration::from_millis(100),
        follow_interval: Duration::from_millis(200),
        detach_command: l.detach_command,
        terminate_grace: Duration::from_secs(120),
        cluster: l.cluster,
        cluster_every: Duration::from_secs(5),
    };
    let app = App::new(l.sweep, &l.rater, now_secs());
    let ratings = RatingFiles::new(l.ratings);
    let mut term = terminal::enter();
    let result = rt.block_on(event_loop::run(
        &mut term, app, l.trainer, ratings, opts, sig_rx,
    ));
    terminal::leave();
    result
}
