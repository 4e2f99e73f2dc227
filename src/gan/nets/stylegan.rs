//! `stylegan`: a StyleGAN-like generator (mapping network, constant input, AdaIN, noise
//! inputs, style mixing); a generator only.

use anyhow::Result;

use super::{chans, res_plan, Cond, LRELU, SQRT2};
use crate::gan::config::NetConfig;
use crate::nn::{ConvConfig, Dev, Float, Layer, LinearConfig, NetBuilder, UpMode};

/// Learning-rate multiplier of the StyleGAN mapping network (StyleGAN / StyleGAN2).
const MAPPING_LR_MUL: f64 = 0.01;

/// StyleGAN-like generator: mapping MLP z -> w (`mapping_depth` x `mapping_width`, as
/// StyleGAN2's: z normalised to unit second moment, equalised learning rate with
/// multiplier 0.01; a conditional net maps `concat(z, embed(c))`, both normalised), a learned constant base x base input, AdaIN
/// (instance norm, then per-channel gain and bias from w through learned affine maps)
/// after the constant and after every conv, optional per-pixel noise (`noise: true`, after
/// the constant and every conv, learned per-channel scales starting at 0), bilinear 2x
/// upsampling, 1x1 conv to the image. Every AdaIN after the first is a style-mixing cut:
/// a mixing pass takes its styles from there on from a second latent.
pub(super) fn generator<E: Float, D: Dev<E>>(
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
