//! `selfmod`: self-modulated generator (Chen et al. 2019, "On Self Modulation for
//! Generative Adversarial Networks"), a generator only.

use anyhow::{bail, Result};

use super::{dcgan, resnet, Cond, GNorm};
use crate::gan::config::{Arch, NetConfig};
use crate::nn::{Dev, Float, Layer, NetBuilder};

/// The generator: a `dcgan` or `resnet` body (`body`, default resnet) whose batch norms
/// take their gain and bias from `z` through 2-layer MLPs (hidden `mod_hidden`, default
/// 32); conditional: the MLPs see `z' = z * (1 + E'(c)) + E(c)`.
pub(super) fn generator<E: Float, D: Dev<E>>(
    nb: &mut NetBuilder<E, D>,
    cfg: &NetConfig,
    z: usize,
    cond: Option<Cond>,
    c: usize,
    res: usize,
) -> Result<Vec<Layer>> {
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
        Arch::Dcgan => dcgan::generator(nb, cfg, z, c, res, norm)?,
        Arch::Resnet => resnet::generator(nb, cfg, z, c, res, norm)?,
        b => bail!("selfmod body must be resnet or dcgan, got {b:?}"),
    });
    Ok(l)
}
