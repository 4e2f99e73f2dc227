//! Checkpoints of a [`Trainer`]: G, G_ema, D, both Adam states, step, seed and RNG state
//! in one safetensors file (tensor names prefixed `G.`, `G_ema.`, `D.`, `opt_G.`,
//! `opt_D.`; counters, seed, config, class count and the shape of one example G makes
//! (`shape`: `[2]` or `[C, H, W]`, read by [`crate::gan::checkpoint_shape`]) in the
//! metadata), so that a resumed run continues
//! bit for bit.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::Trainer;
use crate::gan::sample::SHAPE_KEY;
use crate::nn::{load_safetensors, save_safetensors, Dev, Rng};

const CKPT_FORMAT: &str = "ablate-checkpoint-v1";

impl<D: Dev<f32>> Trainer<D> {
    fn config_json(&self) -> String {
        serde_json::to_string(&self.cfg).unwrap_or_default()
    }

    /// Write G, G_ema (its batch-norm statistics settled first:
    /// [`Trainer::settle_ema_stats`]), D, both Adam states, step, seed and RNG state as
    /// safetensors (temp file + rename).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        self.settle_ema_stats();
        let mut ts = vec![];
        for (prefix, net) in [("G.", &self.g), ("G_ema.", &self.g_ema), ("D.", &self.d)] {
            for mut t in net.to_named() {
                t.name = format!("{prefix}{}", t.name);
                ts.push(t);
            }
        }
        ts.extend(self.opt_g.to_named(&self.g.params, "opt_G."));
        ts.extend(self.opt_d.to_named(&self.d.params, "opt_D."));
        let s = self.rng.state();
        let mut meta: HashMap<String, String> = [
            ("format", CKPT_FORMAT.to_string()),
            ("step", self.step.to_string()),
            ("d_iters", self.d_iters.to_string()),
            ("seed", self.seed.to_string()),
            ("rng", format!("{},{},{},{}", s[0], s[1], s[2], s[3])),
            ("opt_G.t", self.opt_g.t.to_string()),
            ("opt_D.t", self.opt_d.t.to_string()),
            ("config", self.config_json()),
            (
                "config_hash",
                blake3::hash(self.config_json().as_bytes())
                    .to_hex()
                    .to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(k) = self.classes() {
            meta.insert("classes".into(), k.to_string());
        }
        meta.insert(SHAPE_KEY.into(), format!("{:?}", self.shape.item_dims()));
        save_safetensors(path, &ts, meta)
    }

    /// Restore a checkpoint written by [`Trainer::save_checkpoint`] for the same config and
    /// seed; training then continues exactly as the uninterrupted run would.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let (map, meta) = load_safetensors::<f32>(path)?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| anyhow!("{}: metadata lacks {k:?}", path.display()))
        };
        if get("format")? != CKPT_FORMAT {
            bail!("{}: not an {CKPT_FORMAT} file", path.display());
        }
        if *get("config")? != self.config_json() {
            bail!(
                "{}: checkpoint was written for another config",
                path.display()
            );
        }
        let seed: u64 = get("seed")?.parse()?;
        if seed != self.seed {
            bail!(
                "{}: checkpoint seed {seed}, trainer seed {}",
                path.display(),
                self.seed
            );
        }
        let p = |k: &str| -> Result<u64> {
            get(k)?
                .parse::<u64>()
                .with_context(|| format!("metadata {k}"))
        };
        let rng: Vec<u64> = get("rng")?
            .split(',')
            .map(|s| s.parse::<u64>())
            .collect::<Result<_, _>>()
            .context("metadata rng")?;
        if rng.len() != 4 {
            bail!("metadata rng must hold 4 numbers");
        }
        self.g.load_named(&map, "G.")?;
        self.g_ema.load_named(&map, "G_ema.")?;
        self.d.load_named(&map, "D.")?;
        self.opt_g
            .load_named(&self.g.params, &map, "opt_G.", p("opt_G.t")?)?;
        self.opt_d
            .load_named(&self.d.params, &map, "opt_D.", p("opt_D.t")?)?;
        self.step = p("step")?;
        self.d_iters = p("d_iters")?;
        self.rng = Rng::from_state([rng[0], rng[1], rng[2], rng[3]]);
        Ok(())
    }
}
