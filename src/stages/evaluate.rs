//! Stage `evaluate`: the numbers GAN papers report, for one `sample` instance against
//! the `data` it imitates (and a `judge` for image metrics that need one).
//!
//! `needs: [sample, data, judge]` (the judge may be left out for 2-D points, or when
//! only `spectral` and `cost` are asked for). Params (all optional):
//! - `metrics`: a list from `fid_judge`, `precision`, `recall`, `density`, `coverage`,
//!   `modes`, `reverse_kl`, `high_quality`, `class_accuracy`, `spectral`, `cost`; by
//!   default every one that applies to the data (images: all but `high_quality`; points:
//!   all but `spectral`; `class_accuracy` when the samples carry labels). Asking for one
//!   that does not apply is an error.
//! - `real_count` (10,000): real images/points drawn (without replacement, seeded) as
//!   the reference set of every metric; all of them when the data holds fewer.
//! - `fake_count` (= `real_count`): generated samples used for `fid_judge`, PRDC and
//!   `spectral` (the first ones of the sample artifact; all when it holds fewer).
//! - `mode_samples` (26,000, the PacGAN/VEEGAN protocol): generated samples `modes`,
//!   `reverse_kl` and `high_quality` are computed over, always exactly this many so
//!   that runs compare; an error when the sample artifact holds fewer.
//! - `min_confidence` (0.9): images only. `modes` and `reverse_kl` count only the
//!   generated samples the judge classifies with at least this softmax probability (on
//!   StackedMNIST, in each of the three digits), so that noise the judge labels at
//!   random covers no modes; `confident` is the share of the `mode_samples` that pass.
//!   0 counts every sample (the PacGAN/VEEGAN/R3GAN protocol), which `modes_all` and
//!   `reverse_kl_all` report next to them whatever `min_confidence` is.
//! - `seed` (0): the draw of the real reference set.
//! - `save_features` (false): also write `features.safetensors`.
//!
//! What the metrics are (DESIGN.md, "Evaluation"; formulas in [`crate::metrics`]):
//! - `fid_judge`: Frechet distance between Gaussian fits of real and generated
//!   features. For images the features are the judge's penultimate layer (per channel,
//!   concatenated, for a one-channel judge on StackedMNIST): **not** comparable with
//!   Inception FID from papers. For 2-D points the features are the points themselves.
//! - `precision`, `recall` (k = 3), `density`, `coverage` (k = 5), exact k-NN in the
//!   same feature space.
//! - Images: `modes` = classes (StackedMNIST: 1000 digit triples) the judge assigns,
//!   confidently, to at least one generated sample, `reverse_kl` = KL(generated modes ||
//!   uniform) over the confidently classified samples, `confident` = their share.
//!   Points (Gaussian ring/grid, centres and sigma from the data card): `modes` =
//!   centres with a sample within 3 sigma, `high_quality` = share of samples within
//!   3 sigma of a centre, `reverse_kl` over the high-quality samples.
//! - `spectral`: mean |log power difference| of the radially averaged spectra over the
//!   upper half of frequencies; `spectral_nyquist` = generated / real power at the
//!   highest frequency (> 1: too much high-frequency energy, e.g. checkerboards).
//! - `class_accuracy` (samples of a conditional generator, which carry labels): share of
//!   the `fake_count` samples whose class, as the judge predicts it (images: the same
//!   mode encoding as `modes`) or as the nearest centre (points), is the label they were
//!   generated for. The judge's classes must be the generator's.
//! - `cost`: `train_s`, `images_per_s`, `params_g`, `params_d`, `peak_rss_mib` of the
//!   train instance upstream, copied from its manifest.
//!
//! The metrics themselves (what each applies to and needs, and its computation) are
//! the registry in [`crate::metrics::registry`]; this stage loads the inputs, refuses
//! what does not apply, and writes the files.
//!
//! The judge's features of the real reference set depend only on the judge, the data
//! and the draw (`seed`, `real_count`): they are computed once and kept in the cache's
//! memo (`memo/judge-features/`, [`crate::engine::Memo`]), so every sample evaluated
//! against the same data and judge reads them (the same numbers as computing them).
//!
//! Writes `metrics.json` (every number, the counts and the feature space),
//! `modes.csv` + `modes.png` (samples per mode) where modes apply, and with
//! `save_features: true` `features.safetensors` (`real`, `fake`: f32 [N, F]).
//! Every scalar is also an Outcome metric, so it lands as a column in tabulate tables.

use super::data::{CARD_FILE, DATA_FILE};
use super::judge::JUDGE_FILE;
use super::sample::SAMPLES_FILE;
use crate::data::{load_dataset, DataTensor, Dataset, GaussianMixture};
use crate::engine::{
    normalised_params, CheckCtx, ConfigError, DeviceChoice, Figure, FigureCtx, InputRef, Outcome,
    Resources, RunCtx, Stage, Status,
};
use crate::metrics::{judge::Judge, registry};
use crate::nn::{Cpu, NamedTensor, Rng};
use crate::results::plots::{BarChart, Chart};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const METRICS_FILE: &str = "metrics.json";
pub const FEATURES_FILE: &str = "features.safetensors";

pub use crate::metrics::registry::Metric;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<Metric>>,
    #[serde(default = "default_real_count")]
    pub real_count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake_count: Option<usize>,
    #[serde(default = "default_mode_samples")]
    pub mode_samples: usize,
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub save_features: bool,
}

fn default_min_confidence() -> f64 {
    0.9
}

fn default_real_count() -> usize {
    10_000
}
fn default_mode_samples() -> usize {
    26_000
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: deterministic spectral sum over planes; classes assigned once for modes and class_accuracy.
/// 3: image modes and reverse_kl count confidently classified samples only (`min_confidence`).
/// 4: images also report `modes_all` and `reverse_kl_all` over every sample.
pub const VERSION: u32 = 4;

pub struct Evaluate;

impl Stage for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    /// On a cluster: judge passes over the samples and exact k-NN (PRDC) on the CPU.
    fn resources(&self, _params: &Value, _device: DeviceChoice) -> Resources {
        Resources::cluster(4, 8192, 60)
    }
    fn about(&self) -> &'static str {
        "metrics of samples against data: fid_judge, precision/recall, density/coverage, modes, reverse_kl, high_quality, class_accuracy, spectral, cost"
    }
    /// The columns of the metrics asked for (every metric's when left to the data),
    /// and `eval_s`.
    fn reports(&self, params: &Value) -> Option<Vec<String>> {
        let p: EvaluateParams = serde_json::from_value(params.clone()).ok()?;
        let metrics = p
            .metrics
            .unwrap_or_else(|| registry::METRICS.iter().map(|s| s.metric).collect());
        let mut out: Vec<String> = metrics
            .iter()
            .flat_map(|m| m.spec().columns.iter().map(|c| c.to_string()))
            .collect();
        out.push("eval_s".into());
        Some(out)
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        normalised_params::<EvaluateParams>(params, |p| {
            if let Some(m) = &p.metrics {
                if m.is_empty() {
                    return Err(ConfigError::new(
                        "metrics",
                        "an empty list: leave `metrics` out for every metric that applies",
                    ));
                }
                for (i, a) in m.iter().enumerate() {
                    if m[..i].contains(a) {
                        return Err(ConfigError::new(
                            format!("metrics[{i}]"),
                            format!("`{}` is listed twice", a.name()),
                        ));
                    }
                }
            }
            for (name, v) in [
                ("real_count", Some(p.real_count)),
                ("fake_count", p.fake_count),
                ("mode_samples", Some(p.mode_samples)),
            ] {
                if let Some(v) = v {
                    if !(2..=10_000_000).contains(&v) {
                        return Err(ConfigError::new(
                            name,
                            format!("{v} is out of range 2..=10000000"),
                        ));
                    }
                }
            }
            if !(0.0..1.0).contains(&p.min_confidence) {
                return Err(ConfigError::new(
                    "min_confidence",
                    format!(
                        "{} is out of range [0, 1): a softmax probability (0 counts every sample)",
                        p.min_confidence
                    ),
                ));
            }
            // The same work written differently gets the same key: the order of
            // `metrics` means nothing, and `fake_count` defaults to `real_count`.
            if let Some(m) = &mut p.metrics {
                m.sort();
            }
            if p.fake_count == Some(p.real_count) {
                p.fake_count = None;
            }
            Ok(())
        })
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: EvaluateParams = cx.params()?;
        let sample = cx.input("sample")?;
        let data = cx.input("data")?;
        let fake = load_dataset(&sample.dir.join(SAMPLES_FILE))
            .with_context(|| format!("loading the samples of `{}`", sample.label))?;
        let real = load_dataset(&data.dir.join(DATA_FILE))
            .with_context(|| format!("loading the data of `{}`", data.label))?;
        if fake.data.shape()[1..] != real.data.shape()[1..] {
            bail!(
                "evaluate: samples of `{}` have shape {:?}, data `{}` has {:?}",
                sample.label,
                fake.data.shape(),
                data.label,
                real.data.shape()
            );
        }
        let images = !matches!(real.data, DataTensor::Points { .. });
        let train = cx.ancestors.iter().find(|a| a.kind == "train");
        let metrics: Vec<Metric> = p
            .metrics
            .clone()
            .unwrap_or_else(|| registry::defaults(images, fake.labels.is_some(), train.is_some()));
        check_applies(&metrics, images, &fake, sample, data)?;
        let specs: Vec<&registry::Spec> = metrics.iter().map(|m| m.spec()).collect();

        // Reference and generated sets.
        let item = real.data.item_len();
        let n_real = real.len().min(p.real_count);
        let mut idx: Vec<usize> = (0..real.len()).collect();
        Rng::derived(p.seed, 0x7265_616c).shuffle(&mut idx);
        let mut ridx = idx[..n_real].to_vec();
        ridx.sort_unstable();
        let real_x: Vec<f32> = ridx
            .iter()
            .flat_map(|&i| real.data.item(i).iter().copied())
            .collect();
        let n_fake = fake.len().min(p.fake_count.unwrap_or(p.real_count));
        let fake_all = fake.data.values();
        let needs_modes = specs.iter().any(|s| s.modes);
        if needs_modes && fake.len() < p.mode_samples {
            bail!(
                "evaluate: modes/reverse_kl/high_quality are computed over mode_samples = {} \
                 generated samples (PacGAN/VEEGAN protocol: the same count for every run), \
                 but `{}` holds {}: sample at least that many or lower mode_samples",
                p.mode_samples,
                sample.label,
                fake.len()
            );
        }
        let mode_set = &fake_all[..p.mode_samples.min(fake.len()) * item];

        // A judge for image metrics that read features or classes; a mixture for points.
        let needs_features = specs.iter().any(|s| s.features);
        let needs_classes = needs_modes || specs.iter().any(|s| s.labels);
        let mut info = Map::new();
        let judge = if images && (needs_features || needs_classes) {
            Some(load_judge(cx, &real)?)
        } else {
            None
        };
        if let Some((_, label)) = &judge {
            info.insert("judge".into(), Value::from(label.clone()));
        }
        let judge_key = judge.as_ref().and_then(|_| {
            cx.inputs
                .iter()
                .find(|i| i.kind == "judge")
                .map(|j| j.key.clone())
        });
        let mixture = if !images && needs_classes {
            let mix = read_mixture(&data.dir)?.with_context(|| {
                format!("evaluate: `{}` is not a Gaussian mixture (no centres in its card): modes and class_accuracy on points need one", data.label)
            })?;
            Some((
                mix.centres.iter().flatten().copied().collect(),
                mix.sigma as f64,
            ))
        } else {
            None
        };
        let train_metrics = train.map(|t| (t.manifest.timings.wall_s, &t.manifest.metrics));
        let shape = real.data.shape();
        let mut inputs = registry::Inputs::new(
            &real_x,
            &fake_all[..n_fake * item],
            mode_set,
            &shape,
            judge.as_ref().map(|(j, _)| j),
            mixture,
            fake.labels.as_deref().map(|l| (l, fake.classes)),
            p.min_confidence,
            train_metrics,
        );

        let t = Instant::now();
        let mut report = registry::Report::default();
        let mut features_s = 0.0;
        if needs_features {
            if let Some(judge_key) = &judge_key {
                let rf = cached_real_features(cx, &inputs, judge_key, &data.key, p.seed, n_real)?;
                inputs.use_real_features(rf);
            }
            inputs.features()?;
            features_s = t.elapsed().as_secs_f64();
        }
        for s in &specs {
            s.compute(&mut inputs, &mut report)
                .with_context(|| format!("evaluate: `{}` of `{}`", s.name, sample.label))?;
        }
        let eval_s = t.elapsed().as_secs_f64();
        info.insert(
            "feature_space".into(),
            Value::from(if judge.is_some() {
                "judge penultimate layer (not Inception: not comparable with FID from papers)"
            } else {
                "raw 2-D coordinates"
            }),
        );
        info.extend(report.info);

        if let Some(hist) = &report.histogram {
            write_histogram(hist, cx.dir, cx.label)?;
        }
        let dim = if needs_features {
            let (real_f, fake_f, dim) = inputs.features()?;
            if p.save_features {
                let nt = |name: &str, v: &[f32]| NamedTensor {
                    name: name.into(),
                    shape: vec![v.len() / dim, dim],
                    data: v.to_vec(),
                };
                let mut meta = HashMap::new();
                meta.insert(
                    "feature_space".into(),
                    info["feature_space"].as_str().unwrap().to_string(),
                );
                crate::nn::save_safetensors(
                    &cx.dir.join(FEATURES_FILE),
                    &[nt("real", real_f), nt("fake", fake_f)],
                    meta,
                )?;
            }
            dim
        } else {
            0
        };
        let doc = json!({
            "metrics": report.values,
            "counts": {"real": n_real, "fake": n_fake, "mode_samples": if needs_modes { p.mode_samples } else { 0 }, "feature_dim": dim},
            "info": info,
            "seconds": {"features": features_s, "total": eval_s},
        });
        crate::util::atomic_write(
            &cx.dir.join(METRICS_FILE),
            serde_json::to_string_pretty(&doc)?.as_bytes(),
        )?;
        let mut o = Outcome::ok();
        o.metrics = report.values;
        o.metrics.insert("eval_s".into(), eval_s);
        o.info = info;
        o.info.remove("real_spectrum");
        o.info.remove("fake_spectrum");
        if sample.manifest.status == Status::Diverged || !fake_all.iter().all(|v| v.is_finite()) {
            o.status = Status::Diverged;
        }
        Ok(o)
    }

    fn figures(&self, cx: &FigureCtx) -> Result<Vec<Figure>> {
        let p = cx.dir.join("modes.csv");
        if !p.exists() {
            return Ok(vec![]);
        }
        let hist = read_histogram(&p)?;
        let c = modes_chart(&hist, "");
        Ok(vec![Figure::Svg {
            title: c.title.clone(),
            svg: c.svg(700, 300)?,
        }])
    }
}

/// The judge's features of the real reference set (the draw of `n_real` items of
/// `data_key` by `seed`), kept in the cache's memo by judge, data and draw: every sample
/// evaluated against the same data and judge reads them instead of recomputing them.
/// They are the same numbers as computed in place (the same items through the same
/// batches; f32 stored exactly).
fn cached_real_features(
    cx: &RunCtx,
    inputs: &registry::Inputs,
    judge_key: &str,
    data_key: &str,
    seed: u64,
    n_real: usize,
) -> Result<Vec<f32>> {
    // The draw (seed, count) and the code that draws and judges it (this kind's version).
    let params = json!({"evaluate_version": VERSION, "seed": seed, "real_count": n_real});
    let (path, hit) = cx.memo.get_or_make(
        "judge-features",
        &[judge_key, data_key],
        &params,
        "safetensors",
        |path| {
            let f = inputs.real_features()?;
            let dim = f.len() / n_real.max(1);
            let t = NamedTensor {
                name: "real".into(),
                shape: vec![n_real, dim],
                data: f,
            };
            crate::nn::save_safetensors(path, &[t], HashMap::new())
        },
    )?;
    tracing::debug!(
        "{}: real features {} {}",
        cx.label,
        if hit { "read from" } else { "kept in" },
        path.display()
    );
    let (mut map, _) = crate::nn::load_safetensors::<f32>(&path)?;
    let t = map
        .remove("real")
        .with_context(|| format!("{}: no tensor `real`", path.display()))?;
    if t.shape.first() != Some(&n_real) {
        bail!(
            "{}: shape {:?}, expected {n_real} rows",
            path.display(),
            t.shape
        );
    }
    Ok(t.data)
}

/// Refuses metrics that do not apply to the data or the samples, saying why.
fn check_applies(
    metrics: &[Metric],
    images: bool,
    fake: &Dataset,
    sample: &InputRef,
    data: &InputRef,
) -> Result<()> {
    for &m in metrics {
        if !m.applies_to(images) {
            let (wants, holds) = if images {
                ("2-D Gaussian mixtures", "images")
            } else {
                ("images", "2-D points")
            };
            bail!(
                "evaluate: `{}` applies to {wants}, `{}` holds {holds}",
                m.name(),
                data.label
            );
        }
        if m.spec().labels && fake.labels.is_none() {
            bail!(
                "evaluate: `{}` needs samples of a conditional generator \
                 (`{}` holds no labels: train with conditional: true)",
                m.name(),
                sample.label
            );
        }
    }
    Ok(())
}

/// The judge among the inputs, checked against the data's image size, and its label.
fn load_judge(cx: &RunCtx, real: &Dataset) -> Result<(Judge<f32, Cpu>, String)> {
    let j = cx
        .inputs
        .iter()
        .find(|i| i.kind == "judge")
        .with_context(|| {
            "evaluate: fid_judge, precision/recall/density/coverage and modes on images \
         need a judge: add a `judge` stage to `needs`"
        })?;
    let (judge, _) = Judge::<f32, Cpu>::load(&j.dir.join(JUDGE_FILE), Cpu::default())?;
    let [_, _, h, w] = real.data.shape()[..] else {
        unreachable!("images are [N, C, H, W]")
    };
    if (judge.arch.height, judge.arch.width_px) != (h, w) {
        bail!(
            "evaluate: judge `{}` takes {}x{} images, the data is {h}x{w}",
            j.label,
            judge.arch.height,
            judge.arch.width_px
        );
    }
    Ok((judge, j.label.clone()))
}

fn read_mixture(dir: &Path) -> Result<Option<GaussianMixture>> {
    let card: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CARD_FILE))?)?;
    Ok(match card.get("mixture") {
        Some(m) => Some(serde_json::from_value(m.clone())?),
        None => None,
    })
}

/// Samples per mode as a bar chart, with the count a uniform generator would give.
fn modes_chart(hist: &[u64], title_suffix: &str) -> BarChart {
    let total: u64 = hist.iter().sum();
    BarChart {
        title: format!("samples per mode{title_suffix}"),
        x_label: "mode (index)".into(),
        y_label: "generated samples".into(),
        name: format!("generated ({total} samples)"),
        values: hist.iter().map(|&c| c as f64).collect(),
        reference: (!hist.is_empty()).then(|| {
            (
                total as f64 / hist.len() as f64,
                "uniform over modes".to_string(),
            )
        }),
    }
}

/// `modes.csv` back as counts by mode.
fn read_histogram(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)?;
    let mut hist = vec![];
    for (i, line) in text.lines().enumerate().skip(1) {
        let (m, c) = line
            .split_once(',')
            .with_context(|| format!("{}:{}: expected mode,count", path.display(), i + 1))?;
        let (m, c): (usize, u64) = (m.trim().parse()?, c.trim().parse()?);
        if hist.len() <= m {
            hist.resize(m + 1, 0);
        }
        hist[m] = c;
    }
    Ok(hist)
}

/// `modes.csv` (mode,count) and `modes.png` (one bar per mode, axes, title, legend).
fn write_histogram(hist: &[u64], dir: &Path, label: &str) -> Result<()> {
    let mut csv = String::from("mode,count\n");
    for (m, c) in hist.iter().enumerate() {
        csv.push_str(&format!("{m},{c}\n"));
    }
    crate::util::atomic_write(&dir.join("modes.csv"), csv.as_bytes())?;
    let png = modes_chart(hist, &format!(": {label}")).png(800, 320)?;
    crate::util::atomic_write(&dir.join("modes.png"), &png)
}
