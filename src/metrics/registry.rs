//! The metrics the `evaluate` stage can report: one [`Spec`] per metric in [`METRICS`],
//! saying what it applies to, what it needs, which columns it writes, and the function
//! that computes it from an [`Inputs`] (which computes judge features and class
//! assignments once, on first use, for every metric that needs them).
//!
//! A new metric is a [`Metric`] variant, an entry in [`METRICS`] and its function here;
//! `src/stages/evaluate.rs` only loads the inputs, checks what applies and writes files.

use super::judge::{Judge, JudgedModes};
use crate::nn::Cpu;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

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

/// The data a metric applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    Any,
    Images,
    Points,
}

/// A metric: its name, columns, what it needs, and how it is computed.
pub struct Spec {
    pub metric: Metric,
    pub name: &'static str,
    /// The columns (Outcome metrics) it adds to a run's row.
    pub columns: &'static [&'static str],
    pub applies: Applies,
    /// Reads features of both sets (the judge's for images, the coordinates for points).
    pub features: bool,
    /// Reads a class for each of the `mode_samples` generated samples.
    pub modes: bool,
    /// Reads the labels the samples were generated for (a conditional generator's).
    pub labels: bool,
    /// Reads the train instance upstream.
    pub train: bool,
    compute: fn(&mut Inputs, &mut Report) -> Result<()>,
}

macro_rules! spec {
    ($m:ident, $name:literal, [$($col:literal),*], $applies:ident, features: $f:literal,
     modes: $mo:literal, labels: $l:literal, train: $t:literal, $compute:expr) => {
        Spec {
            metric: Metric::$m,
            name: $name,
            columns: &[$($col),*],
            applies: Applies::$applies,
            features: $f,
            modes: $mo,
            labels: $l,
            train: $t,
            compute: $compute,
        }
    };
}

/// Every metric, in the order their columns appear.
pub const METRICS: &[Spec] = &[
    spec!(FidJudge, "fid_judge", ["fid_judge"], Any, features: true, modes: false, labels: false, train: false, fid),
    spec!(Precision, "precision", ["precision"], Any, features: true, modes: false, labels: false, train: false, precision),
    spec!(Recall, "recall", ["recall"], Any, features: true, modes: false, labels: false, train: false, recall),
    spec!(Density, "density", ["density"], Any, features: true, modes: false, labels: false, train: false, density),
    spec!(Coverage, "coverage", ["coverage"], Any, features: true, modes: false, labels: false, train: false, coverage),
    spec!(Modes, "modes", ["modes", "confident", "modes_all"], Any, features: false, modes: true, labels: false, train: false, modes),
    spec!(ReverseKl, "reverse_kl", ["reverse_kl", "reverse_kl_all"], Any, features: false, modes: true, labels: false, train: false, reverse_kl),
    spec!(HighQuality, "high_quality", ["high_quality"], Points, features: false, modes: true, labels: false, train: false, high_quality),
    spec!(ClassAccuracy, "class_accuracy", ["class_accuracy"], Any, features: false, modes: false, labels: true, train: false, class_accuracy),
    spec!(Spectral, "spectral", ["spectral", "spectral_nyquist"], Images, features: false, modes: false, labels: false, train: false, spectral),
    spec!(Cost, "cost", ["train_s", "images_per_s", "params_g", "params_d", "peak_rss_mib"], Any, features: false, modes: false, labels: false, train: true, cost),
];

impl Metric {
    pub fn spec(self) -> &'static Spec {
        METRICS
            .iter()
            .find(|s| s.metric == self)
            .expect("every metric has a spec")
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    /// Whether it applies to images (`true`) or 2-D points (`false`).
    pub fn applies_to(self, images: bool) -> bool {
        match self.spec().applies {
            Applies::Any => true,
            Applies::Images => images,
            Applies::Points => !images,
        }
    }
}

/// The metrics of a run when `metrics` is left out: every one that applies to the data,
/// `class_accuracy` when the samples carry labels, `cost` when a train instance is
/// upstream.
pub fn defaults(images: bool, labels: bool, train: bool) -> Vec<Metric> {
    METRICS
        .iter()
        .filter(|s| s.metric.applies_to(images) && (!s.labels || labels) && (!s.train || train))
        .map(|s| s.metric)
        .collect()
}

/// What the metrics of one run read. Features and class assignments are computed on
/// first use and kept for the metrics after.
pub struct Inputs<'a> {
    /// `[n_real, item]`: the real reference set.
    pub real: &'a [f32],
    /// `[n_fake, item]`: the generated samples of fid_judge, PRDC, spectral, class_accuracy.
    pub fake: &'a [f32],
    /// `[mode_samples, item]`: the generated samples modes and reverse_kl count.
    pub mode_set: &'a [f32],
    /// The data's shape, `[N, C, H, W]` or `[N, 2]`.
    pub shape: &'a [usize],
    /// The judge (images).
    pub judge: Option<&'a Judge<f32, Cpu>>,
    /// The mixture's centres (`[K, 2]` flattened) and sigma (2-D points).
    pub mixture: Option<(Vec<f32>, f64)>,
    /// The labels the first `n_fake` samples were generated for, and their class count.
    pub labels: Option<(&'a [i64], Option<usize>)>,
    /// Least softmax probability of a counted mode (images).
    pub min_confidence: f64,
    /// The train instance upstream: wall seconds and its metrics.
    pub train: Option<(f64, &'a BTreeMap<String, f64>)>,
    features: Option<(Vec<f32>, Vec<f32>, usize)>,
    /// The judge's features of `real`, when the caller has them (kept from an earlier run).
    real_features: Option<Vec<f32>>,
    judged: Option<JudgedModes>,
    prdc: Option<super::Prdc>,
    mode_count: Option<ModeCount>,
}

/// What the metrics of one run produce.
#[derive(Default)]
pub struct Report {
    /// Every column's value.
    pub values: BTreeMap<String, f64>,
    /// Facts for `metrics.json` and the manifest (feature space, number of modes, ...).
    pub info: Map<String, Value>,
    /// Generated samples per mode, where modes apply (`modes.csv`).
    pub histogram: Option<Vec<u64>>,
}

impl<'a> Inputs<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        real: &'a [f32],
        fake: &'a [f32],
        mode_set: &'a [f32],
        shape: &'a [usize],
        judge: Option<&'a Judge<f32, Cpu>>,
        mixture: Option<(Vec<f32>, f64)>,
        labels: Option<(&'a [i64], Option<usize>)>,
        min_confidence: f64,
        train: Option<(f64, &'a BTreeMap<String, f64>)>,
    ) -> Self {
        Inputs {
            real,
            fake,
            mode_set,
            shape,
            judge,
            mixture,
            labels,
            min_confidence,
            train,
            features: None,
            real_features: None,
            judged: None,
            prdc: None,
            mode_count: None,
        }
    }

    fn item(&self) -> usize {
        self.shape[1..].iter().product()
    }
    fn images(&self) -> bool {
        self.shape.len() == 4
    }

    /// The judge's features of the real set (`[n_real, F]`, per channel and
    /// concatenated), as [`Inputs::features`] computes them: images only. A caller that
    /// keeps them (`evaluate` does, by data and judge) hands them back with
    /// [`Inputs::use_real_features`].
    pub fn real_features(&self) -> Result<Vec<f32>> {
        match self.judge {
            Some(j) if self.images() => j.features_per_channel(self.real, self.shape[1]),
            _ => bail!("features of images need a judge"),
        }
    }

    /// Use these features of the real set (from [`Inputs::real_features`] on the same
    /// real set and judge) instead of computing them.
    pub fn use_real_features(&mut self, features: Vec<f32>) {
        self.real_features = Some(features);
    }

    /// Real and generated features and their dimension: the judge's penultimate layer
    /// (per channel, concatenated) for images, the coordinates for points.
    pub fn features(&mut self) -> Result<(&[f32], &[f32], usize)> {
        if self.features.is_none() {
            self.features = Some(match self.judge {
                Some(j) if self.images() => {
                    let c = self.shape[1];
                    let rf = match self.real_features.take() {
                        Some(rf) => rf,
                        None => j.features_per_channel(self.real, c)?,
                    };
                    let ff = j.features_per_channel(self.fake, c)?;
                    let dim = rf.len() / (self.real.len() / self.item());
                    (rf, ff, dim)
                }
                None if !self.images() => (self.real.to_vec(), self.fake.to_vec(), 2),
                _ => bail!("features of images need a judge"),
            });
        }
        let (r, f, d) = self.features.as_ref().unwrap();
        Ok((r, f, *d))
    }

    /// The judge's modes (and confidences) of the longer of the mode set and the
    /// generated samples, both prefixes of one array (images).
    fn judged(&mut self) -> Result<&JudgedModes> {
        if self.judged.is_none() {
            let j = self.judge.context("modes of images need a judge")?;
            let longer = if self.mode_set.len() >= self.fake.len() {
                self.mode_set
            } else {
                self.fake
            };
            self.judged = Some(j.judge_modes(longer, self.shape[1])?);
        }
        Ok(self.judged.as_ref().unwrap())
    }
}

impl Spec {
    /// Adds this metric's columns to `report`.
    pub fn compute(&self, inputs: &mut Inputs, report: &mut Report) -> Result<()> {
        (self.compute)(inputs, report)
    }
}

fn fid(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let (real, fake, dim) = x.features()?;
    let v = super::frechet_distance_features(real, fake, dim)?;
    r.values.insert("fid_judge".into(), v);
    Ok(())
}

/// Precision, recall, density and coverage come from one k-NN computation, made by
/// the first of them asked for; each writes its own column.
fn prdc_column(x: &mut Inputs, r: &mut Report, column: &str) -> Result<()> {
    if x.prdc.is_none() {
        let (real, fake, dim) = x.features()?;
        x.prdc = Some(super::prdc(real, fake, dim)?);
    }
    let p = x.prdc.as_ref().unwrap();
    let v = match column {
        "precision" => p.precision,
        "recall" => p.recall,
        "density" => p.density,
        _ => p.coverage,
    };
    r.values.insert(column.into(), v);
    Ok(())
}
fn precision(x: &mut Inputs, r: &mut Report) -> Result<()> {
    prdc_column(x, r, "precision")
}
fn recall(x: &mut Inputs, r: &mut Report) -> Result<()> {
    prdc_column(x, r, "recall")
}
fn density(x: &mut Inputs, r: &mut Report) -> Result<()> {
    prdc_column(x, r, "density")
}
fn coverage(x: &mut Inputs, r: &mut Report) -> Result<()> {
    prdc_column(x, r, "coverage")
}

/// What modes, reverse_kl and high_quality read, computed once.
struct ModeCount {
    modes: usize,
    /// Share of samples counted: high quality (points) or judged confidently (images).
    counted: f64,
    reverse_kl: f64,
    histogram: Vec<u64>,
    /// Images: modes and reverse KL over every sample (the PacGAN/VEEGAN/R3GAN protocol).
    all: Option<(usize, f64)>,
}

/// Modes and reverse KL over the samples within 3 sigma of a centre (points, whose
/// share is `high_quality`), or over the samples the judge is sure of (images, whose
/// share is `confident`).
fn count_modes(x: &mut Inputs) -> Result<ModeCount> {
    if let Some((centres, sigma)) = &x.mixture {
        let s = super::mixture_stats(x.mode_set, centres, 2, *sigma)?;
        return Ok(ModeCount {
            modes: s.modes_covered,
            counted: s.high_quality,
            reverse_kl: s.reverse_kl,
            histogram: s.counts,
            all: None,
        });
    }
    let n = x.mode_set.len() / x.item();
    let min_confidence = x.min_confidence;
    let jm = x.judged()?;
    let sure: Vec<usize> = jm.modes[..n]
        .iter()
        .zip(&jm.confidence)
        .filter(|(_, &c)| c as f64 >= min_confidence)
        .map(|(&m, _)| m)
        .collect();
    let histogram = super::mode_histogram(&sure, jm.num_modes)?;
    let every = super::mode_histogram(&jm.modes[..n], jm.num_modes)?;
    Ok(ModeCount {
        modes: histogram.iter().filter(|&&c| c > 0).count(),
        counted: sure.len() as f64 / n as f64,
        // NaN when no sample is counted: the distribution is undefined.
        reverse_kl: super::reverse_kl_from_counts(&histogram),
        histogram,
        all: Some((
            every.iter().filter(|&&c| c > 0).count(),
            super::reverse_kl_from_counts(&every),
        )),
    })
}

/// The mode count of this run (made by the first mode metric asked for), with the
/// number of modes and the histogram put in the report.
fn mode_count<'x>(x: &'x mut Inputs, r: &mut Report) -> Result<&'x ModeCount> {
    if x.mode_count.is_none() {
        x.mode_count = Some(count_modes(x)?);
    }
    let c = x.mode_count.as_ref().unwrap();
    r.info
        .insert("num_modes".into(), Value::from(c.histogram.len()));
    if x.mixture.is_none() {
        r.info
            .insert("min_confidence".into(), Value::from(x.min_confidence));
    }
    r.histogram = Some(c.histogram.clone());
    Ok(c)
}

fn modes(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let images = x.mixture.is_none();
    let c = mode_count(x, r)?;
    let (modes, counted, all) = (c.modes as f64, c.counted, c.all);
    r.values.insert("modes".into(), modes);
    if images {
        r.values.insert("confident".into(), counted);
    }
    if let Some((m, _)) = all {
        r.values.insert("modes_all".into(), m as f64);
    }
    Ok(())
}

fn reverse_kl(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let c = mode_count(x, r)?;
    let (v, all) = (c.reverse_kl, c.all);
    r.values.insert("reverse_kl".into(), v);
    if let Some((_, kl)) = all {
        r.values.insert("reverse_kl_all".into(), kl);
    }
    Ok(())
}

fn high_quality(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let v = mode_count(x, r)?.counted;
    r.values.insert("high_quality".into(), v);
    Ok(())
}

fn class_accuracy(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let (labels, classes) = x.labels.context("class_accuracy needs labelled samples")?;
    let n = x.fake.len() / x.item();
    let wanted: Vec<usize> = labels[..n].iter().map(|&y| y as usize).collect();
    let predicted = if let Some((centres, _)) = &x.mixture {
        super::nearest_centres(x.fake, centres, 2)?
    } else {
        let jm = x.judged()?;
        if classes.is_some_and(|c| c != jm.num_modes) {
            bail!(
                "class_accuracy: the judge tells {} classes, the generator was conditioned on {}",
                jm.num_modes,
                classes.unwrap()
            );
        }
        jm.modes[..n].to_vec()
    };
    r.values.insert(
        "class_accuracy".into(),
        super::class_accuracy(&predicted, &wanted)?,
    );
    Ok(())
}

fn spectral(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let [_, c, h, w] = x.shape[..] else {
        bail!("spectral applies to images")
    };
    let s = super::spectral_distance(x.real, x.fake, c, h, w)?;
    r.values.insert("spectral".into(), s.log_distance_high);
    r.values.insert("spectral_nyquist".into(), s.nyquist_ratio);
    r.info
        .insert("real_spectrum".into(), json!(s.real_spectrum));
    r.info
        .insert("fake_spectrum".into(), json!(s.fake_spectrum));
    Ok(())
}

fn cost(x: &mut Inputs, r: &mut Report) -> Result<()> {
    let (wall_s, metrics) = x.train.context("`cost` needs a train instance upstream")?;
    r.values.insert("train_s".into(), wall_s);
    for k in ["images_per_s", "params_g", "params_d", "peak_rss_mib"] {
        if let Some(v) = metrics.get(k) {
            r.values.insert(k.into(), *v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_one_spec_and_serde_name() {
        for s in METRICS {
            assert_eq!(s.metric.spec().name, s.name);
            assert_eq!(
                serde_json::to_value(s.metric).unwrap(),
                Value::from(s.name),
                "the YAML spelling is the name"
            );
            assert!(!s.columns.is_empty());
        }
        assert_eq!(METRICS.len(), 11);
    }

    #[test]
    fn defaults_follow_the_data() {
        use Metric::*;
        let images = defaults(true, false, true);
        assert!(images.contains(&Spectral) && !images.contains(&HighQuality));
        assert!(images.contains(&Cost) && !images.contains(&ClassAccuracy));
        let points = defaults(false, true, false);
        assert!(points.contains(&HighQuality) && !points.contains(&Spectral));
        assert!(points.contains(&ClassAccuracy) && !points.contains(&Cost));
    }

    /// Points through the registry: PRDC shared by its four metrics, modes and the
    /// high-quality share against a hand count.
    #[test]
    fn points_by_hand() {
        // Two centres at (0,0) and (1,0), sigma 0.01; real points on the centres, fake
        // points: five on centre 0, one 0.5 away from both (not high quality).
        let real: Vec<f32> = (0..8)
            .flat_map(|i| [(i % 2) as f32, 0.001 * i as f32])
            .collect();
        let fake = [
            0.0f32, 0.0, 0.0, 0.002, 0.001, 0.0, 0.0, -0.001, 0.002, 0.001, 0.5, 0.0,
        ];
        let shape = [8, 2];
        let mut x = Inputs::new(
            &real,
            &fake,
            &fake,
            &shape,
            None,
            Some((vec![0.0, 0.0, 1.0, 0.0], 0.01)),
            None,
            0.9,
            None,
        );
        let mut r = Report::default();
        for m in [Metric::Modes, Metric::HighQuality, Metric::ReverseKl] {
            m.spec().compute(&mut x, &mut r).unwrap();
        }
        assert_eq!(r.values["modes"], 1.0);
        assert!(
            !r.values.contains_key("confident"),
            "points have high_quality"
        );
        assert!((r.values["high_quality"] - 5.0 / 6.0).abs() < 1e-12);
        // all high-quality samples on one of 2 centres: KL = ln 2
        assert!((r.values["reverse_kl"] - 2f64.ln()).abs() < 1e-12);
        assert_eq!(r.histogram.as_deref(), Some(&[5u64, 0][..]));
        Metric::Recall.spec().compute(&mut x, &mut r).unwrap();
        let direct = crate::metrics::prdc(&real, &fake, 2).unwrap();
        assert_eq!(r.values["recall"], direct.recall);
        assert!(
            !r.values.contains_key("precision"),
            "only the asked-for column"
        );
        Metric::Precision.spec().compute(&mut x, &mut r).unwrap();
        assert_eq!(r.values["precision"], direct.precision);
    }
}
