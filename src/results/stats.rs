//! Small-sample statistics for result tables: Student t intervals for means, the
//! paired t-test, Welch's unpaired t-test, the Wilcoxon signed-rank test and Holm's
//! correction for many comparisons.
//!
//! Every function takes plain slices of finite numbers (callers drop missing and
//! diverged values first, and count them) and returns `None` where the quantity is
//! undefined (fewer than two values). The distributions come from `statrs`; nothing
//! here evaluates a special function by hand. Conventions follow R's `t.test`,
//! `wilcox.test` and `p.adjust(method = "holm")`, so results can be checked there.
//!
//! ```
//! use ablate::results::stats::paired_t;
//! // Student's sleep data: extra hours of sleep under two drugs, same ten patients.
//! let a = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
//! let b = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
//! let t = paired_t(&b, &a).unwrap();
//! assert!((t.estimate - 1.58).abs() < 1e-12 && (t.p - 0.002833).abs() < 1e-6);
//! ```

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Confidence level of every interval, and `1 - level` is the test level of verdicts.
pub const LEVEL: f64 = 0.95;

/// A mean with its 95% Student t interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator).
    pub sd: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The outcome of a t-test of "difference = 0", two-sided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTest {
    /// Mean paired difference (paired) or difference of means (Welch), first minus second.
    pub estimate: f64,
    /// The t statistic; infinite when every paired difference is the same non-zero number.
    pub t: f64,
    /// Degrees of freedom (n - 1 paired, Welch-Satterthwaite unpaired).
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// 95% interval of `estimate`.
    pub lo: f64,
    pub hi: f64,
}

/// How a Wilcoxon p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WilcoxonMethod {
    /// The exact null distribution of V (fewer than 50 non-zero differences, no ties).
    Exact,
    /// Normal approximation with tie correction and continuity correction.
    Normal,
}

/// The outcome of a two-sided Wilcoxon signed-rank test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wilcoxon {
    /// Sum of the ranks of the positive differences (R's `V`).
    pub v: f64,
    /// Non-zero differences ranked (zeros are dropped, as Wilcoxon and R do).
    pub n: usize,
    pub p: f64,
    pub method: WilcoxonMethod,
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance (n - 1); needs two values.
fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64
}

/// The two-sided critical value t_{(1 + LEVEL) / 2, df}: the 95% interval of a mean
/// is mean +- t_critical(n - 1) * sd / sqrt(n).
pub fn t_critical(df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df)
        .expect("df > 0")
        .inverse_cdf(0.5 + LEVEL / 2.0)
}

/// Two-sided p-value of a t statistic.
fn t_p_value(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    let dist = StudentsT::new(0.0, 1.0, df).expect("df > 0");
    (2.0 * dist.sf(t.abs())).min(1.0)
}

/// Mean, sample std and 95% Student t interval (n - 1 degrees of freedom).
/// `None` for fewer than two values.
///
/// ```
/// use ablate::results::stats::mean_ci;
/// let m = mean_ci(&[1.0, 2.0, 3.0]).unwrap();
/// assert_eq!((m.n, m.mean, m.sd), (3, 2.0, 1.0));
/// // t(0.975, 2 df) = 4.302653 (scipy.stats.t.ppf(0.975, 2)); half-width t * sd / sqrt(n)
/// assert!((m.hi - m.mean - 4.302653 / 3f64.sqrt()).abs() < 1e-5);
/// assert!(mean_ci(&[1.0]).is_none());
/// ```
pub fn mean_ci(xs: &[f64]) -> Option<MeanCi> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = mean(xs);
    let sd = variance(xs).sqrt();
    let half = t_critical((n - 1) as f64) * sd / (n as f64).sqrt();
    Some(MeanCi {
        n,
        mean: m,
        sd,
        lo: m - half,
        hi: m + half,
    })
}

/// One-sample t-test of mean(d) = 0 (the paired test on differences d).
/// When every difference is equal the t statistic is 0 / 0 (all zero: p = 1) or
/// infinite (p = 0, the interval a point). `None` for fewer than two values.
pub fn one_sample_t(d: &[f64]) -> Option<TTest> {
    let n = d.len();
    if n < 2 {
        return None;
    }
    let m = mean(d);
    let se = (variance(d) / n as f64).sqrt();
    let df = (n - 1) as f64;
    if se == 0.0 {
        let (t, p) = if m == 0.0 {
            (0.0, 1.0)
        } else {
            (m.signum() * f64::INFINITY, 0.0)
        };
        return Some(TTest {
            estimate: m,
            t,
            df,
            p,
            lo: m,
            hi: m,
        });
    }
    let t = m / se;
    let half = t_critical(df) * se;
    Some(TTest {
        estimate: m,
        t,
        df,
        p: t_p_value(t, df),
        lo: m - half,
        hi: m + half,
    })
}

/// Paired t-test of `a[i] - b[i]`. Panics when the lengths differ.
pub fn paired_t(a: &[f64], b: &[f64]) -> Option<TTest> {
    assert_eq!(a.len(), b.len(), "paired samples of different lengths");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    one_sample_t(&d)
}

/// Welch's unpaired t-test of mean(a) - mean(b), with Welch-Satterthwaite degrees
/// of freedom. `None` unless both samples hold two values. Two constant samples give
/// t = 0 (equal means, p = 1) or an infinite t (p = 0).
pub fn welch_t(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (va, vb) = (variance(a) / na, variance(b) / nb);
    let est = mean(a) - mean(b);
    let se = (va + vb).sqrt();
    if se == 0.0 {
        let (t, p) = if est == 0.0 {
            (0.0, 1.0)
        } else {
            (est.signum() * f64::INFINITY, 0.0)
        };
        return Some(TTest {
            estimate: est,
            t,
            df: na + nb - 2.0,
            p,
            lo: est,
            hi: est,
        });
    }
    let df = (va + vb).powi(2) / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    let t = est / se;
    let half = t_critical(df) * se;
    Some(TTest {
        estimate: est,
        t,
        df,
        p: t_p_value(t, df),
        lo: est - half,
        hi: est + half,
    })
}

/// Ranks 1..=n of `xs` (ascending), ties given their average rank.
fn average_ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&i, &j| xs[i].total_cmp(&xs[j]));
    let mut ranks = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        // Positions i..=j share the ranks i+1..=j+1.
        let r = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// P(V <= v) under the null for n untied ranks: V is the sum of a uniformly random
/// subset of {1, ..., n}; the subset sums are counted by dynamic programming.
fn signrank_cdf(v: i64, n: usize) -> f64 {
    if v < 0 {
        return 0.0;
    }
    let max = n * (n + 1) / 2;
    let mut count = vec![0u64; max + 1];
    count[0] = 1;
    for k in 1..=n {
        for s in (k..=max).rev() {
            count[s] += count[s - k];
        }
    }
    let upto = (v as usize).min(max);
    let below: u64 = count[..=upto].iter().sum();
    below as f64 / 2f64.powi(n as i32)
}

/// Two-sided Wilcoxon signed-rank test of the paired differences `d` (R's
/// `wilcox.test(d)` with its defaults). Zero differences are dropped; the rest are
/// ranked by absolute value with average ranks for ties. With fewer than 50 of them
/// and no ties or zeros the p-value is exact; otherwise it uses the normal
/// approximation with the tie correction of the variance and a continuity
/// correction of 0.5. `None` when no non-zero difference is left.
pub fn wilcoxon_signed_rank(d: &[f64]) -> Option<Wilcoxon> {
    let nz: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return None;
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let ranks = average_ranks(&abs);
    let v: f64 = nz
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let mut sorted = abs.clone();
    sorted.sort_by(f64::total_cmp);
    let ties = sorted.windows(2).any(|w| w[0] == w[1]);
    let zeros = n < d.len();
    let nf = n as f64;
    if n < 50 && !ties && !zeros {
        let vi = v as i64;
        let one_side = if v > nf * (nf + 1.0) / 4.0 {
            1.0 - signrank_cdf(vi - 1, n)
        } else {
            signrank_cdf(vi, n)
        };
        return Some(Wilcoxon {
            v,
            n,
            p: (2.0 * one_side).min(1.0),
            method: WilcoxonMethod::Exact,
        });
    }
    // Tie groups: t^3 - t summed over groups of equal |d|.
    let mut tie_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[i] {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        tie_sum += t * t * t - t;
        i = j + 1;
    }
    let z0 = v - nf * (nf + 1.0) / 4.0;
    let sigma = (nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_sum / 48.0).sqrt();
    let p = if sigma == 0.0 {
        1.0
    } else {
        let z = (z0 - z0.signum() * 0.5) / sigma;
        let normal = Normal::new(0.0, 1.0).expect("standard normal");
        (2.0 * normal.cdf(z).min(normal.sf(z))).min(1.0)
    };
    Some(Wilcoxon {
        v,
        n,
        p,
        method: WilcoxonMethod::Normal,
    })
}

/// Holm's step-down correction: p-values sorted ascending, the i-th (from 0) of m
/// multiplied by m - i, made non-decreasing, capped at 1, and returned in the input
/// order. `None` entries (tests that could not be run) are left out of m and stay `None`.
pub fn holm(ps: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut idx: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].is_some()).collect();
    idx.sort_by(|&i, &j| ps[i].unwrap().total_cmp(&ps[j].unwrap()));
    let m = idx.len();
    let mut out = vec![None; ps.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        let adj = ((m - rank) as f64 * ps[i].unwrap()).min(1.0);
        running = running.max(adj);
        out[i] = Some(running);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Student's sleep data (R's `sleep`): extra hours for ten patients, drug 1 and 2.
    const DRUG1: [f64; 10] = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
    const DRUG2: [f64; 10] = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    // R: t.test(extra ~ group, data = sleep, paired = TRUE) on drug 2 - drug 1:
    // t = 4.0621, df = 9, p-value = 0.002833, 95 percent CI 0.7001142 2.4598858,
    // mean difference 1.58.
    #[test]
    fn paired_t_matches_student_sleep_data() {
        let t = paired_t(&DRUG2, &DRUG1).unwrap();
        close(t.estimate, 1.58, 1e-12);
        close(t.t, 4.0621, 5e-5);
        close(t.df, 9.0, 0.0);
        close(t.p, 0.002833, 5e-7);
        close(t.lo, 0.7001142, 5e-7);
        close(t.hi, 2.4598858, 5e-7);
        // The same differences as a one-sample test; reversed order flips the sign.
        let d = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4];
        let o = one_sample_t(&d).unwrap();
        close(o.t, t.t, 1e-12);
        let r = paired_t(&DRUG1, &DRUG2).unwrap();
        close(r.t, -t.t, 1e-12);
        close(r.p, t.p, 1e-15);
    }

    // R: t.test(extra ~ group, data = sleep) (Welch): t = -1.8608,
    // df = 17.776, p-value = 0.07939, 95 percent CI -3.3654832 0.2054832.
    #[test]
    fn welch_matches_sleep_data_as_two_groups() {
        let t = welch_t(&DRUG1, &DRUG2).unwrap();
        close(t.estimate, 0.75 - 2.33, 1e-12);
        close(t.t, -1.8608, 5e-5);
        close(t.df, 17.776, 5e-4);
        close(t.p, 0.07939, 5e-6);
        close(t.lo, -3.3654832, 5e-7);
        close(t.hi, 0.2054832, 5e-7);
    }

    // The interval is the paired test's, applied to one sample: the sleep
    // differences have mean 1.58 and 95% interval [0.7001, 2.4599].
    #[test]
    fn mean_ci_is_student_t_interval() {
        let d: Vec<f64> = DRUG2.iter().zip(DRUG1).map(|(a, b)| a - b).collect();
        let c = mean_ci(&d).unwrap();
        assert_eq!(c.n, 10);
        close(c.mean, 1.58, 1e-12);
        close(c.sd, 1.229995, 5e-7);
        close(c.lo, 0.7001142, 5e-7);
        close(c.hi, 2.4598858, 5e-7);
        // x = 1, 3: mean 2, sd sqrt 2, so the half-width t_{0.975, 1} sd / sqrt 2
        // is the t quantile itself, 12.7062 (R: qt(0.975, 1)).
        let c = mean_ci(&[1.0, 3.0]).unwrap();
        close(c.hi - 2.0, 12.706205, 5e-6);
        close(2.0 - c.lo, 12.706205, 5e-6);
        assert!(mean_ci(&[1.0]).is_none());
    }

    #[test]
    fn constant_differences_are_exact_or_null() {
        let same = one_sample_t(&[0.0, 0.0, 0.0]).unwrap();
        assert_eq!((same.t, same.p), (0.0, 1.0));
        let shift = one_sample_t(&[2.0, 2.0]).unwrap();
        assert_eq!(shift.p, 0.0);
        assert_eq!((shift.lo, shift.hi), (2.0, 2.0));
        assert!(one_sample_t(&[1.0]).is_none());
        assert!(welch_t(&[1.0, 2.0], &[3.0]).is_none());
    }

    // R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02.
    // By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06,
    // 0.04; running maximum 0.02, 0.03, 0.06, 0.06.
    #[test]
    fn holm_matches_hand_worked_set() {
        let got = holm(&[Some(0.01), Some(0.04), None, Some(0.03), Some(0.005)]);
        let want = [Some(0.03), Some(0.06), None, Some(0.06), Some(0.02)];
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Some(g), Some(w)) => close(*g, w, 1e-15),
                (None, None) => {}
                _ => panic!("{got:?}"),
            }
        }
        // Capped at 1.
        assert_eq!(holm(&[Some(0.6), Some(0.7)]), vec![Some(1.0), Some(1.0)]);
    }

    /// P(V >= v) for n untied ranks by listing all 2^n sign patterns.
    fn enumerate_upper(v: f64, n: usize) -> f64 {
        let mut hits = 0u64;
        for mask in 0u64..(1 << n) {
            let s: usize = (0..n).filter(|k| mask >> k & 1 == 1).map(|k| k + 1).sum();
            if s as f64 >= v {
                hits += 1;
            }
        }
        hits as f64 / (1u64 << n) as f64
    }

    // R's wilcox.test help page: x - y for the depression scale, paired,
    // alternative "greater": V = 40, p-value = 0.01953; two-sided 0.03906.
    // Checked here by listing all 512 sign patterns: 10 have V >= 40.
    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is a measurement here, not pi
    fn wilcoxon_exact_matches_r_and_enumeration() {
        let x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30];
        let y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29];
        let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
        let w = wilcoxon_signed_rank(&d).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Exact);
        assert_eq!((w.v, w.n), (40.0, 9));
        close(enumerate_upper(40.0, 9), 10.0 / 512.0, 0.0);
        close(w.p, 2.0 * enumerate_upper(40.0, 9), 1e-15);
        close(w.p, 0.03906, 5e-6);
        // The mirror image has V = 5 and the same two-sided p.
        let neg: Vec<f64> = d.iter().map(|v| -v).collect();
        let m = wilcoxon_signed_rank(&neg).unwrap();
        assert_eq!(m.v, 5.0);
        close(m.p, w.p, 1e-15);
        // Six pairs all positive: p = 2 / 64.
        let all = wilcoxon_signed_rank(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        close(all.p, 2.0 / 64.0, 1e-15);
    }

    // R: wilcox.test(extra ~ group, data = sleep, paired = TRUE): V = 0,
    // p-value = 0.009091 (normal approximation: one zero, one tie at 1.3).
    // By hand: n = 9 non-zero, V = 45, z = 45 - 22.5 = 22.5,
    // sigma^2 = 9*10*19/24 - (2^3 - 2)/48 = 71.125, (22.5 - 0.5)/8.4336 = 2.6086,
    // p = 2 * (1 - Phi(2.6086)) = 0.009091.
    #[test]
    fn wilcoxon_normal_approximation_with_ties_and_zeros() {
        let d: Vec<f64> = DRUG2.iter().zip(DRUG1).map(|(a, b)| a - b).collect();
        let w = wilcoxon_signed_rank(&d).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Normal);
        assert_eq!((w.v, w.n), (45.0, 9));
        close(w.p, 0.009091, 5e-7);
        assert!(wilcoxon_signed_rank(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
    }
}
