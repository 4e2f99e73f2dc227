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
//!   0 counts every sample (the PacGAN/VEEGAN/R3GAN protocol).
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
//! Writes `metrics.json` (every number, the counts and the feature space),
//! `modes.csv` + `modes.png` (samples per mode) where modes apply, and with
//! `save_features: true` `features.safetensors` (`real`, `fake`: f32 [N, F]).
//! Every scalar is also an Outcome metric, so it lands as a column in tabulate tables.

use super::data::{CARD_FILE, DATA_FILE};
use super::judge::JUDGE_FILE;
use super::sample::SAMPLES_FILE;
use crate::data::{load_dataset, DataTensor, GaussianMixture};
use crate::engine::{
    normalised_params, CheckCtx, Figure, FigureCtx, Outcome, ParamError, RunCtx, Stage, Status,
};
use crate::metrics::{self, judge::Judge};
use crate::nn::{Cpu, NamedTensor, Rng};
use crate::results::plots::{BarChart, Chart};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

pub const METRICS_FILE: &str = "metrics.json";
pub const FEATURES_FILE: &str = "features.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    FidJudge,
    Precision,
    Recall,
    Density,
    Coverage,
    Modes,
    ReverseKl,
    HighQuality,
    ClassAccuracy,
    Spectral,
    Cost,
}

impl Metric {
    fn name(self) -> &'static str {
        use Metric::*;
        match self {
            FidJudge => "fid_judge",
            Precision => "precision",
            Recall => "recall",
            Density => "density",
            Coverage => "coverage",
            Modes => "modes",
            ReverseKl => "reverse_kl",
            HighQuality => "high_quality",
            ClassAccuracy => "class_accuracy",
            Spectral => "spectral",
            Cost => "cost",
        }
    }
    /// The columns (Outcome metrics) it adds to a run's row.
    fn columns(self) -> &'static [&'static str] {
        use Metric::*;
        match self {
            FidJudge => &["fid_judge"],
            Precision => &["precision"],
            Recall => &["recall"],
            Density => &["density"],
            Coverage => &["coverage"],
            Modes => &["modes", "confident"],
            ReverseKl => &["reverse_kl"],
            HighQuality => &["high_quality"],
            ClassAccuracy => &["class_accuracy"],
            Spectral => &["spectral", "spectral_nyquist"],
            Cost => &[
                "train_s",
                "images_per_s",
                "params_g",
                "params_d",
                "peak_rss_mib",
            ],
        }
    }
    fn needs_features(self) -> bool {
        use Metric::*;
        matches!(self, FidJudge | Precision | Recall | Density | Coverage)
    }
}

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
pub const VERSION: u32 = 3;

pub struct Evaluate;

impl Stage for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn about(&self) -> &'static str {
        "metrics of samples against data: fid_judge, precision/recall, density/coverage, modes, reverse_kl, high_quality, class_accuracy, spectral, cost"
    }
    /// The columns of the metrics asked for (every metric's when left to the data),
    /// and `eval_s`.
    fn reports(&self, params: &Value) -> Option<Vec<String>> {
        use Metric::*;
        let p: EvaluateParams = serde_json::from_value(params.clone()).ok()?;
        let all = [
            FidJudge,
            Precision,
            Recall,
            Density,
            Coverage,
            Modes,
            ReverseKl,
            HighQuality,
            ClassAccuracy,
            Spectral,
            Cost,
        ];
        let metrics = p.metrics.unwrap_or_else(|| all.to_vec());
        let mut out: Vec<String> = metrics
            .iter()
            .flat_map(|m| m.columns().iter().map(|c| c.to_string()))
            .collect();
        out.push("eval_s".into());
        Some(out)
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ParamError> {
        normalised_params::<EvaluateParams>(params, |p| {
            if let Some(m) = &p.metrics {
                if m.is_empty() {
                    return Err(ParamError::new(
                        "metrics",
                        "an empty list: leave `metrics` out for every metric that applies",
                    ));
                }
                for (i, a) in m.iter().enumerate() {
                    if m[..i].contains(a) {
                        return Err(ParamError::new(
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
                        return Err(ParamError::new(
                            name,
                            format!("{v} is out of range 2..=10000000"),
                        ));
                    }
                }
            }
            if !(0.0..1.0).contains(&p.min_confidence) {
                return Err(ParamError::new(
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
        let judge_in = cx.inputs.iter().find(|i| i.kind == "judge");
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
        let is_points = matches!(real.data, DataTensor::Points { .. });
        let metrics: Vec<Metric> = match &p.metrics {
            Some(m) => m.clone(),
            None => {
                use Metric::*;
                let mut m = vec![
                    FidJudge, Precision, Recall, Density, Coverage, Modes, ReverseKl,
                ];
                m.push(if is_points { HighQuality } else { Spectral });
                if fake.labels.is_some() {
                    m.push(ClassAccuracy);
                }
                if cx.ancestors.iter().any(|a| a.kind == "train") {
                    m.push(Cost);
                }
                m
            }
        };
        let want = |m: Metric| metrics.contains(&m);
        for &m in &metrics {
            if is_points && m == Metric::Spectral {
                bail!(
                    "evaluate: `spectral` applies to images, `{}` holds 2-D points",
                    data.label
                );
            }
            if m == Metric::ClassAccuracy && fake.labels.is_none() {
                bail!(
                    "evaluate: `class_accuracy` needs samples of a conditional generator \
                     (`{}` holds no labels: train with conditional: true)",
                    sample.label
                );
            }
            if !is_points && m == Metric::HighQuality {
                bail!(
                    "evaluate: `high_quality` applies to 2-D Gaussian mixtures, `{}` holds images",
                    data.label
                );
            }
        }

        // Reference and generated sets.
        let item = real.data.item_len();
        let n_real = real.len().min(p.real_count);
        let mut idx: Vec<usize> = (0..real.len()).collect();
        metrics::judge::shuffle(&mut idx, &mut Rng::derived(p.seed, 0x7265_616c));
        let mut ridx = idx[..n_real].to_vec();
        ridx.sort_unstable();
        let real_x: Vec<f32> = ridx
            .iter()
            .flat_map(|&i| real.data.item(i).iter().copied())
            .collect();
        let n_fake = fake.len().min(p.fake_count.unwrap_or(p.real_count));
        let fake_x = &fake.data.values()[..n_fake * item];
        let fake_all = fake.data.values();

        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        let mut info = Map::new();
        let t = Instant::now();
        let needs_modes =
            want(Metric::Modes) || want(Metric::ReverseKl) || want(Metric::HighQuality);
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
        let mode_x = &fake_all[..p.mode_samples.min(fake.len()) * item];

        // Features: the judge's for images, the coordinates for points.
        let needs_feats = metrics.iter().any(|m| m.needs_features());
        let judge = if !is_points
            && (needs_feats
                || want(Metric::Modes)
                || want(Metric::ReverseKl)
                || want(Metric::ClassAccuracy))
        {
            let j = judge_in.with_context(|| {
                "evaluate: fid_judge, precision/recall/density/coverage and modes on images \
                 need a judge: add a `judge` stage to `needs`"
            })?;
            let (judge, _) = Judge::<f32, Cpu>::load(&j.dir.join(JUDGE_FILE), Cpu::default())?;
            let [_, _, h, w] = real.data.shape()[..] else {
                unreachable!()
            };
            if (judge.arch.height, judge.arch.width_px) != (h, w) {
                bail!(
                    "evaluate: judge `{}` takes {}x{} images, the data is {h}x{w}",
                    j.label,
                    judge.arch.height,
                    judge.arch.width_px
                );
            }
            info.insert("judge".into(), Value::from(j.label.clone()));
            Some(judge)
        } else {
            None
        };
        let channels = real.data.shape().get(1).copied().unwrap_or(1);
        let (real_f, fake_f, dim) = if !needs_feats {
            (vec![], vec![], 0)
        } else if let Some(j) = &judge {
            let rf = j.features_per_channel(&real_x, channels)?;
            let ff = j.features_per_channel(fake_x, channels)?;
            let dim = rf.len() / n_real;
            (rf, ff, dim)
        } else {
            (real_x.clone(), fake_x.to_vec(), 2)
        };
        info.insert(
            "feature_space".into(),
            Value::from(if judge.is_some() {
                "judge penultimate layer (not Inception: not comparable with FID from papers)"
            } else {
                "raw 2-D coordinates"
            }),
        );
        let features_s = t.elapsed().as_secs_f64();

        if want(Metric::FidJudge) {
            out.insert(
                "fid_judge".into(),
                metrics::frechet_distance_features(&real_f, &fake_f, dim)?,
            );
        }
        if [
            Metric::Precision,
            Metric::Recall,
            Metric::Density,
            Metric::Coverage,
        ]
        .iter()
        .any(|&m| want(m))
        {
            let r = metrics::prdc(&real_f, &fake_f, dim)?;
            for (m, v) in [
                (Metric::Precision, r.precision),
                (Metric::Recall, r.recall),
                (Metric::Density, r.density),
                (Metric::Coverage, r.coverage),
            ] {
                if want(m) {
                    out.insert(m.name().into(), v);
                }
            }
        }
        // Class assignments of the generated samples, made once for every metric that
        // needs them: the mixture (points), or the judge's predictions over the longer of
        // the prefixes that modes and class_accuracy read (images).
        let needs_classes = needs_modes || want(Metric::ClassAccuracy);
        // (centres [K, 2] flattened, sigma) of the points' mixture
        let mixture: Option<(Vec<f32>, f64)> = if is_points && needs_classes {
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
        let judged: Option<metrics::judge::JudgedModes> = match &judge {
            Some(j) if needs_classes => {
                let n_modes = if needs_modes { mode_x.len() / item } else { 0 };
                let n_acc = if want(Metric::ClassAccuracy) {
                    n_fake
                } else {
                    0
                };
                let n = n_modes.max(n_acc);
                Some(j.judge_modes(&fake_all[..n * item], channels)?)
            }
            _ => None,
        };
        let mut histogram: Option<Vec<u64>> = None;
        if needs_modes {
            if let Some((centres, sigma)) = &mixture {
                let s = metrics::mixture_stats(mode_x, centres, 2, *sigma)?;
                if want(Metric::Modes) {
                    out.insert("modes".into(), s.modes_covered as f64);
                }
                if want(Metric::ReverseKl) {
                    out.insert("reverse_kl".into(), s.reverse_kl);
                }
                if want(Metric::HighQuality) {
                    out.insert("high_quality".into(), s.high_quality);
                }
                info.insert("num_modes".into(), Value::from(s.num_modes));
                histogram = Some(s.counts);
            } else {
                let jm = judged.as_ref().expect("judge loaded for modes");
                let n_modes = mode_x.len() / item;
                let sure: Vec<usize> = jm.modes[..n_modes]
                    .iter()
                    .zip(&jm.confidence)
                    .filter(|(_, &c)| c as f64 >= p.min_confidence)
                    .map(|(&m, _)| m)
                    .collect();
                let hist = metrics::mode_histogram(&sure, jm.num_modes)?;
                if want(Metric::Modes) {
                    out.insert(
                        "modes".into(),
                        hist.iter().filter(|&&n| n > 0).count() as f64,
                    );
                    out.insert("confident".into(), sure.len() as f64 / n_modes as f64);
                }
                if want(Metric::ReverseKl) {
                    // NaN when no sample is confident: the distribution is undefined.
                    out.insert("reverse_kl".into(), metrics::reverse_kl_from_counts(&hist));
                }
                info.insert("num_modes".into(), Value::from(jm.num_modes));
                info.insert("min_confidence".into(), Value::from(p.min_confidence));
                histogram = Some(hist);
            }
        }
        if want(Metric::ClassAccuracy) {
            let wanted: Vec<usize> = fake.labels.as_ref().expect("checked above")[..n_fake]
                .iter()
                .map(|&y| y as usize)
                .collect();
            let predicted = if let Some((centres, _)) = &mixture {
                metrics::nearest_centres(fake_x, centres, 2)?
            } else {
                let jm = judged.as_ref().expect("judge loaded for class_accuracy");
                let (pred, k) = (&jm.modes, jm.num_modes);
                if fake.classes.is_some_and(|c| c != k) {
                    bail!(
                        "evaluate: class_accuracy: the judge tells {k} classes, the generator of `{}` was conditioned on {}",
                        sample.label,
                        fake.classes.unwrap()
                    );
                }
                pred[..n_fake].to_vec()
            };
            out.insert(
                "class_accuracy".into(),
                metrics::class_accuracy(&predicted, &wanted)?,
            );
        }
        if want(Metric::Spectral) {
            let [_, c, h, w] = real.data.shape()[..] else {
                unreachable!()
            };
            let s = metrics::spectral_distance(&real_x, fake_x, c, h, w)?;
            out.insert("spectral".into(), s.log_distance_high);
            out.insert("spectral_nyquist".into(), s.nyquist_ratio);
            info.insert("real_spectrum".into(), json!(s.real_spectrum));
            info.insert("fake_spectrum".into(), json!(s.fake_spectrum));
        }
        if want(Metric::Cost) {
            let train = cx
                .ancestors
                .iter()
                .find(|a| a.kind == "train")
                .context("evaluate: `cost` needs a train instance upstream")?;
            out.insert("train_s".into(), train.manifest.timings.wall_s);
            for k in ["images_per_s", "params_g", "params_d", "peak_rss_mib"] {
                if let Some(v) = train.manifest.metrics.get(k) {
                    out.insert(k.into(), *v);
                }
            }
        }
        let eval_s = t.elapsed().as_secs_f64();

        if let Some(hist) = &histogram {
            write_histogram(hist, cx.dir, cx.label)?;
        }
        if p.save_features && needs_feats {
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
                &[nt("real", &real_f), nt("fake", &fake_f)],
                meta,
            )?;
        }
        let doc = json!({
            "metrics": out,
            "counts": {"real": n_real, "fake": n_fake, "mode_samples": if needs_modes { p.mode_samples } else { 0 }, "feature_dim": dim},
            "info": info,
            "seconds": {"features": features_s, "total": eval_s},
        });
        crate::util::atomic_write(
            &cx.dir.join(METRICS_FILE),
            serde_json::to_string_pretty(&doc)?.as_bytes(),
        )?;
        let mut o = Outcome::ok();
        o.metrics = out;
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
