//! Configs and schedules, training and resume (network shapes and parameter counts are
//! in `nets_tests.rs`, the penalties in `penalty_tests.rs`, conditional nets in
//! `cond_tests.rs`).

use dfdx::prelude::*;

use super::nets::DataShape;
use super::*;
use crate::data::DataTensor;
use crate::nn::{Cpu, Net, Rng, Side};

pub(super) fn net_cfg(arch: Arch, variant: Option<Variant>, width: usize) -> NetConfig {
    NetConfig {
        arch,
        variant,
        width,
        max_width: None,
        depth: None,
        z_dim: None,
        batch_norm: None,
        expansion: None,
        group_size: None,
        residual_scale: None,
        learn_residual_scale: None,
        upsample: None,
        body: None,
        mod_hidden: None,
        mapping_depth: None,
        mapping_width: None,
        spectral_norm: None,
        embed_dim: None,
        noise: None,
        style_mixing: None,
    }
}

/// `n` random `c x h x w` images, `tanh` of standard normals (so in (-1, 1)), drawn
/// from `rng`.
pub(super) fn tanh_images(rng: &mut Rng, [n, c, h, w]: [usize; 4]) -> DataTensor {
    let values = (rng.normals(n * c * h * w).iter())
        .map(|v| v.tanh() as f32)
        .collect();
    DataTensor::Images { values, n, c, h, w }
}

pub(super) fn count(net: &Net<f32, Cpu>) -> usize {
    net.param_count()
}

fn ring(n: usize, seed: u64) -> (Vec<f32>, Vec<[f64; 2]>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<[f64; 2]> = (0..8)
        .map(|k| {
            let a = k as f64 * std::f64::consts::TAU / 8.0;
            [2.0 * a.cos(), 2.0 * a.sin()]
        })
        .collect();
    let mut v = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let c = centres[rng.below(8)];
        v.push((c[0] + 0.02 * rng.normal()) as f32);
        v.push((c[1] + 0.02 * rng.normal()) as f32);
    }
    (v, centres)
}

fn ring_cfg(steps: u64) -> TrainConfig {
    if let Ok(y) = std::env::var("RING_CFG") {
        return serde_yaml_ng::from_str(&format!("{y}\nsteps: {steps}\n")).unwrap();
    }
    let yaml = format!(
        "generator: {{arch: mlp, width: 64}}\n\
         discriminator: {{arch: mlp, width: 64}}\n\
         loss: rpgan\npenalties: [r1, r2]\ngamma: 0.05\n\
         optimizer: {{lr: 1.0e-3, betas: [0.5, 0.99]}}\n\
         batch: 64\nsteps: {steps}\nema: 0.995\nseed: 0\n"
    );
    serde_yaml_ng::from_str(&yaml).unwrap()
}

#[test]
fn ring_rpgan_r1_r2_covers_modes_and_is_deterministic() {
    let (data, centres) = ring(4000, 11);
    let steps = std::env::var("RING_STEPS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(3000);
    let cfg = ring_cfg(steps);
    let td = DataTensor::Points {
        values: data,
        n: 4000,
    };
    let mut t = Trainer::new(cfg.clone(), td.clone(), 0).unwrap();
    let mut logs = vec![];
    for _ in 0..steps {
        let l = t.step();
        assert!(l.is_finite(), "{l:?}");
        logs.push(l);
    }
    let s = t.sample(5000, 123, true);
    let mut hit = [0usize; 8];
    for p in s.chunks(2) {
        for (k, c) in centres.iter().enumerate() {
            let d = ((p[0] as f64 - c[0]).powi(2) + (p[1] as f64 - c[1]).powi(2)).sqrt();
            if d < 3.0 * 0.02 {
                hit[k] += 1;
            }
        }
    }
    let covered = hit.iter().filter(|&&h| h > 0).count();
    eprintln!("modes hit {hit:?}, last {:?}", logs.last());
    assert!(covered >= 7, "covered {covered} of 8: {hit:?}");
    // a second run gives identical losses (first 200 steps)
    let mut t2 = Trainer::new(cfg, td, 0).unwrap();
    for l in logs.iter().take(200) {
        assert_eq!(&t2.step(), l);
    }
}

/// Train 6 steps straight and 3 + checkpoint + 3: logs, samples and D must match exactly;
/// the checkpoint's generator sampled without the trainer gives the trainer's samples.
/// The data carries labels (0..10), used by conditional configs only.
pub(super) fn check_resume(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut rng = Rng::new(3);
    let td = tanh_images(&mut rng, [64, 1, 16, 16]);
    let labels = ClassLabels {
        labels: (0..64).map(|_| rng.below(10)).collect(),
        classes: 10,
    };
    let cfg: TrainConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let new = || {
        Trainer::build(
            cfg.clone(),
            td.clone(),
            Some(labels.clone()),
            5,
            Cpu::default(),
        )
    };
    let mut a = new().unwrap();
    let la: Vec<StepLog> = (0..6).map(|_| a.step()).collect();
    let mut b = new().unwrap();
    for l in la.iter().take(3) {
        assert_eq!(&b.step(), l);
    }
    b.save_checkpoint(&path).unwrap();
    drop(b);
    let mut c = new().unwrap();
    c.load_checkpoint(&path).unwrap();
    assert_eq!(c.step_count(), 3);
    for l in la.iter().skip(3) {
        assert_eq!(&c.step(), l);
    }
    assert_eq!(a.sample_labelled(4, 1, true), c.sample_labelled(4, 1, true));
    assert_eq!(a.sample(4, 1, false), c.sample(4, 1, false));
    for (x, y) in a.d.params.tensors.iter().zip(&c.d.params.tensors) {
        assert_eq!(x.as_vec(), y.as_vec());
    }
    let s = a.sample_labelled(3, 9, true);
    assert_eq!(s.values.len(), 3 * 16 * 16);
    assert!(s.values.iter().all(|v| (-1.0..=1.0).contains(v)));
    let cond = cfg.conditional == Some(true);
    assert_eq!(s.labels, cond.then(|| vec![0, 1, 2]));
    c.save_checkpoint(&path).unwrap();
    let shape = DataShape::Image { c: 1, res: 16 };
    // The checkpoint says what its G makes (the sample stage reads it there).
    assert_eq!(super::checkpoint_shape(&path).unwrap(), Some(shape));
    let from_file = sample_checkpoint(&cfg, shape, &path, true, 4, 1).unwrap();
    assert_eq!(from_file, c.sample_labelled(4, 1, true));
}

#[test]
fn checkpoint_resume_is_bit_identical() {
    check_resume(
        "generator: {arch: dcgan, width: 4, z_dim: 8}\n\
         discriminator: {arch: dcgan, width: 4, batch_norm: true}\n\
         loss: ns\npenalties: []\ngamma: 1.0\nlazy_interval: 2\n\
         optimizer: {lr: 2.0e-4, betas: [0.5, 0.99]}\n\
         batch: 8\nsteps: 6\nema: 0.9\nseed: 5\nd_steps: 2\n",
    );
}

/// G_ema's saved batch-norm statistics are standing statistics of G_ema itself: within
/// sampling error of one large batch of other latents through the saved G_ema (not its
/// initial unit variances, nor statistics tracked over past weights), and the same in the
/// file whether or not G_ema was sampled before saving.
#[test]
fn g_ema_batch_norm_statistics_are_its_own() {
    let cfg: TrainConfig = serde_yaml_ng::from_str(
        "generator: {arch: dcgan, width: 4, z_dim: 8}\n\
         discriminator: {arch: dcgan, width: 4}\n\
         loss: rpgan\npenalties: []\ngamma: 0.0\n\
         optimizer: {lr: 2.0e-3, betas: [0.5, 0.99]}\n\
         batch: 8\nsteps: 10\nema: 0.9\nseed: 5\n",
    )
    .unwrap();
    let td = tanh_images(&mut Rng::new(3), [64, 1, 16, 16]);
    let dev = Cpu::default();
    let mut t = Trainer::build(cfg, td, None, 5, dev.clone()).unwrap();
    for _ in 0..10 {
        t.step();
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    t.save_checkpoint(&a).unwrap();
    t.sample(4, 1, true);
    t.save_checkpoint(&b).unwrap();
    let ema = |p: &std::path::Path| {
        let (map, _) = crate::nn::load_safetensors::<f32>(p).unwrap();
        let mut v: Vec<(String, Vec<f32>)> = (map.into_iter())
            .filter(|(k, _)| k.starts_with("G_ema."))
            .map(|(k, t)| (k, t.data))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert_eq!(ema(&a), ema(&b));
    let saved = t.g_ema.buffers.lock().unwrap().clone();
    assert!(!saved.is_empty());
    let big = t.g_ema.clone();
    let z = Rng::new(99)
        .normals(1024 * 8)
        .iter()
        .map(|&v| v as f32)
        .collect();
    big.accumulate_bn_stats(dev.tensor_from_vec(z, (1024, 8, 1, 1)), &Side::default(), 0);
    let want = big.buffers.lock().unwrap().clone();
    for (s, w) in saved.iter().zip(&want) {
        for c in 0..s.mean.len() {
            let sd = w.var[c].sqrt();
            assert!(
                (s.mean[c] - w.mean[c]).abs() < 0.35 * sd,
                "{}: {s:?} vs {w:?}",
                s.name
            );
            assert!(
                (s.var[c] / w.var[c] - 1.0).abs() < 0.35,
                "{}: {s:?} vs {w:?}",
                s.name
            );
        }
    }
}

/// The resume test for each new arch; the resnet D with spectral norm (u, v in the
/// checkpoint) and an R1 penalty, whose extra passes must not move u.
#[test]
fn checkpoint_resume_new_archs() {
    for g in [
        "{arch: resnet, width: 4, z_dim: 8, learn_residual_scale: true, residual_scale: 0.5}",
        "{arch: selfmod, width: 4, z_dim: 8, mod_hidden: 8}",
        "{arch: selfmod, body: dcgan, width: 4, z_dim: 8}",
        "{arch: stylegan, width: 4, z_dim: 8, mapping_depth: 2, mapping_width: 16}",
    ] {
        check_resume(&format!(
            "generator: {g}\n\
             discriminator: {{arch: resnet, width: 4, depth: 1, spectral_norm: true}}\n\
             loss: rpgan\npenalties: [r1]\ngamma: 1.0\n\
             optimizer: {{lr: 2.0e-4, betas: [0.5, 0.99]}}\n\
             batch: 8\nsteps: 6\nema: 0.9\nseed: 5\nd_steps: 2\n"
        ));
    }
}

/// Config checks of the new keys.
#[test]
fn new_arch_config_checks() {
    let base = |g: &str, d: &str| {
        format!(
            "generator: {g}\ndiscriminator: {d}\nloss: ns\n\
             optimizer: {{lr: 1.0e-3}}\nbatch: 4\nsteps: 1\n"
        )
    };
    let ok = |g: &str, d: &str| {
        let c: TrainConfig = serde_yaml_ng::from_str(&base(g, d)).unwrap();
        c.validate()
    };
    assert!(ok(
        "{arch: resnet, width: 4, upsample: bilinear}",
        "{arch: resnet, width: 4, spectral_norm: true}"
    )
    .is_ok());
    assert!(ok(
        "{arch: selfmod, width: 4, body: dcgan}",
        "{arch: dcgan, width: 4}"
    )
    .is_ok());
    assert!(ok(
        "{arch: stylegan, width: 4, mapping_depth: 2}",
        "{arch: dcgan, width: 4}"
    )
    .is_ok());
    assert!(ok("{arch: dcgan, width: 4}", "{arch: stylegan, width: 4}").is_err());
    assert!(ok(
        "{arch: dcgan, width: 4, residual_scale: 0.1}",
        "{arch: dcgan, width: 4}"
    )
    .is_err());
    assert!(ok(
        "{arch: selfmod, width: 4, body: r3gan}",
        "{arch: dcgan, width: 4}"
    )
    .is_err());
    assert!(ok(
        "{arch: resnet, width: 4, mapping_depth: 2}",
        "{arch: dcgan, width: 4}"
    )
    .is_err());
    assert!(ok(
        "{arch: resnet, width: 4, mod_hidden: 2}",
        "{arch: dcgan, width: 4}"
    )
    .is_err());
}

#[test]
fn config_rejects_unknown_keys_and_bad_ranges() {
    let ok = ring_cfg(10);
    ok.validate().unwrap();
    let bad = "generator: {arch: mlp, width: 8, wdth: 3}\ndiscriminator: {arch: mlp, width: 8}\n\
               loss: ns\noptimizer: {lr: 0.001}\nbatch: 8\nsteps: 10\n";
    assert!(serde_yaml_ng::from_str::<TrainConfig>(bad).is_err());
    let bad = "generator: {arch: mlp, width: 8}\ndiscriminator: {arch: mlp, width: 8}\n\
               loss: ns\noptimizer: {lr: 0.001}\nbatch: 8\nsteps: 10\nfoo: 1\n";
    assert!(serde_yaml_ng::from_str::<TrainConfig>(bad).is_err());
    let mut c = ok.clone();
    c.optimizer.betas = [0.0, 1.5];
    assert!(c.validate().is_err());
    let mut c = ok.clone();
    c.generator.arch = Arch::R3gan;
    assert!(c.validate().is_err());
    let mut c = ok;
    c.batch = 0;
    assert!(c.validate().is_err());
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + b.abs())
}

#[test]
fn schedules_closed_form() {
    use super::config::{Curve, Schedule};
    let s = |kind, end| Schedule {
        kind,
        start: 2.0,
        end,
        images: 1000,
    };
    let c = s(Curve::Constant, Some(9.0));
    assert!([0, 500, 5000].iter().all(|&n| c.at(n) == 2.0));
    let l = s(Curve::Linear, Some(1.0));
    for (n, want) in [(0, 2.0), (250, 1.75), (500, 1.5), (1000, 1.0), (7000, 1.0)] {
        assert!(close(l.at(n), want), "linear at {n}: {}", l.at(n));
    }
    let k = s(Curve::Cosine, Some(1.0));
    let q = 1.0 + 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()); // at a quarter
    for (n, want) in [(0, 2.0), (250, q), (500, 1.5), (1000, 1.0), (7000, 1.0)] {
        assert!(close(k.at(n), want), "cosine at {n}: {}", k.at(n));
    }
    // end defaults to start
    assert_eq!(s(Curve::Linear, None).at(300), 2.0);
}

#[test]
fn ema_halflife_beta_closed_form() {
    use super::config::ema_beta_halflife;
    // half-life 10 kimg at batch 64: beta^(10000/64) = 1/2
    let b = ema_beta_halflife(64, 10_000.0, None, 123);
    assert!(close(b, 0.5f64.powf(64.0 / 10_000.0)));
    assert!(close(b.powf(10_000.0 / 64.0), 0.5));
    // ramp-up 0.05: after 640 images the half-life is at most 32 images -> 0.5^2
    assert!(close(
        ema_beta_halflife(64, 10_000.0, Some(0.05), 640),
        0.25
    ));
    // ... and at the start the EMA copies G
    assert_eq!(ema_beta_halflife(64, 10_000.0, Some(0.05), 0), 0.0);
    // once ramped up the plain half-life applies
    assert_eq!(ema_beta_halflife(64, 10_000.0, Some(0.05), 10_000_000), b);
}

#[test]
fn hyper_at_follows_schedules_and_keeps_fixed_values() {
    let base = "generator: {arch: mlp, width: 8}\ndiscriminator: {arch: mlp, width: 8}\n\
                loss: rpgan\npenalties: [r1]\ngamma: 0.5\n\
                optimizer: {lr: 0.001, betas: [0.0, 0.99]}\nbatch: 10\nsteps: 100\n";
    // no schedules: the fixed values; ema unset -> half-life batch * 10 / 32 kimg
    // (3125 images at batch 10) with ramp-up 0.05 (370 images seen: cap 18.5 images)
    let cfg: TrainConfig = serde_yaml_ng::from_str(base).unwrap();
    cfg.validate().unwrap();
    let h = cfg.hyper_at(37);
    assert_eq!(
        (h.lr_g, h.lr_d, h.beta2_g, h.beta2_d, h.gamma),
        (0.001, 0.001, 0.99, 0.99, 0.5)
    );
    assert!(close(h.ema_beta.unwrap(), 0.5f64.powf(10.0 / 18.5)));
    // after the ramp-up (62,500 images): the full half-life
    assert!(close(
        cfg.hyper_at(10_000).ema_beta.unwrap(),
        0.5f64.powf(10.0 / 3125.0)
    ));
    assert_eq!(
        cfg.hyper_at(0).ema_beta,
        Some(0.0),
        "the first step copies G"
    );
    // a beta stands for its half-life (ln 0.5 / ln 0.99 steps) and ramps up the same way
    let cfg: TrainConfig = serde_yaml_ng::from_str(&format!("{base}ema: 0.99\n")).unwrap();
    let full = 10.0 * 0.5f64.ln() / 0.99f64.ln();
    assert!(close(cfg.hyper_at(1_000_000).ema_beta.unwrap(), 0.99));
    assert!(close(
        cfg.hyper_at(100).ema_beta.unwrap(),
        0.5f64.powf(10.0 / 50.0)
    ));
    assert!(full > 50.0);
    // ema_rampup: 0 turns the ramp-up off; ema: 0 samples G itself
    let cfg: TrainConfig =
        serde_yaml_ng::from_str(&format!("{base}ema: 0.99\nema_rampup: 0\n")).unwrap();
    assert!(close(cfg.hyper_at(1).ema_beta.unwrap(), 0.99));
    let cfg: TrainConfig = serde_yaml_ng::from_str(&format!("{base}ema: 0\n")).unwrap();
    assert_eq!(cfg.hyper_at(500).ema_beta, Some(0.0));
    let y = format!(
        "{base}optimizer_d: {{lr: 0.004}}\nema_halflife_kimg: 0.5\nema_rampup: 0.1\n\
         schedules:\n  lr: {{kind: cosine, start: 0.002, end: 0.0005, images: 1000}}\n\
         \x20 gamma: {{kind: linear, start: 1.0, end: 0.1, images: 500}}\n\
         \x20 beta2: {{kind: linear, start: 0.9, end: 0.99, images: 1000}}\n\
         \x20 ema_halflife_kimg: {{kind: linear, start: 0.0, end: 1.0, images: 1000}}\n"
    );
    let cfg: TrainConfig = serde_yaml_ng::from_str(&y).unwrap();
    cfg.validate().unwrap();
    // step 50 = 500 images: half way through lr, beta2 and the half-life, gamma done
    let h = cfg.hyper_at(50);
    assert!(close(h.lr_g, 0.00125) && close(h.lr_d, 0.00125));
    assert!(close(h.beta2_g, 0.945) && close(h.beta2_d, 0.945));
    assert!(close(h.gamma, 0.1));
    // half-life 500 images, ramp-up cap 0.1 * 500 = 50 images: beta = 0.5^(10/50)
    assert!(close(h.ema_beta.unwrap(), 0.5f64.powf(0.2)));
    // step 200: everything at its end value; half-life 1000 images, cap 200 images
    let h = cfg.hyper_at(200);
    assert!(close(h.lr_g, 0.0005) && close(h.gamma, 0.1) && close(h.beta2_d, 0.99));
    assert!(close(h.ema_beta.unwrap(), 0.5f64.powf(10.0 / 200.0)));
    // bad combinations are refused
    for extra in [
        "ema: 0.9\nema_halflife_kimg: 1.0\n",
        "ema_rampup: -0.05\n",
        "schedules: {lr: {kind: linear, start: 0.001}}\n",
        "schedules: {lr: {kind: constant, start: 2.0}}\n",
        "schedules: {ema_halflife_kimg: {kind: constant, start: 1.0}}\n",
    ] {
        let cfg: TrainConfig = serde_yaml_ng::from_str(&format!("{base}{extra}")).unwrap();
        assert!(cfg.validate().is_err(), "{extra}");
    }
    let unknown = format!("{base}schedules: {{lr: {{kind: linear, start: 0.1, stop: 0.2}}}}\n");
    assert!(serde_yaml_ng::from_str::<TrainConfig>(&unknown).is_err());
    let unknown = format!("{base}schedules: {{momentum: {{kind: constant, start: 0.1}}}}\n");
    assert!(serde_yaml_ng::from_str::<TrainConfig>(&unknown).is_err());
}

/// The trainer applies the schedule of each step to both optimisers.
#[test]
fn trainer_applies_schedules() {
    let mut cfg = ring_cfg(3);
    cfg.schedules.lr = Some(super::config::Schedule {
        kind: super::config::Curve::Linear,
        start: 1e-3,
        end: Some(1e-4),
        images: 2 * cfg.batch as u64,
    });
    cfg.validate().unwrap();
    let (data, _) = ring(256, 1);
    let mut t = Trainer::new(
        cfg.clone(),
        DataTensor::Points {
            values: data,
            n: 256,
        },
        1,
    )
    .unwrap();
    for step in 0..3u64 {
        t.step();
        let want = cfg.hyper_at(step).lr_g;
        assert_eq!((t.opt_g.cfg.lr, t.opt_d.cfg.lr), (want, want));
    }
    assert!(close(t.opt_g.cfg.lr, 1e-4));
}

/// A checkpoint written before the `shape` metadata has none (the sample stage then
/// reads the data's card); a shape survives its metadata form.
#[test]
fn checkpoint_shape_of_old_checkpoints_and_round_trip() {
    use crate::nn::{save_safetensors, NamedTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.safetensors");
    let t = NamedTensor {
        name: "G.w".into(),
        shape: vec![2],
        data: vec![1.0f32, 2.0],
    };
    save_safetensors(&path, &[t], Default::default()).unwrap();
    assert_eq!(super::checkpoint_shape(&path).unwrap(), None);
    for s in [DataShape::Points, DataShape::Image { c: 3, res: 8 }] {
        assert_eq!(DataShape::from_item_dims(&s.item_dims()).unwrap(), s);
    }
    assert!(DataShape::from_item_dims(&[1, 8, 4]).is_err());
}
