//! Precision and recall (Kynkaanniemi et al., "Improved Precision and Recall Metric
//! for Assessing Generative Models", NeurIPS 2019) and density and coverage (Naeem et
//! al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020).
//!
//! Both rest on k-nearest-neighbour balls: `B(x, NND_k(x))`, where `NND_k(x)` is the
//! Euclidean distance from `x` to its k-th nearest neighbour *in its own set*, the point
//! itself excluded (as the reference `prdc` package does: its `get_kth_value(d, k + 1)`
//! keeps the zero self-distance among the k + 1 smallest). A duplicate of `x` at
//! distance 0 does count as a neighbour, as in `prdc`.
//!
//! With real `X` (N rows), fake `Y` (M rows):
//! - precision = (1/M) sum_j [ exists i: |y_j - x_i| <= NND_k(x_i) ]
//! - recall    = (1/N) sum_i [ exists j: |x_i - y_j| <= NND_k(y_j) ]
//! - density   = 1/(k M) sum_j sum_i [ |y_j - x_i| < NND_k(x_i) ]
//! - coverage  = (1/N) sum_i [ min_j |x_i - y_j| < NND_k(x_i) ]
//!
//! Comparisons: precision and recall use `<=` as Kynkaanniemi et al.'s official code
//! does (and issue 6 asks); density and coverage use strict `<` as Naeem et al.'s
//! `prdc` package does. (`prdc` also uses `<` for precision and recall; the two only
//! differ when a distance ties a radius exactly.) Defaults: k = 3 for precision/recall,
//! k = 5 for density/coverage.
//!
//! Algorithm: exact brute force, distances computed directly (`sum (x - y)^2` in f32,
//! see `distance.rs`) in cache-sized tiles, in parallel over blocks of rows with rayon.
//! The N x M matrix is never stored: radii come from one pass over each set against
//! itself (keeping the k smallest per row), and all four metrics from one streamed pass
//! over real x fake. Squared distances are compared, which orders like distances.

use rayon::prelude::*;

use super::distance::{sq_dist_tile, COLS};
use super::{rows, MetricsError, Result};

/// k for precision and recall (Kynkaanniemi et al. 2019).
pub const K_PRECISION_RECALL: usize = 3;
/// k for density and coverage (Naeem et al. 2020).
pub const K_DENSITY_COVERAGE: usize = 5;

/// Rows of the left matrix per parallel task.
const ROWS: usize = 32;

/// Fidelity and diversity of a fake sample against a real one.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prdc {
    /// Share of fake samples inside some real k-NN ball (fidelity), in [0, 1].
    pub precision: f64,
    /// Share of real samples inside some fake k-NN ball (diversity), in [0, 1].
    pub recall: f64,
    /// Mean number of real k-NN balls holding a fake sample, divided by k (fidelity;
    /// about 1 when the distributions match, can exceed 1).
    pub density: f64,
    /// Share of real samples whose k-NN ball holds some fake sample (diversity), in [0, 1].
    pub coverage: f64,
}

/// [`prdc_with_k`] with the papers' defaults: k = 3 for precision/recall, k = 5 for
/// density/coverage. `real` is `[N, dim]`, `fake` is `[M, dim]`, row-major.
pub fn prdc(real: &[f32], fake: &[f32], dim: usize) -> Result<Prdc> {
    prdc_with_k(real, fake, dim, K_PRECISION_RECALL, K_DENSITY_COVERAGE)
}

/// Precision/recall with `k_pr` neighbours and density/coverage with `k_dc`
/// neighbours (formulas in the module docs). Needs N > max(k_pr, k_dc) and M > k_pr
/// (a k-NN radius needs k other points), and finite features.
pub fn prdc_with_k(
    real: &[f32],
    fake: &[f32],
    dim: usize,
    k_pr: usize,
    k_dc: usize,
) -> Result<Prdc> {
    let nr = rows(real.len(), dim, "prdc real")?;
    let nf = rows(fake.len(), dim, "prdc fake")?;
    if k_pr == 0 || k_dc == 0 {
        return Err(MetricsError::InvalidArgument("prdc: k must be >= 1".into()));
    }
    if nr <= k_pr.max(k_dc) {
        return Err(MetricsError::TooFewSamples(format!(
            "prdc: {nr} real samples, need more than k = {}",
            k_pr.max(k_dc)
        )));
    }
    if nf <= k_pr {
        return Err(MetricsError::TooFewSamples(format!(
            "prdc: {nf} fake samples, need more than k = {k_pr}"
        )));
    }
    check_finite(real, "prdc real")?;
    check_finite(fake, "prdc fake")?;

    let real_r = knn_sq_radii(real, dim, &[k_pr, k_dc]);
    let (real_pr, real_dc) = (&real_r[0], &real_r[1]);
    let fake_pr = &knn_sq_radii(fake, dim, &[k_pr])[0];

    // Per real row: inside some fake ball (recall), nearest fake distance (coverage).
    let mut recall_hit = vec![false; nr];
    let mut min_d = vec![f32::INFINITY; nr];
    let empty = || (vec![false; nf], vec![0u32; nf]);
    let (prec_hit, dens_count) = recall_hit
        .par_chunks_mut(ROWS)
        .zip(min_d.par_chunks_mut(ROWS))
        .enumerate()
        .fold(
            || (vec![false; nf], vec![0u32; nf], vec![0.0f32; ROWS * COLS]),
            |(mut ph, mut dc, mut tile), (b, (rh, md))| {
                let i0 = b * ROWS;
                let r = rh.len();
                let xb = &real[i0 * dim..(i0 + r) * dim];
                for j0 in (0..nf).step_by(COLS) {
                    let cb = COLS.min(nf - j0);
                    let yb = &fake[j0 * dim..(j0 + cb) * dim];
                    sq_dist_tile(xb, yb, dim, &mut tile[..r * cb]);
                    for rr in 0..r {
                        let (rpr, rdc) = (real_pr[i0 + rr], real_dc[i0 + rr]);
                        let trow = &tile[rr * cb..(rr + 1) * cb];
                        let mut hit = rh[rr];
                        let mut m = md[rr];
                        for (c, &d) in trow.iter().enumerate() {
                            let j = j0 + c;
                            ph[j] |= d <= rpr;
                            dc[j] += (d < rdc) as u32;
                            hit |= d <= fake_pr[j];
                            m = m.min(d);
                        }
                        rh[rr] = hit;
                        md[rr] = m;
                    }
                }
                (ph, dc, tile)
            },
        )
        .map(|(ph, dc, _)| (ph, dc))
        .reduce(empty, |(mut pa, mut da), (pb, db)| {
            for (a, b) in pa.iter_mut().zip(&pb) {
                *a |= b;
            }
            for (a, b) in da.iter_mut().zip(&db) {
                *a += b;
            }
            (pa, da)
        });

    let frac = |hits: usize, total: usize| hits as f64 / total as f64;
    let precision = frac(prec_hit.iter().filter(|&&h| h).count(), nf);
    let recall = frac(recall_hit.iter().filter(|&&h| h).count(), nr);
    let density =
        dens_count.iter().map(|&c| c as u64).sum::<u64>() as f64 / (k_dc as f64 * nf as f64);
    let covered = min_d.iter().zip(real_dc).filter(|(m, r)| m < r).count();
    let coverage = frac(covered, nr);
    Ok(Prdc {
        precision,
        recall,
        density,
        coverage,
    })
}

/// Euclidean distance from each row of `x` (`[N, dim]`) to its k-th nearest other row
/// (self excluded by index): `prdc.compute_nearest_neighbour_distances(x, k)`.
/// Needs N > k.
pub fn knn_radii(x: &[f32], dim: usize, k: usize) -> Result<Vec<f32>> {
    let n = rows(x.len(), dim, "knn_radii")?;
    if k == 0 {
        return Err(MetricsError::InvalidArgument(
            "knn_radii: k must be >= 1".into(),
        ));
    }
    if n <= k {
        return Err(MetricsError::TooFewSamples(format!(
            "knn_radii: {n} samples, need more than k = {k}"
        )));
    }
    check_finite(x, "knn_radii")?;
    let sq = knn_sq_radii(x, dim, &[k]).swap_remove(0);
    Ok(sq.into_iter().map(f32::sqrt).collect())
}

fn check_finite(x: &[f32], what: &str) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(MetricsError::Numerical(format!(
            "{what}: non-finite feature values"
        )))
    }
}

/// Squared k-th nearest neighbour distances (self excluded) for each k in `ks`, from
/// one pass keeping the `max(ks)` smallest squared distances of every row.
/// Callers guarantee N > max(ks) >= 1.
fn knn_sq_radii(x: &[f32], dim: usize, ks: &[usize]) -> Vec<Vec<f32>> {
    let n = x.len() / dim;
    let kmax = *ks.iter().max().expect("at least one k");
    let mut best = vec![f32::INFINITY; n * kmax];
    best.par_chunks_mut(ROWS * kmax).enumerate().for_each_init(
        || vec![0.0f32; ROWS * COLS],
        |tile, (b, top)| {
            let i0 = b * ROWS;
            let r = top.len() / kmax;
            let xb = &x[i0 * dim..(i0 + r) * dim];
            for j0 in (0..n).step_by(COLS) {
                let cb = COLS.min(n - j0);
                let yb = &x[j0 * dim..(j0 + cb) * dim];
                sq_dist_tile(xb, yb, dim, &mut tile[..r * cb]);
                for rr in 0..r {
                    let i = i0 + rr;
                    let t = &mut top[rr * kmax..(rr + 1) * kmax];
                    for (c, &d) in tile[rr * cb..(rr + 1) * cb].iter().enumerate() {
                        if d < t[kmax - 1] && j0 + c != i {
                            insert_sorted(t, d);
                        }
                    }
                }
            }
        },
    );
    ks.iter()
        .map(|&k| (0..n).map(|i| best[i * kmax + k - 1]).collect())
        .collect()
}

/// Insert `d` into the ascending array `t`, dropping its largest element.
#[inline]
fn insert_sorted(t: &mut [f32], d: f32) {
    let mut p = t.len() - 1;
    while p > 0 && t[p - 1] > d {
        t[p] = t[p - 1];
        p -= 1;
    }
    t[p] = d;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn gauss(n: usize, dim: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| rng.sample::<f32, _>(StandardNormal) + shift)
            .collect()
    }

    #[test]
    fn hand_worked_1d() {
        // Real x = 0, 1, 3, 7, 30, 31; fake y = 0.5, 2.5, 4.5, 20, 21 (dim 1).
        // Real 1-NN radii: 1, 1, 2, 4, 1, 1. Real 2-NN radii: 3, 2, 3, 6, 23, 24.
        // Fake 1-NN radii: 2, 2, 2, 1, 1.
        // Precision (k=1, <=): 0.5 (|0.5-0| <= 1), 2.5 (|2.5-3| <= 2), 4.5 (|4.5-3| <= 2)
        //   are inside; 20 and 21 are not (13 > 4 to 7, 10/9 > 1 to 30/31): 3/5.
        // Recall (k=1, <=): 0, 1, 3 lie 0.5 from a fake with radius 2; 7 is 2.5 > 2 from
        //   4.5 and 13 > 1 from 20; 30, 31 are >= 9 > 1 from 21: 3/6.
        // Density (k=2, <): balls holding 0.5: {0, 1, 3} = 3; 2.5: {0, 1, 3, 7} = 4;
        //   4.5: {3, 7} = 2; 20: {30, 31} = 2; 21: {30, 31} = 2; 13 / (2 * 5) = 1.3.
        // Coverage (k=2, <): nearest fake distances 0.5, 0.5, 0.5, 2.5, 9, 10 are all
        //   below radii 3, 2, 3, 6, 23, 24: 1.
        let real = [0.0, 1.0, 3.0, 7.0, 30.0, 31.0];
        let fake = [0.5, 2.5, 4.5, 20.0, 21.0];
        let p = prdc_with_k(&real, &fake, 1, 1, 2).unwrap();
        assert_eq!(
            p,
            Prdc {
                precision: 0.6,
                recall: 0.5,
                density: 1.3,
                coverage: 1.0
            }
        );
        // With k=1 for density/coverage (radii 1, 1, 2, 4, 1, 1):
        // density: 0.5 in {0, 1}; 2.5 in {3}; 4.5 in {3, 7}; 20, 21 in none: 5/5 = 1.
        // coverage: 0 (0.5<1), 1 (0.5<1), 3 (0.5<2), 7 (2.5<4) covered; 30 (9), 31 (10)
        // not: 4/6.
        let p = prdc_with_k(&real, &fake, 1, 1, 1).unwrap();
        assert_eq!(p.density, 1.0);
        assert_eq!(p.coverage, 4.0 / 6.0);
        assert_eq!(
            knn_radii(&real, 1, 2).unwrap(),
            vec![3.0, 2.0, 3.0, 6.0, 23.0, 24.0]
        );
    }

    #[test]
    fn ties_inclusive_for_precision_strict_for_density() {
        // Real 0, 1, 2 (1-NN radii 1, 1, 1); fake 3, 5. Fake 3 lies exactly on the
        // ball of real 2: it counts for precision (<=) but not for density (<).
        let p = prdc_with_k(&[0.0, 1.0, 2.0], &[3.0, 5.0], 1, 1, 1).unwrap();
        assert_eq!(p.precision, 0.5);
        assert_eq!(p.density, 0.0);
        assert_eq!(p.coverage, 0.0);
    }

    #[test]
    fn identical_sets() {
        let x = gauss(200, 8, 0.0, 1);
        let p = prdc(&x, &x, 8).unwrap();
        assert_eq!(p.precision, 1.0);
        assert_eq!(p.recall, 1.0);
        assert_eq!(p.coverage, 1.0);
        // Summed over real balls: each holds itself and its k - 1 strictly nearer
        // neighbours (the k-th lies on the boundary, excluded by <), so density = k N / (k N).
        assert!((p.density - 1.0).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn same_distribution_near_one_far_apart_zero() {
        let dim = 4;
        let real = gauss(600, dim, 0.0, 2);
        let fake = gauss(600, dim, 0.0, 3);
        let p = prdc(&real, &fake, dim).unwrap();
        assert!(p.precision > 0.85 && p.recall > 0.85, "{p:?}");
        assert!(p.density > 0.8 && p.density < 1.2, "{p:?}");
        assert!(p.coverage > 0.9, "{p:?}");
        let far = gauss(600, dim, 100.0, 4);
        let p = prdc(&real, &far, dim).unwrap();
        assert_eq!(
            p,
            Prdc {
                precision: 0.0,
                recall: 0.0,
                density: 0.0,
                coverage: 0.0
            }
        );
    }

    #[test]
    fn knn_matches_brute_force_across_tiles() {
        // More rows than one tile in both directions, and a dim that is not a multiple of 8.
        let (n, dim, k) = (COLS + 45, 11, 4);
        let x = gauss(n, dim, 0.0, 5);
        let got = knn_radii(&x, dim, k).unwrap();
        for i in (0..n).step_by(17) {
            let mut d: Vec<f32> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    (0..dim)
                        .map(|t| (x[i * dim + t] - x[j * dim + t]).powi(2))
                        .sum::<f32>()
                })
                .collect();
            d.sort_by(f32::total_cmp);
            assert!((got[i] - d[k - 1].sqrt()).abs() < 1e-5);
        }
    }

    #[test]
    fn input_errors() {
        assert!(prdc(&[0.0; 5], &[0.0; 8], 1).is_err());
        assert!(prdc(&[0.0; 12], &[0.0; 3], 1).is_err());
        assert!(prdc(&[0.0; 12], &[0.0; 7], 2).is_err());
        assert!(prdc_with_k(&[0.0; 12], &[0.0; 12], 1, 0, 1).is_err());
        assert!(knn_radii(&[f32::NAN, 0.0, 1.0], 1, 1).is_err());
    }
}
