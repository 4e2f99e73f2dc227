//! Dataset sources for the `data` stage: MNIST (IDX files), StackedMNIST,
//! 2-D Gaussian mixtures (ring and grid) and folders of PNG/JPEG images.
//!
//! This is a pure library: it reads files and parameters given as Rust values,
//! never YAML. Every source returns a [`Dataset`]; [`save_dataset`] writes it
//! as the safetensors artifact of DESIGN.md (`images` f32 `[N, C, H, W]` in
//! `[-1, 1]` or `points` f32 `[N, 2]`, plus `labels` i64 `[N]` where there are
//! labels), [`card`] summarises it as JSON and [`write_preview`] draws it.

mod error;
pub mod folder;
pub mod gaussian;
pub mod mnist;
pub mod png;
pub mod stacked;
pub mod tensor_file;

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use error::{DataError, Result};
pub use folder::{list_images, load_image_folder, ImageFolderOptions, ImageList};
pub use gaussian::{
    gaussian_grid, gaussian_ring, GaussianMixture, DEFAULT_GRID_STD, DEFAULT_RING_RADIUS,
    DEFAULT_RING_STD,
};
pub use mnist::{
    load_mnist, read_idx_images, read_idx_labels, IdxImages, MnistOptions, MnistSplit,
};
pub use png::{write_image_grid, write_preview, write_scatter_png, ScatterOptions};
pub use stacked::{load_stacked_mnist, stack_mnist, stacked_indices, StackedMnistOptions};
pub use tensor_file::{load_dataset, save_dataset};

/// The tensor of a dataset, in the layout of the artifact file.
#[derive(Debug, Clone, PartialEq)]
pub enum DataTensor {
    /// Images, NCHW, row-major, values in [-1, 1].
    Images {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        values: Vec<f32>,
    },
    /// 2-D points, [N, 2] row-major.
    Points { n: usize, values: Vec<f32> },
}

impl DataTensor {
    /// Number of items (images or points).
    pub fn n(&self) -> usize {
        match self {
            DataTensor::Images { n, .. } | DataTensor::Points { n, .. } => *n,
        }
    }

    /// Shape as stored: [N, C, H, W] or [N, 2].
    pub fn shape(&self) -> Vec<usize> {
        match self {
            DataTensor::Images { n, c, h, w, .. } => vec![*n, *c, *h, *w],
            DataTensor::Points { n, .. } => vec![*n, 2],
        }
    }

    /// All values, row-major.
    pub fn values(&self) -> &[f32] {
        match self {
            DataTensor::Images { values, .. } | DataTensor::Points { values, .. } => values,
        }
    }

    /// Values of one item (one image of C*H*W values or one point of 2).
    pub fn item(&self, i: usize) -> &[f32] {
        let per = self.item_len();
        &self.values()[i * per..(i + 1) * per]
    }

    /// Values per item: C*H*W for images, 2 for points.
    pub fn item_len(&self) -> usize {
        match self {
            DataTensor::Images { c, h, w, .. } => c * h * w,
            DataTensor::Points { .. } => 2,
        }
    }

    /// The safetensors name of this tensor: `images` or `points`.
    pub fn name(&self) -> &'static str {
        match self {
            DataTensor::Images { .. } => "images",
            DataTensor::Points { .. } => "points",
        }
    }

    /// Checks that the value count matches the shape.
    pub fn check(&self) -> Result<()> {
        let expected: usize = self.shape().iter().product();
        if self.values().len() != expected {
            return Err(DataError::Invalid(format!(
                "{} tensor of shape {:?} holds {} values, expected {}",
                self.name(),
                self.shape(),
                self.values().len(),
                expected
            )));
        }
        Ok(())
    }
}

/// A file a dataset was read from, with its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// The path as it was opened.
    pub path: String,
    /// blake3 of the file's bytes on disk (compressed bytes for `.gz`), hex.
    pub blake3: String,
    /// Size on disk in bytes.
    pub bytes: u64,
}

impl SourceFile {
    /// Describes a file from bytes already read.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Self {
        SourceFile {
            path: path.display().to_string(),
            blake3: blake3::hash(bytes).to_hex().to_string(),
            bytes: bytes.len() as u64,
        }
    }
}

/// A dataset: the tensor, optional integer labels and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub data: DataTensor,
    /// One label per item, where the source has labels.
    pub labels: Option<Vec<i64>>,
    /// Number of classes (modes) the labels range over: 10 for MNIST, 1000 for
    /// StackedMNIST, 8 / 25 for the Gaussian ring / grid.
    pub classes: Option<usize>,
    /// Files read, in reading order (empty for synthetic sources).
    pub sources: Vec<SourceFile>,
    /// The mixture for 2-D Gaussian sources (centres and sigma, for evaluation).
    pub mixture: Option<GaussianMixture>,
}

impl Dataset {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.data.n()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.data.n() == 0
    }

    /// Checks internal consistency: value count, label count and label range.
    pub fn check(&self) -> Result<()> {
        self.data.check()?;
        if let Some(labels) = &self.labels {
            if labels.len() != self.len() {
                return Err(DataError::Invalid(format!(
                    "{} labels for {} items",
                    labels.len(),
                    self.len()
                )));
            }
            if let Some(classes) = self.classes {
                if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
                    return Err(DataError::Invalid(format!(
                        "label {bad} outside 0..{classes}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Keeps only the first `count` items.
    pub fn truncate(&mut self, count: usize) {
        if count >= self.len() {
            return;
        }
        let per = self.data.item_len();
        match &mut self.data {
            DataTensor::Images { n, values, .. } | DataTensor::Points { n, values } => {
                *n = count;
                values.truncate(count * per);
            }
        }
        if let Some(labels) = &mut self.labels {
            labels.truncate(count);
        }
    }
}

/// Summary statistics of a dataset, also written into [`card`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
}

/// Min, max, mean and (population) standard deviation of all values.
/// Zeros for an empty tensor.
pub fn stats(values: &[f32]) -> Stats {
    if values.is_empty() {
        return Stats {
            min: 0.0,
            max: 0.0,
            mean: 0.0,
            std: 0.0,
        };
    }
    let mut min = f32::INFINITY;
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f64;
    for &v in values {
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
    }
    let mean = sum / values.len() as f64;
    let var = values
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / values.len() as f64;
    Stats {
        min,
        max,
        mean,
        std: var.sqrt(),
    }
}

/// The dataset card (`card.json`): kind, count, shape, classes, distinct
/// labels present, value range, mean, std, source files with blake3 hashes,
/// and for Gaussian mixtures their centres and sigma.
pub fn card(ds: &Dataset) -> Value {
    let s = stats(ds.data.values());
    let distinct = ds.labels.as_ref().map(|l| {
        let mut v = l.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    });
    let mut card = json!({
        "kind": ds.data.name(),
        "count": ds.len(),
        "shape": ds.data.shape(),
        "labelled": ds.labels.is_some(),
        "classes": ds.classes,
        "distinct_labels": distinct,
        "value_range": {"min": s.min, "max": s.max},
        "mean": s.mean,
        "std": s.std,
        "sources": ds.sources,
    });
    if let Some(m) = &ds.mixture {
        card["mixture"] = serde_json::to_value(m).expect("mixture serialises");
    }
    card
}

/// Writes a whole file atomically ([`crate::util::atomic_write`]), with an error naming it.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::atomic_write(path, bytes).map_err(|e| match e.downcast::<std::io::Error>() {
        Ok(io) => DataError::io(path, io),
        Err(e) => DataError::Invalid(format!("{e:#}")),
    })
}

/// Reads a whole file, with an error naming it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Maps a u8 pixel 0..=255 to [-1, 1].
#[inline]
pub(crate) fn u8_to_unit(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_values() {
        let s = stats(&[-1.0, 1.0, -1.0, 1.0]);
        assert_eq!((s.min, s.max), (-1.0, 1.0));
        assert!(s.mean.abs() < 1e-12);
        assert!((s.std - 1.0).abs() < 1e-12);
    }

    #[test]
    fn truncate_and_check() {
        let mut ds = Dataset {
            data: DataTensor::Points {
                n: 3,
                values: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            },
            labels: Some(vec![0, 1, 2]),
            classes: Some(3),
            sources: vec![],
            mixture: None,
        };
        ds.check().unwrap();
        ds.truncate(2);
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.data.values(), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(ds.labels.as_deref(), Some(&[0i64, 1][..]));
        ds.labels = Some(vec![0, 5]);
        assert!(ds.check().is_err());
    }

    #[test]
    fn card_fields() {
        let ds = Dataset {
            data: DataTensor::Images {
                n: 2,
                c: 1,
                h: 1,
                w: 2,
                values: vec![-1.0, 1.0, 0.0, 0.0],
            },
            labels: Some(vec![3, 3]),
            classes: Some(10),
            sources: vec![SourceFile::from_bytes(Path::new("x.idx"), b"abc")],
            mixture: None,
        };
        let c = card(&ds);
        assert_eq!(c["count"], 2);
        assert_eq!(c["shape"], json!([2, 1, 1, 2]));
        assert_eq!(c["classes"], 10);
        assert_eq!(c["distinct_labels"], 1);
        assert_eq!(c["value_range"]["min"], -1.0);
        assert_eq!(c["value_range"]["max"], 1.0);
        assert_eq!(c["sources"][0]["path"], "x.idx");
        assert_eq!(
            c["sources"][0]["blake3"],
            blake3::hash(b"abc").to_hex().to_string()
        );
        assert_eq!(c["sources"][0]["bytes"], 3);
    }
}
