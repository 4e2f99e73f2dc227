//! The judge: a small CNN classifier whose penultimate features are the space for
//! `fid_judge` and precision/recall/density/coverage, and whose predictions count
//! modes (DESIGN.md, "Evaluation").
//!
//! This is the one part of [`crate::metrics`] that runs a network (on [`crate::nn`]);
//! everything else here is plain numerics on slices.
//!
//! Architecture ([`JudgeArch`], run-time shapes): `blocks` times
//! `conv 3x3 (pad 1) -> LeakyReLU(0.2) -> 2x2 average pool`, with `width * 2^i`
//! channels in block `i` (capped at `4 * width`), where `blocks` is the number of
//! halvings that keep both sides even and at least 4 (at most 3: 28 -> 14 -> 7,
//! 32 -> 16 -> 8 -> 4), then `linear -> LeakyReLU(0.2)` to `features` units (the
//! feature layer) and `linear` to `classes` logits. Trained with softmax
//! cross-entropy and Adam (betas 0.9/0.999, learning rate decayed linearly to 0),
//! seeded: the same data and seed give the same weights.
//!
//! StackedMNIST: the judge is a one-channel digit classifier applied to every
//! channel separately ([`Judge::features_per_channel`], [`Judge::predict_modes`]):
//! an `[N, C, H, W]` batch is read as `[N*C, 1, H, W]`, features are concatenated over
//! channels (`[N, C*F]`) and the mode of a sample is `sum_j d_j K^(C-1-j)`
//! (`100a + 10b + c` for three digits), as R3GAN, PacGAN and VEEGAN count it.
//!
//! Weights are saved as safetensors named by module path with the prefix `judge.`
//! (`judge.blocks.0.conv.weight`, `judge.features.weight`, `judge.head.bias`), the
//! architecture as JSON in the metadata key `arch`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nn::{
    self, Adam, AdamConfig, ConvConfig, Dev, Float, Layer, LinearConfig, Net, NetBuilder, Rng, T1,
    T4,
};

const LRELU: f64 = 0.2;
const SQRT2: f64 = std::f64::consts::SQRT_2;
/// Images per forward pass when extracting features or predicting.
const EVAL_BATCH: usize = 500;

/// Shape and size of a judge network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeArch {
    /// Input channels (1 for a per-channel digit judge).
    pub in_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width_px: usize,
    /// Output classes (10 for digits).
    pub classes: usize,
    /// Channels of the first conv block.
    pub width: usize,
    /// Units of the feature (penultimate) layer.
    pub features: usize,
}

impl JudgeArch {
    /// Number of conv blocks (halvings) for the input size.
    pub fn blocks(&self) -> usize {
        let (mut h, mut w, mut n) = (self.height, self.width_px, 0);
        while n < 3 && h % 2 == 0 && w % 2 == 0 && h.min(w) >= 8 {
            h /= 2;
            w /= 2;
            n += 1;
        }
        n.max(1)
    }

    fn check(&self) -> Result<()> {
        if self.in_channels == 0 || self.height == 0 || self.width_px == 0 {
            bail!("judge: empty input shape {self:?}");
        }
        if self.classes < 2 || self.width == 0 || self.features == 0 {
            bail!("judge: needs >= 2 classes and positive width and features, got {self:?}");
        }
        Ok(())
    }
}

/// Training settings of [`Judge::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Minibatch size.
    pub batch: usize,
    /// Initial Adam learning rate (decayed linearly to 0 over training).
    pub lr: f64,
    /// Seed of the minibatch order.
    pub seed: u64,
}

/// A trained (or freshly initialised) judge.
pub struct Judge<E: Float = f32, D: Dev<E> = Cpu> {
    /// Its architecture.
    pub arch: JudgeArch,
    /// Convs + feature layer + head; the body is every layer but the last.
    pub net: Net<E, D>,
}

/// Build an `[B, C, H, W]` tensor from f32 host values.
fn to_tensor<E: Float, D: Dev<E>>(
    dev: &D,
    x: &[f32],
    shape: (usize, usize, usize, usize),
) -> T4<E, D> {
    dev.tensor_from_vec(x.iter().map(|&v| E::of(v as f64)).collect(), shape)
}

impl<E: Float, D: Dev<E>> Judge<E, D> {
    /// A freshly initialised judge (weights from `seed`).
    pub fn new(arch: JudgeArch, dev: D, seed: u64) -> Result<Self> {
        arch.check()?;
        let mut nb = NetBuilder::<E, D>::new(dev, seed);
        let mut layers = vec![];
        let (mut c, mut h, mut w) = (arch.in_channels, arch.height, arch.width_px);
        let blocks = arch.blocks();
        for i in 0..blocks {
            let out = arch.width << i.min(2);
            layers.push(nb.conv(
                &format!("blocks.{i}.conv"),
                c,
                out,
                3,
                ConvConfig::default().pad(1).gain(SQRT2),
            ));
            layers.push(Layer::LeakyRelu(LRELU));
            if h % 2 == 0 && w % 2 == 0 && h.min(w) >= 8 {
                layers.push(Layer::AvgPool2);
                h /= 2;
                w /= 2;
            }
            c = out;
        }
        layers.push(nb.linear(
            "features",
            c * h * w,
            arch.features,
            LinearConfig::default().gain(SQRT2),
        ));
        layers.push(Layer::LeakyRelu(LRELU));
        layers.push(nb.linear("head", arch.features, arch.classes, LinearConfig::default()));
        let net = nb.finish(layers, [arch.in_channels, arch.height, arch.width_px]);
        Ok(Judge { arch, net })
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.net.param_count()
    }

    fn item_len(&self) -> usize {
        self.arch.in_channels * self.arch.height * self.arch.width_px
    }

    /// The network up to and including the feature layer's activation.
    fn body(&self) -> Net<E, D> {
        let mut body = self.net.clone();
        body.layers.pop();
        body.out_shape = [self.arch.features, 1, 1];
        body
    }

    /// Mean softmax cross-entropy of a batch (`x` row-major `[B, C, H, W]`, labels
    /// `< classes`) and its gradient for every parameter.
    pub fn loss_and_grads(&self, x: &[f32], labels: &[usize]) -> Result<(f64, Vec<T1<E, D>>)> {
        let b = labels.len();
        let k = self.arch.classes;
        if x.len() != b * self.item_len() {
            bail!("judge: {} values for a batch of {b}", x.len());
        }
        let a = self.arch;
        let xt = to_tensor::<E, D>(&self.net.dev, x, (b, a.in_channels, a.height, a.width_px));
        let logits = self
            .net
            .forward(xt.traced(self.net.params.alloc_grads()), true)
            .reshape_like(&(b, k));
        let logp = logits.log_softmax::<Axis<1>>();
        let mut coef = vec![E::of(0.0); b * k];
        for (i, &l) in labels.iter().enumerate() {
            if l >= k {
                bail!("judge: label {l} >= {k} classes");
            }
            coef[i * k + l] = E::of(-1.0 / b as f64);
        }
        let coef = self.net.dev.tensor_from_vec(coef, (b, k));
        let loss = (logp * coef).sum::<(), Axes2<0, 1>>();
        let value = loss.as_vec()[0].f64();
        let grads = loss.backward();
        Ok((value, self.net.params.grads_of(&grads)))
    }

    /// Train on `images` (`[N, C, H, W]` row-major) with `labels`; `on_step(step,
    /// total, loss)` is called after every step (return an error to stop). Returns the
    /// mean training loss of every epoch.
    pub fn fit(
        &mut self,
        images: &[f32],
        labels: &[usize],
        opts: FitOptions,
        mut on_step: impl FnMut(usize, usize, f64) -> Result<()>,
    ) -> Result<Vec<f64>> {
        let n = labels.len();
        let il = self.item_len();
        if images.len() != n * il || n == 0 {
            bail!(
                "judge: {} values for {n} labelled images of {il}",
                images.len()
            );
        }
        let batch = opts.batch.clamp(1, n);
        let per_epoch = n.div_ceil(batch);
        let total = per_epoch * opts.epochs;
        let mut adam = Adam::new(
            AdamConfig {
                lr: opts.lr,
                betas: (0.9, 0.999),
                eps: 1e-8,
            },
            &self.net.params,
        );
        let mut rng = Rng::derived(opts.seed, 0x006a_7564_6765);
        let mut order: Vec<usize> = (0..n).collect();
        let mut epoch_loss = vec![];
        let mut step = 0;
        let mut xb = Vec::with_capacity(batch * il);
        let mut yb = Vec::with_capacity(batch);
        for _ in 0..opts.epochs {
            rng.shuffle(&mut order);
            let mut sum = 0.0;
            for chunk in order.chunks(batch) {
                xb.clear();
                yb.clear();
                for &i in chunk {
                    xb.extend_from_slice(&images[i * il..(i + 1) * il]);
                    yb.push(labels[i]);
                }
                let (loss, grads) = self.loss_and_grads(&xb, &yb)?;
                adam.cfg.lr = opts.lr * (1.0 - step as f64 / total as f64);
                adam.step(&mut self.net.params, grads);
                sum += loss;
                step += 1;
                on_step(step, total, loss)?;
            }
            epoch_loss.push(sum / per_epoch as f64);
        }
        Ok(epoch_loss)
    }

    /// Runs `net` over `images` in batches; returns the flat outputs and their width.
    fn run_batched(&self, net: &Net<E, D>, images: &[f32]) -> Result<(Vec<f32>, usize)> {
        let il = self.item_len();
        if !images.len().is_multiple_of(il) {
            bail!(
                "judge: {} values are not whole images of {il}",
                images.len()
            );
        }
        let a = self.arch;
        let out_w: usize = net.out_shape.iter().product();
        let mut out = Vec::with_capacity(images.len() / il * out_w);
        for chunk in images.chunks(EVAL_BATCH * il) {
            let b = chunk.len() / il;
            let x = to_tensor::<E, D>(&net.dev, chunk, (b, a.in_channels, a.height, a.width_px));
            let y = net.forward(x, false);
            out.extend(y.as_vec().into_iter().map(|v| v.f64() as f32));
        }
        Ok((out, out_w))
    }

    /// Penultimate-layer features `[N, features]` of `[N, C, H, W]` images.
    pub fn features(&self, images: &[f32]) -> Result<Vec<f32>> {
        Ok(self.run_batched(&self.body(), images)?.0)
    }

    /// Logits `[N, classes]`.
    pub fn logits(&self, images: &[f32]) -> Result<Vec<f32>> {
        Ok(self.run_batched(&self.net, images)?.0)
    }

    /// Predicted class of every image (arg max of the logits; ties to the lower class).
    pub fn predict(&self, images: &[f32]) -> Result<Vec<usize>> {
        let k = self.arch.classes;
        Ok(self.logits(images)?.chunks_exact(k).map(argmax).collect())
    }

    /// Share of `images` whose predicted class is the label.
    pub fn accuracy(&self, images: &[f32], labels: &[usize]) -> Result<f64> {
        let p = self.predict(images)?;
        if p.len() != labels.len() || p.is_empty() {
            bail!("judge: {} predictions for {} labels", p.len(), labels.len());
        }
        Ok(p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / p.len() as f64)
    }

    /// Channels per image a batch of `c`-channel images is judged in: 1 when the judge
    /// sees the whole image, `c` when a one-channel judge sees each channel.
    pub fn views(&self, c: usize) -> Result<usize> {
        if c == self.arch.in_channels {
            Ok(1)
        } else if self.arch.in_channels == 1 {
            Ok(c)
        } else {
            bail!(
                "judge takes {} channels, images have {c}",
                self.arch.in_channels
            )
        }
    }

    /// Features of `[N, c, H, W]` images: `[N, F]` when the judge takes `c` channels,
    /// else (one-channel judge) every channel's features concatenated, `[N, c*F]`.
    pub fn features_per_channel(&self, images: &[f32], c: usize) -> Result<Vec<f32>> {
        self.views(c)?;
        // [N, c, H, W] is [N*c, 1, H, W] row-major: the rows of channel views of one
        // image are adjacent, so the result is already [N, c*F].
        self.features(images)
    }

    /// Mode of every `[c, H, W]` image: the predicted class when the judge takes `c`
    /// channels, else `sum_j d_j K^(c-1-j)` over the per-channel predictions `d_j`.
    /// Returns the modes and their number (`K` or `K^c`).
    pub fn predict_modes(&self, images: &[f32], c: usize) -> Result<(Vec<usize>, usize)> {
        let j = self.judge_modes(images, c)?;
        Ok((j.modes, j.num_modes))
    }

    /// [`Judge::predict_modes`] with the judge's confidence in each mode: the smallest,
    /// over the image's views, of the softmax probability of the predicted class (a
    /// StackedMNIST sample is as sure as its least legible digit).
    pub fn judge_modes(&self, images: &[f32], c: usize) -> Result<JudgedModes> {
        let v = self.views(c)?;
        let k = self.arch.classes;
        let per_view: Vec<(usize, f32)> = self
            .logits(images)?
            .chunks_exact(k)
            .map(|row| {
                let d = argmax(row);
                (d, softmax_at(row, d))
            })
            .collect();
        let (modes, confidence) = per_view
            .chunks_exact(v)
            .map(|ds| {
                let mode = ds.iter().fold(0, |m, &(d, _)| m * k + d);
                let conf = ds.iter().map(|&(_, p)| p).fold(1.0f32, f32::min);
                (mode, conf)
            })
            .unzip();
        Ok(JudgedModes {
            modes,
            confidence,
            num_modes: k.pow(v as u32),
        })
    }

    /// Named host tensors, prefixed `judge.`.
    pub fn to_named(&self) -> Vec<nn::NamedTensor<E>> {
        self.net
            .to_named()
            .into_iter()
            .map(|mut t| {
                t.name = format!("judge.{}", t.name);
                t
            })
            .collect()
    }

    /// Write the weights and the architecture (plus `extra` metadata) as safetensors.
    pub fn save(&self, path: &Path, extra: HashMap<String, String>) -> Result<()> {
        let mut meta = extra;
        meta.insert("arch".into(), serde_json::to_string(&self.arch)?);
        nn::save_safetensors(path, &self.to_named(), meta)
    }

    /// Read what [`Judge::save`] wrote; returns the judge and the file's metadata.
    pub fn load(path: &Path, dev: D) -> Result<(Self, HashMap<String, String>)> {
        let (map, meta) = nn::load_safetensors::<E>(path)?;
        let arch: JudgeArch = serde_json::from_str(
            meta.get("arch")
                .with_context(|| format!("{}: no `arch` metadata", path.display()))?,
        )?;
        let mut j = Self::new(arch, dev, 0)?;
        j.net
            .load_named(&map, "judge.")
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((j, meta))
    }
}

/// `softmax(row)[i]`, computed stably: `1 / sum_j exp(row_j - row_i)`.
fn softmax_at(row: &[f32], i: usize) -> f32 {
    let ri = row[i] as f64;
    (1.0 / row.iter().map(|&r| (r as f64 - ri).exp()).sum::<f64>()) as f32
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// What [`Judge::judge_modes`] assigns to a batch of images.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedModes {
    /// The mode of every image.
    pub modes: Vec<usize>,
    /// The judge's confidence in it, in (0, 1].
    pub confidence: Vec<f32>,
    /// How many modes there are (`K` or `K^c`).
    pub num_modes: usize,
}

/// Indices of the first occurrence of every distinct row (`[N, len]` row-major,
/// compared bit for bit), in order. StackedMNIST draws its channels from 10,000
/// digits, so a holdout split must be made over distinct digits, not channels.
pub fn distinct_rows(values: &[f32], len: usize) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    values
        .chunks_exact(len)
        .enumerate()
        .filter(|(_, row)| {
            let mut h = blake3::Hasher::new();
            for v in *row {
                h.update(&v.to_bits().to_le_bytes());
            }
            seen.insert(*h.finalize().as_bytes())
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests;
