//! Small statistics for the results table: means and a seeded percentile bootstrap.

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
}
