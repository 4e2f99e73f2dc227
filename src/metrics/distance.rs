//! Blocked squared Euclidean distances between rows of two f32 matrices: the kernel
//! behind the exact k-NN searches of [`super::prdc`].
//!
//! Each distance is `sum_d (x_d - y_d)^2` computed directly (not through
//! `|x|^2 + |y|^2 - 2 x.y`, which cancels catastrophically for near neighbours and
//! does not give exactly 0 for a point and its copy). The sum runs in 8 interleaved f32
//! lanes, added in a fixed order at the end, so the result is bit-identical whether the
//! AVX2 path (picked at run time on x86_64) or the portable path runs.

/// Rows of `y` per tile; a tile of `x` rows against `COLS` rows of `y` stays in cache.
pub(crate) const COLS: usize = 256;

const LANES: usize = 8;

#[inline(always)]
fn sq_dist_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        let d = x - y;
        acc[l] += d * d;
    }
    lane_sum(&acc)
}

#[inline(always)]
fn lane_sum(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[inline(always)]
fn tile_generic(x: &[f32], y: &[f32], dim: usize, out: &mut [f32]) {
    let ny = y.len() / dim;
    for (xi, orow) in x.chunks_exact(dim).zip(out.chunks_mut(ny)) {
        for (yj, o) in y.chunks_exact(dim).zip(orow.iter_mut()) {
            *o = sq_dist_lanes(xi, yj);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(x: &[f32], y: &[f32], dim: usize, out: &mut [f32]) {
    tile_generic(x, y, dim, out)
}

/// `out[i * ny + j] = |x_i - y_j|^2` for the rows of `x` (`[nx, dim]`) and `y`
/// (`[ny, dim]`); `out` must hold `nx * ny` values.
pub(crate) fn sq_dist_tile(x: &[f32], y: &[f32], dim: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len() % dim, 0);
    debug_assert_eq!(y.len() % dim, 0);
    debug_assert!(out.len() >= (x.len() / dim) * (y.len() / dim));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { tile_avx2(x, y, dim, out) };
            return;
        }
    }
    tile_generic(x, y, dim, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_matches_naive() {
        let dim = 13;
        let x: Vec<f32> = (0..3 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..5 * dim).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; 15];
        sq_dist_tile(&x, &y, dim, &mut out);
        for i in 0..3 {
            for j in 0..5 {
                let want: f32 = (0..dim)
                    .map(|d| (x[i * dim + d] - y[j * dim + d]).powi(2))
                    .sum();
                assert!((out[i * 5 + j] - want).abs() < 1e-5);
            }
        }
        // The AVX2 and portable paths agree bitwise.
        let mut portable = vec![0.0; 15];
        tile_generic(&x, &y, dim, &mut portable);
        assert!(out
            .iter()
            .zip(&portable)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut same = vec![1.0; 9];
        sq_dist_tile(&x, &x, dim, &mut same);
        for i in 0..3 {
            assert_eq!(same[i * 3 + i], 0.0);
        }
    }
}
