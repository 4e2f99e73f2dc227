//! Dense symmetric linear algebra in f64: the symmetric eigendecomposition (nalgebra's
//! [`SymmetricEigen`](nalgebra::SymmetricEigen): Householder tridiagonalisation, then
//! implicit QR with Wilkinson shifts) and the square root of a positive semi-definite
//! matrix built from it.
//!
//! Matrices are row-major `n * n` slices here; this module copies them into and out of
//! nalgebra's column-major storage and sorts the eigenpairs.

use nalgebra::DMatrix;

use super::{MetricsError, Result};

/// Eigendecomposition `A = V diag(values) V^T` of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct SymEigen {
    /// Eigenvalues in ascending order.
    pub values: Vec<f64>,
    /// Row-major `n * n`; column `j` (`vectors[i * n + j]` for all `i`) is the unit
    /// eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
    /// Matrix order.
    pub n: usize,
}

impl SymEigen {
    /// Rebuild `V diag(f(values)) V^T`, the spectral function `f(A)`.
    pub fn reconstruct_with(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        let fv: Vec<f64> = self.values.iter().map(|&l| f(l)).collect();
        let v = &self.vectors;
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let mut s = 0.0;
                for k in 0..n {
                    s += v[i * n + k] * fv[k] * v[j * n + k];
                }
                out[i * n + j] = s;
                out[j * n + i] = s;
            }
        }
        out
    }
}

/// QR sweeps allowed per eigenvalue (on average) before giving up; 1-3 are typical.
const MAX_ITER: usize = 60;

/// Symmetric eigendecomposition by nalgebra's [`SymmetricEigen`](nalgebra::SymmetricEigen)
/// (Householder reduction to tridiagonal form, then implicit symmetric QR with
/// Wilkinson shifts; Golub & Van Loan, "Matrix Computations", 8.3). Backward stable: the
/// eigenvalues are exact for a matrix within about `n * 1e-16 * ||A||` of `A`, and the
/// eigenvectors are orthonormal to working precision. `O(n^3)`.
///
/// Rows of `A` whose off-diagonal entries are all zero are split off first as exact
/// eigenpairs `(A_ii, e_i)`; nalgebra decomposes the rest. The input is used as
/// `(A + A^T) / 2`. Errors on a wrong length or non-finite entries, or (not expected
/// in practice) when QR does not converge within `MAX_ITER * n` sweeps.
pub fn sym_eigen(a: &[f64], n: usize) -> Result<SymEigen> {
    if a.len() != n * n {
        return Err(MetricsError::Shape(format!(
            "sym_eigen: length {} is not n*n = {}",
            a.len(),
            n * n
        )));
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(MetricsError::Numerical(
            "sym_eigen: non-finite entry".into(),
        ));
    }
    if n == 0 {
        // nalgebra's tridiagonalisation asserts a non-empty matrix.
        return Ok(SymEigen {
            values: vec![],
            vectors: vec![],
            n,
        });
    }
    let s: Vec<f64> = (0..n * n)
        .map(|t| 0.5 * (a[t] + a[(t % n) * n + t / n]))
        .collect();
    // A row whose off-diagonal entries are all zero (a constant feature's row of a
    // covariance) makes `e_i` an exact eigenvector of `s[i][i]`: split those off, so a
    // zero stays exactly zero. nalgebra would return it as ~1e-16, whose square root
    // (1e-8) a Frechet distance would then add in.
    let (live, isolated): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| (0..n).any(|j| j != i && s[i * n + j] != 0.0));
    // (eigenvalue, eigenvector as a full column)
    let mut pairs: Vec<(f64, Vec<f64>)> = isolated
        .iter()
        .map(|&i| {
            let mut v = vec![0.0; n];
            v[i] = 1.0;
            (s[i * n + i], v)
        })
        .collect();
    if !live.is_empty() {
        let k = live.len();
        let m = DMatrix::from_fn(k, k, |i, j| s[live[i] * n + live[j]]);
        let e =
            nalgebra::SymmetricEigen::try_new(m, f64::EPSILON, MAX_ITER * k).ok_or_else(|| {
                MetricsError::Numerical(format!(
                    "sym_eigen: QR did not converge in {} sweeps",
                    MAX_ITER * k
                ))
            })?;
        for (c, &l) in e.eigenvalues.iter().enumerate() {
            let mut v = vec![0.0; n];
            for (&row, &x) in live.iter().zip(e.eigenvectors.column(c).iter()) {
                v[row] = x;
            }
            pairs.push((l, v));
        }
    }
    // nalgebra leaves the eigenvalues unsorted. Sort ascending (stable, so the order is
    // a function of the input alone).
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let values: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let mut vectors = vec![0.0; n * n];
    for (j, (_, v)) in pairs.iter().enumerate() {
        for (i, &x) in v.iter().enumerate() {
            vectors[i * n + j] = x;
        }
    }
    Ok(SymEigen { values, vectors, n })
}

/// Principal square root of a symmetric positive semi-definite matrix:
/// `sqrt(A) = V diag(sqrt(max(lambda, 0))) V^T` from [`sym_eigen`].
///
/// Eigenvalues that rounding pushed slightly below zero are clamped to zero, so a
/// singular (rank-deficient) covariance needs no regularising epsilon.
pub fn sqrtm_psd(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let e = sym_eigen(a, n)?;
    Ok(e.reconstruct_with(|l| l.max(0.0).sqrt()))
}

/// `C = A B` for row-major `n * n` matrices (i-k-j loop order, f64).
pub(crate) fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        let ci = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            let bk = &b[k * n..(k + 1) * n];
            for (cij, bkj) in ci.iter_mut().zip(bk) {
                *cij += aik * bkj;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let x: f64 = rng.gen_range(-1.0..1.0);
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn eigen_reconstructs_random_symmetric() {
        for (n, seed) in [(1, 1), (2, 2), (5, 3), (40, 4), (130, 5)] {
            let a = random_sym(n, seed);
            let e = sym_eigen(&a, n).unwrap();
            let back = e.reconstruct_with(|l| l);
            assert!(max_abs_diff(&a, &back) < 1e-12, "n={n}");
            // V^T V = I.
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n)
                        .map(|k| e.vectors[k * n + i] * e.vectors[k * n + j])
                        .sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12);
                }
            }
            assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn eigen_degenerate_spectra() {
        // Rank one u u^T (eigenvalue |u|^2 once, 0 repeated), the zero matrix, and
        // 2 I + u u^T (eigenvalue 2 repeated): reconstruction and orthonormality.
        let n = 30;
        let u: Vec<f64> = (0..n).map(|i| (i as f64 * 0.3).sin()).collect();
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let outer: Vec<f64> = (0..n * n).map(|t| u[t / n] * u[t % n]).collect();
        let shifted: Vec<f64> = (0..n * n)
            .map(|t| outer[t] + if t / n == t % n { 2.0 } else { 0.0 })
            .collect();
        for (a, top, rest) in [
            (outer, uu, 0.0),
            (vec![0.0; n * n], 0.0, 0.0),
            (shifted, uu + 2.0, 2.0),
        ] {
            let e = sym_eigen(&a, n).unwrap();
            assert!((e.values[n - 1] - top).abs() < 1e-12);
            assert!(e.values[..n - 1].iter().all(|&l| (l - rest).abs() < 1e-12));
            assert!(max_abs_diff(&a, &e.reconstruct_with(|l| l)) < 1e-12);
            let vtv = matmul(&transpose(&e.vectors, n), &e.vectors, n);
            let eye: Vec<f64> = (0..n * n).map(|t| (t / n == t % n) as u8 as f64).collect();
            assert!(max_abs_diff(&vtv, &eye) < 1e-12);
        }
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|t| a[(t % n) * n + t / n]).collect()
    }

    #[test]
    fn eigen_hand_worked_2x2() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3 with eigenvectors (1,-1)/sqrt2, (1,1)/sqrt2.
        let e = sym_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!((e.values[0] - 1.0).abs() < 1e-14);
        assert!((e.values[1] - 3.0).abs() < 1e-14);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((e.vectors[0].abs() - h).abs() < 1e-14);
        assert!((e.vectors[0] * e.vectors[2] + h * h).abs() < 1e-14); // opposite signs
        assert!((e.vectors[1] * e.vectors[3] - h * h).abs() < 1e-14); // same sign
    }

    #[test]
    fn eigen_diagonal_and_empty() {
        let e = sym_eigen(&[3.0, 0.0, 0.0, -1.0], 2).unwrap();
        assert_eq!(e.values, vec![-1.0, 3.0]);
        let e = sym_eigen(&[], 0).unwrap();
        assert!(e.values.is_empty());
        assert!(sym_eigen(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(sym_eigen(&[f64::NAN], 1).is_err());
    }

    #[test]
    fn isolated_rows_stay_exact() {
        // A constant feature: row and column 2 of a covariance are zero. Its eigenvalue
        // is exactly 0 and the square root keeps the zero row, whatever its position.
        let n = 6;
        let mut a = matmul(&random_sym(n, 21), &random_sym(n, 21), n);
        for k in 0..n {
            a[2 * n + k] = 0.0;
            a[k * n + 2] = 0.0;
        }
        let e = sym_eigen(&a, n).unwrap();
        assert_eq!(e.values.iter().filter(|&&l| l == 0.0).count(), 1);
        assert!(max_abs_diff(&a, &e.reconstruct_with(|l| l)) < 1e-12);
        let r = sqrtm_psd(&a, n).unwrap();
        assert!((0..n).all(|k| r[2 * n + k] == 0.0 && r[k * n + 2] == 0.0));
        assert!(max_abs_diff(&a, &matmul(&r, &r, n)) < 1e-10);
    }

    #[test]
    fn sqrtm_squares_back() {
        let n = 12;
        let b = random_sym(n, 9);
        // A = B B^T + rank-deficient part is PSD.
        let a = matmul(&b, &b, n);
        let r = sqrtm_psd(&a, n).unwrap();
        let rr = matmul(&r, &r, n);
        assert!(max_abs_diff(&a, &rr) < 1e-10);
        // Rank-one PSD matrix u u^T: sqrt = u u^T / |u|.
        let u = [1.0, 2.0, 2.0];
        let mut a = vec![0.0; 9];
        for i in 0..3 {
            for j in 0..3 {
                a[i * 3 + j] = u[i] * u[j];
            }
        }
        let r = sqrtm_psd(&a, 3).unwrap();
        let want: Vec<f64> = a.iter().map(|x| x / 3.0).collect();
        assert!(max_abs_diff(&r, &want) < 1e-12);
    }
}
