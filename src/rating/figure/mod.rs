//! The results as a figure for a paper (`qlab export results --svg/--png`): per task one panel of grouped
//! bars, a group per model and a bar per stage, with 95% error bars, axis labels and a legend of the
//! stages, drawn with plotters. Text is laid out (and, in a PNG, drawn) with the bundled DejaVu Sans, so
//! the figure looks the same on a machine with no fonts installed.

mod panel;

use std::sync::OnceLock;

use plotters::prelude::*;

use super::RatingError;
use super::results::TaskResults;
use super::rubric::Rubric;

/// DejaVu Sans (assets/fonts, with its licence), the only face the figure uses.
const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
/// The family name plotters asks for: every text style of the figure uses it.
const FAMILY: &str = "sans-serif";
/// Each panel's height in pixels.
const PANEL_HEIGHT: u32 = 380;

/// The figure as an SVG document.
pub fn svg(tasks: &[TaskResults], rubric: &Rubric) -> Result<String, RatingError> {
    register_font()?;
    let tasks = &rated(tasks);
    let size = size(tasks);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(&root, tasks, rubric).map_err(encode_error)?;
        root.present().map_err(encode_error)?;
    }
    Ok(out)
}

/// The figure as a PNG image (RGB, 8 bits per channel).
pub fn png(tasks: &[TaskResults], rubric: &Rubric) -> Result<Vec<u8>, RatingError> {
    register_font()?;
    let tasks = &rated(tasks);
    let (w, h) = size(tasks);
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, tasks, rubric).map_err(encode_error)?;
        root.present().map_err(encode_error)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(encode_error)?;
    writer.write_image_data(&pixels).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(out)
}

/// The human scores only: the results also list the tasks, models and stages that only the automatic
/// check has answers for (before any rating), which would be empty panels, groups and legend entries here.
fn rated(tasks: &[TaskResults]) -> Vec<TaskResults> {
    tasks
        .iter()
        .filter(|t| !t.cells.is_empty())
        .map(|t| {
            let mut t = t.clone();
            let cells = std::mem::take(&mut t.cells);
            t.models.retain(|m| cells.iter().any(|c| &c.model == m));
            t.stages.retain(|s| cells.iter().any(|c| &c.stage == s));
            t.cells = cells;
            t
        })
        .collect()
}

/// Width and height in pixels: wide enough for the widest task's groups, one panel per task.
pub fn size(tasks: &[TaskResults]) -> (u32, u32) {
    let width = tasks.iter().map(panel::width).max().unwrap_or(480);
    (width, PANEL_HEIGHT * (tasks.len().max(1) as u32))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    tasks: &[TaskResults],
    rubric: &Rubric,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    if tasks.is_empty() {
        root.draw(&Text::new(
            "No ratings yet.",
            (20, 20),
            (FAMILY, 20).into_font(),
        ))?;
        return Ok(());
    }
    for (area, task) in root.split_evenly((tasks.len(), 1)).iter().zip(tasks) {
        panel::draw(area, task, rubric)?;
    }
    Ok(())
}

/// plotters finds the bundled face under the family name the figure asks for; registered once.
fn register_font() -> Result<(), RatingError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the bundled font DejaVuSans.ttf could not be read".to_owned())
        })
        .clone()
        .map_err(RatingError::Encode)
}

fn encode_error(e: impl std::fmt::Display) -> RatingError {
    RatingError::Encode(format!("the figure: {e}"))
}

#[cfg(test)]
mod tests;
