//! Stage `train`: a GAN on a `data` artifact.
//!
//! Params are [`crate::gan::TrainConfig`] (serde, unknown keys rejected, ranges
//! checked before anything runs). Writes:
//! - `checkpoint.safetensors`: G, G_ema, D, both Adam states, step, seed, RNG state
//!   (every `checkpoint_every` steps and at the end, atomically); a killed run resumes
//!   from it and reproduces the uninterrupted run's losses exactly;
//! - `log.parquet` / `log.csv`: step, d_loss, g_loss, r1, r2, d_real, d_fake, grad norms,
//!   images/s;
//! - `loss.png`: D and G loss against steps (axes, title, legend);
//!
//! and for the report ([`Stage::figures`]): losses, R1/R2 and gradient norms as SVG.
//!
//! NaN or infinite losses end the run with status `diverged` (a result, not a crash).
//! `conditional: true` trains on the data's labels (an error on unlabelled data) and
//! records the class count in the checkpoint's metadata (`classes`) and the manifest.

use super::data::DATA_FILE;
use crate::data::{load_dataset, DataTensor};
use crate::device::Backend;
use crate::engine::{
    normalised_params, CheckCtx, ConfigError, DeviceChoice, Figure, FigureCtx, Outcome, Resources,
    RunCtx, Stage, Status,
};
use crate::gan::{Arch, ClassLabels, NetConfig, StepLog, TrainConfig, Trainer, Upsample, Variant};
use crate::nn::{Cpu, Dev};
use crate::results::plots::{Chart, LineChart, Series, XAxis};
use crate::results::table::{frame_from_rows, read_parquet, write_table, Cell};
use anyhow::{bail, Context, Result};
use polars::prelude::{AnyValue, DataType};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const ROWS_FILE: &str = "log_rows.json";

/// One row of the training log: the step's losses and the speed since the last row.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub log: StepLog,
    pub images_per_s: f64,
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: conditional training draws fake labels from the data's label distribution.
/// 3: exact R1/R2 (tangent pass), EMA half-life with ramp-up by default, G_ema's own
///    batch-norm statistics, a batch-norm D sees real and fake apart, R3GAN / StyleGAN
///    mapping / resnet D as the official code builds them, d_real / d_fake in the log.
/// 4: the CPU convolutions' GEMMs on gemm 0.19 (AVX-512 kernels where the CPU has them)
///    with transposed weight-gradient products: the same maths summed in another order,
///    which training carries from the last bits into the fourth digit.
/// 5: a stride-1 conv with fewer outputs than inputs (the RGB head) runs as the
///    transposed conv that equals it, and the FIR up/down-sampling of the R3GAN and
///    StyleGAN nets is one CPU op: the same maths summed in another order.
/// 6: G_ema's batch norms get standing statistics when it is saved (16 batches of its
///    own activations) instead of a training-mode pass every step, and G_ema copies G's
///    spectral-norm vectors at each EMA update (before, they stayed at their first
///    iteration). G and D train exactly as under 5; G_ema's samples change where G has
///    batch norm or spectral norm.
/// 7: convolutions whose output map is small enough that padding is a large share of the
///    columns (4x4 maps of 3x3 and stride-2 4x4 kernels) multiply only the taps inside
///    the image (`nn::slots`): the same maths without the zero terms, summed in another
///    order.
/// 8: with R1/R2 on a piecewise-linear D, the loss pass leaves its convolution weight
///    gradients to the penalty's tangent pass, which computes both in one product per
///    convolution (`nn::defer`), and the tangent pass starts from the penalty's weighted
///    input gradients: the same maths summed in another order.
pub const VERSION: u32 = 8;

pub struct Train;

/// The data artifact as training data, with its class labels where it has them.
pub fn train_data(dir: &Path) -> Result<(DataTensor, Option<ClassLabels>)> {
    let path = dir.join(DATA_FILE);
    let ds = load_dataset(&path).with_context(|| format!("loading {}", path.display()))?;
    let labels = match (&ds.labels, ds.classes) {
        (Some(l), Some(k)) => Some(ClassLabels {
            labels: l.iter().map(|&y| y as usize).collect(),
            classes: k,
        }),
        // labels without a class count: the classes are 0..=max
        (Some(l), None) => Some(ClassLabels {
            labels: l.iter().map(|&y| y as usize).collect(),
            classes: l.iter().max().map_or(0, |&m| m as usize + 1),
        }),
        (None, _) => None,
    };
    Ok((ds.data, labels))
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl Stage for Train {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn about(&self) -> &'static str {
        "train a GAN (mlp, dcgan, resnet, selfmod, stylegan, r3gan B-E; ns, rpgan, hinge; r1, r2; unconditional or class-conditional) with checkpoints and resume"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        normalised_params::<TrainConfig>(params, |c| {
            c.validate()?;
            normalise(c);
            Ok(())
        })
    }
    fn resources(&self, params: &Value, device: DeviceChoice) -> Resources {
        let asked = params
            .get("device")
            .and_then(|d| serde_json::from_value::<DeviceChoice>(d.clone()).ok());
        // On a cluster: a GPU when it trains on CUDA, 4 cores, 8 GB, a day.
        Resources {
            gpu: asked.unwrap_or(device).resolve().ok() == Some(Backend::Cuda),
            ..Resources::cluster(4, 8192, 24 * 60)
        }
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let cfg: TrainConfig = cx.params()?;
        let device = cfg.device.unwrap_or(cx.device).resolve()?;
        let input = cx.input("data")?;
        let (data, labels) = train_data(&input.dir)?;
        if cfg.conditional == Some(true) && labels.is_none() {
            bail!(
                "conditional: true needs labelled data, and the data instance {} has no \
                 labels (use a labelled source: mnist, stacked_mnist, gaussian_ring/grid, \
                 or an image_folder with class folders)",
                input.label
            );
        }
        match device {
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                let dev = open_cuda()?;
                train_on(cx, &cfg, data, labels, dev, device)
            }
            _ => train_on(cx, &cfg, data, labels, Cpu::default(), device),
        }
    }

    fn figures(&self, cx: &FigureCtx) -> Result<Vec<Figure>> {
        let log = cx.dir.join("log.parquet");
        if !log.exists() {
            return Ok(vec![]);
        }
        let rows = read_log(&log)?;
        log_charts(&rows, "", 400)
            .into_iter()
            .map(|c| {
                Ok(Figure::Svg {
                    title: c.title.clone(),
                    svg: c.svg(400, 270)?,
                })
            })
            .collect()
    }
}

/// CUDA device 0. dfdx's own RNG seed does not matter: every random number of the
/// trainer (and of sampling) comes from [`crate::nn::Rng`].
#[cfg(feature = "cuda")]
pub(super) fn open_cuda() -> Result<dfdx::prelude::Cuda> {
    dfdx::prelude::Cuda::try_build(0, 0)
        .map_err(|e| anyhow::anyhow!("opening CUDA device 0: {e:?}"))
}

/// The training loop on any dfdx device: resume, step, log, checkpoint, and the outcome.
fn train_on<D: Dev<f32>>(
    cx: &RunCtx,
    cfg: &TrainConfig,
    data: DataTensor,
    labels: Option<ClassLabels>,
    dev: D,
    device: Backend,
) -> Result<Outcome> {
    let mut t = Trainer::build(cfg.clone(), data, labels, cfg.seed, dev)?;
    let (pg, pd) = t.param_counts();
    tracing::info!("{}: G {pg} params, D {pd} params", cx.label);
    let ckpt = cx.dir.join(CHECKPOINT_FILE);
    let mut rows: Vec<LogRow> = vec![];
    if ckpt.exists() {
        t.load_checkpoint(&ckpt)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        if let Ok(text) = std::fs::read_to_string(cx.dir.join(ROWS_FILE)) {
            rows = rows_from_bits(&serde_json::from_str::<Vec<[u64; 10]>>(&text)?);
            rows.retain(|r| r.log.step <= t.step_count());
        }
        tracing::info!("{}: resuming at step {}", cx.label, t.step_count());
    }
    let log_every = cfg.log_every.max(1);
    let started = Instant::now();
    let start_step = t.step_count();
    let mut window = Instant::now();
    let mut window_steps = 0u64;
    let mut diverged_at: Option<u64> = None;
    while t.step_count() < cfg.steps {
        if let Err(e) = cx.check_cancel() {
            // Keep what was done: the next run resumes from here.
            save_state(&t, &rows, cx.dir)?;
            return Err(e);
        }
        let log: StepLog = t.step();
        window_steps += 1;
        let step = log.step;
        if !log.is_finite() {
            tracing::warn!("{}: non-finite loss at step {step}", cx.label);
            diverged_at = Some(step);
            rows.push(row(&log, 0.0));
            break;
        }
        if step.is_multiple_of(log_every) || step == cfg.steps {
            let ips =
                (window_steps * cfg.batch as u64) as f64 / window.elapsed().as_secs_f64().max(1e-9);
            rows.push(row(&log, ips));
            window = Instant::now();
            window_steps = 0;
        }
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) && step < cfg.steps
        {
            save_state(&t, &rows, cx.dir)?;
        }
        cx.progress.set(step, cfg.steps);
    }
    let train_s = started.elapsed().as_secs_f64();
    t.save_checkpoint(&ckpt)?;
    let _ = std::fs::remove_file(cx.dir.join(ROWS_FILE));
    write_log(&rows, cx.dir)?;
    if !rows.is_empty() {
        plot_losses(&rows, cx.label, &cx.dir.join("loss.png"))?;
    }

    let done = t.step_count() - start_step;
    let ips = (done * cfg.batch as u64) as f64 / train_s.max(1e-9);
    let tail: Vec<&LogRow> = rows.iter().rev().take((rows.len() / 10).max(1)).collect();
    let mean = |f: fn(&StepLog) -> f64| {
        tail.iter().map(|r| f(&r.log)).sum::<f64>() / tail.len().max(1) as f64
    };
    let mut out = Outcome::ok()
        .metric("steps", t.step_count() as f64)
        .metric("params_g", pg as f64)
        .metric("params_d", pd as f64);
    // `steps: 0` (an untrained G, for reference rows) has no speed and no losses.
    if done > 0 {
        out = out.metric("images_per_s", ips);
    }
    if !tail.is_empty() {
        out = out
            .metric("d_loss", mean(|r| r.d_loss))
            .metric("g_loss", mean(|r| r.g_loss))
            .metric("d_gap", mean(|r| r.d_real - r.d_fake));
    }
    // the last logged penalty values (R3GAN's failure signs: R1 / R2 blowing up)
    for (name, f) in [
        ("r1", (|r: &StepLog| r.r1) as fn(&StepLog) -> Option<f64>),
        ("r2", |r| r.r2),
    ] {
        let v: Vec<f64> = tail.iter().filter_map(|r| f(&r.log)).collect();
        if !v.is_empty() {
            out = out.metric(name, v.iter().sum::<f64>() / v.len() as f64);
        }
    }
    if let Some(m) = peak_rss_mib() {
        out = out.metric("peak_rss_mib", m);
    }
    out.info
        .insert("device".into(), Value::from(device.as_str()));
    out.info.insert("params_g".into(), Value::from(pg));
    out.info.insert("params_d".into(), Value::from(pd));
    if let Some(k) = t.classes() {
        out.info.insert("classes".into(), Value::from(k));
    }
    if let Some(s) = diverged_at {
        out.status = Status::Diverged;
        out.info.insert("diverged_at_step".into(), Value::from(s));
        out = out.metric("diverged_at_step", s as f64);
    }
    Ok(out)
}

/// Save what a resumed run needs. Rows first: on resume, rows past the
/// checkpoint's step are dropped, so a kill between the two writes loses nothing.
fn save_state<D: Dev<f32>>(t: &Trainer<D>, rows: &[LogRow], dir: &Path) -> Result<()> {
    crate::util::atomic_write(
        &dir.join(ROWS_FILE),
        serde_json::to_string(&rows_to_bits(rows))?.as_bytes(),
    )?;
    t.save_checkpoint(&dir.join(CHECKPOINT_FILE))
}

/// Rows as exact bit patterns (JSON floats do not always round-trip the last bit,
/// and a resumed log must equal the uninterrupted one).
fn rows_to_bits(rows: &[LogRow]) -> Vec<[u64; 10]> {
    let o = |v: Option<f64>| v.map(f64::to_bits).unwrap_or(u64::MAX);
    rows.iter()
        .map(|r| {
            [
                r.log.step,
                r.log.d_loss.to_bits(),
                r.log.g_loss.to_bits(),
                o(r.log.r1),
                o(r.log.r2),
                r.log.grad_norm_d.to_bits(),
                r.log.grad_norm_g.to_bits(),
                r.images_per_s.to_bits(),
                r.log.d_real.to_bits(),
                r.log.d_fake.to_bits(),
            ]
        })
        .collect()
}

fn rows_from_bits(bits: &[[u64; 10]]) -> Vec<LogRow> {
    let o = |b: u64| {
        if b == u64::MAX {
            None
        } else {
            Some(f64::from_bits(b))
        }
    };
    bits.iter()
        .map(|b| LogRow {
            log: StepLog {
                step: b[0],
                d_loss: f64::from_bits(b[1]),
                g_loss: f64::from_bits(b[2]),
                r1: o(b[3]),
                r2: o(b[4]),
                d_real: f64::from_bits(b[8]),
                d_fake: f64::from_bits(b[9]),
                grad_norm_d: f64::from_bits(b[5]),
                grad_norm_g: f64::from_bits(b[6]),
            },
            images_per_s: f64::from_bits(b[7]),
        })
        .collect()
}

fn row(l: &StepLog, ips: f64) -> LogRow {
    LogRow {
        log: l.clone(),
        images_per_s: ips,
    }
}

fn write_log(rows: &[LogRow], dir: &Path) -> Result<()> {
    let opt = |v: Option<f64>| v.map(Cell::Float).unwrap_or(Cell::Null);
    let table: Vec<Vec<(String, Cell)>> = rows
        .iter()
        .map(|r| {
            vec![
                ("step".to_string(), Cell::Int(r.log.step as i64)),
                ("d_loss".to_string(), Cell::Float(r.log.d_loss)),
                ("g_loss".to_string(), Cell::Float(r.log.g_loss)),
                ("r1".to_string(), opt(r.log.r1)),
                ("r2".to_string(), opt(r.log.r2)),
                ("d_real".to_string(), Cell::Float(r.log.d_real)),
                ("d_fake".to_string(), Cell::Float(r.log.d_fake)),
                ("grad_norm_d".to_string(), Cell::Float(r.log.grad_norm_d)),
                ("grad_norm_g".to_string(), Cell::Float(r.log.grad_norm_g)),
                ("images_per_s".to_string(), Cell::Float(r.images_per_s)),
            ]
        })
        .collect();
    let mut df = frame_from_rows(&table)?;
    write_table(&mut df, dir, "log")?;
    // The Markdown copy of a long log helps nobody.
    let _ = std::fs::remove_file(dir.join("log.md"));
    Ok(())
}

/// The training log as charts against step: D and G loss, R1/R2 (where applied) and
/// the gradient norms. At most `max_points` points per line (evenly thinned).
pub fn log_charts(rows: &[LogRow], title_suffix: &str, max_points: usize) -> Vec<LineChart> {
    let stride = rows.len().div_ceil(max_points.max(1)).max(1);
    let kept: Vec<&LogRow> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i + 1 == rows.len())
        .map(|(_, r)| r)
        .collect();
    let series = |name: &str, f: &dyn Fn(&StepLog) -> Option<f64>| Series {
        name: name.to_string(),
        points: kept
            .iter()
            .filter_map(|r| f(&r.log).map(|v| (r.log.step as f64, v)))
            .collect(),
        err: vec![],
    };
    let chart = |title: &str, y: &str, series: Vec<Series>| LineChart {
        title: format!("{title}{title_suffix}"),
        x_label: "step (G updates)".into(),
        y_label: y.into(),
        x: XAxis::Linear,
        series,
        markers: false,
    };
    let mut out = vec![chart(
        "D and G loss",
        "loss (nats, penalties excluded)",
        vec![
            series("D loss", &|l| Some(l.d_loss)),
            series("G loss", &|l| Some(l.g_loss)),
        ],
    )];
    let pens: Vec<Series> = [series("R1: real", &|l| l.r1), series("R2: fake", &|l| l.r2)]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    if !pens.is_empty() {
        out.push(chart(
            "R1 / R2 penalty",
            "mean ||grad_x D||^2 (before gamma/2)",
            pens,
        ));
    }
    out.push(chart(
        "gradient norms",
        "L2 norm of the parameter gradient",
        vec![
            series("D (loss + penalties)", &|l| Some(l.grad_norm_d)),
            series("G", &|l| Some(l.grad_norm_g)),
        ],
    ));
    out
}

/// D and G loss against steps, as a PNG with axes, title and legend.
fn plot_losses(rows: &[LogRow], label: &str, path: &Path) -> Result<()> {
    let chart = log_charts(rows, &format!(": {label}"), 2000).remove(0);
    crate::util::atomic_write(path, &chart.png(720, 400)?)
}

/// The log rows back from `log.parquet`.
pub fn read_log(path: &Path) -> Result<Vec<LogRow>> {
    let df = read_parquet(path)?;
    let col = |name: &str| -> Result<Vec<Option<f64>>> {
        match df.column(name) {
            Ok(c) => {
                let c = c.cast(&DataType::Float64)?;
                Ok((0..c.len())
                    .map(|i| match c.get(i) {
                        Ok(AnyValue::Float64(v)) => Some(v),
                        _ => None,
                    })
                    .collect())
            }
            Err(_) => Ok(vec![None; df.height()]),
        }
    };
    let (step, d, g) = (col("step")?, col("d_loss")?, col("g_loss")?);
    let (r1, r2) = (col("r1")?, col("r2")?);
    let (dr, df_) = (col("d_real")?, col("d_fake")?);
    let (gd, gg, ips) = (
        col("grad_norm_d")?,
        col("grad_norm_g")?,
        col("images_per_s")?,
    );
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    Ok((0..df.height())
        .map(|i| LogRow {
            log: StepLog {
                step: step[i].unwrap_or(0.0) as u64,
                d_loss: nan(d[i]),
                g_loss: nan(g[i]),
                r1: r1[i],
                r2: r2[i],
                d_real: nan(dr[i]),
                d_fake: nan(df_[i]),
                grad_norm_d: nan(gd[i]),
                grad_norm_g: nan(gg[i]),
            },
            images_per_s: nan(ips[i]),
        })
        .collect())
}

/// Optional train params written out with their default value set back to unset, so
/// that `{lazy_interval: 1}` and `{}` (and so on) share a key. Only defaults that do
/// not depend on the data are known here: `z_dim` (16 for points, 64 for images) and
/// an `embed_dim` beside an unset `z_dim` stay as written; so does `ema`. Each rule
/// must agree with where the default is applied (`crate::gan::nets`, the trainer): the
/// tests build nets both ways and compare weights and outputs.
pub fn normalise(c: &mut TrainConfig) {
    normalise_net(&mut c.generator, true);
    normalise_net(&mut c.discriminator, false);
    if c.lazy_interval == Some(1) {
        c.lazy_interval = None;
    }
    if c.conditional == Some(false) {
        c.conditional = None;
    }
    if c.optimizer_g.as_ref() == Some(&c.optimizer) {
        c.optimizer_g = None;
    }
    if c.optimizer_d.as_ref() == Some(&c.optimizer) {
        c.optimizer_d = None;
    }
}

fn unset_if<T: PartialEq>(v: &mut Option<T>, default: T) {
    if v.as_ref() == Some(&default) {
        *v = None;
    }
}

/// One network's defaults (`generator` says which side: dcgan's `batch_norm` differs).
fn normalise_net(n: &mut NetConfig, generator: bool) {
    unset_if(&mut n.max_width, 8 * n.width);
    let depth = match n.arch {
        Arch::Mlp => Some(3),
        Arch::R3gan => Some(2),
        Arch::Resnet if !generator => Some(2),
        _ => None,
    };
    if let Some(d) = depth {
        unset_if(&mut n.depth, d);
    }
    match (n.arch, generator) {
        (Arch::Dcgan | Arch::Selfmod, true) => unset_if(&mut n.batch_norm, true),
        (Arch::Dcgan, false) => unset_if(&mut n.batch_norm, false),
        _ => {}
    }
    if n.arch == Arch::R3gan {
        let e = if n.variant == Some(Variant::E) {
            2.0
        } else {
            1.0
        };
        unset_if(&mut n.expansion, e);
    }
    unset_if(&mut n.group_size, 16);
    unset_if(&mut n.residual_scale, 1.0);
    unset_if(&mut n.learn_residual_scale, false);
    unset_if(&mut n.upsample, Upsample::Nearest);
    unset_if(&mut n.body, Arch::Resnet);
    unset_if(&mut n.mod_hidden, 32);
    unset_if(&mut n.mapping_depth, 8);
    unset_if(&mut n.mapping_width, 512);
    // SNGAN's resnet D is spectrally normalised by default; every other net is not
    unset_if(&mut n.spectral_norm, !generator && n.arch == Arch::Resnet);
    unset_if(&mut n.noise, false);
    unset_if(&mut n.style_mixing, 0.0);
    if let Some(z) = n.z_dim {
        unset_if(&mut n.embed_dim, z);
    }
}

#[cfg(test)]
mod tests;
