//! One task's panel of the figure: a title and the legend of the stages on top, then the bars (a group per
//! model along x, a bar per stage in it, height the mean score on the rubric's scale) with the 95%
//! interval as an error bar where one was computed.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::FAMILY;
use crate::rating::results::{Cell, TaskResults};
use crate::rating::rubric::Rubric;

/// The stages' colours in order (base, e1, ...), from Okabe and Ito's palette for colour-blind readers.
const STAGE_COLORS: [RGBColor; 7] = [
    RGBColor(153, 153, 153),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];

/// The strip above the plot that holds the title and the legend.
const HEADER: u32 = 40;
const MARGIN: u32 = 16;
/// Room left of the plot for the score labels and the y axis' name.
const Y_AREA: u32 = 64;
/// Pixels per bar, and between two groups, at least.
const BAR: u32 = 26;
const GROUP_GAP: u32 = 22;
/// A model name's width per character, at the label size (DejaVu Sans 14 px is about 8 px wide).
const LABEL_CHAR: u32 = 8;
/// A group's width in x units (x is an integer axis: the key points of a float axis have no labels).
const GROUP: i32 = 1000;
/// The part of a group its bars take; the rest is the gap between groups.
const GROUP_FILL: i32 = 800;

/// The colour of the `i`th stage's bars.
pub fn stage_color(i: usize) -> RGBColor {
    STAGE_COLORS[i % STAGE_COLORS.len()]
}

/// The panel's width in pixels: every group wide enough for its bars and for its model's name.
pub fn width(task: &TaskResults) -> u32 {
    let bars = task.stages.len() as u32 * BAR + GROUP_GAP;
    let longest = task.models.iter().map(|m| m.chars().count()).max();
    let name = longest.unwrap_or(0) as u32 * LABEL_CHAR + 12;
    (2 * MARGIN + Y_AREA + bars.max(name) * task.models.len() as u32).max(480)
}

/// Draw `task` into `area`.
pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    task: &TaskResults,
    rubric: &Rubric,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (header, plot) = area.split_vertically(HEADER);
    draw_header(&header, task)?;
    let groups = task.models.len().max(1) as i32 * GROUP;
    let centres: Vec<i32> = (0..task.models.len() as i32)
        .map(|i| i * GROUP + GROUP / 2)
        .collect();
    let mut chart = ChartBuilder::on(&plot)
        .margin(MARGIN)
        .margin_top(4)
        .x_label_area_size(44)
        .y_label_area_size(Y_AREA)
        .build_cartesian_2d((0..groups).with_key_points(centres), rubric.min..rubric.max)?;
    let label_of = |x: &i32| {
        let i = (x / GROUP).max(0) as usize;
        task.models.get(i).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .y_labels(((rubric.max - rubric.min).round() as usize + 1).clamp(2, 11))
        .x_label_formatter(&label_of)
        .y_label_formatter(&|y| format!("{y}"))
        .x_desc("model")
        .y_desc(format!("score ({}-{})", rubric.min, rubric.max))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let bar_w = GROUP_FILL / task.stages.len().max(1) as i32;
    for (j, stage) in task.stages.iter().enumerate() {
        let color = stage_color(j);
        let cells: Vec<(i32, &Cell)> = task
            .models
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let left = i as i32 * GROUP + (GROUP - GROUP_FILL) / 2 + j as i32 * bar_w;
                task.cell(m, stage).map(|c| (left, c))
            })
            .collect();
        chart.draw_series(cells.iter().map(|&(left, c)| {
            let top = c.mean.clamp(rubric.min, rubric.max);
            Rectangle::new(
                [
                    (left + bar_w * 6 / 100, rubric.min),
                    (left + bar_w * 94 / 100, top),
                ],
                color.filled(),
            )
        }))?;
        chart.draw_series(cells.iter().filter_map(|&(left, c)| {
            let (lo, hi) = c.ci95?;
            Some(ErrorBar::new_vertical(
                left + bar_w / 2,
                lo,
                c.mean,
                hi,
                BLACK.stroke_width(1),
                8,
            ))
        }))?;
    }
    Ok(())
}

/// The task's name on the left; on the right each stage's colour (a dot) and name.
fn draw_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    task: &TaskResults,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let title = (FAMILY, 20).into_font();
    area.draw(&Text::new(
        task.task.clone(),
        (MARGIN as i32 + 8, 12),
        title,
    ))?;
    let style = TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let (width, _) = area.dim_in_pixel();
    let mut entries = Vec::new();
    for (j, stage) in task.stages.iter().enumerate() {
        let (w, _) = area.estimate_text_size(stage, &style)?;
        entries.push((stage_color(j), stage, w as i32));
    }
    let total: i32 = entries.iter().map(|(_, _, w)| 22 + w + 14).sum();
    let mut x = width as i32 - MARGIN as i32 - total;
    for (color, stage, w) in entries {
        area.draw(&Circle::new((x + 6, 22), 6, color.filled()))?;
        area.draw(&Text::new(stage.clone(), (x + 18, 22), style.clone()))?;
        x += 22 + w + 14;
    }
    Ok(())
}
