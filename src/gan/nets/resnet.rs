//! `resnet`: SNGAN-style residual G and D (Miyato et al. 2018), with an optional
//! (learnable) residual scale `x + alpha * f(x)`.

use anyhow::Result;

use super::{chans, g_norm, res_plan, score, Cond, GNorm, SQRT2};
use crate::gan::config::{NetConfig, Upsample};
use crate::nn::{ConvConfig, Dev, Float, Layer, LinearConfig, NetBuilder, UpMode};

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
pub(super) fn generator<E: Float, D: Dev<E>>(
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
pub(super) fn discriminator<E: Float, D: Dev<E>>(
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
