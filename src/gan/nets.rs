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

use anyhow::{bail, Result};

use super::config::{Arch, NetConfig, Upsample, Variant};
use crate::nn::{ConvConfig, Dev, Float, Layer, LinearConfig, Net, NetBuilder, UpMode};

const SQRT2: f64 = std::f64::consts::SQRT_2;
const LRELU: f64 = 0.2;
/// Learning-rate multiplier of the StyleGAN mapping network (StyleGAN / StyleGAN2).
const MAPPING_LR_MUL: f64 = 0.01;

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
        (Arch::Mlp, DataShape::Points) => {
            let (mut l, inp) = concat_label(&mut nb, cfg, cond, z);
            let (body, w) = mlp(&mut nb, cfg, inp);
            l.extend(body);
            l.push(nb.linear("out", w, 2, LinearConfig::default()));
            l
        }
        (Arch::Mlp, _) => bail!("generator arch mlp is for 2-D points only"),
        (_, DataShape::Points) => bail!("conv generators need image data"),
        (Arch::Dcgan, DataShape::Image { c, res }) => dcgan_g(&mut nb, cfg, z, c, res, bn)?,
        (Arch::R3gan, DataShape::Image { c, res }) => r3gan_g(&mut nb, cfg, z, cond, c, res)?,
        (Arch::Resnet, DataShape::Image { c, res }) => resnet_g(&mut nb, cfg, z, c, res, bn)?,
        (Arch::Selfmod, DataShape::Image { c, res }) => {
            let slot = nb.ctx_slot();
            let norm = GNorm::SelfMod {
                slot,
                z,
                hidden: cfg.mod_hidden.unwrap_or(32),
            };
            // conditional: the modulation MLPs see z' = z * (1 + E'(c)) + E(c)
            let body = match cond {
                None => vec![],
                Some(c) => {
                    let gain = nb.embedding("cond.scale", c.classes, z, 0.0);
                    let bias = nb.embedding("cond.shift", c.classes, z, 1.0);
                    vec![nb.modulation(c.slot, gain, bias)]
                }
            };
            let mut l = vec![Layer::SetCtx {
                slot,
                body,
                mix: None,
            }];
            l.extend(match cfg.body.unwrap_or(Arch::Resnet) {
                Arch::Dcgan => dcgan_g(&mut nb, cfg, z, c, res, norm)?,
                Arch::Resnet => resnet_g(&mut nb, cfg, z, c, res, norm)?,
                b => bail!("selfmod body must be resnet or dcgan, got {b:?}"),
            });
            l
        }
        (Arch::Stylegan, DataShape::Image { c, res }) => stylegan_g(&mut nb, cfg, z, cond, c, res)?,
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
        (Arch::Mlp, DataShape::Points) => {
            let (mut l, w) = mlp(&mut nb, cfg, 2);
            l.push(score(&mut nb, cond, "out", w, true));
            (l, [2, 1, 1])
        }
        (Arch::Mlp, _) => bail!("discriminator arch mlp is for 2-D points only"),
        (_, DataShape::Points) => bail!("conv discriminators need image data"),
        (Arch::Dcgan, DataShape::Image { c, res }) => {
            (dcgan_d(&mut nb, cfg, cond, c, res)?, [c, res, res])
        }
        (Arch::R3gan, DataShape::Image { c, res }) => {
            (r3gan_d(&mut nb, cfg, cond, c, res)?, [c, res, res])
        }
        (Arch::Resnet, DataShape::Image { c, res }) => {
            (resnet_d(&mut nb, cfg, cond, c, res)?, [c, res, res])
        }
        (Arch::Selfmod | Arch::Stylegan, _) => {
            bail!(
                "arch {:?} is a generator only: use resnet or dcgan for D",
                cfg.arch
            )
        }
    };
    Ok(nb.finish(layers, ins))
}

/// The hidden layers of an mlp (the caller adds the output layer) and their width.
fn mlp<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    inp: usize,
) -> (Vec<Layer>, usize) {
    let depth = cfg.depth.unwrap_or(3);
    let mut l = vec![];
    let mut c = inp;
    for i in 0..depth {
        l.push(nb.linear(
            &format!("layers.{i}"),
            c,
            cfg.width,
            LinearConfig::default().gain(SQRT2),
        ));
        l.push(Layer::LeakyRelu(LRELU));
        c = cfg.width;
    }
    (l, c)
}

fn dcgan_g<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    c_img: usize,
    res: usize,
    norm: GNorm,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let bn = cfg.batch_norm.unwrap_or(true) || !matches!(norm, GNorm::Bn);
    let c0 = chans(cfg, res, base);
    let mut l = vec![
        nb.linear(
            "fc",
            z,
            c0 * base * base,
            LinearConfig::default().bias(!bn).gain(SQRT2),
        ),
        Layer::Reshape([c0, base, base]),
    ];
    if bn {
        l.push(g_norm(nb, norm, "fc_bn", c0));
    }
    l.push(Layer::Relu);
    let mut r = base;
    for i in 0..n {
        let (ci, co) = (chans(cfg, res, r), chans(cfg, res, 2 * r));
        l.push(nb.conv_t(
            &format!("blocks.{i}.conv"),
            ci,
            co,
            4,
            ConvConfig::default().stride(2).pad(1).bias(!bn).gain(SQRT2),
        ));
        if bn {
            l.push(g_norm(nb, norm, &format!("blocks.{i}.bn"), co));
        }
        l.push(Layer::Relu);
        r *= 2;
    }
    l.push(nb.conv(
        "to_img",
        chans(cfg, res, res),
        c_img,
        3,
        ConvConfig::default().pad(1),
    ));
    l.push(Layer::Tanh);
    Ok(l)
}

fn dcgan_d<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let bn = cfg.batch_norm.unwrap_or(false);
    let mut l = vec![];
    let mut r = res;
    let mut ci = c_img;
    for i in 0..n {
        let co = chans(cfg, res, r / 2);
        let use_bn = bn && i > 0;
        l.push(
            nb.conv(
                &format!("blocks.{i}.conv"),
                ci,
                co,
                4,
                ConvConfig::default()
                    .stride(2)
                    .pad(1)
                    .bias(!use_bn)
                    .gain(SQRT2),
            ),
        );
        if use_bn {
            l.push(nb.batch_norm(&format!("blocks.{i}.bn"), co));
        }
        l.push(Layer::LeakyRelu(LRELU));
        ci = co;
        r /= 2;
    }
    l.push(score(nb, cond, "fc", ci * base * base, true));
    Ok(l)
}

/// R3GAN's activation gain: LeakyReLU(0.2)'s variance-preserving `sqrt(2 / (1 + 0.2^2))`
/// (`BiasedActivation.Gain` in the official code).
fn lrelu_gain() -> f64 {
    (2.0 / (1.0 + LRELU * LRELU)).sqrt()
}

/// Inner width of a residual block and its group count.
fn inner(cfg: &NetConfig, c: usize, variant: Variant) -> (usize, usize) {
    let e = cfg
        .expansion
        .unwrap_or(if variant == Variant::E { 2.0 } else { 1.0 });
    let ci = ((c as f64 * e).round() as usize).max(1);
    if variant != Variant::E {
        return (ci, 1);
    }
    let gs = cfg.group_size.unwrap_or(16).min(ci);
    // round the inner width up to a multiple of the group size
    let ci = ci.div_ceil(gs) * gs;
    (ci, ci / gs)
}

/// One block of an R3GAN stage at `c` channels. B / C: a 3x3 conv and LeakyReLU (VGG-like,
/// no shortcut). D: a 1-3-1 residual block (1x1 to `expansion * c`, default 1, 3x3, 1x1
/// back); E: the same with the inner width `expansion * c` (default 2) and a grouped 3x3
/// (`group_size` channels per group, default 16). As the official `ResidualBlock`: each
/// of the first two convs is followed by a bias and LeakyReLU (here the conv's bias), the
/// last conv has no bias and starts at zero (fix-up), the others are initialised with
/// gain `lrelu_gain * L^(-1/4)` for `L` blocks in the network.
fn r3gan_block<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    name: &str,
    c: usize,
    variant: Variant,
    n_blocks: usize,
) -> Vec<Layer> {
    if !is_residual(variant) {
        return vec![
            nb.conv(
                &format!("{name}.conv"),
                c,
                c,
                3,
                ConvConfig::default().pad(1).gain(lrelu_gain()),
            ),
            Layer::LeakyRelu(LRELU),
        ];
    }
    let (ci, groups) = inner(cfg, c, variant);
    let g = lrelu_gain() * (n_blocks as f64).powf(-0.25);
    let body = vec![
        nb.conv(
            &format!("{name}.conv1"),
            c,
            ci,
            1,
            ConvConfig::default().gain(g),
        ),
        Layer::LeakyRelu(LRELU),
        nb.conv(
            &format!("{name}.conv2"),
            ci,
            ci,
            3,
            ConvConfig::default().pad(1).groups(groups).gain(g),
        ),
        Layer::LeakyRelu(LRELU),
        nb.conv(
            &format!("{name}.conv3"),
            ci,
            c,
            1,
            ConvConfig::default().bias(false).gain(0.0),
        ),
    ];
    vec![Layer::Residual { body, skip: vec![] }]
}

fn is_residual(variant: Variant) -> bool {
    matches!(variant, Variant::D | Variant::E)
}

/// The R3GAN generator as the official code builds it (`R3GAN/Networks.py`), `depth`
/// (default 2) blocks per stage: the generative basis (bias-free linear map of z scaling a
/// learned base x base basis), the 4x4 stage's blocks, then per 2x stage a transition and
/// its blocks, and a bias-free 1x1 conv to the image (no activation, no tanh).
/// Transitions: D / E (official) a bias-free 1x1 conv at the low resolution where the
/// channels change, then `[1, 3, 3, 1]` FIR upsampling; B / C (the VGG-like roadmap
/// configs) FIR upsampling, then a 3x3 conv and LeakyReLU.
fn r3gan_g<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let variant = cfg.variant.unwrap_or(Variant::B);
    let depth = cfg.depth.unwrap_or(2);
    let c0 = chans(cfg, res, base);
    let (mut l, z) = concat_label(nb, cfg, cond, z);
    let residual = is_residual(variant);
    let n_blocks = (n + 1) * depth;
    l.extend(nb.gen_basis("basis", z, c0, base, base));
    let mut r = base;
    for s in 0..=n {
        let c = chans(cfg, res, r);
        if s > 0 {
            let cp = chans(cfg, res, r / 2);
            let name = format!("stages.{s}.transition");
            if residual {
                if cp != c {
                    l.push(nb.conv(&name, cp, c, 1, ConvConfig::default().bias(false)));
                }
                l.push(Layer::FirUp);
            } else {
                l.push(Layer::FirUp);
                l.push(nb.conv(
                    &name,
                    cp,
                    c,
                    3,
                    ConvConfig::default().pad(1).gain(lrelu_gain()),
                ));
                l.push(Layer::LeakyRelu(LRELU));
            }
        }
        for b in 0..depth {
            let name = format!("stages.{s}.blocks.{b}");
            l.extend(r3gan_block(nb, cfg, &name, c, variant, n_blocks));
        }
        if s < n {
            r *= 2;
        }
    }
    l.push(nb.conv(
        "to_img",
        chans(cfg, res, res),
        c_img,
        1,
        ConvConfig::default().bias(false),
    ));
    Ok(l)
}

/// The R3GAN discriminator as the official code builds it, mirroring [`r3gan_g`]: a 1x1
/// conv from the image (D / E: bias-free, no activation; B / C: bias and LeakyReLU), per
/// stage `depth` blocks then a transition (D / E: `[1, 3, 3, 1]` FIR downsampling, then a
/// bias-free 1x1 conv where the channels change; B / C: FIR downsampling, 3x3 conv,
/// LeakyReLU), and after the base x base stage's blocks the discriminative basis: a
/// bias-free depthwise base x base conv (valid) and a linear map to the score (bias-free
/// in D / E; a bias in B / C), with no activation in between or before it.
fn r3gan_d<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let variant = cfg.variant.unwrap_or(Variant::B);
    let depth = cfg.depth.unwrap_or(2);
    let residual = is_residual(variant);
    let n_blocks = (n + 1) * depth;
    let c_full = chans(cfg, res, res);
    let mut l = if residual {
        vec![nb.conv(
            "from_img",
            c_img,
            c_full,
            1,
            ConvConfig::default().bias(false),
        )]
    } else {
        vec![
            nb.conv(
                "from_img",
                c_img,
                c_full,
                1,
                ConvConfig::default().gain(lrelu_gain()),
            ),
            Layer::LeakyRelu(LRELU),
        ]
    };
    let mut r = res;
    for s in 0..=n {
        let c = chans(cfg, res, r);
        for b in 0..depth {
            let name = format!("stages.{s}.blocks.{b}");
            l.extend(r3gan_block(nb, cfg, &name, c, variant, n_blocks));
        }
        if s < n {
            let cn = chans(cfg, res, r / 2);
            let name = format!("stages.{s}.transition");
            l.push(Layer::FirDown);
            if residual {
                if cn != c {
                    l.push(nb.conv(&name, c, cn, 1, ConvConfig::default().bias(false)));
                }
            } else {
                l.push(nb.conv(
                    &name,
                    c,
                    cn,
                    3,
                    ConvConfig::default().pad(1).gain(lrelu_gain()),
                ));
                l.push(Layer::LeakyRelu(LRELU));
            }
            r /= 2;
        }
    }
    let c = chans(cfg, res, base);
    l.push(nb.conv(
        "basis",
        c,
        c,
        base,
        ConvConfig::default().groups(c).bias(false),
    ));
    l.push(score(nb, cond, "fc", c, !residual));
    Ok(l)
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

/// The `x + alpha * f(x)` factor at the end of a residual branch, if any.
fn res_scale<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    name: &str,
) -> Option<Layer> {
    let a = cfg.residual_scale.unwrap_or(1.0);
    if cfg.learn_residual_scale.unwrap_or(false) {
        Some(nb.param_scale(&format!("{name}.alpha"), a))
    } else if a != 1.0 {
        Some(Layer::Scale(a))
    } else {
        None
    }
}

/// SNGAN-style generator: linear -> base x base -> residual up blocks (BN, ReLU, 2x up,
/// 3x3 conv, BN, ReLU, 3x3 conv; shortcut 2x up + 1x1 conv) -> BN, ReLU, 3x3 conv, tanh.
fn resnet_g<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    c_img: usize,
    res: usize,
    norm: GNorm,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let up = match cfg.upsample.unwrap_or(Upsample::Nearest) {
        Upsample::Nearest => UpMode::Nearest,
        Upsample::Bilinear => UpMode::Bilinear,
    };
    let c0 = chans(cfg, res, base);
    let mut l = vec![
        nb.linear("fc", z, c0 * base * base, LinearConfig::default()),
        Layer::Reshape([c0, base, base]),
    ];
    let mut r = base;
    for i in 0..n {
        let (ci, co) = (chans(cfg, res, r), chans(cfg, res, 2 * r));
        let name = format!("blocks.{i}");
        let mut body = vec![
            g_norm(nb, norm, &format!("{name}.bn1"), ci),
            Layer::Relu,
            Layer::Up(up),
            nb.conv(
                &format!("{name}.conv1"),
                ci,
                co,
                3,
                ConvConfig::default().pad(1).gain(SQRT2),
            ),
            g_norm(nb, norm, &format!("{name}.bn2"), co),
            Layer::Relu,
            nb.conv(
                &format!("{name}.conv2"),
                co,
                co,
                3,
                ConvConfig::default().pad(1).gain(SQRT2),
            ),
        ];
        body.extend(res_scale(nb, cfg, &name));
        let skip = vec![
            Layer::Up(up),
            nb.conv(
                &format!("{name}.shortcut"),
                ci,
                co,
                1,
                ConvConfig::default(),
            ),
        ];
        l.push(Layer::Residual { body, skip });
        r *= 2;
    }
    let c = chans(cfg, res, res);
    l.push(g_norm(nb, norm, "out_bn", c));
    l.push(Layer::Relu);
    l.push(nb.conv("to_img", c, c_img, 3, ConvConfig::default().pad(1)));
    l.push(Layer::Tanh);
    Ok(l)
}

/// SNGAN-style discriminator: residual blocks with 2x2 average-pool downsampling down to
/// `2 * base` (at least one; the first block has no leading ReLU and pools its shortcut
/// before the 1x1 conv), then `depth` (default 2) blocks without downsampling, ReLU, global
/// sum pooling, linear.
fn resnet_d<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (_, n) = res_plan(res)?;
    let n_down = n.saturating_sub(1).max(1);
    let extra = cfg.depth.unwrap_or(2);
    let mut l = vec![];
    let mut r = res;
    let mut ci = c_img;
    for i in 0..n_down + extra {
        let name = format!("blocks.{i}");
        let down = i < n_down;
        let co = if down { chans(cfg, res, r / 2) } else { ci };
        let mut body = vec![];
        if i > 0 {
            body.push(Layer::Relu);
        }
        body.push(nb.conv(
            &format!("{name}.conv1"),
            ci,
            co,
            3,
            ConvConfig::default().pad(1).gain(SQRT2),
        ));
        body.push(Layer::Relu);
        body.push(nb.conv(
            &format!("{name}.conv2"),
            co,
            co,
            3,
            ConvConfig::default().pad(1).gain(SQRT2),
        ));
        if down {
            body.push(Layer::AvgPool2);
        }
        body.extend(res_scale(nb, cfg, &name));
        let mut skip = vec![];
        if down || ci != co {
            let sc = nb.conv(
                &format!("{name}.shortcut"),
                ci,
                co,
                1,
                ConvConfig::default(),
            );
            if i == 0 {
                skip = vec![Layer::AvgPool2, sc];
            } else if down {
                skip = vec![sc, Layer::AvgPool2];
            } else {
                skip = vec![sc];
            }
        }
        l.push(Layer::Residual { body, skip });
        if down {
            r /= 2;
        }
        ci = co;
    }
    l.push(Layer::Relu);
    l.push(Layer::SumPool);
    l.push(score(nb, cond, "fc", ci, true));
    Ok(l)
}

/// StyleGAN-like generator: mapping MLP z -> w (`mapping_depth` x `mapping_width`, as
/// StyleGAN2's: z normalised to unit second moment, equalised learning rate with
/// multiplier 0.01; a conditional net maps `concat(z, embed(c))`, both normalised), a learned constant base x base input, AdaIN
/// (instance norm, then per-channel gain and bias from w through learned affine maps)
/// after the constant and after every conv, optional per-pixel noise (`noise: true`, after
/// the constant and every conv, learned per-channel scales starting at 0), bilinear 2x
/// upsampling, 1x1 conv to the image. Every AdaIN after the first is a style-mixing cut:
/// a mixing pass takes its styles from there on from a second latent.
fn stylegan_g<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let depth = cfg.mapping_depth.unwrap_or(8);
    let wd = cfg.mapping_width.unwrap_or(512);
    let noise = cfg.noise.unwrap_or(false);
    let slot = nb.ctx_slot();
    let mix_slot = nb.ctx_slot();
    // StyleGAN2's MappingNetwork: z (and embed(c)) normalised to unit second moment, then
    // fully connected layers with learning-rate multiplier 0.01 and LeakyReLU * sqrt(2)
    let mut map = vec![Layer::PixelNorm];
    let mut c = z;
    if let Some(k) = cond {
        let e = cfg.embed_dim.unwrap_or(z);
        let mut body = nb.embedding("embed", k.classes, e, 1.0);
        body.push(Layer::PixelNorm);
        map.push(Layer::ConcatCtx { slot: k.slot, body });
        c += e;
    }
    for i in 0..depth {
        map.push(nb.eq_linear(&format!("mapping.{i}"), c, wd, MAPPING_LR_MUL));
        map.push(Layer::LeakyRelu(LRELU));
        map.push(Layer::Scale(SQRT2));
        c = wd;
    }
    // after a conv (`act`: then LeakyReLU) or the constant: noise (optional), a mixing cut
    // (all but the first), AdaIN
    let mut styles = 0;
    let mut post = |nb: &mut NetBuilder<E, D>, l: &mut Vec<Layer>, s: usize, k: usize, c, act| {
        if noise {
            l.push(nb.noise(&format!("stages.{s}.noise{k}"), c));
        }
        if act {
            l.push(Layer::LeakyRelu(LRELU));
        }
        if styles > 0 {
            l.push(nb.mix_point(slot, mix_slot));
        }
        styles += 1;
        let name = format!("stages.{s}.adain{k}");
        let gain = vec![nb.linear(&format!("{name}.gain"), wd, c, LinearConfig::default())];
        let bias = vec![nb.linear(&format!("{name}.bias"), wd, c, LinearConfig::default())];
        l.push(nb.cond_norm(&name, c, false, slot, gain, bias));
    };
    let c0 = chans(cfg, res, base);
    let mut l = vec![
        Layer::SetCtx {
            slot,
            body: map,
            mix: Some(mix_slot),
        },
        nb.const_input("const", c0, base, base),
    ];
    post(nb, &mut l, 0, 0, c0, false);
    l.push(nb.conv(
        "stages.0.conv1",
        c0,
        c0,
        3,
        ConvConfig::default().pad(1).gain(SQRT2),
    ));
    post(nb, &mut l, 0, 1, c0, true);
    let mut r = base;
    for s in 1..=n {
        let (cp, c) = (chans(cfg, res, r), chans(cfg, res, 2 * r));
        l.push(Layer::Up(UpMode::Bilinear));
        l.push(nb.conv(
            &format!("stages.{s}.conv0"),
            cp,
            c,
            3,
            ConvConfig::default().pad(1).gain(SQRT2),
        ));
        post(nb, &mut l, s, 0, c, true);
        l.push(nb.conv(
            &format!("stages.{s}.conv1"),
            c,
            c,
            3,
            ConvConfig::default().pad(1).gain(SQRT2),
        ));
        post(nb, &mut l, s, 1, c, true);
        r *= 2;
    }
    l.push(nb.conv(
        "to_img",
        chans(cfg, res, res),
        c_img,
        1,
        ConvConfig::default(),
    ));
    Ok(l)
}
