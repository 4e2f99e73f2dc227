//! Radially (azimuthally) averaged power spectra of images and a log-spectral
//! distance between real and generated images, after Durall et al. 2020 ("Watch your
//! up-convolution: CNN based generative deep neural networks are failing to reproduce
//! spectral distributions") and Dzanic et al. 2020 ("Fourier spectrum discrepancies in
//! deep network generated images"). Odena et al. 2016 ("Deconvolution and checkerboard
//! artifacts") blame transposed convolutions for checkerboard patterns, which show up
//! as excess power at the highest frequencies.
//!
//! For an `H x W` channel `I`, `F(u, v) = sum_{y,x} I(y, x) e^{-2 pi i (u y / H + v x / W)}`
//! and the power is `P(u, v) = |F(u, v)|^2 / (H W)^2`, so that `sum_{u,v} P = mean(I^2)`
//! (Parseval) and a constant image `a` has `P(0, 0) = a^2`. With signed frequencies
//! `f_u in (-H/2, H/2]`, `f_v in (-W/2, W/2]` and `S = min(H, W)`, the radius is
//! `r = sqrt((f_u S / H)^2 + (f_v S / W)^2)` and the bin is `round(r)`, from 0 (DC) to
//! `round(S / sqrt 2)` (the corner `(H/2, W/2)`, where a checkerboard `(-1)^(x+y)` puts
//! all its power; called the Nyquist bin here). Each bin holds the mean power of its
//! frequencies; spectra are averaged over images and channels.
//!
//! Transforms are separable: rustfft's 1-D complex FFTs over the rows, then over the
//! columns, in f64, planned once per image size and run in parallel over images. The
//! scalar rustfft kernels and a fixed summation order give the same bits for the same
//! images whatever the thread count.

use std::sync::Arc;

use rayon::prelude::*;
use rustfft::{num_complex::Complex, Fft, FftPlanner};

use super::{MetricsError, Result};

/// Floor added to powers before taking logs: `ln(P + LOG_EPS)`.
pub const LOG_EPS: f64 = 1e-12;

/// Real-vs-generated spectral comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpectralDistance {
    /// Mean radial power spectrum of the real images (bin 0 = DC).
    pub real_spectrum: Vec<f64>,
    /// Mean radial power spectrum of the generated images.
    pub fake_spectrum: Vec<f64>,
    /// `mean_b |ln(P_fake(b) + eps) - ln(P_real(b) + eps)|` over all bins.
    pub log_distance: f64,
    /// The same mean over the upper half of the bins (`b >= B / 2` for B bins): where
    /// up-sampling artifacts live.
    pub log_distance_high: f64,
    /// `(P_fake + eps) / (P_real + eps)` in the last (Nyquist) bin: above 1 means more
    /// highest-frequency power than real data (checkerboards).
    pub nyquist_ratio: f64,
}

/// Number of radial bins for `h x w` images: `round(min(h, w) / sqrt 2) + 1`.
pub fn num_bins(h: usize, w: usize) -> usize {
    let s = h.min(w) as f64;
    (s / std::f64::consts::SQRT_2).round() as usize + 1
}

/// Mean radial power spectrum (module docs) of `images`, row-major `[N, C, H, W]`
/// with N inferred from the length. Returns [`num_bins`]`(h, w)` values.
pub fn radial_power_spectrum(images: &[f32], c: usize, h: usize, w: usize) -> Result<Vec<f64>> {
    if c == 0 || h == 0 || w == 0 {
        return Err(MetricsError::InvalidArgument(
            "radial_power_spectrum: C, H, W must be > 0".into(),
        ));
    }
    let plane = h * w;
    if !images.len().is_multiple_of(c * plane) {
        return Err(MetricsError::Shape(format!(
            "radial_power_spectrum: length {} is not a multiple of C*H*W = {}",
            images.len(),
            c * plane
        )));
    }
    let n = images.len() / (c * plane);
    if n == 0 {
        return Err(MetricsError::TooFewSamples(
            "radial_power_spectrum: no images".into(),
        ));
    }
    if images.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::Numerical(
            "radial_power_spectrum: non-finite pixel values".into(),
        ));
    }
    let (bin_of, counts) = bin_map(h, w);
    let nb = counts.len();
    let fft = Fft2d::new(h, w);
    // Blocks of planes summed in parallel, then the block sums added in order: the same
    // images give the same bits whatever the thread count or scheduling.
    const BLOCK: usize = 64;
    let blocks: Vec<Vec<f64>> = images
        .par_chunks(plane * BLOCK)
        .map(|block| {
            let mut acc = vec![0.0f64; nb];
            let mut ws = fft.workspace();
            for ch in block.chunks_exact(plane) {
                for (p, &b) in fft.power(ch, &mut ws).iter().zip(&bin_of) {
                    acc[b] += p;
                }
            }
            acc
        })
        .collect();
    let mut sums = vec![0.0f64; nb];
    for acc in &blocks {
        for (x, y) in sums.iter_mut().zip(acc) {
            *x += y;
        }
    }
    let planes = (n * c) as f64;
    Ok(sums
        .iter()
        .zip(&counts)
        .map(|(s, &k)| if k == 0 { 0.0 } else { s / (k as f64 * planes) })
        .collect())
}

/// Spectral comparison of real and generated `[N, C, H, W]` images (sizes N may
/// differ; C, H, W must agree). See [`SpectralDistance`] for the numbers.
pub fn spectral_distance(
    real: &[f32],
    fake: &[f32],
    c: usize,
    h: usize,
    w: usize,
) -> Result<SpectralDistance> {
    let real_spectrum = radial_power_spectrum(real, c, h, w)?;
    let fake_spectrum = radial_power_spectrum(fake, c, h, w)?;
    compare_spectra(real_spectrum, fake_spectrum)
}

/// [`SpectralDistance`] from two precomputed spectra (from [`radial_power_spectrum`]
/// with the same image size); errors when their lengths differ or they are empty.
pub fn compare_spectra(
    real_spectrum: Vec<f64>,
    fake_spectrum: Vec<f64>,
) -> Result<SpectralDistance> {
    if real_spectrum.len() != fake_spectrum.len() || real_spectrum.is_empty() {
        return Err(MetricsError::Shape(format!(
            "compare_spectra: lengths {} and {} (must be equal and > 0)",
            real_spectrum.len(),
            fake_spectrum.len()
        )));
    }
    let nb = real_spectrum.len();
    let diffs: Vec<f64> = real_spectrum
        .iter()
        .zip(&fake_spectrum)
        .map(|(r, f)| ((f + LOG_EPS).ln() - (r + LOG_EPS).ln()).abs())
        .collect();
    let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len() as f64;
    Ok(SpectralDistance {
        log_distance: mean(&diffs),
        log_distance_high: mean(&diffs[nb / 2..]),
        nyquist_ratio: (fake_spectrum[nb - 1] + LOG_EPS) / (real_spectrum[nb - 1] + LOG_EPS),
        real_spectrum,
        fake_spectrum,
    })
}

/// Bin index of each frequency `(u, v)` (row-major `h x w`) and frequencies per bin.
fn bin_map(h: usize, w: usize) -> (Vec<usize>, Vec<u64>) {
    let nb = num_bins(h, w);
    let s = h.min(w) as f64;
    let signed = |k: usize, n: usize| {
        if 2 * k <= n {
            k as f64
        } else {
            k as f64 - n as f64
        }
    };
    let mut bins = Vec::with_capacity(h * w);
    let mut counts = vec![0u64; nb];
    for u in 0..h {
        for v in 0..w {
            let fu = signed(u, h) * s / h as f64;
            let fv = signed(v, w) * s / w as f64;
            let b = ((fu * fu + fv * fv).sqrt().round() as usize).min(nb - 1);
            bins.push(b);
            counts[b] += 1;
        }
    }
    (bins, counts)
}

/// Forward 2-D DFT of one image size, `F(u, v) = sum_{y,x} I(y, x) e^{-2 pi i (u y / h
/// + v x / w)}`: rustfft plans for the rows (length w) and the columns (length h).
struct Fft2d {
    h: usize,
    w: usize,
    rows: Arc<dyn Fft<f64>>,
    cols: Arc<dyn Fft<f64>>,
}

/// Buffers for [`Fft2d::power`], one per thread.
struct Workspace {
    /// The image, then its row transforms (row-major h x w).
    grid: Vec<Complex<f64>>,
    /// `grid` transposed (row-major w x h), so the column FFTs run over rows.
    cols: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    /// The power spectrum, row-major h x w.
    power: Vec<f64>,
}

impl Fft2d {
    fn new(h: usize, w: usize) -> Self {
        let mut planner = FftPlanner::new();
        Fft2d {
            h,
            w,
            rows: planner.plan_fft_forward(w),
            cols: planner.plan_fft_forward(h),
        }
    }

    fn workspace(&self) -> Workspace {
        let zero = Complex::new(0.0, 0.0);
        let scratch = self
            .rows
            .get_inplace_scratch_len()
            .max(self.cols.get_inplace_scratch_len());
        Workspace {
            grid: vec![zero; self.h * self.w],
            cols: vec![zero; self.h * self.w],
            scratch: vec![zero; scratch],
            power: vec![0.0; self.h * self.w],
        }
    }

    /// Power `|F(u, v)|^2 / (h w)^2` of one channel (row-major h x w), row-major.
    fn power<'a>(&self, ch: &[f32], ws: &'a mut Workspace) -> &'a [f64] {
        let (h, w) = (self.h, self.w);
        for (g, &x) in ws.grid.iter_mut().zip(ch) {
            *g = Complex::new(x as f64, 0.0);
        }
        // Every row of the grid, then every row of its transpose.
        self.rows
            .process_with_scratch(&mut ws.grid, &mut ws.scratch);
        for y in 0..h {
            for x in 0..w {
                ws.cols[x * h + y] = ws.grid[y * w + x];
            }
        }
        self.cols
            .process_with_scratch(&mut ws.cols, &mut ws.scratch);
        let norm = 1.0 / ((h * w) as f64).powi(2);
        for u in 0..h {
            for v in 0..w {
                ws.power[u * w + v] = ws.cols[v * h + u].norm_sqr() * norm;
            }
        }
        &ws.power
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn checkerboard(h: usize, w: usize, amp: f32) -> Vec<f32> {
        (0..h * w)
            .map(|i| {
                if (i / w + i % w).is_multiple_of(2) {
                    amp
                } else {
                    -amp
                }
            })
            .collect()
    }

    #[test]
    fn constant_image_is_all_dc() {
        for (h, w) in [(8, 8), (6, 6), (16, 8)] {
            let img = vec![0.5f32; 2 * h * w]; // C = 2
            let p = radial_power_spectrum(&img, 2, h, w).unwrap();
            assert_eq!(p.len(), num_bins(h, w));
            assert!((p[0] - 0.25).abs() < 1e-12, "{h}x{w}: {p:?}");
            assert!(p[1..].iter().all(|&x| x.abs() < 1e-20), "{h}x{w}: {p:?}");
        }
    }

    #[test]
    fn checkerboard_is_all_nyquist() {
        for (h, w) in [(8, 8), (32, 32), (6, 6)] {
            let p = radial_power_spectrum(&checkerboard(h, w, 1.0), 1, h, w).unwrap();
            let last = p.len() - 1;
            // All power (mean(I^2) = 1) at (H/2, W/2), in the last bin; at 8 and 32 px
            // that frequency is alone in its bin, at 6 px it shares it with (3, 2).
            let (_, counts) = bin_map(h, w);
            assert!(
                (p[last] * counts[last] as f64 - 1.0).abs() < 1e-12,
                "{h}x{w}: {p:?}"
            );
            assert_eq!(counts[last] == 1, h != 6);
            assert!(p[..last].iter().all(|&x| x.abs() < 1e-20), "{h}x{w}: {p:?}");
        }
    }

    #[test]
    fn fft_matches_direct_dft_and_parseval() {
        let mut rng = StdRng::seed_from_u64(3);
        // Power of two, odd, prime and mixed sizes: the direct 2-D sum.
        for (h, w) in [(16, 16), (6, 10), (7, 5), (1, 12)] {
            let img: Vec<f32> = (0..h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let fft = Fft2d::new(h, w);
            let mut ws = fft.workspace();
            let p = fft.power(&img, &mut ws);
            for u in 0..h {
                for v in 0..w {
                    let (mut sr, mut si) = (0.0, 0.0);
                    for y in 0..h {
                        for x in 0..w {
                            let a = std::f64::consts::TAU
                                * ((u * y) as f64 / h as f64 + (v * x) as f64 / w as f64);
                            sr += img[y * w + x] as f64 * a.cos();
                            si -= img[y * w + x] as f64 * a.sin();
                        }
                    }
                    let want = (sr * sr + si * si) / ((h * w) as f64).powi(2);
                    assert!((p[u * w + v] - want).abs() < 1e-12, "{h}x{w} ({u}, {v})");
                }
            }
        }
        // Parseval on a non-power-of-two image: sum_b P_b * count_b = mean(I^2).
        let (h, w) = (6, 10);
        let img: Vec<f32> = (0..h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let p = radial_power_spectrum(&img, 1, h, w).unwrap();
        let (_, counts) = bin_map(h, w);
        let total: f64 = p.iter().zip(&counts).map(|(p, &c)| p * c as f64).sum();
        let mean_sq = img.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (h * w) as f64;
        assert!((total - mean_sq).abs() < 1e-12);
    }

    #[test]
    fn same_bits_whatever_the_thread_count() {
        let mut rng = StdRng::seed_from_u64(5);
        // 150 images of 12 x 12, 3 channels: several blocks of planes.
        let imgs: Vec<f32> = (0..150 * 3 * 144)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let with = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| radial_power_spectrum(&imgs, 3, 12, 12).unwrap())
        };
        let one = with(1);
        assert_eq!(one, with(2));
        assert_eq!(one, with(3));
    }

    /// Smooth random images: a few low-frequency sinusoids plus a little noise.
    fn smooth_images(n: usize, size: usize, rng: &mut StdRng) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * size * size);
        for _ in 0..n {
            let waves: Vec<(f32, f32, f32, f32)> = (0..4)
                .map(|_| {
                    (
                        rng.gen_range(0.0..3.0),
                        rng.gen_range(0.0..3.0),
                        rng.gen_range(0.0..std::f32::consts::TAU),
                        rng.gen_range(0.1..0.4),
                    )
                })
                .collect();
            for y in 0..size {
                for x in 0..size {
                    let t = std::f32::consts::TAU / size as f32;
                    let v: f32 = waves
                        .iter()
                        .map(|&(fy, fx, ph, a)| {
                            a * (t * (fy * y as f32 + fx * x as f32) + ph).sin()
                        })
                        .sum();
                    out.push(v + rng.gen_range(-0.05..0.05));
                }
            }
        }
        out
    }

    #[test]
    fn detects_planted_checkerboard() {
        let mut rng = StdRng::seed_from_u64(11);
        let size = 16;
        let real = smooth_images(400, size, &mut rng);
        let (a, b) = real.split_at(200 * size * size);
        let same = spectral_distance(a, b, 1, size, size).unwrap();
        assert!(same.log_distance_high < 0.1, "{same:?}");
        assert!((same.nyquist_ratio - 1.0).abs() < 0.2, "{same:?}");
        let board = checkerboard(size, size, 0.1);
        let fake: Vec<f32> = b
            .chunks(size * size)
            .flat_map(|img| {
                img.iter()
                    .zip(&board)
                    .map(|(x, c)| x + c)
                    .collect::<Vec<_>>()
            })
            .collect();
        let d = spectral_distance(a, &fake, 1, size, size).unwrap();
        assert!(d.nyquist_ratio > 10.0, "{d:?}");
        assert!(
            d.log_distance_high > 5.0 * same.log_distance_high,
            "{d:?} vs {same:?}"
        );
    }
}
