//! Small statistics for the results table: means, a seeded percentile bootstrap (human scores) and the
//! Wilson score interval of a proportion (the automatic check).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples drawn for a bootstrap interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
const BOOTSTRAP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// 95% percentile bootstrap interval of the mean of all values, resampling whole units (answers) with
/// replacement; `None` with fewer than two units. Seeded, so the same data gives the same interval.
pub fn bootstrap_ci(units: &[Vec<f64>]) -> Option<(f64, f64)> {
    let units: Vec<&Vec<f64>> = units.iter().filter(|u| !u.is_empty()).collect();
    if units.len() < 2 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let (mut sum, mut count) = (0.0, 0usize);
            for _ in 0..units.len() {
                let u = units[rng.random_range(0..units.len())];
                sum += u.iter().sum::<f64>();
                count += u.len();
            }
            sum / count as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some((at(0.025), at(0.975)))
}

/// The normal quantile of 0.975: a 95% two-sided interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// 95% Wilson score interval of the proportion `successes / n`; `None` when `n` is 0.
///
/// Chosen over the textbook `p ± 1.96·sqrt(p(1-p)/n)` because the automatic check has small n (10
/// questions a cell) and proportions at 0 or 1, where that interval collapses to a point or leaves
/// [0, 1]; Wilson's stays inside [0, 1] and keeps close to its nominal coverage (Newcombe 1998).
/// The formula is two lines, so no statistics crate is pulled in for it.
pub fn wilson_ci(successes: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (n, p) = (n as f64, successes.min(n) as f64 / n as f64);
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z_95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_brackets_the_mean_and_is_reproducible() {
        let units: Vec<Vec<f64>> = (0..30)
            .map(|i| vec![f64::from(i % 6), f64::from((i * 7) % 6)])
            .collect();
        let all: Vec<f64> = units.iter().flatten().copied().collect();
        let m = mean(&all).unwrap();
        let (lo, hi) = bootstrap_ci(&units).unwrap();
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert!(hi - lo < 2.0 && lo >= 0.0 && hi <= 5.0);
        assert_eq!(bootstrap_ci(&units), Some((lo, hi)));
    }

    #[test]
    fn constant_data_gives_a_point_interval_and_one_unit_gives_none() {
        assert_eq!(bootstrap_ci(&[vec![5.0, 5.0], vec![5.0]]), Some((5.0, 5.0)));
        assert_eq!(bootstrap_ci(&[vec![5.0]]), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn wilson_interval_matches_published_values() {
        // Newcombe (1998), Table I: 81/263 gives 0.2553-0.3662 and 15/148 gives 0.0624-0.1605.
        let close = |(lo, hi): (f64, f64), (elo, ehi): (f64, f64)| {
            assert!(
                (lo - elo).abs() < 5e-5 && (hi - ehi).abs() < 5e-5,
                "{lo} {hi}"
            );
        };
        close(wilson_ci(81, 263).unwrap(), (0.2553, 0.3662));
        close(wilson_ci(15, 148).unwrap(), (0.0624, 0.1605));
        close(wilson_ci(7, 10).unwrap(), (0.3968, 0.8922));
    }

    #[test]
    fn wilson_interval_stays_in_the_unit_range_at_the_ends() {
        let (lo, hi) = wilson_ci(0, 10).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 5e-5, "{hi}");
        let (lo, hi) = wilson_ci(10, 10).unwrap();
        assert!((lo - 0.7225).abs() < 5e-5 && hi <= 1.0, "{lo} {hi}");
        assert_eq!(wilson_ci(0, 0), None);
    }
}
