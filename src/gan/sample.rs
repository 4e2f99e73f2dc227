//! Sampling a trained generator from its checkpoint, without the trainer.

use std::path::Path;

use anyhow::Result;
use dfdx::prelude::*;

use super::config::TrainConfig;
use super::nets::{self, DataShape};
use crate::nn::{load_safetensors, Dev, Net, Rng};

/// `n` samples from `net`: latents from `seed` alone, in chunks of 256; images are
/// clamped to [-1, 1]. Output `[n, C, H, W]` or `[n, 2]`, row-major.
pub fn sample_net<D: Dev<f32>>(
    net: &Net<f32, D>,
    dev: &D,
    z_dim: usize,
    shape: DataShape,
    n: usize,
    seed: u64,
) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let zs: Vec<f32> = (0..n * z_dim).map(|_| rng.normal() as f32).collect();
    let mut out = Vec::new();
    let chunk = 256;
    let mut i = 0;
    while i < n {
        let m = chunk.min(n - i);
        let z = dev.tensor_from_vec(zs[i * z_dim..(i + m) * z_dim].to_vec(), (m, z_dim, 1, 1));
        out.extend(net.forward(z, false).as_vec());
        i += m;
    }
    if matches!(shape, DataShape::Image { .. }) {
        for v in &mut out {
            *v = v.clamp(-1.0, 1.0);
        }
    }
    out
}

/// Rebuild the generator of `cfg` for `shape`, load its weights (`G_ema.` or `G.`)
/// from a checkpoint written by the trainer, and draw `n` samples, on the CPU.
pub fn sample_checkpoint(
    cfg: &TrainConfig,
    shape: DataShape,
    ckpt: &Path,
    use_ema: bool,
    n: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    sample_checkpoint_on(cfg, shape, ckpt, use_ema, n, seed, Cpu::default())
}

/// [`sample_checkpoint`] on any dfdx device (`Cuda` with the `cuda` feature).
pub fn sample_checkpoint_on<D: Dev<f32>>(
    cfg: &TrainConfig,
    shape: DataShape,
    ckpt: &Path,
    use_ema: bool,
    n: usize,
    seed: u64,
    dev: D,
) -> Result<Vec<f32>> {
    let mut g = nets::generator::<f32, D>(&cfg.generator, shape, dev.clone(), 0)?;
    let (map, _meta) = load_safetensors::<f32>(ckpt)?;
    g.load_named(&map, if use_ema { "G_ema." } else { "G." })?;
    Ok(sample_net(
        &g,
        &dev,
        nets::z_dim(&cfg.generator, shape),
        shape,
        n,
        seed,
    ))
}
