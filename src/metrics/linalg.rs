//! Dense symmetric linear algebra in f64: the cyclic Jacobi eigendecomposition and the
//! square root of a positive semi-definite matrix built from it.
//!
//! Matrices are row-major `n * n` slices. Jacobi is chosen for its accuracy (it finds
//! small eigenvalues to high relative accuracy and always returns an orthonormal
//! basis) and simplicity; its cost is about 10 sweeps of `n^2 / 2` rotations of
//! `O(n)` each, i.e. well under a second for `n <= 512`.

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
    /// Jacobi sweeps used.
    pub sweeps: usize,
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

/// Maximum number of Jacobi sweeps before giving up (convergence is quadratic; 10-15
/// sweeps are typical even for n = 512).
const MAX_SWEEPS: usize = 100;

/// Symmetric eigendecomposition by the cyclic Jacobi method (Golub & Van Loan,
/// *Matrix Computations*, 4th ed., section 8.5.3; Rutishauser's update formulas).
///
/// For each off-diagonal pair `(p, q)` in row-cyclic order the rotation `J(p, q, theta)`
/// with `tau = (a_qq - a_pp) / (2 a_pq)`, `t = sign(tau) / (|tau| + sqrt(1 + tau^2))`,
/// `c = 1 / sqrt(1 + t^2)`, `s = t c` zeroes `a_pq` in `A <- J^T A J`; `V <- V J`
/// accumulates the eigenvectors. Sweeps stop once the off-diagonal Frobenius norm is
/// below `1e-15` times the norm of `A` (or is exactly zero).
///
/// Only the upper triangle's symmetry is assumed, not checked: the input is used as
/// `(A + A^T) / 2`. Errors on a wrong length or non-finite entries.
pub fn sym_eigen(a: &[f64], n: usize) -> Result<SymEigen> {
    if a.len() != n * n {
        return Err(MetricsError::Shape(format!(
            "sym_eigen: length {} is not n*n = {}",
            a.len(),
            n * n
        )));
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(MetricsError::Numerical("sym_eigen: non-finite entry".into()));
    }
    // Symmetrised working copy.
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    let tol = 1e-15 * total;
    let mut sweeps = 0;
    loop {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += m[p * n + q] * m[p * n + q];
            }
        }
        let off = (2.0 * off).sqrt();
        if off == 0.0 || off <= tol {
            break;
        }
        if sweeps == MAX_SWEEPS {
            return Err(MetricsError::Numerical(format!(
                "sym_eigen: no convergence after {MAX_SWEEPS} sweeps (off-diagonal {off:e})"
            )));
        }
        sweeps += 1;
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let app = m[p * n + p];
                let aqq = m[q * n + q];
                // Negligible against both diagonal entries: set to zero (as in
                // Numerical Recipes' `jacobi`), which avoids useless rotations.
                if apq.abs() < 1e-18 * app.abs().min(aqq.abs()) {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                let tau = (aqq - app) / (2.0 * apq);
                let t = if tau.is_infinite() {
                    0.0
                } else {
                    tau.signum() / (tau.abs() + (1.0 + tau * tau).sqrt())
                };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = t * c;
                if t == 0.0 {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                // Columns p and q: A <- A J.
                for k in 0..n {
                    let akp = m[k * n + p];
                    let akq = m[k * n + q];
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                // Rows p and q: A <- J^T A (contiguous).
                let (rp, rq) = two_rows(&mut m, n, p, q);
                for k in 0..n {
                    let apk = rp[k];
                    let aqk = rq[k];
                    rp[k] = c * apk - s * aqk;
                    rq[k] = s * apk + c * aqk;
                }
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                // V <- V J.
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    // Sort ascending, permuting eigenvector columns along.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values: Vec<f64> = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (newj, &oldj) in order.iter().enumerate() {
        for i in 0..n {
            vectors[i * n + newj] = v[i * n + oldj];
        }
    }
    Ok(SymEigen {
        values,
        vectors,
        n,
        sweeps,
    })
}

/// Disjoint mutable rows `p < q` of a row-major matrix.
fn two_rows(m: &mut [f64], n: usize, p: usize, q: usize) -> (&mut [f64], &mut [f64]) {
    debug_assert!(p < q);
    let (head, tail) = m.split_at_mut(q * n);
    (&mut head[p * n..p * n + n], &mut tail[..n])
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
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn eigen_reconstructs_random_symmetric() {
        for (n, seed) in [(1, 1), (2, 2), (5, 3), (40, 4)] {
            let a = random_sym(n, seed);
            let e = sym_eigen(&a, n).unwrap();
            let back = e.reconstruct_with(|l| l);
            assert!(max_abs_diff(&a, &back) < 1e-12, "n={n}");
            // V^T V = I.
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| e.vectors[k * n + i] * e.vectors[k * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12);
                }
            }
            assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        }
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
        assert_eq!(e.sweeps, 0);
        let e = sym_eigen(&[], 0).unwrap();
        assert!(e.values.is_empty());
        assert!(sym_eigen(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(sym_eigen(&[f64::NAN], 1).is_err());
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
