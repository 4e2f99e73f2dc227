//! `r3gan`: the R3GAN roadmap nets (Huang et al. 2024, "The GAN is dead; long live the
//! GAN!"), `variant` B-E, built as the official code (`R3GAN/Networks.py`) builds them:
//! no normalisation, `[1, 3, 3, 1]` FIR resampling, fix-up initialised residual blocks.

use anyhow::{bail, Result};

use super::{chans, concat_label, res_plan, score, Cond, LRELU};
use crate::gan::config::{NetConfig, Variant};
use crate::nn::{ConvConfig, Dev, Float, Layer, NetBuilder};

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
pub(super) fn generator<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let Some(variant) = cfg.variant else {
        bail!("arch r3gan needs variant: B | C | D | E");
    };
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

/// The R3GAN discriminator as the official code builds it, mirroring [`generator`]: a 1x1
/// conv from the image (D / E: bias-free, no activation; B / C: bias and LeakyReLU), per
/// stage `depth` blocks then a transition (D / E: `[1, 3, 3, 1]` FIR downsampling, then a
/// bias-free 1x1 conv where the channels change; B / C: FIR downsampling, 3x3 conv,
/// LeakyReLU), and after the base x base stage's blocks the discriminative basis: a
/// bias-free depthwise base x base conv (valid) and a linear map to the score (bias-free
/// in D / E; a bias in B / C), with no activation in between or before it.
pub(super) fn discriminator<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
    c_img: usize,
    res: usize,
) -> Result<Vec<Layer>> {
    let (base, n) = res_plan(res)?;
    let Some(variant) = cfg.variant else {
        bail!("arch r3gan needs variant: B | C | D | E");
    };
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
