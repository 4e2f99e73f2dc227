//! Stage `data`: a dataset source -> `data.safetensors` + `card.json` + `preview.png`.
//!
//! Sources: `mnist` (IDX files, gzipped or not), `stacked_mnist` (three random digits
//! in R, G, B; label 100a+10b+c; 1000 modes), `gaussian_ring` (8 modes),
//! `gaussian_grid` (25 modes), `image_folder` (PNG/JPEG, resized and centre-cropped).
//! The tensors follow DESIGN.md: `images` f32 `[N,C,H,W]` in `[-1,1]` or `points` f32
//! `[N,2]`, and `labels` i64 `[N]`.

use crate::data::{
    self, Dataset, ImageFolderOptions, MnistOptions, MnistSplit, StackedMnistOptions,
};
use crate::engine::{
    normalised_params, CheckCtx, ConfigError, DeviceChoice, Figure, FigureCtx, Outcome, Resources,
    RunCtx, Stage,
};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// File names inside a data artifact.
pub const DATA_FILE: &str = "data.safetensors";
pub const CARD_FILE: &str = "card.json";
pub const PREVIEW_FILE: &str = "preview.png";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Mnist,
    StackedMnist,
    GaussianRing,
    GaussianGrid,
    ImageFolder,
}

/// Params of `kind: data`. Which keys apply depends on `source`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataParams {
    pub source: Source,
    /// Folder of the files (mnist, stacked_mnist, image_folder), relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// MNIST split: `t10k` (shipped) or `train`.
    #[serde(default = "default_split")]
    pub split: MnistSplit,
    /// Image side length (28 native for MNIST; 32 pads 2 px per side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
    /// Number of items (all the files hold by default; required for generated sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Seed of generated sources (stacked_mnist, gaussian_*).
    #[serde(default)]
    pub seed: u64,
    /// image_folder: 1 (grayscale) or 3 (RGB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// image_folder: read subfolders and take labels from their names.
    #[serde(default)]
    pub recursive: bool,
    /// gaussian_ring: radius of the circle of centres (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f32>,
    /// gaussian_*: standard deviation of each mode (ring 0.02, grid 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f32>,
}

/// Side length of `image_folder` images when `resolution` is not given.
const DEFAULT_FOLDER_RESOLUTION: usize = 32;

fn default_split() -> MnistSplit {
    MnistSplit::T10k
}

impl DataParams {
    fn validate(&self, cx: &CheckCtx) -> Result<(), ConfigError> {
        use Source::*;
        let file_source = matches!(self.source, Mnist | StackedMnist | ImageFolder);
        match (&self.root, file_source) {
            (None, true) => {
                return Err(ConfigError::new(
                    "root",
                    format!(
                        "source {:?} needs `root`, the folder of its files",
                        self.source
                    ),
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "root",
                    "a generated source takes no `root`",
                ))
            }
            (Some(r), true) => {
                let root = cx.existing_path("root", r)?;
                if matches!(self.source, Mnist | StackedMnist) {
                    data::mnist::mnist_files(&root, self.split)
                        .map_err(|e| ConfigError::new("root", e.to_string()))?;
                }
            }
            (None, false) => {}
        }
        if let Some(r) = self.resolution {
            if !(4..=512).contains(&r) {
                return Err(ConfigError::new(
                    "resolution",
                    format!("{r} is out of range 4..=512"),
                ));
            }
            if matches!(self.source, GaussianRing | GaussianGrid) {
                return Err(ConfigError::new(
                    "resolution",
                    "2-D point sources have no resolution",
                ));
            }
        }
        if self.count == Some(0) {
            return Err(ConfigError::new("count", "must be at least 1"));
        }
        if matches!(self.source, StackedMnist | GaussianRing | GaussianGrid) && self.count.is_none()
        {
            return Err(ConfigError::new(
                "count",
                format!(
                    "source {:?} generates data: say how many with `count`",
                    self.source
                ),
            ));
        }
        if let Some(c) = self.channels {
            if self.source != ImageFolder {
                return Err(ConfigError::new(
                    "channels",
                    "only image_folder takes `channels`",
                ));
            }
            if c != 1 && c != 3 {
                return Err(ConfigError::new("channels", format!("{c}: must be 1 or 3")));
            }
        }
        for (name, v) in [("radius", self.radius), ("std", self.std)] {
            if let Some(v) = v {
                if !matches!(self.source, GaussianRing | GaussianGrid)
                    || (name == "radius" && self.source != GaussianRing)
                {
                    return Err(ConfigError::new(
                        name,
                        format!("source {:?} takes no `{name}`", self.source),
                    ));
                }
                if !(v.is_finite() && v > 0.0) {
                    return Err(ConfigError::new(
                        name,
                        format!("{v}: must be a positive number"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Optional params equal to their default for this source set back to unset (so
    /// `{radius: 2}` and `{}` share a key), and `root` written without `./` parts or a
    /// trailing slash.
    fn normalise(&mut self) {
        use Source::*;
        let drop_eq = |v: &mut Option<f32>, d: f32| {
            if *v == Some(d) {
                *v = None
            }
        };
        match self.source {
            Mnist | StackedMnist if self.resolution == Some(data::mnist::MNIST_SIDE) => {
                self.resolution = None
            }
            ImageFolder => {
                if self.resolution == Some(DEFAULT_FOLDER_RESOLUTION) {
                    self.resolution = None;
                }
                if self.channels == Some(3) {
                    self.channels = None;
                }
            }
            GaussianRing => {
                drop_eq(&mut self.radius, data::DEFAULT_RING_RADIUS);
                drop_eq(&mut self.std, data::DEFAULT_RING_STD);
            }
            GaussianGrid => drop_eq(&mut self.std, data::DEFAULT_GRID_STD),
            _ => {}
        }
        if let Some(r) = &mut self.root {
            let clean: std::path::PathBuf = Path::new(r.as_str())
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            if !clean.as_os_str().is_empty() {
                *r = clean.to_string_lossy().into_owned();
            }
        }
    }

    /// Build the dataset.
    pub fn load(&self) -> Result<Dataset> {
        let split = self.split;
        let root = || Path::new(self.root.as_deref().unwrap_or(".")).to_path_buf();
        Ok(match self.source {
            Source::Mnist => {
                let mut o = MnistOptions::new(root());
                o.split = split;
                o.count = self.count;
                if let Some(r) = self.resolution {
                    o.resolution = r;
                }
                data::load_mnist(&o)?
            }
            Source::StackedMnist => {
                let mut o = StackedMnistOptions::new(root(), self.count.unwrap_or(10_000));
                o.split = split;
                o.seed = self.seed;
                if let Some(r) = self.resolution {
                    o.resolution = r;
                }
                data::load_stacked_mnist(&o)?
            }
            Source::GaussianRing => data::gaussian_ring(
                self.count.unwrap_or(10_000),
                self.radius.unwrap_or(data::DEFAULT_RING_RADIUS),
                self.std.unwrap_or(data::DEFAULT_RING_STD),
                self.seed,
            )?,
            Source::GaussianGrid => data::gaussian_grid(
                self.count.unwrap_or(10_000),
                self.std.unwrap_or(data::DEFAULT_GRID_STD),
                self.seed,
            )?,
            Source::ImageFolder => {
                let mut o = ImageFolderOptions::new(
                    root(),
                    self.resolution.unwrap_or(DEFAULT_FOLDER_RESOLUTION),
                );
                o.channels = self.channels.unwrap_or(3);
                o.recursive = self.recursive;
                o.count = self.count;
                data::load_image_folder(&o)?
            }
        })
    }
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: generated sources (gaussian_*, stacked_mnist) draw from `nn::Rng` instead of rand's StdRng.
pub const VERSION: u32 = 2;

pub struct Data;

impl Stage for Data {
    fn kind(&self) -> &'static str {
        "data"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    /// On a cluster: datasets are read or generated once: a few cores, a few GB.
    fn resources(&self, _params: &Value, _device: DeviceChoice) -> Resources {
        Resources::cluster(2, 4096, 60)
    }
    fn about(&self) -> &'static str {
        "load or generate a dataset (mnist, stacked_mnist, gaussian_ring, gaussian_grid, image_folder)"
    }
    fn check(&self, params: &Value, cx: &CheckCtx) -> Result<Value, ConfigError> {
        normalised_params::<DataParams>(params, |p| {
            p.validate(cx)?;
            p.normalise();
            Ok(())
        })
    }
    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: DataParams = cx.params()?;
        let ds = p.load()?;
        cx.check_cancel()?;
        data::save_dataset(&ds, &cx.dir.join(DATA_FILE))?;
        let card = data::card(&ds);
        crate::util::atomic_write(
            &cx.dir.join(CARD_FILE),
            serde_json::to_string_pretty(&card)?.as_bytes(),
        )?;
        data::write_preview(
            &ds,
            &cx.dir.join(PREVIEW_FILE),
            &format!("data: {}", cx.label),
        )?;
        let s = data::stats(ds.data.values());
        let mut out = Outcome::ok()
            .metric("count", ds.len() as f64)
            .metric("mean", s.mean)
            .metric("std", s.std)
            .metric("min", s.min as f64)
            .metric("max", s.max as f64);
        if let Some(c) = ds.classes {
            out = out.metric("classes", c as f64);
        }
        Ok(out)
    }

    fn figures(&self, cx: &FigureCtx) -> Result<Vec<Figure>> {
        Ok(super::sample::file_figure(cx, PREVIEW_FILE, "preview"))
    }
}
