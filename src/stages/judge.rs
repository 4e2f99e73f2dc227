//! Stage `judge`: trains the evaluator network ([`crate::metrics::judge`]) on a
//! labelled image `data` artifact, once per data instance (cached like any stage).
//!
//! Params (all optional):
//! - `epochs` (4), `batch` (32), `lr` (1.5e-3, Adam, decayed linearly to 0),
//! - `width` (8: channels of the first conv block), `features` (128: feature width),
//! - `seed` (0: weights, split and minibatch order),
//! - `holdout` (0.2: share of distinct images held out for the accuracy),
//! - `max_train` (none: cap on training images, for speed).
//!
//! What it trains on:
//! - `mnist` (and any labelled one-channel data): a digit classifier on whole images;
//! - `stacked_mnist`: a one-channel digit classifier on the channels (label
//!   `100a + 10b + c` gives digit `a` to channel 0, `b` to 1, `c` to 2); evaluate
//!   applies it to every channel to find the 1000 modes;
//! - labelled `image_folder` data: a classifier on whole images over its classes.
//!
//! Exact duplicate inputs are dropped before the split (StackedMNIST reuses each of
//! 10,000 digits many times), so held-out accuracy is measured on images the judge
//! never saw.
//!
//! Refused, with a message that says what to do instead:
//! - 2-D points: the evaluate stage measures points directly (modes, high_quality,
//!   precision/recall in the plane) and needs no judge;
//! - unlabelled images (`image_folder` without subfolders): there is nothing to learn
//!   from. Give evaluate a judge trained on a labelled data stage with the same
//!   resolution (a one-channel judge is applied per channel), see the README.
//!
//! Writes `judge.safetensors` (weights named `judge.<module path>`, the architecture in
//! the metadata) and `card.json` (accuracy, feature width, classes, counts, losses).
//! Metrics (table columns): `accuracy` (held out), `train_loss` (last epoch),
//! `feature_dim` (per evaluated image: `features` times the channels for a per-channel
//! judge), `params`, `train_s`.

use super::data::DATA_FILE;
use crate::data::{load_dataset, DataTensor};
use crate::engine::{
    typed_params, CheckCtx, ConfigError, DeviceChoice, Outcome, Resources, RunCtx, Stage,
};
use crate::metrics::judge::{distinct_rows, FitOptions, Judge as Net, JudgeArch};
use crate::nn::{Cpu, Rng};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// The weights file of a judge artifact.
pub const JUDGE_FILE: &str = "judge.safetensors";
/// Its card.
pub const CARD_FILE: &str = "card.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeParams {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_width")]
    pub width: usize,
    #[serde(default = "default_features")]
    pub features: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train: Option<usize>,
}

fn default_epochs() -> usize {
    4
}
fn default_batch() -> usize {
    32
}
fn default_lr() -> f64 {
    1.5e-3
}
fn default_width() -> usize {
    8
}
fn default_features() -> usize {
    128
}
fn default_holdout() -> f64 {
    0.2
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
pub const VERSION: u32 = 1;

pub struct Judge;

fn range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::new(
            name,
            format!("{v} is out of range {lo}..={hi}"),
        ));
    }
    Ok(())
}

impl Stage for Judge {
    fn kind(&self) -> &'static str {
        "judge"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    /// On a cluster: a small CNN trained on CPU or GPU.
    fn resources(&self, _params: &Value, _device: DeviceChoice) -> Resources {
        Resources::cluster(4, 4096, 120)
    }
    fn about(&self) -> &'static str {
        "train the evaluator CNN on labelled images (features for fid_judge/prdc, labels for modes)"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<JudgeParams>(params, |p| {
            range("epochs", p.epochs, 1, 1000)?;
            range("batch", p.batch, 1, 65_536)?;
            range("width", p.width, 1, 512)?;
            range("features", p.features, 1, 4096)?;
            if !(p.lr.is_finite() && p.lr > 0.0 && p.lr <= 1.0) {
                return Err(ConfigError::new(
                    "lr",
                    format!("{}: must be in (0, 1]", p.lr),
                ));
            }
            if !(p.holdout > 0.0 && p.holdout < 1.0) {
                return Err(ConfigError::new(
                    "holdout",
                    format!("{}: must be in (0, 1)", p.holdout),
                ));
            }
            if p.max_train == Some(0) {
                return Err(ConfigError::new("max_train", "must be at least 1"));
            }
            Ok(())
        })
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: JudgeParams = cx.params()?;
        let data = cx.input("data")?;
        let ds = load_dataset(&data.dir.join(DATA_FILE))?;
        let (n, c, h, w, values) = match ds.data {
            DataTensor::Points { .. } => bail!(
                "judge: `{}` holds 2-D points; evaluate measures points directly (modes, \
                 high_quality, precision/recall in the plane) and needs no judge: drop the \
                 judge stage and take `judge` out of evaluate's `needs`",
                data.label
            ),
            DataTensor::Images { n, c, h, w, values } => (n, c, h, w, values),
        };
        let Some(labels) = ds.labels else {
            bail!(
                "judge: `{}` has no labels, so there is nothing to train a classifier on; \
                 train the judge on a labelled data stage with the same resolution (e.g. \
                 source: mnist) and give that judge to evaluate (README, \"Evaluation\")",
                data.label
            )
        };
        let classes = ds
            .classes
            .unwrap_or_else(|| labels.iter().copied().max().map_or(0, |m| m as usize + 1));
        let source = data.manifest.params.get("source").and_then(|s| s.as_str());
        // StackedMNIST: one digit classifier over the channels.
        let per_channel = source == Some("stacked_mnist");
        let (in_c, k, item_labels): (usize, usize, Vec<usize>) = if per_channel {
            let k = 10usize;
            if classes != k.pow(c as u32) {
                bail!("judge: stacked data with {c} channels should have {} classes, card says {classes}", k.pow(c as u32));
            }
            let mut l = Vec::with_capacity(n * c);
            for &lab in &labels {
                for j in 0..c {
                    l.push((lab as usize / k.pow((c - 1 - j) as u32)) % k);
                }
            }
            (1, k, l)
        } else {
            (c, classes, labels.iter().map(|&l| l as usize).collect())
        };
        let il = in_c * h * w;
        // Split distinct images, seeded.
        let mut idx = distinct_rows(&values, il);
        let distinct = idx.len();
        Rng::derived(p.seed, 0x73706c6974).shuffle(&mut idx);
        if distinct < 2 {
            bail!(
                "judge: `{}` has {distinct} distinct images; need at least 2",
                data.label
            );
        }
        let n_hold = ((distinct as f64 * p.holdout).round() as usize).clamp(1, distinct - 1);
        let (hold, train) = idx.split_at(n_hold);
        let train = &train[..p.max_train.unwrap_or(usize::MAX).min(train.len())];
        let gather = |ix: &[usize]| -> (Vec<f32>, Vec<usize>) {
            let mut x = Vec::with_capacity(ix.len() * il);
            let mut y = Vec::with_capacity(ix.len());
            for &i in ix {
                x.extend_from_slice(&values[i * il..(i + 1) * il]);
                y.push(item_labels[i]);
            }
            (x, y)
        };
        let (xtr, ytr) = gather(train);
        let (xho, yho) = gather(hold);
        let arch = JudgeArch {
            in_channels: in_c,
            height: h,
            width_px: w,
            classes: k,
            width: p.width,
            features: p.features,
        };
        let mut net = Net::<f32, Cpu>::new(arch, Cpu::default(), p.seed)?;
        let t = Instant::now();
        let losses = net.fit(
            &xtr,
            &ytr,
            FitOptions {
                epochs: p.epochs,
                batch: p.batch,
                lr: p.lr,
                seed: p.seed,
            },
            |step, total, _| {
                cx.progress.set(step as u64, total as u64);
                cx.check_cancel()
            },
        )?;
        let train_s = t.elapsed().as_secs_f64();
        let accuracy = net.accuracy(&xho, &yho)?;
        let train_accuracy = net.accuracy(
            &xtr[..xtr.len().min(2000 * il)],
            &ytr[..ytr.len().min(2000)],
        )?;
        tracing::info!(
            "{}: held-out accuracy {:.4} on {} images ({} trained, {train_s:.1} s)",
            cx.label,
            accuracy,
            yho.len(),
            ytr.len()
        );
        let views = if per_channel { c } else { 1 };
        let card = json!({
            "accuracy": accuracy,
            "train_accuracy_first_2000": train_accuracy,
            "holdout_count": yho.len(),
            "train_count": ytr.len(),
            "distinct_inputs": distinct,
            "inputs_per_item": views,
            "per_channel": per_channel,
            "classes": k,
            "modes": k.pow(views as u32),
            "feature_dim": p.features,
            "feature_dim_per_item": p.features * views,
            "arch": arch,
            "params": net.param_count(),
            "epoch_losses": losses,
            "train_s": train_s,
            "data": data.label,
        });
        crate::util::atomic_write(
            &cx.dir.join(CARD_FILE),
            serde_json::to_string_pretty(&card)?.as_bytes(),
        )?;
        let mut meta = HashMap::new();
        meta.insert("accuracy".into(), accuracy.to_string());
        meta.insert("seed".into(), p.seed.to_string());
        net.save(&cx.dir.join(JUDGE_FILE), meta)?;
        Ok(Outcome::ok()
            .metric("accuracy", accuracy)
            .metric("train_loss", *losses.last().unwrap_or(&f64::NAN))
            .metric("feature_dim", (p.features * views) as f64)
            .metric("params", net.param_count() as f64)
            .metric("train_s", train_s))
    }
}
