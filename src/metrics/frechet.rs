//! Gaussian fits of feature matrices and the Frechet distance between them.
//!
//! `FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})`
//! (Dowson & Landau 1982; the FID of Heusel et al. 2017 is this distance between
//! Inception features). Here the features come from ablate's judge network, so the
//! numbers are *not* comparable with Inception FID values from papers.
//!
//! pytorch-fid (`calculate_frechet_distance`) takes `scipy.linalg.sqrtm(S_1 S_2)` of a
//! non-symmetric product, retries with `eps = 1e-6` added to both diagonals when the
//! result is not finite, and drops a small imaginary part. This module avoids all
//! three: `S_1 S_2` is similar to the symmetric PSD matrix
//! `M = S_1^{1/2} S_2 S_1^{1/2}`, so `tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(M))`, with
//! both square roots taken through the symmetric eigendecomposition of
//! [`super::linalg`] and tiny negative eigenvalues (rounding) clamped to zero. Nothing
//! is inverted, so singular covariances (N <= F, constant features) need no epsilon;
//! [`frechet_distance_eps`] offers pytorch-fid's diagonal offset for those who want it.

use rayon::prelude::*;

use super::linalg::{matmul, sqrtm_psd, sym_eigen};
use super::{rows, MetricsError, Result};

/// Mean and covariance of a feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    /// Feature width F.
    pub dim: usize,
    /// Number of samples the fit was made from.
    pub count: usize,
    /// Mean, length F.
    pub mean: Vec<f64>,
    /// Covariance with ddof = 1 (`numpy.cov(x, rowvar=False)`), row-major F x F.
    pub cov: Vec<f64>,
}

/// Rows per parallel task when accumulating the covariance.
const COV_CHUNK: usize = 256;

/// Fit a Gaussian to `features` (row-major `[N, dim]`, rows = samples):
/// `mu = (1/N) sum_n x_n`, `S = 1/(N-1) sum_n (x_n - mu)(x_n - mu)^T`, as
/// `numpy.mean(x, 0)` and `numpy.cov(x, rowvar=False)` (pytorch-fid's
/// `calculate_activation_statistics`). All sums are in f64 on centred data (two
/// passes), in parallel over blocks of rows. Needs N >= 2.
pub fn gaussian_stats(features: &[f32], dim: usize) -> Result<Gaussian> {
    let n = rows(features.len(), dim, "gaussian_stats")?;
    if n < 2 {
        return Err(MetricsError::TooFewSamples(format!(
            "gaussian_stats: covariance with ddof 1 needs N >= 2, got {n}"
        )));
    }
    let f = dim;
    let sum = features
        .par_chunks(COV_CHUNK * f)
        .map(|block| {
            let mut s = vec![0.0f64; f];
            for row in block.chunks_exact(f) {
                for (acc, &x) in s.iter_mut().zip(row) {
                    *acc += x as f64;
                }
            }
            s
        })
        .reduce(|| vec![0.0; f], add_vecs);
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    // Upper triangle of sum (x - mu)(x - mu)^T.
    let upper = features
        .par_chunks(COV_CHUNK * f)
        .map(|block| {
            let mut acc = vec![0.0f64; f * f];
            let mut c = vec![0.0f64; f];
            for row in block.chunks_exact(f) {
                for ((ci, &x), m) in c.iter_mut().zip(row).zip(&mean) {
                    *ci = x as f64 - m;
                }
                for i in 0..f {
                    let ci = c[i];
                    let dst = &mut acc[i * f + i..(i + 1) * f];
                    for (d, cj) in dst.iter_mut().zip(&c[i..]) {
                        *d += ci * cj;
                    }
                }
            }
            acc
        })
        .reduce(|| vec![0.0; f * f], add_vecs);
    let mut cov = vec![0.0; f * f];
    let denom = (n - 1) as f64;
    for i in 0..f {
        for j in i..f {
            let v = upper[i * f + j] / denom;
            cov[i * f + j] = v;
            cov[j * f + i] = v;
        }
    }
    if mean.iter().chain(&cov).any(|x| !x.is_finite()) {
        return Err(MetricsError::Numerical(
            "gaussian_stats: non-finite feature values".into(),
        ));
    }
    Ok(Gaussian {
        dim,
        count: n,
        mean,
        cov,
    })
}

fn add_vecs(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// Frechet distance between two Gaussians:
/// `||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 sum_i sqrt(max(lambda_i, 0))`, where
/// `lambda_i` are the eigenvalues of `S_1^{1/2} S_2 S_1^{1/2}` (see the module docs for
/// why this equals pytorch-fid's `tr sqrtm(S_1 S_2)`). Rounding can leave a result a few
/// ulps below zero; it is clamped at 0 since the distance is non-negative.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    frechet_distance_eps(a, b, 0.0)
}

/// [`frechet_distance`] after adding `eps * I` to both covariances, as pytorch-fid
/// does (with `eps = 1e-6`) when `sqrtm(S_1 S_2)` is not finite. Not needed by this
/// implementation; provided for matching such numbers. `eps = 0` is the plain distance.
pub fn frechet_distance_eps(a: &Gaussian, b: &Gaussian, eps: f64) -> Result<f64> {
    if a.dim != b.dim || a.mean.len() != a.dim || b.mean.len() != b.dim {
        return Err(MetricsError::Shape(format!(
            "frechet_distance: dims {} and {} differ",
            a.dim, b.dim
        )));
    }
    let f = a.dim;
    if a.cov.len() != f * f || b.cov.len() != f * f {
        return Err(MetricsError::Shape(
            "frechet_distance: covariance is not dim x dim".into(),
        ));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(MetricsError::InvalidArgument(format!(
            "frechet_distance: eps must be finite and >= 0, got {eps}"
        )));
    }
    let mut s1 = a.cov.clone();
    let mut s2 = b.cov.clone();
    for i in 0..f {
        s1[i * f + i] += eps;
        s2[i * f + i] += eps;
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let tr1: f64 = (0..f).map(|i| s1[i * f + i]).sum();
    let tr2: f64 = (0..f).map(|i| s2[i * f + i]).sum();
    let tr_covmean = trace_sqrt_product(&s1, &s2, f)?;
    let d = mean_term + tr1 + tr2 - 2.0 * tr_covmean;
    if !d.is_finite() {
        return Err(MetricsError::Numerical(
            "frechet_distance: non-finite result".into(),
        ));
    }
    Ok(d.max(0.0))
}

/// `tr (S_1 S_2)^{1/2} = sum_i sqrt(max(lambda_i(S_1^{1/2} S_2 S_1^{1/2}), 0))` for
/// symmetric PSD `S_1`, `S_2` (row-major f x f).
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], f: usize) -> Result<f64> {
    let r = sqrtm_psd(s1, f)?;
    let m = matmul(&matmul(&r, s2, f), &r, f);
    let e = sym_eigen(&m, f)?;
    Ok(e.values.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

/// Frechet distance between Gaussian fits of two feature matrices (row-major
/// `[N_1, dim]` and `[N_2, dim]`): `frechet_distance(gaussian_stats(real),
/// gaussian_stats(fake))`. This is `fid_judge` in the evaluate stage.
pub fn frechet_distance_features(real: &[f32], fake: &[f32], dim: usize) -> Result<f64> {
    let a = gaussian_stats(real, dim)?;
    let b = gaussian_stats(fake, dim)?;
    frechet_distance(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn diag_gaussian(mean: &[f64], var: &[f64]) -> Gaussian {
        let f = mean.len();
        let mut cov = vec![0.0; f * f];
        for i in 0..f {
            cov[i * f + i] = var[i];
        }
        Gaussian {
            dim: f,
            count: 0,
            mean: mean.to_vec(),
            cov,
        }
    }

    #[test]
    fn stats_match_numpy_cov() {
        // x = [[1, 2], [3, 6], [5, 7]]: mean (3, 5); centred rows (-2,-3), (0,1), (2,2);
        // cov = [[8, 10], [10, 14]] / 2 = [[4, 5], [5, 7]].
        let g = gaussian_stats(&[1.0, 2.0, 3.0, 6.0, 5.0, 7.0], 2).unwrap();
        assert_eq!(g.mean, vec![3.0, 5.0]);
        assert_eq!(g.cov, vec![4.0, 5.0, 5.0, 7.0]);
        assert_eq!(g.count, 3);
        assert!(gaussian_stats(&[1.0, 2.0], 2).is_err());
        assert!(gaussian_stats(&[1.0, 2.0, 3.0], 2).is_err());
    }

    #[test]
    fn diagonal_closed_form() {
        // FD = sum (m1 - m2)^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances.
        let m1 = [0.0, 1.0, -2.0, 0.5];
        let m2 = [1.0, 1.0, 0.0, 0.0];
        let a: [f64; 4] = [1.0, 4.0, 0.25, 9.0];
        let b: [f64; 4] = [4.0, 1.0, 0.25, 1e-8];
        let want: f64 = m1
            .iter()
            .zip(&m2)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let got = frechet_distance(&diag_gaussian(&m1, &a), &diag_gaussian(&m2, &b)).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn hand_worked_2x2() {
        // S1 = I, S2 = [[2, 1], [1, 2]] (eigenvalues 1 and 3), mu1 = (0,0), mu2 = (1,1).
        // sqrt(S1 S2) = sqrt(S2) has trace 1 + sqrt(3).
        // FD = 2 + tr(I) + tr(S2) - 2 (1 + sqrt 3) = 2 + 2 + 4 - 2 - 2 sqrt 3 = 6 - 2 sqrt 3.
        let a = Gaussian {
            dim: 2,
            count: 0,
            mean: vec![0.0, 0.0],
            cov: vec![1.0, 0.0, 0.0, 1.0],
        };
        let b = Gaussian {
            dim: 2,
            count: 0,
            mean: vec![1.0, 1.0],
            cov: vec![2.0, 1.0, 1.0, 2.0],
        };
        let want = 6.0 - 2.0 * 3f64.sqrt();
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-12);
        // Symmetric in its arguments.
        assert!((frechet_distance(&b, &a).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn full_covariance_commuting_closed_form() {
        // S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors, so
        // FD = |dmu|^2 + sum (sqrt a - sqrt b)^2 for any rotation Q.
        let (c, s) = (0.6f64, 0.8f64);
        let q = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        let make = |d: [f64; 3]| {
            let mut m = vec![0.0; 9];
            for i in 0..3 {
                for j in 0..3 {
                    m[i * 3 + j] = (0..3).map(|k| q[i * 3 + k] * d[k] * q[j * 3 + k]).sum();
                }
            }
            m
        };
        let a: [f64; 3] = [2.0, 0.5, 1e-3];
        let b: [f64; 3] = [1.0, 3.0, 0.0]; // singular
        let g1 = Gaussian {
            dim: 3,
            count: 0,
            mean: vec![1.0, 0.0, 0.0],
            cov: make(a),
        };
        let g2 = Gaussian {
            dim: 3,
            count: 0,
            mean: vec![0.0, 0.0, 2.0],
            cov: make(b),
        };
        let want = 5.0
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let got = frechet_distance(&g1, &g2).unwrap();
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    #[test]
    fn identical_sets_give_zero_and_permutation_invariance() {
        let (n, f) = (300, 16);
        let mut rng = StdRng::seed_from_u64(7);
        // Correlated, with one constant feature (singular covariance).
        let x: Vec<f32> = (0..n)
            .flat_map(|_| {
                let z: Vec<f32> = (0..f).map(|_| rng.sample(StandardNormal)).collect();
                (0..f)
                    .map(|j| {
                        if j == 3 {
                            1.0
                        } else {
                            z[j] + 0.5 * z[(j + 1) % f]
                        }
                    })
                    .collect::<Vec<f32>>()
            })
            .collect();
        let d = frechet_distance_features(&x, &x, f).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
        // Rank-deficient: fewer samples than features.
        let few = &x[..5 * f];
        assert!(frechet_distance_features(few, few, f).unwrap() < 1e-9);
        // Permuting features in both sets leaves the distance unchanged.
        let y: Vec<f32> = x.iter().map(|v| 2.0 * v + 0.3).collect();
        let perm: Vec<usize> = (0..f).rev().collect();
        let permute = |m: &[f32]| -> Vec<f32> {
            m.chunks(f)
                .flat_map(|r| perm.iter().map(|&j| r[j]).collect::<Vec<_>>())
                .collect()
        };
        let d1 = frechet_distance_features(&x, &y, f).unwrap();
        let d2 = frechet_distance_features(&permute(&x), &permute(&y), f).unwrap();
        assert!(d1 > 1.0);
        assert!((d1 - d2).abs() < 1e-9 * d1, "{d1} vs {d2}");
    }

    #[test]
    fn ill_conditioned_diagonal() {
        let var1: Vec<f64> = (0..20).map(|i| 10f64.powi(-i % 12)).collect();
        let var2: Vec<f64> = (0..20).map(|i| 10f64.powi(-(i + 5) % 12)).collect();
        let mean = vec![0.0; 20];
        let want: f64 = var1
            .iter()
            .zip(&var2)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum();
        let got =
            frechet_distance(&diag_gaussian(&mean, &var1), &diag_gaussian(&mean, &var2)).unwrap();
        assert!(
            (got - want).abs() < 1e-10 * want.max(1.0),
            "{got} vs {want}"
        );
        assert!(
            frechet_distance_eps(
                &diag_gaussian(&mean, &var1),
                &diag_gaussian(&mean, &var1),
                1e-6
            )
            .unwrap()
            .abs()
                < 1e-12
        );
    }
}
