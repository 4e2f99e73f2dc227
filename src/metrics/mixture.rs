//! Mode coverage and sample quality for Gaussian-mixture toy data (the 2-D ring of 8
//! and grid of 25 Gaussians of Metz et al. 2017 "Unrolled GANs", Srivastava et al. 2017
//! "VEEGAN", Lin et al. 2018 "PacGAN"): each sample is assigned to its nearest centre;
//! it is *high quality* when it lies within 3 sigma of that centre (Euclidean
//! distance <= 3 sigma). Then
//! - high_quality = (#high-quality samples) / N,
//! - modes covered = #{centres with at least one high-quality sample},
//! - reverse KL = KL(q || uniform_K) = sum_{c: q_c > 0} q_c ln(q_c K), with q the
//!   distribution of high-quality samples over centres (NaN when there are none).
//!
//! Counting a mode through the *nearest* centre equals "some sample lies within
//! 3 sigma of the centre" whenever centres are more than 6 sigma apart, as in the
//! standard ring and grid set-ups.

use super::modes::reverse_kl_from_counts;
use super::{rows, MetricsError, Result};

/// Statistics of a sample from a Gaussian mixture with known centres.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MixtureStats {
    /// K, the number of centres.
    pub num_modes: usize,
    /// N, the number of samples.
    pub samples: usize,
    /// Share of samples within 3 sigma of their nearest centre, in [0, 1].
    pub high_quality: f64,
    /// Centres with at least one high-quality sample.
    pub modes_covered: usize,
    /// KL(high-quality assignment distribution || uniform over K), natural log; NaN
    /// when no sample is high quality.
    pub reverse_kl: f64,
    /// High-quality samples per centre (length K).
    pub counts: Vec<u64>,
}

/// Number of standard deviations within which a sample counts as high quality.
pub const QUALITY_SIGMAS: f64 = 3.0;

/// Mixture statistics (module docs) for `points` (`[N, dim]`) against `centres`
/// (`[K, dim]`, row-major; dim = 2 for the usual toy data) with per-component standard
/// deviation `sigma > 0`. Distances in f64; ties between centres go to the lower index.
pub fn mixture_stats(
    points: &[f32],
    centres: &[f32],
    dim: usize,
    sigma: f64,
) -> Result<MixtureStats> {
    let n = rows(points.len(), dim, "mixture_stats points")?;
    let k = rows(centres.len(), dim, "mixture_stats centres")?;
    if k == 0 {
        return Err(MetricsError::InvalidArgument(
            "mixture_stats: no centres".into(),
        ));
    }
    if n == 0 {
        return Err(MetricsError::TooFewSamples(
            "mixture_stats: no samples".into(),
        ));
    }
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(MetricsError::InvalidArgument(format!(
            "mixture_stats: sigma must be finite and > 0, got {sigma}"
        )));
    }
    let limit = (QUALITY_SIGMAS * sigma).powi(2);
    let mut counts = vec![0u64; k];
    let mut good = 0usize;
    for p in points.chunks_exact(dim) {
        let best = nearest(p, centres, dim);
        if best.0 <= limit {
            counts[best.1] += 1;
            good += 1;
        }
    }
    Ok(MixtureStats {
        num_modes: k,
        samples: n,
        high_quality: good as f64 / n as f64,
        modes_covered: counts.iter().filter(|&&c| c > 0).count(),
        reverse_kl: reverse_kl_from_counts(&counts),
        counts,
    })
}

/// (squared distance, index) of the centre nearest to `p`; ties go to the lower index.
fn nearest(p: &[f32], centres: &[f32], dim: usize) -> (f64, usize) {
    let mut best = (f64::INFINITY, 0usize);
    for (c, centre) in centres.chunks_exact(dim).enumerate() {
        let d: f64 = p
            .iter()
            .zip(centre)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        if d < best.0 {
            best = (d, c);
        }
    }
    best
}

/// The index of the nearest centre of every point (`[N, dim]` against `[K, dim]`), the
/// mixture component a point is assigned to; ties go to the lower index.
pub fn nearest_centres(points: &[f32], centres: &[f32], dim: usize) -> Result<Vec<usize>> {
    rows(points.len(), dim, "nearest_centres points")?;
    if rows(centres.len(), dim, "nearest_centres centres")? == 0 {
        return Err(MetricsError::InvalidArgument(
            "nearest_centres: no centres".into(),
        ));
    }
    Ok(points
        .chunks_exact(dim)
        .map(|p| nearest(p, centres, dim).1)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8 centres of the ring of radius 2 used by Unrolled GAN / VEEGAN.
    fn ring8() -> Vec<f32> {
        (0..8)
            .flat_map(|i| {
                let t = i as f32 * std::f32::consts::TAU / 8.0;
                [2.0 * t.cos(), 2.0 * t.sin()]
            })
            .collect()
    }

    #[test]
    fn constructed_points() {
        let centres = ring8();
        let sigma = 0.02;
        // One point exactly on each of centres 0..4, one at 2.9 sigma from centre 5
        // (high quality), one at 3.5 sigma from centre 6 (not), one at the origin (not).
        let mut pts: Vec<f32> = centres[..8].to_vec();
        pts.extend([centres[10] + 0.058, centres[11]]);
        pts.extend([centres[12], centres[13] + 0.07]);
        pts.extend([0.0, 0.0]);
        let s = mixture_stats(&pts, &centres, 2, sigma).unwrap();
        assert_eq!(s.samples, 7);
        assert_eq!(s.counts, vec![1, 1, 1, 1, 0, 1, 0, 0]);
        assert_eq!(s.modes_covered, 5);
        assert!((s.high_quality - 5.0 / 7.0).abs() < 1e-12);
        // Uniform over 5 of 8 modes: KL = ln(8/5).
        assert!((s.reverse_kl - (8.0f64 / 5.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn nearest_centre_assignment() {
        let centres = ring8();
        // centre 2 is (0, 2), centre 6 is (0, -2), centre 0 is (2, 0)
        let pts = [0.1, 1.5, 0.0, -9.0, 1.9, 0.1];
        assert_eq!(nearest_centres(&pts, &centres, 2).unwrap(), vec![2, 6, 0]);
        // an exact tie goes to the lower index
        let two = [0.0, 0.0, 2.0, 0.0];
        assert_eq!(nearest_centres(&[1.0, 5.0], &two, 2).unwrap(), vec![0]);
        assert!(nearest_centres(&pts, &[], 2).is_err());
        assert!(nearest_centres(&pts[..3], &centres, 2).is_err());
    }

    #[test]
    fn all_modes_and_collapse() {
        let centres = ring8();
        // 10 copies of every centre: all 8 modes, all high quality, KL 0.
        let pts: Vec<f32> = (0..10).flat_map(|_| centres.clone()).collect();
        let s = mixture_stats(&pts, &centres, 2, 0.05).unwrap();
        assert_eq!((s.modes_covered, s.high_quality), (8, 1.0));
        assert!(s.reverse_kl.abs() < 1e-12);
        // Mode collapse onto centre 3: KL = ln 8.
        let pts: Vec<f32> = (0..10).flat_map(|_| [centres[6], centres[7]]).collect();
        let s = mixture_stats(&pts, &centres, 2, 0.05).unwrap();
        assert_eq!(s.modes_covered, 1);
        assert!((s.reverse_kl - 8f64.ln()).abs() < 1e-12);
        // Nothing high quality.
        let s = mixture_stats(&[5.0, 5.0], &centres, 2, 0.05).unwrap();
        assert_eq!((s.modes_covered, s.high_quality), (0, 0.0));
        assert!(s.reverse_kl.is_nan());
        assert!(mixture_stats(&[0.0, 0.0], &centres, 2, 0.0).is_err());
        assert!(mixture_stats(&[0.0, 0.0, 1.0], &centres, 2, 1.0).is_err());
    }
}
