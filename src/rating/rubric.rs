//! The rubric: which criteria a rater scores and which values a score may take.

use serde::{Deserialize, Serialize};

use super::RatingError;

/// Criteria and scale of a rating; `step` 0.5 allows half points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rubric {
    pub criteria: Vec<String>,
    #[serde(default)]
    pub min: f64,
    #[serde(default = "default_max")]
    pub max: f64,
    #[serde(default = "default_step")]
    pub step: f64,
}

fn default_max() -> f64 {
    5.0
}

fn default_step() -> f64 {
    1.0
}

impl Default for Rubric {
    /// The study's rubric (the config's default): three criteria, integers 0 to 5.
    fn default() -> Self {
        Rubric::from(&crate::config::RubricSection::default())
    }
}

impl Rubric {
    /// Check that the rubric itself makes sense (non-empty, distinct criteria, a scale that steps evenly).
    pub fn validate(&self) -> Result<(), RatingError> {
        let bad = |why: String| Err(RatingError::Rubric(why));
        if self.criteria.is_empty() {
            return bad("at least one criterion is needed".into());
        }
        for (i, c) in self.criteria.iter().enumerate() {
            if c.trim().is_empty() {
                return bad(format!("criterion {} has an empty name", i + 1));
            }
            if self.criteria[..i].contains(c) {
                return bad(format!("criterion {c:?} is listed twice"));
            }
        }
        if !(self.min.is_finite() && self.max.is_finite() && self.min < self.max) {
            return bad(format!(
                "min ({}) must be below max ({})",
                self.min, self.max
            ));
        }
        if !(self.step == 1.0 || self.step == 0.5) {
            return bad(format!("step must be 1 or 0.5, got {}", self.step));
        }
        let steps = (self.max - self.min) / self.step;
        if (steps - steps.round()).abs() > 1e-9 {
            return bad(format!(
                "max - min ({}) is not a whole number of steps of {}",
                self.max - self.min,
                self.step
            ));
        }
        Ok(())
    }

    /// Whether `value` lies on the scale (inside [min, max] and on a step).
    pub fn accepts(&self, value: f64) -> bool {
        if !(value >= self.min && value <= self.max) {
            return false;
        }
        let k = (value - self.min) / self.step;
        (k - k.round()).abs() < 1e-9
    }

    /// Whether any number inside [min, max] is kept (used by the study import, which keeps the study's 4.5).
    pub fn in_range(&self, value: f64) -> bool {
        value.is_finite() && value >= self.min && value <= self.max
    }

    /// Position of a criterion by name.
    pub fn index_of(&self, criterion: &str) -> Option<usize> {
        self.criteria.iter().position(|c| c == criterion)
    }

    /// The score a digit key gives: `digit` itself, plus a half when `half` is asked and the rubric allows it.
    pub fn score_for_digit(&self, digit: u32, half: bool) -> Option<f64> {
        let v = f64::from(digit) + if half && self.step == 0.5 { 0.5 } else { 0.0 };
        self.accepts(v).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_studys_rubric() {
        let r = Rubric::default();
        r.validate().unwrap();
        assert_eq!(
            r.criteria,
            ["Correct Answer", "Correct Reasoning", "Helpfulness"]
        );
        assert!(r.accepts(0.0) && r.accepts(5.0));
        assert!(!r.accepts(4.5) && !r.accepts(6.0) && !r.accepts(-1.0) && !r.accepts(f64::NAN));
        assert!(r.in_range(4.5) && !r.in_range(55.0));
        assert_eq!(r.score_for_digit(3, true), Some(3.0));
        assert_eq!(r.score_for_digit(7, false), None);
    }

    #[test]
    fn half_points_when_configured() {
        let r: Rubric = toml::from_str("criteria = [\"Overall\"]\nstep = 0.5").unwrap();
        r.validate().unwrap();
        assert!(r.accepts(4.5));
        assert_eq!(r.score_for_digit(4, true), Some(4.5));
        assert_eq!(r.score_for_digit(5, true), None);
    }

    #[test]
    fn bad_rubrics_say_what_is_wrong() {
        let mut r = Rubric::default();
        r.criteria.push("Helpfulness".into());
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let r = Rubric {
            step: 0.3,
            ..Rubric::default()
        };
        assert!(r.validate().unwrap_err().to_string().contains("step"));
        let r = Rubric {
            criteria: vec![],
            ..Rubric::default()
        };
        assert!(r.validate().unwrap_err().to_string().contains("criterion"));
    }
}
