//! The `train` stage parameters (serde, unknown keys rejected); their range checks are in
//! `validate`.

use crate::config_error::ConfigError;
use crate::device::DeviceChoice;
use serde::{Deserialize, Serialize};

/// Return a [`ConfigError`] at `key` (dotted, inside the train params) with a message.
macro_rules! fail {
    ($key:expr, $($msg:tt)+) => {
        return Err(ConfigError::new($key, format!($($msg)+)))
    };
}

mod validate;

/// Network family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Fully connected nets for 2-D points.
    Mlp,
    /// DCGAN.
    Dcgan,
    /// The R3GAN roadmap (with `variant`).
    R3gan,
    /// SNGAN-style residual nets (G: upsampling residual blocks; D: average-pool blocks,
    /// global sum pooling).
    Resnet,
    /// Self-modulated generator (SELF-MOD): every BN's scale and shift come from z through
    /// a 2-layer MLP; the body is `resnet` (default) or `dcgan` (`body`).
    Selfmod,
    /// StyleGAN-like generator: mapping MLP, learned constant 4x4 input, AdaIN after every
    /// conv, bilinear upsampling.
    Stylegan,
}

/// Upsampling method of the `resnet` / `selfmod` generators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsample {
    /// Nearest neighbour (default).
    Nearest,
    /// Bilinear.
    Bilinear,
}

/// R3GAN roadmap configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    /// Stripped-down VGG-like net: 3x3 conv + LeakyReLU blocks, no normalisation,
    /// `[1, 3, 3, 1]` low-pass resampling + 3x3 conv transitions.
    B,
    /// Same net as B (C changes the loss in YAML).
    C,
    /// 1-3-1 residual blocks (inner width `expansion * c`, default 1, to match B's capacity).
    D,
    /// ConvNeXt-style inverted bottleneck with grouped 3x3 conv, fix-up init.
    E,
}

/// One network's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// `mlp`, `dcgan`, `r3gan`, `resnet`, `selfmod` (G only) or `stylegan` (G only).
    pub arch: Arch,
    /// R3GAN variant (required for `r3gan`, rejected otherwise).
    #[serde(default)]
    pub variant: Option<Variant>,
    /// Hidden units (mlp) or channels at full resolution (conv nets); channels at
    /// resolution r are `min(width * R / r, max_width)`.
    pub width: usize,
    /// Channel cap (default 8 * width).
    #[serde(default)]
    pub max_width: Option<usize>,
    /// Hidden layers (mlp, default 3), blocks per stage (r3gan, default 2 as the official
    /// code), or extra non-downsampling blocks (resnet D, default 2).
    #[serde(default)]
    pub depth: Option<usize>,
    /// Latent size (generator only; default 64 for images, 16 for points).
    #[serde(default)]
    pub z_dim: Option<usize>,
    /// Batch norm (dcgan; default true in G, false in D).
    #[serde(default)]
    pub batch_norm: Option<bool>,
    /// Inner-width ratio of residual blocks (r3gan D default 1, E default 2).
    #[serde(default)]
    pub expansion: Option<f64>,
    /// Channels per group of the grouped 3x3 conv (r3gan E, default 16).
    #[serde(default)]
    pub group_size: Option<usize>,
    /// Residual scaling `x + alpha * f(x)` (resnet / selfmod; default 1, i.e. none).
    #[serde(default)]
    pub residual_scale: Option<f64>,
    /// Learn alpha (one scalar per block, starting at `residual_scale`; default false).
    #[serde(default)]
    pub learn_residual_scale: Option<bool>,
    /// Upsampling of the resnet / selfmod generator (default nearest).
    #[serde(default)]
    pub upsample: Option<Upsample>,
    /// Body of the selfmod generator: `resnet` (default) or `dcgan`.
    #[serde(default)]
    pub body: Option<Arch>,
    /// Hidden units of the SELF-MOD modulation MLPs (default 32).
    #[serde(default)]
    pub mod_hidden: Option<usize>,
    /// Layers of the StyleGAN mapping MLP (default 8).
    #[serde(default)]
    pub mapping_depth: Option<usize>,
    /// Width of the StyleGAN mapping MLP, i.e. the style size (default 512).
    #[serde(default)]
    pub mapping_width: Option<usize>,
    /// Spectral normalisation of every linear / conv weight (default: on for the resnet
    /// discriminator, as SNGAN; off otherwise).
    #[serde(default)]
    pub spectral_norm: Option<bool>,
    /// Size of the class embedding concatenated to z by conditional `mlp`, `r3gan` and
    /// `stylegan` generators (default z_dim).
    #[serde(default)]
    pub embed_dim: Option<usize>,
    /// Per-pixel noise inputs with learned per-channel scales (stylegan; default false).
    #[serde(default)]
    pub noise: Option<bool>,
    /// Style-mixing probability: a training pass takes the styles after a random cut from
    /// a second latent with this probability (stylegan; default 0).
    #[serde(default)]
    pub style_mixing: Option<f64>,
}

/// Adversarial loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Non-saturating, softplus form.
    Ns,
    /// Relativistic pairing.
    Rpgan,
    /// Hinge.
    Hinge,
}

/// Zero-centred gradient penalty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Penalty {
    /// On real data.
    R1,
    /// On fake data.
    R2,
}

/// Adam settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Learning rate.
    pub lr: f64,
    /// (beta1, beta2).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_betas() -> [f64; 2] {
    [0.0, 0.99]
}
fn default_eps() -> f64 {
    1e-8
}
fn one() -> usize {
    1
}
fn default_delta() -> f64 {
    1e-3
}

/// Shape of a [`Schedule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// `start` throughout.
    Constant,
    /// Straight line from `start` to `end`.
    Linear,
    /// Half a cosine from `start` to `end` (flat at both ends).
    Cosine,
}

/// A hyper-parameter as a function of the number of training images seen (G steps x
/// batch): from `start` at 0 images to `end` after `images`, held at `end` afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// `constant`, `linear` or `cosine`.
    pub kind: Curve,
    /// Value at 0 images.
    pub start: f64,
    /// Value from `images` on (default `start`).
    #[serde(default)]
    pub end: Option<f64>,
    /// Length of the ramp in images (ignored by `constant`).
    #[serde(default)]
    pub images: u64,
}

impl Schedule {
    /// The value after `seen` images.
    pub fn at(&self, seen: u64) -> f64 {
        let end = self.end.unwrap_or(self.start);
        let t = if self.images == 0 {
            1.0
        } else {
            (seen as f64 / self.images as f64).min(1.0)
        };
        match self.kind {
            Curve::Constant => self.start,
            Curve::Linear => self.start + (end - self.start) * t,
            Curve::Cosine => {
                end + (self.start - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Optional hyper-parameter schedules (each replaces the fixed value it names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedules {
    /// Learning rate of both networks.
    #[serde(default)]
    pub lr: Option<Schedule>,
    /// Learning rate of G (over `lr`).
    #[serde(default)]
    pub lr_g: Option<Schedule>,
    /// Learning rate of D (over `lr`).
    #[serde(default)]
    pub lr_d: Option<Schedule>,
    /// Penalty weight `gamma`.
    #[serde(default)]
    pub gamma: Option<Schedule>,
    /// Adam beta2 of both networks.
    #[serde(default)]
    pub beta2: Option<Schedule>,
    /// EMA half-life in thousands of images (needs `ema_halflife_kimg`, which it replaces).
    #[serde(default)]
    pub ema_halflife_kimg: Option<Schedule>,
}

/// The hyper-parameters in force for one step ([`TrainConfig::hyper_at`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Learning rate of G.
    pub lr_g: f64,
    /// Learning rate of D.
    pub lr_d: f64,
    /// Adam beta2 of G.
    pub beta2_g: f64,
    /// Adam beta2 of D.
    pub beta2_d: f64,
    /// Penalty weight.
    pub gamma: f64,
    /// EMA beta of this step's update (`None`: no EMA, the EMA generator is G).
    pub ema_beta: Option<f64>,
}

/// Parameters of the `train` stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Generator.
    pub generator: NetConfig,
    /// Discriminator.
    pub discriminator: NetConfig,
    /// Adversarial loss.
    pub loss: LossKind,
    /// Gradient penalties.
    #[serde(default)]
    pub penalties: Vec<Penalty>,
    /// Penalty weight: the D loss gets `gamma / 2 * mean ||grad_x D||^2` per penalty.
    #[serde(default)]
    pub gamma: f64,
    /// Apply penalties every k D steps, scaled by k (lazy regularisation).
    #[serde(default)]
    pub lazy_interval: Option<u64>,
    /// Adam for both networks.
    pub optimizer: OptimConfig,
    /// Optional Adam override for G.
    #[serde(default)]
    pub optimizer_g: Option<OptimConfig>,
    /// Optional Adam override for D.
    #[serde(default)]
    pub optimizer_d: Option<OptimConfig>,
    /// D steps per G step.
    #[serde(default = "one")]
    pub d_steps: usize,
    /// Batch size.
    pub batch: usize,
    /// G steps (0: the initial weights, an untrained G as a reference row).
    pub steps: u64,
    /// EMA of G as a per-step beta (instead of `ema_halflife_kimg`); it stands for the
    /// half-life `batch * ln 0.5 / ln beta` images and ramps up like it. `ema: 0` samples G
    /// itself.
    #[serde(default)]
    pub ema: Option<f64>,
    /// EMA of G as a half-life in thousands of images: every step uses
    /// `beta = 0.5 ^ (batch / halflife_images)`, as StyleGAN2-ADA and R3GAN. Default (no
    /// `ema` either): `batch * 10 / 32` kimg, StyleGAN2-ADA's.
    #[serde(default)]
    pub ema_halflife_kimg: Option<f64>,
    /// EMA ramp-up: the half-life is at most `ema_rampup * images seen`, so early
    /// training is not averaged with the initial weights (default 0.05, StyleGAN2-ADA's;
    /// 0 turns it off).
    #[serde(default)]
    pub ema_rampup: Option<f64>,
    /// Hyper-parameter schedules over training images (`lr`, `lr_g`, `lr_d`, `gamma`,
    /// `beta2`, `ema_halflife_kimg`).
    #[serde(default)]
    pub schedules: Schedules,
    /// Class-conditional training on the data's labels: G(z, c) and a projection D(x, y)
    /// (default false).
    #[serde(default)]
    pub conditional: Option<bool>,
    /// Seed of everything.
    #[serde(default)]
    pub seed: u64,
    /// Checkpoint period in steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Log period in steps (0: every step).
    #[serde(default)]
    pub log_every: u64,
    /// `cpu`, `cuda` or `auto` (read by the stage, not by the trainer).
    #[serde(default)]
    pub device: Option<DeviceChoice>,
    /// Finite-difference step of the penalty Hessian-vector product, as the RMS of the
    /// input perturbation (eps = delta / rms(grad_x D)).
    #[serde(default = "default_delta")]
    pub hvp_delta: f64,
}

impl TrainConfig {
    /// The hyper-parameters of G step `step` (0-based), after `step * batch` images: the
    /// schedules evaluated there, or the fixed values. A pure function of the step, so a
    /// resumed run uses exactly what an uninterrupted one would.
    pub fn hyper_at(&self, step: u64) -> Hyper {
        let seen = step * self.batch as u64;
        let sc = &self.schedules;
        let og = self.optimizer_g.as_ref().unwrap_or(&self.optimizer);
        let od = self.optimizer_d.as_ref().unwrap_or(&self.optimizer);
        let pick = |s: [&Option<Schedule>; 2], fixed: f64| {
            s.into_iter().flatten().next().map_or(fixed, |s| s.at(seen))
        };
        let halflife_images = match (self.ema, self.ema_halflife_kimg) {
            (Some(b), _) if b > 0.0 => self.batch as f64 * 0.5f64.ln() / b.ln(),
            (Some(_), _) => 0.0,
            (None, Some(h)) => sc.ema_halflife_kimg.as_ref().map_or(h, |s| s.at(seen)) * 1000.0,
            (None, None) => self.batch as f64 * 10.0 / 32.0 * 1000.0,
        };
        let rampup = Some(self.ema_rampup.unwrap_or(DEFAULT_EMA_RAMPUP)).filter(|&r| r > 0.0);
        let ema_beta = Some(ema_beta_halflife(self.batch, halflife_images, rampup, seen));
        Hyper {
            lr_g: pick([&sc.lr_g, &sc.lr], og.lr),
            lr_d: pick([&sc.lr_d, &sc.lr], od.lr),
            beta2_g: pick([&sc.beta2, &None], og.betas[1]),
            beta2_d: pick([&sc.beta2, &None], od.betas[1]),
            gamma: pick([&sc.gamma, &None], self.gamma),
            ema_beta,
        }
    }
}

/// StyleGAN2-ADA's EMA ramp-up (`ema_rampup` when unset).
pub const DEFAULT_EMA_RAMPUP: f64 = 0.05;

/// EMA beta for a half-life of `halflife` images at batch `batch`, StyleGAN2-ADA style:
/// with ramp-up `r` the half-life is at most `r * seen` (so the EMA starts as a copy of G),
/// and `beta = 0.5 ^ (batch / halflife)`.
pub fn ema_beta_halflife(batch: usize, halflife: f64, rampup: Option<f64>, seen: u64) -> f64 {
    let h = match rampup {
        Some(r) => halflife.min(seen as f64 * r),
        None => halflife,
    };
    0.5f64.powf(batch as f64 / h.max(1e-8))
}
