//! 2-D Gaussian mixtures: 8 modes on a ring and 25 modes on a 5 x 5 grid, the
//! toy mode-collapse benchmarks of the GAN literature (Unrolled GAN, VEEGAN,
//! PacGAN). Every mode has the same isotropic `sigma` and the same weight.

use crate::nn::Rng;
use serde::{Deserialize, Serialize};

use super::{DataError, DataTensor, Dataset, Result};

/// Ring radius used when none is given.
pub const DEFAULT_RING_RADIUS: f32 = 2.0;
/// Ring standard deviation used when none is given.
pub const DEFAULT_RING_STD: f32 = 0.02;
/// Grid standard deviation used when none is given.
pub const DEFAULT_GRID_STD: f32 = 0.05;
/// Number of ring modes.
pub const RING_MODES: usize = 8;
/// Grid coordinates on each axis.
pub const GRID_COORDS: [f32; 5] = [-4.0, -2.0, 0.0, 2.0, 4.0];

/// An equally weighted mixture of isotropic 2-D Gaussians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianMixture {
    /// `ring` or `grid`.
    pub kind: String,
    /// Mode centres; a sample's label is the index of its mode here.
    pub centres: Vec<[f32; 2]>,
    /// Standard deviation of every mode, in each coordinate.
    pub sigma: f32,
}

fn check_positive(name: &str, v: f32) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(DataError::Invalid(format!(
            "{name} must be a positive number, got {v}"
        )));
    }
    Ok(())
}

impl GaussianMixture {
    /// 8 modes on a circle of `radius`, mode k at angle 2*pi*k/8 (mode 0 at (radius, 0)).
    pub fn ring(radius: f32, sigma: f32) -> Result<Self> {
        check_positive("radius", radius)?;
        check_positive("std", sigma)?;
        let centres = (0..RING_MODES)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / RING_MODES as f64;
                [
                    (radius as f64 * a.cos()) as f32,
                    (radius as f64 * a.sin()) as f32,
                ]
            })
            .collect();
        Ok(GaussianMixture {
            kind: "ring".into(),
            centres,
            sigma,
        })
    }

    /// 25 modes at (x, y) for x, y in {-4, -2, 0, 2, 4}; mode 5*i + j at
    /// `(GRID_COORDS[i], GRID_COORDS[j])`.
    pub fn grid(sigma: f32) -> Result<Self> {
        check_positive("std", sigma)?;
        let centres = GRID_COORDS
            .iter()
            .flat_map(|&x| GRID_COORDS.iter().map(move |&y| [x, y]))
            .collect();
        Ok(GaussianMixture {
            kind: "grid".into(),
            centres,
            sigma,
        })
    }

    /// Number of modes.
    pub fn modes(&self) -> usize {
        self.centres.len()
    }

    /// Draws `n` points from the project's portable generator [`Rng::new`]`(seed)`
    /// (the same numbers on every platform and crate version): for each point a
    /// uniform mode ([`Rng::below`]), then centre + sigma * N(0, I) (two [`Rng::normal`]
    /// draws, x then y). Labels are mode indices.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Dataset> {
        if n == 0 {
            return Err(DataError::Invalid("count must be at least 1".into()));
        }
        if self.centres.is_empty() {
            return Err(DataError::Invalid(
                "a mixture needs at least one mode".into(),
            ));
        }
        let mut rng = Rng::new(seed);
        let mut values = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(n);
        let s = self.sigma as f64;
        for _ in 0..n {
            let k = rng.below(self.centres.len());
            let [cx, cy] = self.centres[k];
            let dx = rng.normal();
            let dy = rng.normal();
            values.push((cx as f64 + s * dx) as f32);
            values.push((cy as f64 + s * dy) as f32);
            labels.push(k as i64);
        }
        Ok(Dataset {
            data: DataTensor::Points { n, values },
            labels: Some(labels),
            classes: Some(self.modes()),
            sources: vec![],
            mixture: Some(self.clone()),
        })
    }

    /// Index of the nearest centre to `p` and its distance.
    pub fn nearest(&self, p: [f32; 2]) -> (usize, f32) {
        self.centres
            .iter()
            .enumerate()
            .map(|(i, c)| (i, ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a mixture has modes")
    }
}

/// `n` points from the 8-mode ring (see [`GaussianMixture::ring`]).
pub fn gaussian_ring(n: usize, radius: f32, std: f32, seed: u64) -> Result<Dataset> {
    GaussianMixture::ring(radius, std)?.sample(n, seed)
}

/// `n` points from the 25-mode grid (see [`GaussianMixture::grid`]).
pub fn gaussian_grid(n: usize, std: f32, seed: u64) -> Result<Dataset> {
    GaussianMixture::grid(std)?.sample(n, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-mode count, mean and std of the points labelled with each mode.
    fn per_mode(ds: &Dataset, modes: usize) -> Vec<(usize, [f64; 2], f64)> {
        let mut acc = vec![(0usize, [0f64; 2], [0f64; 2]); modes];
        let labels = ds.labels.as_ref().unwrap();
        for (i, &l) in labels.iter().enumerate() {
            let p = ds.data.item(i);
            let a = &mut acc[l as usize];
            a.0 += 1;
            for (d, &v) in p.iter().enumerate() {
                a.1[d] += v as f64;
                a.2[d] += (v as f64).powi(2);
            }
        }
        acc.into_iter()
            .map(|(n, s, ss)| {
                let m = [s[0] / n as f64, s[1] / n as f64];
                let var = (ss[0] / n as f64 - m[0] * m[0] + ss[1] / n as f64 - m[1] * m[1]) / 2.0;
                (n, m, var.sqrt())
            })
            .collect()
    }

    #[test]
    fn ring_statistics() {
        let n = 40000;
        let ds = gaussian_ring(n, DEFAULT_RING_RADIUS, DEFAULT_RING_STD, 0).unwrap();
        assert_eq!(ds.data.shape(), vec![n, 2]);
        assert_eq!(ds.classes, Some(8));
        let mix = ds.mixture.as_ref().unwrap();
        assert_eq!(mix.centres[0], [2.0, 0.0]);
        assert!((mix.centres[2][0]).abs() < 1e-6 && (mix.centres[2][1] - 2.0).abs() < 1e-6);
        for (k, (count, mean, std)) in per_mode(&ds, 8).into_iter().enumerate() {
            // 5000 expected per mode; 5 sigma of a binomial is about 330.
            assert!((4670..=5330).contains(&count), "mode {k}: {count}");
            for (m, c) in mean.iter().zip(mix.centres[k]) {
                assert!((m - c as f64).abs() < 0.002, "mode {k}");
            }
            assert!((std - 0.02).abs() < 0.001, "mode {k}: std {std}");
        }
        // Every point is nearest to its own mode's centre, within 7.5 sigma
        // (a 2-D Gaussian leaves that radius with probability exp(-28)).
        for (i, &l) in ds.labels.as_ref().unwrap().iter().enumerate() {
            let p = ds.data.item(i);
            let (k, dist) = mix.nearest([p[0], p[1]]);
            assert_eq!(k as i64, l);
            assert!(dist < 7.5 * 0.02, "point {i}: {dist}");
        }
    }

    #[test]
    fn grid_statistics() {
        let ds = gaussian_grid(50000, DEFAULT_GRID_STD, 3).unwrap();
        let mix = ds.mixture.as_ref().unwrap();
        assert_eq!(mix.modes(), 25);
        assert_eq!(mix.centres[0], [-4.0, -4.0]);
        assert_eq!(mix.centres[7], [-2.0, 0.0]);
        assert_eq!(mix.centres[24], [4.0, 4.0]);
        assert_eq!(mix.sigma, 0.05);
        for (k, (count, mean, std)) in per_mode(&ds, 25).into_iter().enumerate() {
            assert!((1800..=2200).contains(&count), "mode {k}: {count}");
            for (m, c) in mean.iter().zip(mix.centres[k]) {
                assert!((m - c as f64).abs() < 0.006, "mode {k}");
            }
            assert!((std - 0.05).abs() < 0.004, "mode {k}: std {std}");
        }
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let a = gaussian_grid(100, 0.05, 9).unwrap();
        assert_eq!(a, gaussian_grid(100, 0.05, 9).unwrap());
        let b = gaussian_grid(100, 0.05, 10).unwrap();
        assert_ne!(a.data, b.data);
        let r = gaussian_ring(100, 2.0, 0.02, 9).unwrap();
        assert_eq!(r, gaussian_ring(100, 2.0, 0.02, 9).unwrap());
        assert_ne!(r.data, gaussian_ring(100, 2.0, 0.02, 10).unwrap().data);
    }

    #[test]
    fn bad_parameters() {
        assert!(gaussian_ring(10, 0.0, 0.02, 0).is_err());
        assert!(gaussian_ring(10, 2.0, -1.0, 0).is_err());
        assert!(gaussian_grid(10, f32::NAN, 0).is_err());
        assert!(gaussian_grid(0, 0.05, 0).is_err());
    }
}
