//! A small line-plot widget: braille dots (2x4 per cell) or, in ASCII mode, one character per cell.
//! Each column shows the span of its points joined to the previous column, so noisy curves stay honest.
//! Cost is O(points + cells): the series it draws are already bounded by `watch::Series`. Stage marks, where
//! given, are a guide line through the plot and a tick and label on the step axis.

use std::ops::Range;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Widget};

use crate::tui::theme::Theme;

use super::stage_marks::{StageMark, place};

/// One curve of a plot.
pub struct Curve<'a> {
    pub points: &'a [(f64, f64)],
    pub style: Style,
    /// The character drawn in ASCII mode.
    pub ascii: char,
}

/// A bordered plot of some curves against steps.
pub struct Plot<'a> {
    pub title: Line<'a>,
    pub curves: Vec<Curve<'a>>,
    pub theme: Theme,
    pub y_label: fn(f64) -> String,
    /// Steps to mark (the loss plot's epoch ends); those outside the plotted steps are left out.
    pub marks: &'a [StageMark],
}

struct Bounds {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Widget for Plot<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered()
            .border_set(self.theme.border())
            .title(self.title.clone());
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(b) = bounds(&self.curves) else {
            if inner.height > 0 {
                buf.set_string(inner.x + 1, inner.y, "no data yet", self.theme.dim());
            }
            return;
        };
        let top = (self.y_label)(b.y1);
        let bottom = (self.y_label)(b.y0);
        let label_w = top.chars().count().max(bottom.chars().count()) as u16;
        if inner.height < 3 || inner.width < label_w + 8 {
            return;
        }
        let plot = Rect {
            x: inner.x + label_w + 1,
            y: inner.y,
            width: inner.width - label_w - 1,
            height: inner.height - 1,
        };
        let taken = self.axes(inner, plot, &b, &top, &bottom, buf);
        self.draw_marks(plot, &b, inner.x..plot.x + plot.width, taken, buf);
        for curve in &self.curves {
            if self.theme.ascii {
                draw_ascii(curve, &b, plot, buf);
            } else {
                draw_braille(curve, &b, plot, buf);
            }
        }
    }
}

impl Plot<'_> {
    /// Draws the axes; returns the columns of the step axis its step numbers use.
    fn axes(
        &self,
        inner: Rect,
        plot: Rect,
        b: &Bounds,
        top: &str,
        bottom: &str,
        buf: &mut Buffer,
    ) -> Vec<Range<u16>> {
        let dim = self.theme.dim();
        let (vertical, horizontal, corner) = if self.theme.ascii {
            ("|", "-", "+")
        } else {
            ("│", "─", "└")
        };
        let axis_x = plot.x - 1;
        for y in plot.y..plot.y + plot.height {
            buf.set_string(axis_x, y, vertical, dim);
        }
        let axis_y = plot.y + plot.height;
        buf.set_string(axis_x, axis_y, corner, dim);
        for x in plot.x..plot.x + plot.width {
            buf.set_string(x, axis_y, horizontal, dim);
        }
        buf.set_string(axis_x - top.chars().count() as u16, plot.y, top, dim);
        buf.set_string(
            axis_x - bottom.chars().count() as u16,
            plot.y + plot.height - 1,
            bottom,
            dim,
        );
        let first = format!("{}", b.x0 as u64);
        let last = format!("{}", b.x1 as u64);
        buf.set_string(inner.x, axis_y, &first, dim);
        let mut taken: Vec<Range<u16>> =
            std::iter::once(inner.x..inner.x + first.len() as u16).collect();
        let last_x = (plot.x + plot.width).saturating_sub(last.len() as u16);
        if last_x > inner.x + first.len() as u16 {
            buf.set_string(last_x, axis_y, &last, dim);
            taken.push(last_x..last_x + last.len() as u16);
        }
        taken
    }

    /// Each mark inside the plotted steps: a dim guide through the plot (curves draw over it), a tick on the
    /// step axis and its label beside the tick where there is room.
    fn draw_marks(
        &self,
        plot: Rect,
        b: &Bounds,
        axis: Range<u16>,
        taken: Vec<Range<u16>>,
        buf: &mut Buffer,
    ) {
        let (guide, tick) = if self.theme.ascii {
            (":", "+")
        } else {
            ("┊", "┴")
        };
        let x_scale = f64::from(plot.width - 1) / (b.x1 - b.x0);
        let marks: Vec<(u16, &StageMark)> = self
            .marks
            .iter()
            .filter(|m| (b.x0..=b.x1).contains(&m.step))
            .map(|m| (plot.x + ((m.step - b.x0) * x_scale).round() as u16, m))
            .collect();
        for &(col, _) in &marks {
            for y in plot.y..plot.y + plot.height {
                buf.set_string(col, y, guide, self.theme.dim());
            }
        }
        let style = Style::new().fg(Color::Yellow);
        let axis_y = plot.y + plot.height;
        for p in place(&marks, axis, taken) {
            if let Some(x) = p.tick {
                buf.set_string(x, axis_y, tick, style);
            }
            if let Some((x, text)) = p.label {
                buf.set_string(x, axis_y, text, style);
            }
        }
    }
}

fn bounds(curves: &[Curve]) -> Option<Bounds> {
    let mut it = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|p| p.1.is_finite());
    let first = it.next()?;
    let mut b = Bounds {
        x0: first.0,
        x1: first.0,
        y0: first.1,
        y1: first.1,
    };
    for &(x, y) in it {
        b.x0 = b.x0.min(x);
        b.x1 = b.x1.max(x);
        b.y0 = b.y0.min(y);
        b.y1 = b.y1.max(y);
    }
    if b.y1 - b.y0 < f64::EPSILON * b.y1.abs().max(1.0) {
        let pad = (b.y1.abs() * 0.05).max(1e-9);
        b.y0 -= pad;
        b.y1 += pad;
    }
    if b.x1 <= b.x0 {
        b.x1 = b.x0 + 1.0;
    }
    Some(b)
}

/// For each of `cols` columns, the lowest and highest row (0 = top) the curve passes through: every
/// pair of neighbouring points is joined by a straight segment, so sparse and dense curves both read as lines.
fn column_spans(
    points: &[(f64, f64)],
    b: &Bounds,
    cols: usize,
    rows: usize,
) -> Vec<Option<(usize, usize)>> {
    let mut spans: Vec<Option<(usize, usize)>> = vec![None; cols];
    let x_scale = (cols - 1) as f64 / (b.x1 - b.x0);
    let y_scale = (rows - 1) as f64 / (b.y1 - b.y0);
    let to_grid = |&(x, y): &(f64, f64)| ((x - b.x0) * x_scale, (b.y1 - y) * y_scale);
    let mut mark = |c: usize, r0: f64, r1: f64| {
        let (lo, hi) = (
            r0.min(r1).round().max(0.0) as usize,
            r0.max(r1).round().max(0.0) as usize,
        );
        let (lo, hi) = (lo.min(rows - 1), hi.min(rows - 1));
        let c = c.min(cols - 1);
        spans[c] = Some(match spans[c] {
            None => (lo, hi),
            Some((a, z)) => (a.min(lo), z.max(hi)),
        });
    };
    let mut prev: Option<(f64, f64)> = None;
    for p in points.iter().filter(|p| p.1.is_finite()).map(to_grid) {
        match prev {
            None => mark(p.0.round() as usize, p.1, p.1),
            Some(q) => {
                let (c0, c1) = (q.0.round() as usize, p.0.round() as usize);
                if c0 >= c1 {
                    mark(c1, q.1, p.1);
                } else {
                    let slope = (p.1 - q.1) / (p.0 - q.0);
                    let row_at = |x: f64| q.1 + slope * (x.clamp(q.0, p.0) - q.0);
                    for c in c0..=c1 {
                        mark(c, row_at(c as f64 - 0.5), row_at(c as f64 + 0.5));
                    }
                }
            }
        }
        prev = Some(p);
    }
    spans
}

fn draw_ascii(curve: &Curve, b: &Bounds, plot: Rect, buf: &mut Buffer) {
    let (cols, rows) = (plot.width as usize, plot.height as usize);
    let mut glyph = [0u8; 4];
    let g: &str = curve.ascii.encode_utf8(&mut glyph);
    for (c, span) in column_spans(curve.points, b, cols, rows)
        .into_iter()
        .enumerate()
    {
        let Some((lo, hi)) = span else { continue };
        for r in lo..=hi {
            buf.set_string(plot.x + c as u16, plot.y + r as u16, g, curve.style);
        }
    }
}

fn draw_braille(curve: &Curve, b: &Bounds, plot: Rect, buf: &mut Buffer) {
    const DOTS: [[u32; 4]; 2] = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]];
    let (cols, rows) = (plot.width as usize * 2, plot.height as usize * 4);
    let mut cells = vec![0u32; plot.width as usize * plot.height as usize];
    for (c, span) in column_spans(curve.points, b, cols, rows)
        .into_iter()
        .enumerate()
    {
        let Some((lo, hi)) = span else { continue };
        for r in lo..=hi {
            cells[(r / 4) * plot.width as usize + c / 2] |= DOTS[c % 2][r % 4];
        }
    }
    for (i, bits) in cells.into_iter().enumerate().filter(|(_, bits)| *bits != 0) {
        let (x, y) = (
            (i % plot.width as usize) as u16,
            (i / plot.width as usize) as u16,
        );
        if let Some(ch) = char::from_u32(0x2800 + bits) {
            buf[(plot.x + x, plot.y + y)]
                .set_char(ch)
                .set_style(curve.style);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::style::Color;

    fn render(ascii: bool, points: &[(f64, f64)], w: u16, h: u16) -> Vec<String> {
        render_marked(ascii, points, &[], w, h)
    }

    fn render_marked(
        ascii: bool,
        points: &[(f64, f64)],
        marks: &[StageMark],
        w: u16,
        h: u16,
    ) -> Vec<String> {
        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
        let plot = Plot {
            title: Line::from("loss"),
            curves: vec![Curve {
                points,
                style: Style::new().fg(Color::Cyan),
                ascii: '*',
            }],
            theme: Theme::new(ascii),
            y_label: |v| format!("{v:.1}"),
            marks,
        };
        plot.render(buf.area, &mut buf);
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect())
            .collect()
    }

    #[test]
    fn a_falling_line_goes_from_top_left_to_bottom_right_in_ascii() {
        let pts: Vec<_> = (0..=100).map(|i| (i as f64, 100.0 - i as f64)).collect();
        let lines = render(true, &pts, 30, 10);
        assert!(lines.iter().all(|l| l.is_ascii()), "{lines:#?}");
        assert!(lines[1].starts_with("|100.0|*"), "{lines:#?}");
        assert_eq!(lines[7].chars().nth(28), Some('*'), "{lines:#?}");
        assert!(lines[8].starts_with("|0"), "{lines:#?}");
        assert!(lines[8].contains("100"), "{lines:#?}");
    }

    #[test]
    fn braille_mode_draws_braille_cells() {
        let pts: Vec<_> = (0..50).map(|i| (i as f64, (i % 5) as f64)).collect();
        let lines = render(false, &pts, 30, 8);
        let braille = lines
            .iter()
            .flat_map(|l| l.chars())
            .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
            .count();
        assert!(braille > 20, "{lines:#?}");
    }

    #[test]
    fn sparse_points_are_joined_into_a_line() {
        let pts = [(0.0, 0.0), (10.0, 10.0)];
        let lines = render(true, &pts, 30, 10);
        let stars: usize = lines.iter().map(|l| l.matches('*').count()).sum();
        assert!(
            stars >= 22,
            "every column between the two points is drawn: {lines:#?}"
        );
    }

    #[test]
    fn stage_marks_are_ticked_on_the_step_axis_with_a_guide_and_their_label() {
        let pts: Vec<_> = (0..=100).map(|i| (i as f64, 5.0)).collect();
        let mark = |step: f64, stage: &str, score| StageMark {
            step,
            stage: stage.into(),
            score,
        };
        let marks = [
            mark(50.0, "e1", Some(3.667)),
            mark(100.0, "e2", None),
            mark(150.0, "e3", None),
        ];
        let lines = render_marked(true, &pts, &marks, 40, 8);
        // Plot columns 6..=38 (label "5.3" and the axis take 5); step 50 is column 6 + 16.
        let axis = &lines[6];
        assert_eq!(axis.chars().nth(22), Some('+'), "{lines:#?}");
        assert!(axis.contains("+e1 3.67"), "{lines:#?}");
        let guide: Vec<_> = lines[1..6].iter().map(|l| l.chars().nth(22)).collect();
        assert_eq!(
            guide,
            [Some(':'), Some(':'), Some('*'), Some(':'), Some(':')],
            "a guide above the tick, under the curve: {lines:#?}"
        );
        assert!(
            axis.ends_with("e2 100|"),
            "the last epoch ends at the last step: {lines:#?}"
        );
        assert!(!axis.contains("e3"), "past the plotted steps: {lines:#?}");
    }

    #[test]
    fn an_empty_series_says_so() {
        let lines = render(true, &[], 30, 6);
        assert!(lines[1].contains("no data yet"), "{lines:#?}");
    }
}
