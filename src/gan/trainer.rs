//! The training loop as a library: seeded, checkpointable, bit-identical on resume.
//! Checkpoint I/O lives in `checkpoint` (`trainer/checkpoint.rs`), the D step's loss and
//! penalty gradients in `d_step` (`trainer/d_step.rs`).

mod checkpoint;
mod d_step;

use anyhow::{bail, Result};
use dfdx::prelude::*;

use super::config::{Penalty, TrainConfig};
use super::losses::{g_loss, penalty};
use super::nets::{self, DataShape};
use super::sample::Samples;
use crate::data::DataTensor;
use crate::nn::params::sum_sq;
use crate::nn::{Adam, AdamConfig, Dev, Mix, Net, Rng, Side, T1, T4};

/// Batches (of the training batch size) whose statistics G_ema's batch norms average
/// ([`Trainer::settle_ema_stats`]; BigGAN's `num_standing_accumulations` is 16).
pub const STANDING_BATCHES: usize = 16;
/// RNG stream of the standing-statistics latents (streams 1-3 seed G, D and training).
const STANDING_STREAM: u64 = 4;

/// `[c, h, w]` of one example of `data` (`[2, 1, 1]` for a point).
fn item_dims(data: &DataTensor) -> [usize; 3] {
    match data {
        DataTensor::Images { c, h, w, .. } => [*c, *h, *w],
        DataTensor::Points { .. } => [2, 1, 1],
    }
}

/// Class labels of the training data (one per example, each below `classes`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassLabels {
    /// Label of each example.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl ClassLabels {
    /// The labels of `b` random examples: draws from the data's label distribution, as
    /// StyleGAN2-ADA does for G's labels, so a class the data lacks is never asked for.
    fn draw(&self, rng: &mut Rng, b: usize) -> Vec<usize> {
        (0..b)
            .map(|_| self.labels[rng.below(self.labels.len())])
            .collect()
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
    /// Mean `D(real)` of the last D step's batch.
    pub d_real: f64,
    /// Mean `D(fake)` of the last D step's batch (`d_real - d_fake` is the gap R3GAN
    /// watches for failure).
    pub d_fake: f64,
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
            self.d_real,
            self.d_fake,
            self.grad_norm_d,
            self.grad_norm_g,
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

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
    data: DataTensor,
    /// Labels of the data and the class count, for conditional training only.
    labels: Option<ClassLabels>,
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
    pub fn new(cfg: TrainConfig, data: DataTensor, seed: u64) -> Result<Self> {
        Self::build(cfg, data, None, seed, Cpu::default())
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
    /// Build on a given device with the data's labels, if it has any. They are used only
    /// when the config is `conditional`, which needs them.
    pub fn build(
        cfg: TrainConfig,
        data: DataTensor,
        labels: Option<ClassLabels>,
        seed: u64,
        dev: D,
    ) -> Result<Self> {
        cfg.validate()?;
        data.check()?;
        if data.n() == 0 {
            bail!("no training data");
        }
        let labels = match (cfg.conditional == Some(true), labels) {
            (false, _) => None,
            (true, None) => {
                bail!("conditional: true needs labelled data (this data stage has no labels)")
            }
            (true, Some(l)) => {
                if l.labels.len() != data.n() {
                    bail!("{} labels for {} examples", l.labels.len(), data.n());
                }
                if l.classes == 0 {
                    bail!("conditional training needs at least one class");
                }
                if let Some(bad) = l.labels.iter().find(|&&y| y >= l.classes) {
                    bail!("label {bad} outside 0..{}", l.classes);
                }
                Some(l)
            }
        };
        let classes = labels.as_ref().map(|l| l.classes);
        let shape = DataShape::of(&data)?;
        let g = nets::generator::<f32, D>(
            &cfg.generator,
            shape,
            classes,
            dev.clone(),
            Rng::derived(seed, 1).next_u64(),
        )?;
        let d = nets::discriminator::<f32, D>(
            &cfg.discriminator,
            shape,
            classes,
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
            labels,
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

    /// Classes of a conditional run.
    pub fn classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|l| l.classes)
    }

    /// `b` random examples and, when conditional, their labels.
    fn real_batch(&mut self, b: usize) -> (T4<f32, D>, Side) {
        let [c, h, w] = item_dims(&self.data);
        let n = self.data.n();
        let mut v = Vec::with_capacity(b * self.data.item_len());
        let mut ys = self.labels.as_ref().map(|_| Vec::with_capacity(b));
        for _ in 0..b {
            let i = self.rng.below(n);
            v.extend_from_slice(self.data.item(i));
            if let (Some(ys), Some(l)) = (&mut ys, &self.labels) {
                ys.push(l.labels[i]);
            }
        }
        (self.dev.tensor_from_vec(v, (b, c, h, w)), Side::labels(ys))
    }

    /// The side inputs of one G pass over `b` latents: labels (conditional) drawn from
    /// the data's label distribution (the label of a random example, as StyleGAN2-ADA
    /// does, so a class the data lacks is never asked for), a noise seed (noise inputs),
    /// style mixing (with probability `style_mixing`). Draws from the RNG only what the
    /// config uses, so unconditional runs without noise or mixing consume it exactly as
    /// before these existed.
    fn g_side(&mut self, b: usize) -> Side {
        let labels = self.labels.as_ref().map(|l| l.draw(&mut self.rng, b));
        let noise_seed = (self.g.noise_inputs > 0).then(|| self.rng.next_u64());
        let p = self.cfg.generator.style_mixing.unwrap_or(0.0);
        let mut mix = None;
        if p > 0.0 && self.g.mix_points > 0 && self.rng.uniform() < p {
            mix = Some(Mix {
                cutoff: 1 + self.rng.below(self.g.mix_points),
                seed: self.rng.next_u64(),
            });
        }
        Side {
            labels,
            noise_seed,
            mix,
        }
    }

    /// Give G_ema's batch norms standing statistics (BigGAN's): the mean of
    /// [`STANDING_BATCHES`] training-mode batches' statistics of G_ema's own activations,
    /// over latents, labels (drawn from the data's, as in training) and noise from the
    /// run's seed alone. G_ema is never trained, so its statistics are computed when it is
    /// read (sampled or saved) instead of tracked every step: they then describe the
    /// averaged weights, not a mix of past ones, a step runs one G pass fewer, and a
    /// resumed run saves the same statistics as an uninterrupted one.
    pub fn settle_ema_stats(&self) {
        if self.g_ema.buffers.lock().unwrap().is_empty() {
            return;
        }
        let b = self.cfg.batch;
        let mut rng = Rng::derived(self.seed, STANDING_STREAM);
        for k in 0..STANDING_BATCHES {
            let z = Self::latents(&mut rng, &self.dev, b, self.z_dim);
            let side = Side {
                labels: self.labels.as_ref().map(|l| l.draw(&mut rng, b)),
                noise_seed: (self.g_ema.noise_inputs > 0).then(|| rng.next_u64()),
                mix: None,
            };
            self.g_ema.accumulate_bn_stats(z, &side, k);
        }
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
            d_real: 0.0,
            d_fake: 0.0,
            grad_norm_d: 0.0,
            grad_norm_g: 0.0,
        };
        let hp = self.cfg.hyper_at(self.step);
        self.opt_g.cfg.lr = hp.lr_g;
        self.opt_g.cfg.betas.1 = hp.beta2_g;
        self.opt_d.cfg.lr = hp.lr_d;
        self.opt_d.cfg.betas.1 = hp.beta2_d;
        for _ in 0..self.cfg.d_steps {
            let (real, real_side) = self.real_batch(b);
            let z = Self::latents(&mut self.rng, &self.dev, b, self.z_dim);
            let g_side = self.g_side(b);
            let fake = self.g.forward_side(z, &g_side, true);
            let fake_side = Side::labels(g_side.labels.clone());
            let both: T4<f32, D> = (real.clone(), fake.clone()).concat_along(Axis::<0>);
            let both_side = Side::labels(
                (real_side.labels.as_ref())
                    .zip(fake_side.labels.as_ref())
                    .map(|(r, f)| [r.as_slice(), f].concat()),
            );
            let k = self.cfg.lazy_interval.unwrap_or(1);
            let pen_now =
                hp.gamma > 0.0 && self.d_iters.is_multiple_of(k) && !self.cfg.penalties.is_empty();
            log.r1 = None;
            log.r2 = None;
            let grads = if self.d.is_piecewise_linear() {
                // one pass over real and fake (no batch statistics in D to keep apart)
                let (o, grads, pens) = self.d_loss_and_penalties(
                    &both,
                    &both_side,
                    pen_now.then_some(0.5 * hp.gamma * k as f64),
                );
                (log.d_loss, log.d_real, log.d_fake) = (o.loss, o.real, o.fake);
                for (p, v) in pens {
                    match p {
                        Penalty::R1 => log.r1 = Some(v),
                        Penalty::R2 => log.r2 = Some(v),
                    }
                }
                grads
            } else {
                // batch norm in D: real and fake batches apart, as separate PyTorch calls
                // would normalise them (penalties are refused with batch norm in D)
                let (o, mut grads) = self.d_loss_apart(&real, &real_side, &fake, &fake_side);
                (log.d_loss, log.d_real, log.d_fake) = (o.loss, o.real, o.fake);
                if pen_now {
                    let w = 0.5 * hp.gamma * k as f64;
                    for p in self.cfg.penalties.clone() {
                        let (x, side) = match p {
                            Penalty::R1 => (&real, &real_side),
                            Penalty::R2 => (&fake, &fake_side),
                        };
                        let (val, pg) = penalty(&self.d, x, side, self.cfg.hvp_delta, true);
                        add_scaled(&mut grads, pg, w);
                        match p {
                            Penalty::R1 => log.r1 = Some(val),
                            Penalty::R2 => log.r2 = Some(val),
                        }
                    }
                }
                grads
            };
            log.grad_norm_d = sum_sq(&grads).sqrt();
            self.opt_d.step(&mut self.d.params, grads);
            self.d_iters += 1;
        }
        // G step
        let (real, real_side) = self.real_batch(b);
        let z = Self::latents(&mut self.rng, &self.dev, b, self.z_dim);
        let g_side = self.g_side(b);
        let dr: Vec<f64> = self
            .d
            .forward_side(real, &real_side, true)
            .as_vec()
            .into_iter()
            .map(|v| v as f64)
            .collect();
        let fake = self
            .g
            .forward_side(z.traced(self.g.params.alloc_grads()), &g_side, true);
        let fake_side = Side::labels(g_side.labels.clone());
        // D is fixed here: its backward computes the input gradient G needs, not its own
        let out = self
            .d
            .forward_frozen(fake, &fake_side, true)
            .reshape_like(&(b,));
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
        self.sample_labelled(n, seed, use_ema).values
    }

    /// [`Trainer::sample`] with the labels a conditional generator was given (balanced
    /// over the classes).
    pub fn sample_labelled(&self, n: usize, seed: u64, use_ema: bool) -> Samples {
        let net = if use_ema {
            self.settle_ema_stats();
            &self.g_ema
        } else {
            &self.g
        };
        super::sample::sample_net(net, &self.dev, self.z_dim, self.shape, n, seed)
    }
}
