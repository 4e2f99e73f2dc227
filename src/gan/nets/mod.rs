//! Generators and discriminators chosen at run time from [`NetConfig`].
//!
//! Resolutions: `R = base * 2^n` with `base = 4`, or `base = 7` when `R` is 7 * 2^n
//! (28 starts at 7x7, no padding). Channels at resolution `r` are
//! `min(width * R / r, max_width)` (max_width defaults to 8 * width).
//! Archs: `mlp`, `dcgan`, `r3gan` (variants B-E), `resnet` (SNGAN-style G and D),
//! `selfmod` (G: BN gain/bias from z via 2-layer MLPs, resnet or dcgan body) and
//! `stylegan` (G: mapping MLP, learned constant input, AdaIN after every conv).
//! `spectral_norm: true` normalises every linear / conv weight of the net (default on
//! for the `resnet` discriminator, as SNGAN; off elsewhere).
//! Parameter names are relative (`blocks.0.conv.weight`); checkpoints prefix them with
//! `G.`, `G_ema.` or `D.`.
//!
//! Class-conditional nets (`classes: Some(k)`) read one-hot labels from a context slot:
//! `dcgan` / `resnet` G use conditional BN (per-class gain and bias), `selfmod` G modulates
//! with `z' = z + E(c) + E'(c) * z`, `r3gan`, `stylegan` and `mlp` G take
//! `concat(z, embed(c))`, and every D ends in a projection head
//! `psi(phi(x)) + embed(y) . phi(x)` (Miyato & Koyama 2018).
//!
//! One file per family (`mlp.rs`, `dcgan.rs`, `resnet.rs`, `selfmod.rs`, `stylegan.rs`,
//! `r3gan.rs`), each with the `generator` / `discriminator` layer lists it can build;
//! this file dispatches on `arch` and keeps what several families share (resolution
//! plan, channel widths, label inputs, the score head, generator normalisation). A new
//! architecture is a new file here, an `Arch` variant in `gan::config` and one arm in
//! [`generator`] / [`discriminator`].

use anyhow::{bail, Result};

use super::config::{Arch, NetConfig};
use crate::data::DataTensor;
use crate::nn::{Dev, Float, Layer, LinearConfig, Net, NetBuilder};

mod dcgan;
mod mlp;
mod r3gan;
mod resnet;
mod selfmod;
mod stylegan;

/// He gain, for weights followed by a ReLU / LeakyReLU.
const SQRT2: f64 = std::f64::consts::SQRT_2;
/// Negative slope of every LeakyReLU.
const LRELU: f64 = 0.2;

/// Data shape the nets are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataShape {
    /// 2-D points.
    Points,
    /// Images `(C, H, W)` with `H == W`.
    Image {
        /// Channels.
        c: usize,
        /// Height = width.
        res: usize,
    },
}

impl DataShape {
    /// The shape of a dataset's examples (images must be square).
    pub fn of(data: &DataTensor) -> Result<Self> {
        match *data {
            DataTensor::Points { .. } => Ok(DataShape::Points),
            DataTensor::Images { c, h, w, .. } => {
                if h != w {
                    bail!("images must be square, got {h}x{w}");
                }
                Ok(DataShape::Image { c, res: h })
            }
        }
    }

    /// The shape of one example: `[2]` or `[C, H, W]`.
    pub fn item_dims(self) -> Vec<usize> {
        match self {
            DataShape::Points => vec![2],
            DataShape::Image { c, res } => vec![c, res, res],
        }
    }

    /// Back from [`DataShape::item_dims`].
    pub fn from_item_dims(dims: &[usize]) -> Result<Self> {
        match *dims {
            [2] => Ok(DataShape::Points),
            [c, h, w] if h == w && c > 0 && h > 0 => Ok(DataShape::Image { c, res: h }),
            _ => bail!("{dims:?} is neither 2-D points nor square [C, H, W] images"),
        }
    }
}

/// (base, number of 2x stages) for a resolution.
pub fn res_plan(res: usize) -> Result<(usize, usize)> {
    for base in [4usize, 7] {
        let mut r = base;
        let mut n = 0;
        while r < res {
            r *= 2;
            n += 1;
        }
        if r == res && n >= 1 {
            return Ok((base, n));
        }
    }
    bail!("resolution {res} is not 4*2^n or 7*2^n (n >= 1); use 16, 28, 32 or 64")
}

fn chans(cfg: &NetConfig, res: usize, r: usize) -> usize {
    let max = cfg.max_width.unwrap_or(cfg.width * 8);
    (cfg.width * res / r).min(max).max(1)
}

/// Latent size of a generator config.
pub fn z_dim(cfg: &NetConfig, shape: DataShape) -> usize {
    cfg.z_dim.unwrap_or(match shape {
        DataShape::Points => 16,
        DataShape::Image { .. } => 64,
    })
}

/// The label input of a conditional net: context slot and number of classes.
#[derive(Clone, Copy, Debug)]
struct Cond {
    slot: usize,
    classes: usize,
}

/// Build a generator: input `(B, z_dim, 1, 1)`, output `(B, 2, 1, 1)` or `(B, C, R, R)`;
/// class-conditional over `classes` classes when given (labels in [`crate::nn::Side`]).
pub fn generator<E: Float, D: Dev<E>>(
    cfg: &NetConfig,
    shape: DataShape,
    classes: Option<usize>,
    dev: D,
    seed: u64,
) -> Result<Net<E, D>> {
    let z = z_dim(cfg, shape);
    let mut nb = NetBuilder::<E, D>::new(dev, seed);
    nb.spectral_norm = cfg.spectral_norm.unwrap_or(false);
    let cond = classes.map(|k| Cond {
        slot: nb.labels(k),
        classes: k,
    });
    let bn = match cond {
        Some(c) => GNorm::CondBn(c),
        None => GNorm::Bn,
    };
    let layers = match (cfg.arch, shape) {
        (Arch::Mlp, DataShape::Points) => mlp::generator(&mut nb, cfg, z, cond),
        (Arch::Mlp, _) => bail!("generator arch mlp is for 2-D points only"),
        (_, DataShape::Points) => bail!("conv generators need image data"),
        (Arch::Dcgan, DataShape::Image { c, res }) => {
            dcgan::generator(&mut nb, cfg, z, c, res, bn)?
        }
        (Arch::R3gan, DataShape::Image { c, res }) => {
            r3gan::generator(&mut nb, cfg, z, cond, c, res)?
        }
        (Arch::Resnet, DataShape::Image { c, res }) => {
            resnet::generator(&mut nb, cfg, z, c, res, bn)?
        }
        (Arch::Selfmod, DataShape::Image { c, res }) => {
            selfmod::generator(&mut nb, cfg, z, cond, c, res)?
        }
        (Arch::Stylegan, DataShape::Image { c, res }) => {
            stylegan::generator(&mut nb, cfg, z, cond, c, res)?
        }
    };
    Ok(nb.finish(layers, [z, 1, 1]))
}

/// `concat(z, embed(c))` for a conditional net (embedding size `embed_dim`, default
/// `z`): the layers and the resulting input size.
fn concat_label<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
    z: usize,
) -> (Vec<Layer>, usize) {
    let Some(c) = cond else {
        return (vec![], z);
    };
    let e = cfg.embed_dim.unwrap_or(z);
    let body = nb.embedding("embed", c.classes, e, 1.0);
    (vec![Layer::ConcatCtx { slot: c.slot, body }], z + e)
}

/// The score on features of size `feat` (flattened): linear `name` to 1 (with a bias when
/// `bias`), plus the projection term `embed(y) . phi` when conditional.
fn score<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cond: Option<Cond>,
    name: &str,
    feat: usize,
    bias: bool,
) -> Layer {
    let fc = nb.linear(name, feat, 1, LinearConfig::default().bias(bias));
    match cond {
        None => fc,
        Some(c) => Layer::Project {
            slot: c.slot,
            embed: nb.embedding("embed", c.classes, feat, 1.0 / (feat as f64).sqrt()),
            head: vec![fc],
        },
    }
}

/// Build a discriminator: input `(B, 2, 1, 1)` or `(B, C, R, R)`, output `(B, 1, 1, 1)`;
/// with `classes`, a projection discriminator `D(x, y)`.
pub fn discriminator<E: Float, D: Dev<E>>(
    cfg: &NetConfig,
    shape: DataShape,
    classes: Option<usize>,
    dev: D,
    seed: u64,
) -> Result<Net<E, D>> {
    let mut nb = NetBuilder::<E, D>::new(dev, seed);
    // SNGAN normalises every weight of its ResNet discriminator: on by default there
    nb.spectral_norm = cfg.spectral_norm.unwrap_or(cfg.arch == Arch::Resnet);
    let cond = classes.map(|k| Cond {
        slot: nb.labels(k),
        classes: k,
    });
    let (layers, ins) = match (cfg.arch, shape) {
        (Arch::Mlp, DataShape::Points) => (mlp::discriminator(&mut nb, cfg, cond), [2, 1, 1]),
        (Arch::Mlp, _) => bail!("discriminator arch mlp is for 2-D points only"),
        (_, DataShape::Points) => bail!("conv discriminators need image data"),
        (Arch::Dcgan, DataShape::Image { c, res }) => (
            dcgan::discriminator(&mut nb, cfg, cond, c, res)?,
            [c, res, res],
        ),
        (Arch::R3gan, DataShape::Image { c, res }) => (
            r3gan::discriminator(&mut nb, cfg, cond, c, res)?,
            [c, res, res],
        ),
        (Arch::Resnet, DataShape::Image { c, res }) => (
            resnet::discriminator(&mut nb, cfg, cond, c, res)?,
            [c, res, res],
        ),
        (Arch::Selfmod | Arch::Stylegan, _) => {
            bail!(
                "arch {:?} is a generator only: use resnet or dcgan for D",
                cfg.arch
            )
        }
    };
    Ok(nb.finish(layers, ins))
}

/// How a generator normalises: plain BN, conditional BN (per-class gain and bias), or
/// SELF-MOD BN whose gain and bias come from the latent (context slot `slot`) through
/// 2-layer MLPs.
#[derive(Clone, Copy, Debug)]
enum GNorm {
    Bn,
    CondBn(Cond),
    SelfMod {
        slot: usize,
        z: usize,
        hidden: usize,
    },
}

fn g_norm<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    norm: GNorm,
    name: &str,
    c: usize,
) -> Layer {
    match norm {
        GNorm::Bn => nb.batch_norm(name, c),
        GNorm::CondBn(k) => {
            // gamma_c = 1 + G[c], beta_c = B[c]: starts as plain BN
            let gain = nb.embedding(&format!("{name}.gain"), k.classes, c, 0.0);
            let bias = nb.embedding(&format!("{name}.bias"), k.classes, c, 0.0);
            nb.cond_norm(name, c, true, k.slot, gain, bias)
        }
        GNorm::SelfMod { slot, z, hidden } => {
            // beta(z) = W2 relu(W1 z + b1) + b2, gamma likewise (as 1 + MLP(z)); the output
            // layers start small so the net starts close to plain BN
            let mut mlp = |part: &str| {
                vec![
                    nb.linear(
                        &format!("{name}.{part}.fc1"),
                        z,
                        hidden,
                        LinearConfig::default().gain(SQRT2),
                    ),
                    Layer::Relu,
                    nb.linear(
                        &format!("{name}.{part}.fc2"),
                        hidden,
                        c,
                        LinearConfig::default().gain(0.1),
                    ),
                ]
            };
            let gain = mlp("gain");
            let bias = mlp("bias");
            nb.cond_norm(name, c, true, slot, gain, bias)
        }
    }
}
