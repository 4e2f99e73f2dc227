//! Sampling a trained generator from its checkpoint, without the trainer.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;

use super::config::TrainConfig;
use super::nets::{self, DataShape};
use crate::nn::{load_safetensors, Dev, Net, Rng, Side};

/// Generated samples and, for a conditional generator, the labels they were drawn for.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// `[n, C, H, W]` (clamped to [-1, 1]) or `[n, 2]`, row-major.
    pub values: Vec<f32>,
    /// Label of each sample (conditional generators only).
    pub labels: Option<Vec<usize>>,
    /// Number of classes of a conditional generator.
    pub classes: Option<usize>,
}

/// `n` labels balanced over `k` classes: `0, 1, ..., k-1, 0, 1, ...` (every class gets
/// `n / k` samples, the first `n % k` classes one more).
pub fn balanced_labels(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| i % k).collect()
}

/// `n` samples from `net`: latents from `seed` alone, in chunks of 256; a conditional net
/// gets [`balanced_labels`], a net with noise inputs noise seeded from `seed` and the
/// chunk. Images are clamped to [-1, 1].
pub fn sample_net<D: Dev<f32>>(
    net: &Net<f32, D>,
    dev: &D,
    z_dim: usize,
    shape: DataShape,
    n: usize,
    seed: u64,
) -> Samples {
    let mut rng = Rng::new(seed);
    let zs: Vec<f32> = (0..n * z_dim).map(|_| rng.normal() as f32).collect();
    let labels = net.classes().map(|k| balanced_labels(n, k));
    let mut out = Vec::new();
    let chunk = 256;
    let mut i = 0;
    while i < n {
        let m = chunk.min(n - i);
        let z = dev.tensor_from_vec(zs[i * z_dim..(i + m) * z_dim].to_vec(), (m, z_dim, 1, 1));
        let side = Side {
            labels: labels.as_ref().map(|l| l[i..i + m].to_vec()),
            noise_seed: (net.noise_inputs > 0)
                .then(|| Rng::derived(seed, 1 + (i / chunk) as u64).next_u64()),
            mix: None,
        };
        out.extend(net.forward_side(z, &side, false).as_vec());
        i += m;
    }
    if matches!(shape, DataShape::Image { .. }) {
        for v in &mut out {
            *v = v.clamp(-1.0, 1.0);
        }
    }
    Samples {
        values: out,
        labels,
        classes: net.classes(),
    }
}

/// Metadata key of the shape of one example G makes, `[2]` or `[C, H, W]`.
pub(crate) const SHAPE_KEY: &str = "shape";

/// The string metadata of a safetensors file, read from its header alone (the
/// tensors, which may be large, are not read).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!("{}: safetensors header of {len} bytes", path.display());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
    Ok(match header.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone())
            .with_context(|| format!("{}: metadata must map strings to strings", path.display()))?,
        None => HashMap::new(),
    })
}

/// The shape of one example the checkpoint's generator makes, from its metadata;
/// `None` for checkpoints written before it was recorded.
pub fn checkpoint_shape(path: &Path) -> Result<Option<DataShape>> {
    let meta = read_metadata(path)?;
    let Some(s) = meta.get(SHAPE_KEY) else {
        return Ok(None);
    };
    let dims: Vec<usize> = serde_json::from_str(s)
        .with_context(|| format!("{}: metadata {SHAPE_KEY} = {s:?}", path.display()))?;
    Ok(Some(DataShape::from_item_dims(&dims)?))
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
) -> Result<Samples> {
    sample_checkpoint_on(cfg, shape, ckpt, use_ema, n, seed, Cpu::default())
}

/// [`sample_checkpoint`] on any dfdx device (`Cuda` with the `cuda` feature). A
/// conditional generator's number of classes is read from the checkpoint's metadata.
pub fn sample_checkpoint_on<D: Dev<f32>>(
    cfg: &TrainConfig,
    shape: DataShape,
    ckpt: &Path,
    use_ema: bool,
    n: usize,
    seed: u64,
    dev: D,
) -> Result<Samples> {
    let (map, meta) = load_safetensors::<f32>(ckpt)?;
    let classes = match meta.get("classes") {
        Some(k) => Some(
            k.parse::<usize>()
                .with_context(|| format!("{}: metadata classes = {k:?}", ckpt.display()))?,
        ),
        None if cfg.conditional == Some(true) => {
            anyhow::bail!(
                "{}: a conditional run's checkpoint lacks the classes metadata",
                ckpt.display()
            )
        }
        None => None,
    };
    let mut g = nets::generator::<f32, D>(&cfg.generator, shape, classes, dev.clone(), 0)?;
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
