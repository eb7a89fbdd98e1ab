//! Stage marks on a plot's step axis: where each epoch ended (e1, e2, ...), with the stage's score once its
//! answers are rated, laid out so that no label covers another, a tick or the axis' own step numbers.

use std::ops::Range;

/// One epoch's end, as the Run screen marks it on the loss plot.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMark {
    pub step: f64,
    /// The stage the epoch ends: `e1`, `e2`, ...
    pub stage: String,
    /// The stage's score, once rated.
    pub score: Option<f64>,
}

impl StageMark {
    /// The label, longest first: with the score, then the stage alone.
    fn texts(&self) -> Vec<String> {
        let mut texts = Vec::with_capacity(2);
        if let Some(score) = self.score {
            texts.push(format!("{} {score:.2}", self.stage));
        }
        texts.push(self.stage.clone());
        texts
    }
}

/// Where one mark's tick and label go on the axis row.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The tick's column, unless something else is there.
    pub tick: Option<u16>,
    /// The label's first column and text, unless there is no room for it.
    pub label: Option<(u16, String)>,
}

/// Lay out marks at their columns on an axis row spanning `row`, where `taken` is already used (the step
/// numbers): each tick where nothing else is, then each label right of its tick, else left of it, else
/// without its score, else left out. Where a step number covers the tick's column, the label goes beside
/// that number, a space apart.
pub fn place(
    marks: &[(u16, &StageMark)],
    row: Range<u16>,
    mut taken: Vec<Range<u16>>,
) -> Vec<Placement> {
    let free = |r: &Range<u16>, taken: &[Range<u16>]| {
        r.start >= row.start
            && r.end <= row.end
            && taken.iter().all(|t| r.end <= t.start || r.start >= t.end)
    };
    let ticks: Vec<Option<u16>> = marks
        .iter()
        .map(|&(col, _)| free(&(col..col + 1), &taken).then_some(col))
        .collect();
    taken.extend(ticks.iter().flatten().map(|&c| c..c + 1));
    marks
        .iter()
        .zip(ticks)
        .map(|(&(col, mark), tick)| {
            let (before, after, gap) = match taken.iter().find(|t| t.contains(&col)) {
                Some(t) if tick.is_none() => (t.start, t.end, " "),
                _ => (col, col + 1, ""),
            };
            let label = mark.texts().into_iter().find_map(|text| {
                let (right, left) = (format!("{gap}{text}"), format!("{text}{gap}"));
                let w = right.chars().count() as u16;
                let right = (after..after + w, right);
                let left = before.checked_sub(w).map(|x| (x..before, left));
                [Some(right), left]
                    .into_iter()
                    .flatten()
                    .find(|(r, _)| free(r, &taken))
            });
            if let Some((r, _)) = &label {
                taken.push(r.clone());
            }
            Placement {
                tick,
                label: label.map(|(r, text)| (r.start, text)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(stage: &str, score: Option<f64>) -> StageMark {
        StageMark {
            step: 0.0,
            stage: stage.into(),
            score,
        }
    }

    #[test]
    fn a_label_goes_right_of_its_tick_with_the_score() {
        let m = mark("e1", Some(3.667));
        let p = place(&[(10, &m)], 0..40, vec![0..1, 37..40]);
        assert_eq!(p[0].tick, Some(10));
        assert_eq!(p[0].label, Some((11, "e1 3.67".into())));
    }

    #[test]
    fn a_label_with_no_room_on_the_right_goes_left_then_short_then_nowhere() {
        let m = mark("e3", Some(4.0));
        let p = place(&[(36, &m)], 0..40, vec![0..1, 37..40]);
        assert_eq!(p[0].label, Some((29, "e3 4.00".into())), "left of the tick");
        let p = place(&[(6, &m)], 0..40, vec![0..3, 7..40]);
        assert_eq!(p[0].label, Some((4, "e3".into())), "without the score");
        let p = place(&[(3, &m)], 0..40, vec![0..3, 4..40]);
        assert_eq!(
            p[0],
            Placement {
                tick: Some(3),
                label: None
            }
        );
    }

    #[test]
    fn marks_do_not_cover_each_other_or_the_step_numbers() {
        let (a, b) = (mark("e1", Some(2.5)), mark("e2", None));
        let p = place(&[(5, &a), (9, &b)], 0..20, vec![0..1, 17..20]);
        assert_eq!(
            p[0].label,
            Some((6, "e1".into())),
            "e2's tick leaves room for e1 alone"
        );
        let mut cells: Vec<Range<u16>> = vec![0..1, 17..20];
        for pl in &p {
            cells.extend(pl.tick.map(|t| t..t + 1));
            if let Some((x, text)) = &pl.label {
                cells.push(*x..*x + text.chars().count() as u16);
            }
        }
        for (i, r) in cells.iter().enumerate() {
            for s in &cells[i + 1..] {
                assert!(
                    r.end <= s.start || r.start >= s.end,
                    "{r:?} and {s:?} overlap"
                );
            }
        }
        assert_eq!(p[1].tick, Some(9));
        assert_eq!(p[1].label, Some((10, "e2".into())));
        let p = place(&[(19, &b)], 0..20, std::iter::once(17..20).collect());
        assert_eq!(p[0].tick, None, "the last step number stays");
        assert_eq!(
            p[0].label,
            Some((14, "e2 ".into())),
            "beside it, a space apart"
        );
    }
}
