//! Stage `sample`: `count` samples from a trained generator (EMA by default).
//!
//! Writes `samples.safetensors` in the data artifact format (`images` f32
//! `[N,C,H,W]` in `[-1,1]` or `points` f32 `[N,2]`), so evaluation and Python read it like
//! data, and `grid.png` (the first 64 images, or a scatter plot of the points).
//! Latents come from `seed` alone: the same checkpoint and seed give the same samples.
//! The sample shape is the one the checkpoint records (`gan::checkpoint_shape`; the
//! data's card for checkpoints older than that).
//! A conditional generator is sampled for labels balanced over its classes
//! (`0, 1, ..., k-1, 0, ...`), and the file holds them as `labels` (i64 `[N]`); its grid
//! has one column per class (up to 32 classes, 8 rows).
//!
//! `needs: [SOME_DATA_STAGE]` instead of a train stage makes a *reference*: `count`
//! items of that data drawn without replacement (seeded by `seed`), written the same
//! way without their labels, so that the real data goes through the same `evaluate`
//! as a generator and its row shows the scale of every metric. Draw them from a data
//! instance other than the one evaluate compares against (another seed or split).

use super::train::CHECKPOINT_FILE;
use crate::data::{self, DataTensor, Dataset};
use crate::device::Backend;
use crate::engine::{
    typed_params, CheckCtx, ConfigError, DeviceChoice, Figure, FigureCtx, InputRef, Outcome,
    Resources, RunCtx, Stage, Status,
};
use crate::gan::{self, DataShape, TrainConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;

pub const SAMPLES_FILE: &str = "samples.safetensors";
pub const GRID_FILE: &str = "grid.png";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleParams {
    /// How many samples.
    #[serde(default = "default_count")]
    pub count: usize,
    /// Seed of the latents.
    #[serde(default)]
    pub seed: u64,
    /// Sample the EMA generator (true) or the raw one (false).
    #[serde(default = "yes")]
    pub ema: bool,
}

fn default_count() -> usize {
    10_000
}
fn yes() -> bool {
    true
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: follows train 2 (conditional label draws; generator code shared with train).
/// 3: follows train 3 (G_ema's own batch-norm statistics, the new R3GAN / StyleGAN nets).
pub const VERSION: u32 = 3;

pub struct Sample;

impl Stage for Sample {
    fn kind(&self) -> &'static str {
        "sample"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    /// On a cluster: a forward pass of G.
    fn resources(&self, _params: &Value, device: DeviceChoice) -> Resources {
        // sampling runs where training did; the train config's own `device` is read at
        // run time, so the run-wide choice decides the request
        Resources {
            gpu: device.resolve().ok() == Some(Backend::Cuda),
            ..Resources::cluster(2, 4096, 60)
        }
    }
    fn about(&self) -> &'static str {
        "draw samples from a trained generator (+ PNG grid; balanced labels when conditional), or real items of a data stage as a reference"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<SampleParams>(params, |p| {
            if !(1..=1_000_000).contains(&p.count) {
                return Err(ConfigError::new(
                    "count",
                    format!("{} is out of range 1..=1000000", p.count),
                ));
            }
            Ok(())
        })
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: SampleParams = cx.params()?;
        if !cx.inputs.iter().any(|i| i.kind == "train") {
            if let Some(data) = cx.inputs.iter().find(|i| i.kind == "data") {
                return real_samples(cx, &p, data);
            }
        }
        let train = cx.input("train")?;
        let cfg: TrainConfig = serde_json::from_value(train.manifest.params.clone())
            .context("reading the train instance's params")?;
        let ckpt = train.dir.join(CHECKPOINT_FILE);
        // The data the generator was trained on: its mixture (points) goes with the
        // samples, and its card gives the shape of checkpoints older than their `shape`.
        let data = cx.ancestors_of(train).find(|a| a.kind == "data");
        let shape = match gan::checkpoint_shape(&ckpt)? {
            Some(shape) => shape,
            None => data_card_shape(data.context("the train instance has no data input")?)?,
        };
        let mixture = match (shape, data) {
            (DataShape::Points, Some(d)) => read_card(d)?
                .get("mixture")
                .and_then(|m| serde_json::from_value(m.clone()).ok()),
            _ => None,
        };
        // on the device the generator trained on (the train config's, else the run's); a
        // checkpoint trained on a GPU elsewhere samples on the CPU of a build without CUDA
        let device = match cfg.device.unwrap_or(cx.device).resolve() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{}: {e:#}; sampling on the CPU instead", cx.label);
                Backend::Cpu
            }
        };
        let t = Instant::now();
        let samples = match device {
            #[cfg(feature = "cuda")]
            Backend::Cuda => gan::sample_checkpoint_on(
                &cfg,
                shape,
                &ckpt,
                p.ema,
                p.count,
                p.seed,
                super::train::open_cuda()?,
            )?,
            _ => gan::sample_checkpoint(&cfg, shape, &ckpt, p.ema, p.count, p.seed)?,
        };
        let secs = t.elapsed().as_secs_f64();
        let n = p.count;
        let values = samples.values;
        let tensor = match shape {
            DataShape::Points => DataTensor::Points { n, values },
            DataShape::Image { c, res } => DataTensor::Images {
                n,
                c,
                h: res,
                w: res,
                values,
            },
        };
        let finite = tensor.values().iter().all(|v| v.is_finite());
        let ds = Dataset {
            data: tensor,
            labels: samples
                .labels
                .map(|l| l.into_iter().map(|y| y as i64).collect()),
            classes: samples.classes,
            sources: vec![],
            mixture,
        };
        data::save_dataset(&ds, &cx.dir.join(SAMPLES_FILE))?;
        write_grid(
            &ds,
            &cx.dir.join(GRID_FILE),
            &format!("samples: {}", cx.label),
        )?;
        let mut out = Outcome::ok()
            .metric("count", n as f64)
            .metric("samples_per_s", n as f64 / secs.max(1e-9));
        out.info
            .insert("device".into(), Value::from(device.as_str()));
        if !finite || train.manifest.status == Status::Diverged {
            out.status = Status::Diverged;
        }
        Ok(out)
    }

    fn figures(&self, cx: &FigureCtx) -> Result<Vec<Figure>> {
        Ok(file_figure(cx, GRID_FILE, "samples"))
    }
}

/// The data instance's `card.json`.
fn read_card(data: &InputRef) -> Result<Value> {
    let path = data.dir.join(super::data::CARD_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The example shape of a data instance, from its card (for checkpoints written before
/// they recorded it).
fn data_card_shape(data: &InputRef) -> Result<DataShape> {
    let dims: Vec<usize> = serde_json::from_value(read_card(data)?["shape"].clone())?;
    match dims.as_slice() {
        [_, rest @ ..] => DataShape::from_item_dims(rest),
        [] => anyhow::bail!("{}: empty data shape", data.label),
    }
}

/// A reference "sample": `count` items of the data instance `data`, drawn without
/// replacement, in a seeded order, without labels.
fn real_samples(cx: &RunCtx, p: &SampleParams, data: &InputRef) -> Result<Outcome> {
    let t = Instant::now();
    let ds = data::load_dataset(&data.dir.join(super::data::DATA_FILE))
        .with_context(|| format!("loading the data of `{}`", data.label))?;
    if ds.len() < p.count {
        anyhow::bail!(
            "sample: count = {} real items asked of `{}`, which holds {}: lower count or make the data stage larger",
            p.count,
            data.label,
            ds.len()
        );
    }
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    crate::nn::Rng::derived(p.seed, 0x7265_6665).shuffle(&mut idx);
    let values: Vec<f32> = idx[..p.count]
        .iter()
        .flat_map(|&i| ds.data.item(i).iter().copied())
        .collect();
    let n = p.count;
    let tensor = match ds.data {
        DataTensor::Points { .. } => DataTensor::Points { n, values },
        DataTensor::Images { c, h, w, .. } => DataTensor::Images { n, c, h, w, values },
    };
    let out_ds = Dataset {
        data: tensor,
        labels: None,
        classes: None,
        sources: vec![],
        mixture: ds.mixture,
    };
    data::save_dataset(&out_ds, &cx.dir.join(SAMPLES_FILE))?;
    write_grid(
        &out_ds,
        &cx.dir.join(GRID_FILE),
        &format!("real data: {}", cx.label),
    )?;
    let secs = t.elapsed().as_secs_f64();
    let mut out = Outcome::ok()
        .metric("count", n as f64)
        .metric("samples_per_s", n as f64 / secs.max(1e-9));
    out.info
        .insert("reference".into(), Value::from("real data"));
    Ok(out)
}

/// The preview grid: one column per class for conditional image samples of at most 32
/// classes (sample i has label i mod k, so rows of k are one sample per class), else the
/// data preview (the first 64 images, or a scatter plot).
fn write_grid(ds: &Dataset, path: &std::path::Path, title: &str) -> Result<()> {
    if let (DataTensor::Images { n, c, h, w, values }, Some(k)) = (&ds.data, ds.classes) {
        if ds.labels.is_some() && (1..=32).contains(&k) && *n >= k {
            let rows = (n / k).min(8);
            let m = rows * k;
            data::write_image_grid(path, &values[..m * c * h * w], m, *c, *h, *w, k)?;
            return Ok(());
        }
    }
    data::write_preview(ds, path, title)?;
    Ok(())
}

/// A picture file of the instance, if it wrote one.
pub(crate) fn file_figure(cx: &FigureCtx, file: &str, title: &str) -> Vec<Figure> {
    if cx.dir.join(file).exists() {
        vec![Figure::File {
            title: title.to_string(),
            file: file.to_string(),
        }]
    } else {
        vec![]
    }
}
