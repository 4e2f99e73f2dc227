//! The training loop as a library: seeded, checkpointable, bit-identical on resume.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use dfdx::prelude::*;

use super::config::{Penalty, TrainConfig};
use super::losses::{d_loss, g_loss, penalty, weighted_pass};
use super::nets::{self, DataShape};
use crate::nn::params::sum_sq;
use crate::nn::{load_safetensors, save_safetensors, Adam, AdamConfig, Dev, Net, Rng, T1, T4};

/// Training data, values in [-1, 1] for images.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainData {
    /// `[n, c, h, w]` row-major, `h == w`.
    Images {
        /// Values.
        data: Vec<f32>,
        /// Count.
        n: usize,
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// `[n, 2]` row-major.
    Points {
        /// Values.
        data: Vec<f32>,
        /// Count.
        n: usize,
    },
}

impl TrainData {
    /// The shape networks are built for.
    pub fn shape(&self) -> Result<DataShape> {
        match self {
            TrainData::Points { .. } => Ok(DataShape::Points),
            TrainData::Images { c, h, w, .. } => {
                if h != w {
                    bail!("images must be square, got {h}x{w}");
                }
                Ok(DataShape::Image { c: *c, res: *h })
            }
        }
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            TrainData::Images { n, .. } | TrainData::Points { n, .. } => *n,
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn row(&self) -> (usize, [usize; 3]) {
        match self {
            TrainData::Images { c, h, w, .. } => (c * h * w, [*c, *h, *w]),
            TrainData::Points { .. } => (2, [2, 1, 1]),
        }
    }
    fn data(&self) -> &[f32] {
        match self {
            TrainData::Images { data, .. } | TrainData::Points { data, .. } => data,
        }
    }
}

/// What one [`Trainer::step`] did (the last D step's values when `d_steps > 1`).
/// Non-finite values are returned as they are: the caller decides the run diverged.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// G steps completed after this step (1-based).
    pub step: u64,
    /// D loss (without penalties).
    pub d_loss: f64,
    /// G loss.
    pub g_loss: f64,
    /// `mean ||grad_x D(real)||^2` when R1 was applied this step.
    pub r1: Option<f64>,
    /// `mean ||grad_x D(fake)||^2` when R2 was applied this step.
    pub r2: Option<f64>,
    /// Norm of D's full gradient (loss + penalties).
    pub grad_norm_d: f64,
    /// Norm of G's gradient.
    pub grad_norm_g: f64,
}

impl StepLog {
    /// False when any value is NaN or infinite (the run diverged).
    pub fn is_finite(&self) -> bool {
        [
            self.d_loss,
            self.g_loss,
            self.r1.unwrap_or(0.0),
            self.r2.unwrap_or(0.0),
            self.grad_norm_d,
            self.grad_norm_g,
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

const CKPT_FORMAT: &str = "ablate-checkpoint-v1";

/// GAN trainer (f32) on a dfdx device.
pub struct Trainer<D: Dev<f32> = Cpu> {
    /// Validated configuration.
    pub cfg: TrainConfig,
    /// Generator.
    pub g: Net<f32, D>,
    /// EMA of the generator (G itself when `ema` is unset).
    pub g_ema: Net<f32, D>,
    /// Discriminator.
    pub d: Net<f32, D>,
    /// Adam of G.
    pub opt_g: Adam<f32, D>,
    /// Adam of D.
    pub opt_d: Adam<f32, D>,
    data: TrainData,
    shape: DataShape,
    z_dim: usize,
    step: u64,
    d_iters: u64,
    seed: u64,
    rng: Rng,
    dev: D,
}

impl Trainer<Cpu> {
    /// Build on the CPU. `seed` drives initialisation, batches and latents.
    pub fn new(cfg: TrainConfig, data: TrainData, seed: u64) -> Result<Self> {
        Self::with_device(cfg, data, seed, Cpu::default())
    }
}

fn adam_cfg(o: &super::config::OptimConfig) -> AdamConfig {
    AdamConfig {
        lr: o.lr,
        betas: (o.betas[0], o.betas[1]),
        eps: o.eps,
    }
}

fn add_scaled<D: Dev<f32>>(acc: &mut [T1<f32, D>], g: Vec<T1<f32, D>>, s: f64) {
    for (a, g) in acc.iter_mut().zip(g) {
        *a = a.clone() + g * (s as f32);
    }
}

impl<D: Dev<f32>> Trainer<D> {
    /// Build on a given device.
    pub fn with_device(cfg: TrainConfig, data: TrainData, seed: u64, dev: D) -> Result<Self> {
        cfg.validate()?;
        if data.is_empty() {
            bail!("no training data");
        }
        let (row, _) = data.row();
        if data.data().len() != data.len() * row {
            bail!(
                "training data has {} values, expected {} x {row}",
                data.data().len(),
                data.len()
            );
        }
        let shape = data.shape()?;
        let g = nets::generator::<f32, D>(
            &cfg.generator,
            shape,
            dev.clone(),
            Rng::derived(seed, 1).next_u64(),
        )?;
        let d = nets::discriminator::<f32, D>(
            &cfg.discriminator,
            shape,
            dev.clone(),
            Rng::derived(seed, 2).next_u64(),
        )?;
        let og = adam_cfg(cfg.optimizer_g.as_ref().unwrap_or(&cfg.optimizer));
        let od = adam_cfg(cfg.optimizer_d.as_ref().unwrap_or(&cfg.optimizer));
        Ok(Self {
            z_dim: nets::z_dim(&cfg.generator, shape),
            opt_g: Adam::new(og, &g.params),
            opt_d: Adam::new(od, &d.params),
            g_ema: g.clone(),
            g,
            d,
            cfg,
            data,
            shape,
            step: 0,
            d_iters: 0,
            seed,
            rng: Rng::derived(seed, 3),
            dev,
        })
    }

    /// G steps done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }
    /// (generator, discriminator) parameter counts.
    pub fn param_counts(&self) -> (usize, usize) {
        (self.g.param_count(), self.d.param_count())
    }
    /// Latent size.
    pub fn z_dim(&self) -> usize {
        self.z_dim
    }
    /// Shape of one sample (`[2, 1, 1]` for points).
    pub fn sample_shape(&self) -> [usize; 3] {
        self.data.row().1
    }

    fn real_batch(&mut self, b: usize) -> T4<f32, D> {
        let (row, [c, h, w]) = self.data.row();
        let n = self.data.len();
        let mut v = Vec::with_capacity(b * row);
        for _ in 0..b {
            let i = self.rng.below(n);
            v.extend_from_slice(&self.data.data()[i * row..(i + 1) * row]);
        }
        self.dev.tensor_from_vec(v, (b, c, h, w))
    }

    fn latents(rng: &mut Rng, dev: &D, b: usize, z: usize) -> T4<f32, D> {
        let v = (0..b * z).map(|_| rng.normal() as f32).collect();
        dev.tensor_from_vec(v, (b, z, 1, 1))
    }

    /// One G step preceded by `d_steps` D steps.
    pub fn step(&mut self) -> StepLog {
        let b = self.cfg.batch;
        let kind = self.cfg.loss;
        let mut log = StepLog {
            step: 0,
            d_loss: 0.0,
            g_loss: 0.0,
            r1: None,
            r2: None,
            grad_norm_d: 0.0,
            grad_norm_g: 0.0,
        };
        let hp = self.cfg.hyper_at(self.step);
        self.opt_g.cfg.lr = hp.lr_g;
        self.opt_g.cfg.betas.1 = hp.beta2_g;
        self.opt_d.cfg.lr = hp.lr_d;
        self.opt_d.cfg.betas.1 = hp.beta2_d;
        for _ in 0..self.cfg.d_steps {
            let real = self.real_batch(b);
            let z = Self::latents(&mut self.rng, &self.dev, b, self.z_dim);
            let fake = self.g.forward(z, true);
            let both: T4<f32, D> = (real.clone(), fake.clone()).concat_along(Axis::<0>);
            let mut dl = 0.0;
            let (_, mut grads, _) = weighted_pass(&self.d, &both, true, false, |v| {
                let (l, mut cr, cf) = d_loss(kind, &v[..b], &v[b..]);
                dl = l;
                cr.extend(cf);
                cr
            });
            log.d_loss = dl;
            log.r1 = None;
            log.r2 = None;
            let k = self.cfg.lazy_interval.unwrap_or(1);
            if hp.gamma > 0.0 && self.d_iters.is_multiple_of(k) {
                let w = 0.5 * hp.gamma * k as f64;
                for p in self.cfg.penalties.clone() {
                    let x = if p == Penalty::R1 { &real } else { &fake };
                    let (val, pg) = penalty(&self.d, x, self.cfg.hvp_delta, true);
                    add_scaled(&mut grads, pg, w);
                    match p {
                        Penalty::R1 => log.r1 = Some(val),
                        Penalty::R2 => log.r2 = Some(val),
                    }
                }
            }
            log.grad_norm_d = sum_sq(&grads).sqrt();
            self.opt_d.step(&mut self.d.params, grads);
            self.d_iters += 1;
        }
        // G step
        let real = self.real_batch(b);
        let z = Self::latents(&mut self.rng, &self.dev, b, self.z_dim);
        let dr: Vec<f64> = self
            .d
            .forward(real, true)
            .as_vec()
            .into_iter()
            .map(|v| v as f64)
            .collect();
        let fake = self.g.forward(z.traced(self.g.params.alloc_grads()), true);
        let out = self.d.forward(fake, true).reshape_like(&(b,));
        let df: Vec<f64> = out.as_vec().into_iter().map(|v| v as f64).collect();
        let (gl, c) = g_loss(kind, &dr, &df);
        let ct: T1<f32, D> = self
            .dev
            .tensor_from_vec(c.into_iter().map(|v| v as f32).collect(), (b,));
        let grads = (out * ct).sum::<(), Axis<0>>().backward();
        let gg = self.g.params.grads_of(&grads);
        log.g_loss = gl;
        log.grad_norm_g = sum_sq(&gg).sqrt();
        self.opt_g.step(&mut self.g.params, gg);
        match hp.ema_beta {
            Some(beta) => self.g_ema.ema_update(&self.g, beta),
            None => self.g_ema = self.g.clone(),
        }
        self.step += 1;
        log.step = self.step;
        log
    }

    /// `n` samples `[n, C, H, W]` (images clamped to [-1, 1]) or `[n, 2]`, from the EMA
    /// generator or the raw one; latents from `seed` only (independent of training).
    pub fn sample(&self, n: usize, seed: u64, use_ema: bool) -> Vec<f32> {
        let net = if use_ema { &self.g_ema } else { &self.g };
        super::sample::sample_net(net, &self.dev, self.z_dim, self.shape, n, seed)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.cfg).unwrap_or_default()
    }

    /// Write G, G_ema, D, both Adam states, step, seed and RNG state as safetensors
    /// (temp file + rename).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
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
        let meta: HashMap<String, String> = [
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
