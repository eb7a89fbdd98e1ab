//! Blind pairing: which of two stages is shown as A and which as B, shuffled per item, reproducibly.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::RatingError;
use super::journal::{BlindShown, QuestionRef};

/// The two stages compared on the rating screen, e.g. base vs e1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StagePair {
    pub first: String,
    pub second: String,
}

impl StagePair {
    pub fn new(first: &str, second: &str) -> Self {
        StagePair {
            first: first.to_owned(),
            second: second.to_owned(),
        }
    }
}

impl Default for StagePair {
    fn default() -> Self {
        StagePair::new("base", "e1")
    }
}

impl fmt::Display for StagePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.second)
    }
}

impl FromStr for StagePair {
    type Err = RatingError;
    /// `base-e1`, `base-e3`, `e1-e3` (any two distinct stage names joined by `-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RatingError::Pair(s.to_owned());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let valid =
            |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid(a) || !valid(b) || a == b {
            return Err(bad());
        }
        Ok(StagePair::new(a, b))
    }
}

/// Decide, reproducibly, which stage of `pair` is A for this rater, item and model.
///
/// The draw comes from a ChaCha8 stream seeded with a SHA-256 of the sweep's seed and the item, so the
/// same inputs always give the same layout while neighbouring items are independent coin flips.
pub fn blind_layout(
    seed: u64,
    rater: &str,
    model: &str,
    item: &QuestionRef,
    pair: &StagePair,
) -> BlindShown {
    let mut h = Sha256::new();
    for part in [
        rater,
        model,
        item.task.as_str(),
        item.questions.as_str(),
        item.question.as_str(),
        pair.first.as_str(),
        pair.second.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(seed.to_le_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(&digest);
    let swap = ChaCha8Rng::from_seed(key).random_bool(0.5);
    let (a, b) = if swap {
        (&pair.second, &pair.first)
    } else {
        (&pair.first, &pair.second)
    };
    BlindShown {
        a: a.clone(),
        b: b.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: usize) -> QuestionRef {
        QuestionRef {
            task: "math".into(),
            questions: "math".into(),
            question: id.to_string(),
        }
    }

    #[test]
    fn pairs_parse_and_bad_ones_are_named() {
        assert_eq!(
            "e1-e3".parse::<StagePair>().unwrap(),
            StagePair::new("e1", "e3")
        );
        assert_eq!(StagePair::default().to_string(), "base-e1");
        for bad in ["base", "base-base", "-e1", "base-e1-e3", "base e1"] {
            let err = bad.parse::<StagePair>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn layout_is_reproducible_and_shuffled_across_items() {
        let pair = StagePair::default();
        let layouts: Vec<BlindShown> = (0..200)
            .map(|i| blind_layout(7, "ann", "m", &item(i), &pair))
            .collect();
        let again: Vec<BlindShown> = (0..200)
            .map(|i| blind_layout(7, "ann", "m", &item(i), &pair))
            .collect();
        assert_eq!(layouts, again);
        let base_first = layouts.iter().filter(|l| l.a == "base").count();
        assert!(
            (70..=130).contains(&base_first),
            "base shown as A {base_first} times of 200"
        );
        for l in &layouts {
            assert!((l.a == "base" && l.b == "e1") || (l.a == "e1" && l.b == "base"));
        }
        let other_seed: Vec<BlindShown> = (0..200)
            .map(|i| blind_layout(8, "ann", "m", &item(i), &pair))
            .collect();
        assert_ne!(layouts, other_seed);
    }
}
