//! Mode coverage and reverse KL for class-labelled samples, as reported for
//! StackedMNIST (1000 modes) by VEEGAN (Srivastava et al. 2017), PacGAN (Lin et al.
//! 2018) and R3GAN (Huang et al. 2024): each generated sample is assigned a mode by
//! the judge, then
//! - modes covered = #{c : n_c >= 1} (or `>= min_count`),
//! - reverse KL = KL(p_gen || uniform_K) = sum_{c: p_c > 0} p_c ln(p_c K), with
//!   p_c = n_c / N (natural log; 0 for a uniform histogram, ln K when one mode holds
//!   every sample).
//!
//! The protocol fixes the number of generated samples (26,000 in PacGAN/VEEGAN);
//! that is the caller's choice, since both numbers depend on it.

use super::{MetricsError, Result};

/// Mode statistics of a labelled generated sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModeStats {
    /// K, the number of modes.
    pub num_modes: usize,
    /// N, the number of samples.
    pub samples: usize,
    /// n_c, samples per mode (length K).
    pub histogram: Vec<u64>,
    /// Modes with at least one sample.
    pub covered: usize,
    /// KL(p_gen || uniform over K), natural log.
    pub reverse_kl: f64,
}

/// StackedMNIST mode of a sample from the judge's digit predictions for its three
/// channels: `100 d_0 + 10 d_1 + d_2` in `0..1000` (digits must be < 10).
pub fn stacked_mnist_mode(digits: [usize; 3]) -> Result<usize> {
    if digits.iter().any(|&d| d >= 10) {
        return Err(MetricsError::InvalidArgument(format!(
            "stacked_mnist_mode: digits must be < 10, got {digits:?}"
        )));
    }
    Ok(100 * digits[0] + 10 * digits[1] + digits[2])
}

/// Histogram `n_c = #{i : labels_i = c}` for `c in 0..k`; errors if a label is >= k.
pub fn mode_histogram(labels: &[usize], k: usize) -> Result<Vec<u64>> {
    if k == 0 {
        return Err(MetricsError::InvalidArgument(
            "mode_histogram: K must be >= 1".into(),
        ));
    }
    let mut h = vec![0u64; k];
    for &l in labels {
        *h.get_mut(l).ok_or_else(|| {
            MetricsError::InvalidArgument(format!("mode_histogram: label {l} >= K = {k}"))
        })? += 1;
    }
    Ok(h)
}

/// Share of conditional samples whose assigned class (judge prediction or nearest mixture
/// centre) is the label they were generated for: `#{i : predicted_i = wanted_i} / N`.
pub fn class_accuracy(predicted: &[usize], wanted: &[usize]) -> Result<f64> {
    if predicted.len() != wanted.len() {
        return Err(MetricsError::InvalidArgument(format!(
            "class_accuracy: {} predictions for {} labels",
            predicted.len(),
            wanted.len()
        )));
    }
    if predicted.is_empty() {
        return Err(MetricsError::TooFewSamples(
            "class_accuracy: no samples".into(),
        ));
    }
    let hits = predicted.iter().zip(wanted).filter(|(p, w)| p == w).count();
    Ok(hits as f64 / predicted.len() as f64)
}

/// Modes with at least one sample: `#{c : n_c >= 1}`.
pub fn modes_covered(labels: &[usize], k: usize) -> Result<usize> {
    modes_covered_min(labels, k, 1)
}

/// Modes with at least `min_count` samples: `#{c : n_c >= min_count}` (some papers
/// require several samples per mode to discount stray hits). `min_count = 0` counts
/// as 1.
pub fn modes_covered_min(labels: &[usize], k: usize, min_count: u64) -> Result<usize> {
    Ok(mode_histogram(labels, k)?
        .iter()
        .filter(|&&n| n >= min_count.max(1))
        .count())
}

/// `KL(p_gen || uniform_K) = sum_{c: p_c > 0} p_c ln(p_c K)` with `p_c = n_c / N`.
/// Errors on an empty label set (the distribution is undefined).
pub fn reverse_kl_uniform(labels: &[usize], k: usize) -> Result<f64> {
    if labels.is_empty() {
        return Err(MetricsError::TooFewSamples(
            "reverse_kl_uniform: no samples".into(),
        ));
    }
    Ok(reverse_kl_from_counts(&mode_histogram(labels, k)?))
}

/// `sum_{c: n_c > 0} (n_c / N) ln(n_c K / N)` for a histogram of K counts with
/// N = sum n_c; NaN when N = 0.
pub fn reverse_kl_from_counts(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let (n, k) = (total as f64, counts.len() as f64);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            p * (p * k).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

/// Histogram, modes covered and reverse KL in one pass. Errors on an empty label set
/// or a label >= k.
pub fn mode_stats(labels: &[usize], k: usize) -> Result<ModeStats> {
    if labels.is_empty() {
        return Err(MetricsError::TooFewSamples("mode_stats: no samples".into()));
    }
    let histogram = mode_histogram(labels, k)?;
    Ok(ModeStats {
        num_modes: k,
        samples: labels.len(),
        covered: histogram.iter().filter(|&&n| n > 0).count(),
        reverse_kl: reverse_kl_from_counts(&histogram),
        histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_over_1000() {
        // 26 samples of each of 1000 modes: all covered, KL = sum (1/1000) ln 1 = 0.
        let labels: Vec<usize> = (0..26_000).map(|i| i % 1000).collect();
        let s = mode_stats(&labels, 1000).unwrap();
        assert_eq!(s.covered, 1000);
        assert!(s.reverse_kl.abs() < 1e-12);
        assert_eq!(s.samples, 26_000);
        assert!(s.histogram.iter().all(|&n| n == 26));
        assert_eq!(modes_covered_min(&labels, 1000, 26).unwrap(), 1000);
        assert_eq!(modes_covered_min(&labels, 1000, 27).unwrap(), 0);
    }

    #[test]
    fn single_mode_gives_log_k() {
        let labels = vec![417usize; 26_000];
        let s = mode_stats(&labels, 1000).unwrap();
        assert_eq!(s.covered, 1);
        assert!((s.reverse_kl - 1000f64.ln()).abs() < 1e-12);
        assert_eq!(modes_covered(&labels, 1000).unwrap(), 1);
    }

    #[test]
    fn half_the_modes() {
        // Uniform over K/2 modes: KL = sum_{K/2} (2/K) ln 2 = ln 2.
        let labels: Vec<usize> = (0..1000).map(|i| 2 * (i % 5)).collect();
        assert!((reverse_kl_uniform(&labels, 10).unwrap() - 2f64.ln()).abs() < 1e-12);
        assert_eq!(modes_covered(&labels, 10).unwrap(), 5);
        // p = (3/4, 1/4) over K = 2: 3/4 ln(3/2) + 1/4 ln(1/2).
        let kl = reverse_kl_uniform(&[0, 0, 0, 1], 2).unwrap();
        assert!((kl - (0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn stacked_mnist_and_errors() {
        assert_eq!(stacked_mnist_mode([3, 0, 7]).unwrap(), 307);
        assert_eq!(stacked_mnist_mode([9, 9, 9]).unwrap(), 999);
        assert!(stacked_mnist_mode([10, 0, 0]).is_err());
        assert!(mode_histogram(&[3], 3).is_err());
        assert!(mode_stats(&[], 3).is_err());
        assert!(reverse_kl_uniform(&[], 3).is_err());
        assert!(reverse_kl_from_counts(&[0, 0]).is_nan());
    }

    #[test]
    fn class_accuracy_counts_matches() {
        assert_eq!(class_accuracy(&[1, 2, 3, 4], &[1, 0, 3, 0]).unwrap(), 0.5);
        assert_eq!(class_accuracy(&[7], &[7]).unwrap(), 1.0);
        assert!(class_accuracy(&[1, 2], &[1]).is_err());
        assert!(class_accuracy(&[], &[]).is_err());
    }
}
