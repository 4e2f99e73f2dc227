//! `mlp`: fully connected nets for 2-D points (`depth` hidden layers of `width`,
//! LeakyReLU 0.2), G from `z` (and `embed(c)`) to a point, D from a point to a score.

use super::{concat_label, score, Cond, LRELU, SQRT2};
use crate::gan::config::NetConfig;
use crate::nn::{Dev, Float, Layer, LinearConfig, NetBuilder};

/// The generator: `[concat(z, embed(c))]`, the hidden layers, a linear map to 2-D.
pub(super) fn generator<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    cond: Option<Cond>,
) -> Vec<Layer> {
    let (mut l, inp) = concat_label(nb, cfg, cond, z);
    let (body, w) = hidden(nb, cfg, inp);
    l.extend(body);
    l.push(nb.linear("out", w, 2, LinearConfig::default()));
    l
}

/// The discriminator: the hidden layers on a point, then the score.
pub(super) fn discriminator<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    cond: Option<Cond>,
) -> Vec<Layer> {
    let (mut l, w) = hidden(nb, cfg, 2);
    l.push(score(nb, cond, "out", w, true));
    l
}

/// The hidden layers of an mlp (the caller adds the output layer) and their width.
fn hidden<E: Float, D: Dev<E>>(
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
