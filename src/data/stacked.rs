//! StackedMNIST: RGB images whose three channels are three independently,
//! uniformly drawn MNIST images; label 100*a + 10*b + c (a = digit in R,
//! b = G, c = B), so 1000 modes (as in VEEGAN, PacGAN and R3GAN).

use std::path::PathBuf;

use crate::nn::Rng;

use super::mnist::{load_mnist, MnistOptions, MnistSplit, MNIST_SIDE};
use super::{DataError, DataTensor, Dataset, Result};

/// Number of StackedMNIST modes.
pub const STACKED_MNIST_CLASSES: usize = 1000;

/// Parameters of [`load_stacked_mnist`].
#[derive(Debug, Clone, PartialEq)]
pub struct StackedMnistOptions {
    /// Folder of the MNIST IDX files.
    pub root: PathBuf,
    /// MNIST split the digits are drawn from.
    pub split: MnistSplit,
    /// Side length, as for [`MnistOptions::resolution`].
    pub resolution: usize,
    /// Number of stacked images to build.
    pub count: usize,
    pub seed: u64,
}

impl StackedMnistOptions {
    /// `count` images from t10k at native resolution, seed 0.
    pub fn new(root: impl Into<PathBuf>, count: usize) -> Self {
        StackedMnistOptions {
            root: root.into(),
            split: MnistSplit::T10k,
            resolution: MNIST_SIDE,
            count,
            seed: 0,
        }
    }
}

/// The source indices of `count` stacked images over `n_source` images:
/// `[r, g, b]` each uniform in 0..n_source, drawn in that order from
/// the project's portable generator [`Rng::new`]`(seed)` with [`Rng::below`].
pub fn stacked_indices(n_source: usize, count: usize, seed: u64) -> Vec<[usize; 3]> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            [
                rng.below(n_source),
                rng.below(n_source),
                rng.below(n_source),
            ]
        })
        .collect()
}

/// Builds `count` stacked images from a labelled one-channel digit dataset
/// (labels 0..9), e.g. the result of [`load_mnist`].
pub fn stack_mnist(source: &Dataset, count: usize, seed: u64) -> Result<Dataset> {
    let (n, h, w, values) = match &source.data {
        DataTensor::Images {
            n,
            c: 1,
            h,
            w,
            values,
        } => (*n, *h, *w, values),
        _ => {
            return Err(DataError::Invalid(
                "StackedMNIST needs one-channel digit images".into(),
            ))
        }
    };
    let labels = source
        .labels
        .as_ref()
        .ok_or_else(|| DataError::Invalid("StackedMNIST needs labelled digits".into()))?;
    if n == 0 {
        return Err(DataError::Invalid(
            "StackedMNIST needs at least one digit".into(),
        ));
    }
    if count == 0 {
        return Err(DataError::Invalid("count must be at least 1".into()));
    }
    if let Some(bad) = labels.iter().find(|l| !(0..10).contains(*l)) {
        return Err(DataError::Invalid(format!(
            "StackedMNIST needs digit labels 0..9, found {bad}"
        )));
    }
    let plane = h * w;
    let mut out = Vec::with_capacity(count * 3 * plane);
    let mut out_labels = Vec::with_capacity(count);
    for idx in stacked_indices(n, count, seed) {
        for &i in &idx {
            out.extend_from_slice(&values[i * plane..(i + 1) * plane]);
        }
        out_labels.push(100 * labels[idx[0]] + 10 * labels[idx[1]] + labels[idx[2]]);
    }
    Ok(Dataset {
        data: DataTensor::Images {
            n: count,
            c: 3,
            h,
            w,
            values: out,
        },
        labels: Some(out_labels),
        classes: Some(STACKED_MNIST_CLASSES),
        sources: source.sources.clone(),
        mixture: None,
    })
}

/// Loads the MNIST split at the requested resolution and stacks it.
pub fn load_stacked_mnist(opts: &StackedMnistOptions) -> Result<Dataset> {
    let digits = load_mnist(&MnistOptions {
        root: opts.root.clone(),
        split: opts.split,
        resolution: opts.resolution,
        count: None,
    })?;
    stack_mnist(&digits, opts.count, opts.seed)
}

#[cfg(test)]
mod tests {
    use super::super::mnist::tests::shipped_root;
    use super::*;

    /// Digits whose image i is constant (i as f32) and labelled i % 10.
    fn fake_digits(n: usize) -> Dataset {
        Dataset {
            data: DataTensor::Images {
                n,
                c: 1,
                h: 2,
                w: 2,
                values: (0..n).flat_map(|i| [i as f32; 4]).collect(),
            },
            labels: Some((0..n as i64).map(|i| i % 10).collect()),
            classes: Some(10),
            sources: vec![],
            mixture: None,
        }
    }

    #[test]
    fn labels_match_channel_sources() {
        let digits = fake_digits(37);
        let ds = stack_mnist(&digits, 500, 7).unwrap();
        assert_eq!(ds.data.shape(), vec![500, 3, 2, 2]);
        let labels = ds.labels.as_ref().unwrap();
        for (k, idx) in stacked_indices(37, 500, 7).iter().enumerate() {
            let item = ds.data.item(k);
            let mut digit = [0i64; 3];
            for ch in 0..3 {
                // Each channel is a whole source image, recovered from its value.
                let plane = &item[ch * 4..ch * 4 + 4];
                assert!(plane.iter().all(|&v| v == plane[0]));
                let src = plane[0] as usize;
                assert_eq!(src, idx[ch]);
                digit[ch] = src as i64 % 10;
            }
            assert_eq!(labels[k], 100 * digit[0] + 10 * digit[1] + digit[2]);
        }
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let digits = fake_digits(100);
        let a = stack_mnist(&digits, 200, 1).unwrap();
        let b = stack_mnist(&digits, 200, 1).unwrap();
        let c = stack_mnist(&digits, 200, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.labels, c.labels);
    }

    #[test]
    fn channel_choice_is_roughly_uniform() {
        let idx = stacked_indices(10, 30000, 3);
        for ch in 0..3 {
            let mut counts = [0usize; 10];
            for i in &idx {
                counts[i[ch]] += 1;
            }
            // Expected 3000 each; 5 sigma is about 260.
            assert!(
                counts.iter().all(|&c| (2740..=3260).contains(&c)),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn on_shipped_mnist_at_32() {
        let mut opts = StackedMnistOptions::new(shipped_root(), 2000);
        opts.resolution = 32;
        opts.seed = 5;
        let ds = load_stacked_mnist(&opts).unwrap();
        assert_eq!(ds.data.shape(), vec![2000, 3, 32, 32]);
        assert_eq!(ds.classes, Some(1000));
        let digits = load_mnist(&MnistOptions {
            resolution: 32,
            ..MnistOptions::new(shipped_root())
        })
        .unwrap();
        let dl = digits.labels.as_ref().unwrap();
        let plane = 32 * 32;
        for (k, idx) in stacked_indices(10000, 2000, 5).iter().enumerate() {
            let item = ds.data.item(k);
            for ch in 0..3 {
                assert_eq!(
                    &item[ch * plane..(ch + 1) * plane],
                    digits.data.item(idx[ch])
                );
            }
            assert_eq!(
                ds.labels.as_ref().unwrap()[k],
                100 * dl[idx[0]] + 10 * dl[idx[1]] + dl[idx[2]]
            );
        }
        let mut modes = ds.labels.clone().unwrap();
        modes.sort_unstable();
        modes.dedup();
        // 2000 draws over 1000 near-uniform modes cover about 86% of them.
        assert!(modes.len() > 800, "{}", modes.len());
        assert_eq!(ds.sources.len(), 2);
    }
}
