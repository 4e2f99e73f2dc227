//! `dcgan`: Radford et al. 2016's all-convolutional G and D, at run-time resolutions.

use anyhow::Result;

use super::{chans, g_norm, res_plan, score, Cond, GNorm, LRELU, SQRT2};
use crate::gan::config::NetConfig;
use crate::nn::{ConvConfig, Dev, Float, Layer, LinearConfig, NetBuilder};

/// The generator: linear to `base x base`, then per 2x stage a 4x4 stride-2 transposed
/// conv, normalisation (`norm`; plain BN unless `batch_norm: false`) and ReLU; a 3x3
/// conv to the image and tanh.
pub(super) fn generator<E: Float, D: Dev<E>>(
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

/// The discriminator: per 2x stage a 4x4 stride-2 conv (BN after all but the first when
/// `batch_norm: true`) and LeakyReLU, then the score on the flattened `base x base`
/// features.
pub(super) fn discriminator<E: Float, D: Dev<E>>(
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
