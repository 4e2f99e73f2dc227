//! Network shapes and parameter counts, configs and schedules, training and resume (the
//! penalties are in `penalty_tests.rs`, conditional nets in `cond_tests.rs`).

use dfdx::prelude::*;

use super::nets::{self, DataShape};
use super::*;
use crate::data::DataTensor;
use crate::nn::{Cpu, Layer, Net, Rng, Side, T4};

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

pub(super) fn count(net: &Net<f32, Cpu>) -> usize {
    net.param_count()
}

#[test]
fn shapes_and_param_counts() {
    let dev = Cpu::default();
    // mlp: z=16 -> 8 -> 8 -> 8 -> 2
    let g = nets::generator::<f32, Cpu>(
        &net_cfg(Arch::Mlp, None, 8),
        DataShape::Points,
        None,
        dev.clone(),
        0,
    )
    .unwrap();
    assert_eq!(g.out_shape, [2, 1, 1]);
    assert_eq!(count(&g), 16 * 8 + 8 + 2 * (8 * 8 + 8) + 8 * 2 + 2);
    let d = nets::discriminator::<f32, Cpu>(
        &net_cfg(Arch::Mlp, None, 8),
        DataShape::Points,
        None,
        dev.clone(),
        0,
    )
    .unwrap();
    assert_eq!(d.out_shape, [1, 1, 1]);
    assert_eq!(count(&d), 2 * 8 + 8 + 2 * (8 * 8 + 8) + 8 + 1);
    // dcgan at 16x16x3, width 4, z 8 (hand-counted)
    let mut gc = net_cfg(Arch::Dcgan, None, 4);
    gc.z_dim = Some(8);
    let s16 = DataShape::Image { c: 3, res: 16 };
    let g = nets::generator::<f32, Cpu>(&gc, s16, None, dev.clone(), 0).unwrap();
    assert_eq!(count(&g), 2048 + 32 + 2048 + 16 + 512 + 8 + 111);
    let d =
        nets::discriminator::<f32, Cpu>(&net_cfg(Arch::Dcgan, None, 4), s16, None, dev.clone(), 0)
            .unwrap();
    assert_eq!(count(&d), 392 + 2064 + 257);
    // every arch and variant at two resolutions (and 28), 1 and 3 channels
    let mut archs = vec![(Arch::Dcgan, None)];
    for v in [Variant::B, Variant::C, Variant::D, Variant::E] {
        archs.push((Arch::R3gan, Some(v)));
    }
    for (arch, variant) in archs {
        let mut counts = vec![];
        for (res, c) in [(16, 1), (32, 3), (28, 1)] {
            let shape = DataShape::Image { c, res };
            let mut cfg = net_cfg(arch, variant, 8);
            cfg.group_size = Some(4);
            let g = nets::generator::<f32, Cpu>(&cfg, shape, None, dev.clone(), 1).unwrap();
            let d = nets::discriminator::<f32, Cpu>(&cfg, shape, None, dev.clone(), 2).unwrap();
            assert_eq!(
                g.out_shape,
                [c, res, res],
                "{arch:?} {variant:?} G at {res}"
            );
            assert_eq!(d.out_shape, [1, 1, 1], "{arch:?} {variant:?} D at {res}");
            let z: T4<f32, Cpu> = dev.tensor_from_vec(vec![0.1; 2 * 64], (2, 64, 1, 1));
            let img = g.forward(z, true);
            assert_eq!(*img.shape(), (2, c, res, res));
            let out = d.forward(img, true);
            assert_eq!(*out.shape(), (2, 1, 1, 1));
            let sum: usize = g
                .params
                .shapes
                .iter()
                .map(|s| s.iter().product::<usize>())
                .sum();
            assert_eq!(sum, count(&g));
            counts.push((count(&g), count(&d)));
        }
        // more resolution, more stages, more parameters
        assert!(
            counts[1].0 > counts[0].0 && counts[1].1 > counts[0].1,
            "{arch:?} {variant:?} {counts:?}"
        );
    }
    assert!(nets::res_plan(24).is_err());
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
    let data: Vec<f32> = rng
        .normals(64 * 16 * 16)
        .iter()
        .map(|v| v.tanh() as f32)
        .collect();
    let td = DataTensor::Images {
        values: data,
        n: 64,
        c: 1,
        h: 16,
        w: 16,
    };
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
    let mut rng = Rng::new(3);
    let values = rng
        .normals(64 * 256)
        .iter()
        .map(|v| v.tanh() as f32)
        .collect();
    let td = DataTensor::Images {
        values,
        n: 64,
        c: 1,
        h: 16,
        w: 16,
    };
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

/// Shapes and growing parameter counts of resnet / selfmod / stylegan G and resnet D (with
/// and without spectral norm) at 16, 32 and 28.
#[test]
fn new_arch_shapes_and_param_counts() {
    let dev = Cpu::default();
    let mut gs = vec![];
    let mut c = net_cfg(Arch::Resnet, None, 8);
    c.upsample = Some(Upsample::Bilinear);
    c.residual_scale = Some(0.1);
    gs.push(c);
    let mut c = net_cfg(Arch::Selfmod, None, 8);
    c.mod_hidden = Some(8);
    gs.push(c.clone());
    c.body = Some(Arch::Dcgan);
    gs.push(c);
    let mut c = net_cfg(Arch::Stylegan, None, 8);
    c.mapping_depth = Some(2);
    c.mapping_width = Some(16);
    gs.push(c);
    let mut d = net_cfg(Arch::Resnet, None, 8);
    gs.push(d.clone());
    d.spectral_norm = Some(true);
    d.learn_residual_scale = Some(true);
    let ds = [net_cfg(Arch::Resnet, None, 8), d];
    for (k, cfg) in gs.iter().chain(&ds).enumerate() {
        let is_d = k >= gs.len();
        let mut counts = vec![];
        for (res, ch) in [(16, 1), (32, 3), (28, 1)] {
            let shape = DataShape::Image { c: ch, res };
            let dvc = dev.clone();
            let net = if is_d {
                nets::discriminator::<f32, Cpu>(cfg, shape, None, dvc, 2).unwrap()
            } else {
                nets::generator::<f32, Cpu>(cfg, shape, None, dvc, 1).unwrap()
            };
            let (x, want): (T4<f32, Cpu>, _) = if is_d {
                let x = dev.tensor_from_vec(vec![0.1; 2 * ch * res * res], (2, ch, res, res));
                (x, (2, 1, 1, 1))
            } else {
                (
                    dev.tensor_from_vec(vec![0.1; 2 * 64], (2, 64, 1, 1)),
                    (2, ch, res, res),
                )
            };
            let y = net.forward(x, true);
            assert_eq!(*y.shape(), want, "{cfg:?} at {res}");
            assert!(y.as_vec().iter().all(|v| v.is_finite()));
            counts.push(count(&net));
        }
        assert!(counts[1] > counts[0], "{cfg:?}: {counts:?}");
    }
    // SELF-MOD adds two MLPs (z -> 8 -> C) per BN to the same body
    let count16 = |cfg| {
        let shape = DataShape::Image { c: 1, res: 16 };
        count(&nets::generator::<f32, Cpu>(cfg, shape, None, dev.clone(), 0).unwrap())
    };
    let (plain, sm) = (count16(&gs[0]), count16(&gs[1]));
    // resnet G at 16 (width 8): BN channels 32 (blocks.0.bn1), 16, 16, 8 (blocks.1.bn2),
    // 8 (out_bn); plain BN: 2C each; SELF-MOD: 2 * (64*8+8 + 8*C+C) each
    let bn_c = [32usize, 16, 16, 8, 8];
    let plain_bn: usize = bn_c.iter().map(|c| 2 * c).sum();
    let sm_bn: usize = bn_c.iter().map(|c| 2 * (64 * 8 + 8 + 8 * c + c)).sum();
    assert_eq!(sm - plain, sm_bn - plain_bn);
}

/// resnet G and D at SNGAN's CIFAR-10 settings (G: z 128, 256 channels; D: 128 channels;
/// 32x32x3), counted by hand from Miyato et al.'s reference architecture.
#[test]
fn sngan_cifar_param_counts() {
    let dev = Cpu::default();
    let shape = DataShape::Image { c: 3, res: 32 };
    let mut g = net_cfg(Arch::Resnet, None, 256);
    g.max_width = Some(256);
    g.z_dim = Some(128);
    let mut d = net_cfg(Arch::Resnet, None, 128);
    d.max_width = Some(128);
    // spectral norm is the resnet D's default (as SNGAN)
    let gn = nets::generator::<f32, Cpu>(&g, shape, None, dev.clone(), 0).unwrap();
    let dn = nets::discriminator::<f32, Cpu>(&d, shape, None, dev.clone(), 0).unwrap();
    let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
    let bn = |c: usize| 2 * c;
    // l1: linear 128 -> 4*4*256; 3 up blocks; final BN + conv3x3 to RGB
    let g_block = bn(256) + conv(256, 256, 3) + bn(256) + conv(256, 256, 3) + conv(256, 256, 1);
    let g_want = 128 * 4096 + 4096 + 3 * g_block + bn(256) + conv(256, 3, 3);
    assert_eq!(count(&gn), g_want);
    assert_eq!(g_want, 4_276_739);
    // optimized block (3 -> 128, down), block (down), 2 blocks, linear 128 -> 1
    let d_want = conv(3, 128, 3)
        + conv(128, 128, 3)
        + conv(3, 128, 1)
        + conv(128, 128, 3) * 2
        + conv(128, 128, 1)
        + 2 * 2 * conv(128, 128, 3)
        + 129;
    assert_eq!(count(&dn), d_want);
    assert_eq!(d_want, 1_053_825);
    // spectral norm on every conv and linear weight: 3 + 3 + 2 + 2 convs, 1 linear
    assert_eq!(dn.sn.lock().unwrap().len(), 11);
    d.spectral_norm = Some(false);
    let plain = nets::discriminator::<f32, Cpu>(&d, shape, None, dev.clone(), 0).unwrap();
    assert!(plain.sn.lock().unwrap().is_empty());
    // the resnet G stays without (SNGAN normalises D only)
    assert!(gn.sn.lock().unwrap().is_empty());
    assert_eq!(
        *dn.forward(dev.zeros_like(&(2, 3, 32, 32)), true).shape(),
        (2, 1, 1, 1)
    );
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

/// The R3GAN roadmap nets at the roadmap pipeline's size (width 16, 16x16x3, z 64, 2 blocks
/// per stage: channels 64 at 4x4, 32 at 8x8, 16 at 16x16), counted by hand from the
/// official layout, and B-E within 10% of each other in G and in D.
#[test]
fn r3gan_roadmap_param_counts_match() {
    let dev = Cpu::default();
    let shape = DataShape::Image { c: 3, res: 16 };
    let conv = |i: usize, o: usize, k: usize, bias: bool| i * o * k * k + if bias { o } else { 0 };
    let cs = [64usize, 32, 16];
    // blocks: B a 3x3 conv with bias; D 1x1 (c -> c, bias), 3x3 (bias), 1x1 back (no bias);
    // E 1x1 (c -> 2c, bias), grouped 3x3 with 16 channels per group (2c * 16 * 9 + 2c),
    // 1x1 back (no bias)
    let block_b = |c: usize| conv(c, c, 3, true);
    let block_d = |c: usize| conv(c, c, 1, true) + conv(c, c, 3, true) + conv(c, c, 1, false);
    let block_e =
        |c: usize| conv(c, 2 * c, 1, true) + 2 * c * 16 * 9 + 2 * c + conv(2 * c, c, 1, false);
    assert_eq!(block_b(64), 36_928);
    assert_eq!(block_d(64), 45_184); // 11 * 64^2 + 2 * 64
    assert_eq!(block_e(64), 35_072); // 4 * 64^2 + 292 * 64
    let blocks = |f: &dyn Fn(usize) -> usize| 2 * cs.iter().map(|&c| f(c)).sum::<usize>();
    // G: basis (linear 64 -> 64 without bias, basis 64 x 4 x 4), transitions, to_img
    // (1x1, 16 -> 3, no bias); B's transitions are 3x3 convs with bias, D / E's bias-free 1x1
    let basis = 64 * 64 + 64 * 16;
    let trans_b = conv(64, 32, 3, true) + conv(32, 16, 3, true);
    let trans_de = conv(64, 32, 1, false) + conv(32, 16, 1, false);
    let g_b = basis + blocks(&block_b) + trans_b + 48;
    let g_d = basis + blocks(&block_d) + trans_de + 48;
    let g_e = basis + blocks(&block_e) + trans_de + 48;
    assert_eq!((g_b, g_d, g_e), (125_248, 126_448, 116_144));
    // D: from_img (1x1, 3 -> 16; B with bias), mirrored transitions, discriminative basis
    // (depthwise 4x4 on 64 channels, linear 64 -> 1; B's with a bias)
    let trans_b = conv(16, 32, 3, true) + conv(32, 64, 3, true);
    let trans_de = conv(16, 32, 1, false) + conv(32, 64, 1, false);
    let d_b = 64 + blocks(&block_b) + trans_b + 1024 + 65;
    let d_d = 48 + blocks(&block_d) + trans_de + 1024 + 64;
    let d_e = 48 + blocks(&block_e) + trans_de + 1024 + 64;
    assert_eq!((d_b, d_d, d_e), (121_281, 122_416, 112_112));
    let mut got = vec![];
    for (v, g_want, d_want) in [
        (Variant::B, g_b, d_b),
        (Variant::C, g_b, d_b),
        (Variant::D, g_d, d_d),
        (Variant::E, g_e, d_e),
    ] {
        let cfg = net_cfg(Arch::R3gan, Some(v), 16);
        let g = nets::generator::<f32, Cpu>(&cfg, shape, None, dev.clone(), 0).unwrap();
        let d = nets::discriminator::<f32, Cpu>(&cfg, shape, None, dev.clone(), 0).unwrap();
        println!(
            "r3gan {v:?} at width 16, 16x16x3: G {} D {}",
            count(&g),
            count(&d)
        );
        assert_eq!((count(&g), count(&d)), (g_want, d_want), "{v:?}");
        // official layout: FIR resampling only; the generative basis first (bias-free
        // linear, basis); D ends in the discriminative basis (depthwise conv, linear) with
        // no activation before or between them
        for net in [&g, &d] {
            assert!(!net
                .layers
                .iter()
                .any(|l| matches!(l, Layer::Up(_) | Layer::AvgPool2)));
        }
        assert_eq!(
            g.layers
                .iter()
                .filter(|l| matches!(l, Layer::FirUp))
                .count(),
            2
        );
        assert_eq!(
            d.layers
                .iter()
                .filter(|l| matches!(l, Layer::FirDown))
                .count(),
            2
        );
        assert!(matches!(g.layers[0], Layer::Linear { b: None, .. }));
        assert!(matches!(g.layers[1], Layer::BasisScale { .. }));
        let k = d.layers.len();
        assert!(matches!(
            d.layers[k - 2],
            Layer::Conv {
                b: None,
                groups: 64,
                ..
            }
        ));
        assert!(matches!(d.layers[k - 1], Layer::Linear { .. }));
        let before = &d.layers[k - 3];
        if matches!(v, Variant::D | Variant::E) {
            assert!(matches!(before, Layer::Residual { .. }), "{v:?}");
        }
        got.push((count(&g), count(&d)));
    }
    for k in 0..2 {
        let pick = |p: &(usize, usize)| if k == 0 { p.0 } else { p.1 };
        let lo = got.iter().map(pick).min().unwrap() as f64;
        let hi = got.iter().map(pick).max().unwrap() as f64;
        assert!(hi / lo <= 1.1, "capacity spread {:.3}: {got:?}", hi / lo);
    }
}

/// The official ResidualBlock's fix-up initialisation: the last conv is zero (a block is the
/// identity at init), the first two have std `sqrt(2 / 1.04) * L^(-1/4) / sqrt(fan_in)`.
#[test]
fn r3gan_fixup_init() {
    let dev = Cpu::default();
    let mut cfg = net_cfg(Arch::R3gan, Some(Variant::E), 32);
    cfg.max_width = Some(64);
    let shape = DataShape::Image { c: 3, res: 16 };
    let g = nets::generator::<f64, Cpu>(&cfg, shape, None, dev.clone(), 3).unwrap();
    let l = 6.0f64; // 3 stages x 2 blocks
    let gain = (2.0f64 / 1.04).sqrt() * l.powf(-0.25);
    let mut seen = 0;
    for (i, name) in g.params.names.iter().enumerate() {
        let v = g.params.tensors[i].as_vec();
        let shp = &g.params.shapes[i];
        if name.ends_with("conv3.weight") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
        } else if name.ends_with("conv1.weight") || name.ends_with("conv2.weight") {
            let fan_in = (shp[1] * shp[2] * shp[3]) as f64;
            let sd = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
            let want = gain / fan_in.sqrt();
            assert!((sd / want - 1.0).abs() < 0.1, "{name}: std {sd} vs {want}");
            seen += 1;
        }
    }
    assert_eq!(seen, 12);
    // blocks start as identities: G is basis -> transitions -> FIR up -> to_img, linear in z
    let z: T4<f64, Cpu> = dev.tensor_from_vec(Rng::new(1).normals(64), (1, 64, 1, 1));
    let a = g.forward(z.clone(), false).as_vec();
    let b = g.forward(z * 2.0, false).as_vec();
    assert!(a.iter().zip(&b).all(|(x, y)| (2.0 * x - y).abs() < 1e-9));
}

/// StyleGAN2's mapping network: pixel-normalised z, then fully connected layers with
/// learning-rate multiplier 0.01 (weights stored N(0, 100^2), used times 0.01 / sqrt(fan_in)).
#[test]
fn stylegan_mapping_official() {
    let dev = Cpu::default();
    let mut cfg = net_cfg(Arch::Stylegan, None, 8);
    cfg.mapping_depth = Some(2);
    cfg.mapping_width = Some(32);
    let shape = DataShape::Image { c: 1, res: 16 };
    let g = nets::generator::<f32, Cpu>(&cfg, shape, None, dev.clone(), 0).unwrap();
    let Layer::SetCtx { body, .. } = &g.layers[0] else {
        panic!("mapping first")
    };
    assert!(matches!(body[0], Layer::PixelNorm));
    let Layer::ScaledLinear {
        w, w_mul, b_mul, ..
    } = body[1]
    else {
        panic!("{:?}", body[1])
    };
    assert!((w_mul - 0.01 / 8.0).abs() < 1e-12 && (b_mul - 0.01).abs() < 1e-12);
    let v = g.params.tensors[w].as_vec();
    let sd = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    assert!((sd / 100.0 - 1.0).abs() < 0.1, "stored std {sd}");
    // z and 3 z give the same image: the mapping sees z / rms(z)
    let z: T4<f32, Cpu> = dev.tensor_from_vec(
        Rng::new(2)
            .normals(2 * 64)
            .iter()
            .map(|&x| x as f32)
            .collect(),
        (2, 64, 1, 1),
    );
    let a = g.forward(z.clone(), false).as_vec();
    let b = g.forward(z * 3.0, false).as_vec();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4));
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
