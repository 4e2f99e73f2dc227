//! Class-conditional nets, StyleGAN noise and style mixing: parameter counts derived by
//! hand, the projection term against its formula, label dependence, mixing semantics,
//! bit-identical resume, and a conditional GAN that puts each class on its own mode.

use dfdx::prelude::*;

use super::nets::{self, DataShape};
use super::tests::{check_resume, count, net_cfg};
use super::*;
use crate::data::DataTensor;
use crate::nn::{Cpu, Layer, Mix, Net, Rng, Side, T4};

const K: usize = 10;

fn g(cfg: &NetConfig, shape: DataShape, classes: Option<usize>) -> Net<f32, Cpu> {
    nets::generator::<f32, Cpu>(cfg, shape, classes, Cpu::default(), 1).unwrap()
}
fn d(cfg: &NetConfig, shape: DataShape, classes: Option<usize>) -> Net<f32, Cpu> {
    nets::discriminator::<f32, Cpu>(cfg, shape, classes, Cpu::default(), 2).unwrap()
}

/// stylegan at width 4 with a 2 x 16 mapping.
fn small_stylegan() -> NetConfig {
    let mut c = net_cfg(Arch::Stylegan, None, 4);
    c.mapping_depth = Some(2);
    c.mapping_width = Some(16);
    c
}

/// Replace every parameter whose name `pick` accepts by `value(its length)`.
fn set_params(
    net: &mut Net<f32, Cpu>,
    pick: impl Fn(&str) -> bool,
    mut value: impl FnMut(usize) -> Vec<f32>,
) {
    for i in 0..net.params.len() {
        if pick(&net.params.names[i]) {
            let n = net.params.tensors[i].shape().0;
            net.params.tensors[i] = net.dev.tensor_from_vec(value(n), (n,));
        }
    }
}

/// `n` standard normals times `scale`.
fn normals(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    rng.normals(n).iter().map(|&v| (scale * v) as f32).collect()
}

/// `b` labels cycling through the classes.
fn labels(b: usize) -> Side {
    Side::labels(Some((0..b).map(|i| (3 * i + 1) % K).collect()))
}

/// Runs G (latent 64 unless set) and D on a batch of 2 with labels when conditional, and
/// checks the shapes.
fn check_shapes(gn: &Net<f32, Cpu>, dn: &Net<f32, Cpu>, z: usize, shape: DataShape) {
    let dev = Cpu::default();
    let side = if gn.classes().is_some() {
        labels(2)
    } else {
        Side::default()
    };
    let zt: T4<f32, Cpu> = dev.tensor_from_vec(
        Rng::new(4)
            .normals(2 * z)
            .iter()
            .map(|&v| v as f32)
            .collect(),
        (2, z, 1, 1),
    );
    let x = gn.forward_side(zt, &side, true);
    let want = match shape {
        DataShape::Points => (2, 2, 1, 1),
        DataShape::Image { c, res } => (2, c, res, res),
    };
    assert_eq!(*x.shape(), want);
    let dside = Side::labels(side.labels.clone());
    let y = dn.forward_side(x, &dside, true);
    assert_eq!(*y.shape(), (2, 1, 1, 1));
    assert!(y.as_vec().iter().all(|v| v.is_finite()));
}

/// Every G and D, unconditional and conditional over 10 classes, at two resolutions:
/// shapes, and the parameters conditioning adds, counted by hand from the channel plans
/// (width 4: channels 4 * R / r, capped at 32):
/// - conditional BN (dcgan, resnet G): each BN over c channels trades its 2c affine
///   parameters for per-class gain and bias, 2 * 10 * c;
/// - SELF-MOD: the embeddings E and E' of z' = z + E(c) + E'(c) * z, 2 * 10 * z;
/// - concat(z, embed(c)) (mlp, r3gan, stylegan G): the embedding 10 * e plus e more
///   inputs of the first layer;
/// - projection D: an embedding of the head's feature size F, 10 * F.
#[test]
fn conditional_param_counts_by_hand() {
    let (z, e) = (64usize, 64usize);
    let bn = |chans: &[usize]| chans.iter().map(|c| 2 * K * c - 2 * c).sum::<usize>();
    // (G config, resolution, added G params)
    let mut cases: Vec<(NetConfig, usize, usize)> = vec![];
    let w4 = |arch, variant| net_cfg(arch, variant, 4);
    // dcgan G BNs: fc_bn at 4x4, one per up block
    cases.push((w4(Arch::Dcgan, None), 16, bn(&[16, 8, 4])));
    cases.push((w4(Arch::Dcgan, None), 32, bn(&[32, 16, 8, 4])));
    // resnet G BNs: bn1 (in), bn2 (out) per block, out_bn
    cases.push((w4(Arch::Resnet, None), 16, bn(&[16, 8, 8, 4, 4])));
    cases.push((w4(Arch::Resnet, None), 32, bn(&[32, 16, 16, 8, 8, 4, 4])));
    for res in [16, 32] {
        let mut sm = w4(Arch::Selfmod, None);
        sm.mod_hidden = Some(8);
        cases.push((sm.clone(), res, 2 * K * z));
        sm.body = Some(Arch::Dcgan);
        cases.push((sm, res, 2 * K * z));
        cases.push((small_stylegan(), res, K * e + e * 16));
    }
    // r3gan (every variant): the generative basis's linear map weight (c0, z)
    cases.push((w4(Arch::R3gan, Some(Variant::B)), 16, K * e + e * 16));
    cases.push((w4(Arch::R3gan, Some(Variant::B)), 32, K * e + e * 32));
    let mut r3e = w4(Arch::R3gan, Some(Variant::E));
    r3e.group_size = Some(4);
    cases.push((r3e.clone(), 16, K * e + e * 16));
    cases.push((r3e, 32, K * e + e * 32));
    for (cfg, res, added) in cases {
        let shape = DataShape::Image { c: 1, res };
        let (plain, cond) = (g(&cfg, shape, None), g(&cfg, shape, Some(K)));
        assert_eq!(cond.classes(), Some(K));
        assert_eq!(
            count(&cond) - count(&plain),
            added,
            "{:?} {:?} G at {res}",
            cfg.arch,
            cfg.variant
        );
        let dc = net_cfg(Arch::Dcgan, None, 4);
        check_shapes(&plain, &d(&dc, shape, None), z, shape);
        check_shapes(&cond, &d(&dc, shape, Some(K)), z, shape);
    }
    // projection D: F = 4x4 x c0 (dcgan), c0 (r3gan: the discriminative basis), the
    // channels after sum pooling (resnet: 8 at 16, 16 at 32)
    let mut r3e = net_cfg(Arch::R3gan, Some(Variant::E), 4);
    r3e.group_size = Some(4);
    let mut rn = net_cfg(Arch::Resnet, None, 4);
    rn.spectral_norm = Some(true);
    let dcases = [
        (net_cfg(Arch::Dcgan, None, 4), [16 * 16, 32 * 16]),
        (net_cfg(Arch::R3gan, Some(Variant::B), 4), [16, 32]),
        (net_cfg(Arch::R3gan, Some(Variant::D), 4), [16, 32]),
        (r3e, [16, 32]),
        (rn, [8, 16]),
    ];
    for (cfg, feats) in dcases {
        for (res, f) in [16, 32].into_iter().zip(feats) {
            let shape = DataShape::Image { c: 3, res };
            let (plain, cond) = (d(&cfg, shape, None), d(&cfg, shape, Some(K)));
            assert_eq!(
                count(&cond) - count(&plain),
                K * f,
                "{:?} D at {res}",
                cfg.arch
            );
            let gc = net_cfg(Arch::Dcgan, None, 4);
            check_shapes(&g(&gc, shape, Some(K)), &cond, 64, shape);
        }
    }
    // spectral norm covers the projection embedding too
    let mut rn = net_cfg(Arch::Resnet, None, 4);
    rn.spectral_norm = Some(true);
    let shape = DataShape::Image { c: 3, res: 16 };
    assert_eq!(
        d(&rn, shape, Some(K)).sn.lock().unwrap().len(),
        d(&rn, shape, None).sn.lock().unwrap().len() + 1
    );
    // mlp on points: G concat (embed 8), D projection on the last hidden layer
    let mut m = net_cfg(Arch::Mlp, None, 8);
    m.embed_dim = Some(8);
    let (gp, gc) = (
        g(&m, DataShape::Points, None),
        g(&m, DataShape::Points, Some(K)),
    );
    assert_eq!(count(&gc) - count(&gp), K * 8 + 8 * 8);
    let (dp, dc) = (
        d(&m, DataShape::Points, None),
        d(&m, DataShape::Points, Some(K)),
    );
    assert_eq!(count(&dc) - count(&dp), K * 8);
    check_shapes(&gc, &dc, 16, DataShape::Points);
}

/// The projection discriminator D(x, y) = psi(phi(x)) + embed(y) . phi(x), checked for
/// two labels against the formula with phi from the net cut before its head, and psi and
/// the embedding read from the parameters.
#[test]
fn projection_term_matches_its_formula() {
    let dev = Cpu::default();
    let shape = DataShape::Image { c: 1, res: 16 };
    let mut r3e = net_cfg(Arch::R3gan, Some(Variant::E), 4);
    r3e.group_size = Some(4);
    // psi is read from the raw weights: the resnet D without its default spectral norm
    let mut rn = net_cfg(Arch::Resnet, None, 4);
    rn.spectral_norm = Some(false);
    for cfg in [net_cfg(Arch::Dcgan, None, 4), rn, r3e] {
        let mut net = d(&cfg, shape, Some(K));
        // the embedding starts small: make the projection term large and distinct
        let mut rng = Rng::new(9);
        set_params(
            &mut net,
            |n| n == "embed.weight",
            |n| normals(&mut rng, n, 1.0),
        );
        let ie = net
            .params
            .names
            .iter()
            .position(|n| n == "embed.weight")
            .unwrap();
        let x: T4<f32, Cpu> = dev.tensor_from_vec(
            rng.normals(2 * 256).iter().map(|&v| v as f32).collect(),
            (2, 1, 16, 16),
        );
        let mut cut = net.clone();
        assert!(matches!(cut.layers.pop(), Some(Layer::Project { .. })));
        cut.label_slot = None;
        let phi = cut.forward(x.clone(), false).as_vec();
        let f = phi.len() / 2;
        let find = |name: &str| net.params.names.iter().position(|n| n == name);
        let w = net.params.tensors[find("fc.weight").unwrap()].as_vec(); // (1, F)
                                                                         // r3gan D / E's score has no bias, as the official code
        let bias = find("fc.bias").map_or(0.0, |i| net.params.tensors[i].as_vec()[0]);
        let emb = net.params.tensors[ie].as_vec(); // (F, K)
        assert_eq!((w.len(), emb.len()), (f, f * K));
        let mut outs = vec![];
        for y in [3usize, 7] {
            let out = net
                .forward_side(x.clone(), &Side::labels(Some(vec![y, y])), false)
                .as_vec();
            for b in 0..2 {
                let p = &phi[b * f..(b + 1) * f];
                let psi: f64 =
                    p.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>() + bias as f64;
                let proj: f64 = (0..f).map(|j| (emb[j * K + y] * p[j]) as f64).sum();
                let got = out[b] as f64;
                assert!(
                    (got - (psi + proj)).abs() < 1e-3 * (1.0 + got.abs()),
                    "{:?}: D(x, {y}) = {got}, formula {}",
                    cfg.arch,
                    psi + proj
                );
            }
            outs.push(out);
        }
        assert!(
            (outs[0][0] - outs[1][0]).abs() > 1e-3,
            "{:?}: the label changes D",
            cfg.arch
        );
    }
}

/// Conditional BN generators (dcgan, resnet) and SELF-MOD's z' give label-dependent images
/// once the class parameters move (they start at plain BN / z' = z + E(c)).
#[test]
fn conditional_generators_depend_on_the_label() {
    let dev = Cpu::default();
    let shape = DataShape::Image { c: 1, res: 16 };
    let mut sm = net_cfg(Arch::Selfmod, None, 4);
    sm.mod_hidden = Some(8);
    let st = small_stylegan();
    for cfg in [
        net_cfg(Arch::Dcgan, None, 4),
        net_cfg(Arch::Resnet, None, 4),
        sm,
        st,
        net_cfg(Arch::R3gan, Some(Variant::B), 4),
    ] {
        let mut net = g(&cfg, shape, Some(K));
        let mut rng = Rng::new(1);
        let class_param =
            |n: &str| n.contains("gain.weight") || n.contains("bias.weight") || n.contains("cond.");
        set_params(&mut net, class_param, |n| normals(&mut rng, n, 0.5));
        let z: Vec<f32> = rng.normals(64).iter().map(|&v| v as f32).collect();
        let zz: T4<f32, Cpu> = dev.tensor_from_vec([z.clone(), z].concat(), (2, 64, 1, 1));
        let out = net
            .forward_side(zz, &Side::labels(Some(vec![2, 5])), false)
            .as_vec();
        let diff: f32 = out[..256]
            .iter()
            .zip(&out[256..])
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / 256.0;
        assert!(
            diff > 1e-3,
            "{:?}: same z, labels 2 and 5: mean |diff| {diff}",
            cfg.arch
        );
    }
}

/// Style mixing: with the first AdaIN made independent of the style (its affine maps
/// zeroed), a pass that mixes at cut 1 is exactly the unmixed pass on the second latent.
/// Noise: off without a seed, on (and seeded) with one.
#[test]
fn stylegan_mixing_takes_the_second_latent_after_the_cut() {
    let dev = Cpu::default();
    let shape = DataShape::Image { c: 1, res: 16 };
    let mut cfg = small_stylegan();
    cfg.z_dim = Some(8);
    let mut net = g(&cfg, shape, None);
    // 6 AdaINs (2 per resolution 4, 8, 16): 5 cuts
    assert_eq!(net.mix_points, 5);
    assert_eq!(net.noise_inputs, 0);
    set_params(
        &mut net,
        |n| n.starts_with("stages.0.adain0."),
        |n| vec![0.0; n],
    );
    let z1: Vec<f32> = Rng::new(3)
        .normals(2 * 8)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut r = Rng::new(44);
    let z2: Vec<f32> = (0..16).map(|_| r.normal() as f32).collect();
    let t = |v: &[f32]| -> T4<f32, Cpu> { dev.tensor_from_vec(v.to_vec(), (2, 8, 1, 1)) };
    let mix = |cutoff| Side {
        mix: Some(Mix { cutoff, seed: 44 }),
        ..Side::default()
    };
    let mixed = net.forward_side(t(&z1), &mix(1), false).as_vec();
    let second = net.forward(t(&z2), false).as_vec();
    let first = net.forward(t(&z1), false).as_vec();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(&mixed, &second));
    assert!(!close(&mixed, &first));
    // a later cut keeps the early styles of z1
    let late = net.forward_side(t(&z1), &mix(5), false).as_vec();
    assert!(!close(&late, &first) && !close(&late, &second));
    // noise inputs: one per AdaIN
    cfg.noise = Some(true);
    let mut net = g(&cfg, shape, None);
    assert_eq!(net.noise_inputs, 6);
    set_params(&mut net, |n| n.ends_with(".scale"), |n| vec![0.5; n]);
    let seeded = |s| Side {
        noise_seed: Some(s),
        ..Side::default()
    };
    let a = net.forward_side(t(&z1), &seeded(1), false).as_vec();
    assert_eq!(a, net.forward_side(t(&z1), &seeded(1), false).as_vec());
    assert!(!close(
        &a,
        &net.forward_side(t(&z1), &seeded(2), false).as_vec()
    ));
    assert!(!close(&a, &net.forward(t(&z1), false).as_vec()));
}

/// Checkpoint resume is bit-identical for conditional runs of every G (with a projection
/// D, spectral norm on one) and for StyleGAN with noise and style mixing (which draw from
/// the trainer's RNG).
#[test]
fn checkpoint_resume_conditional_and_stylegan_options() {
    let tail = "loss: rpgan\npenalties: [r1, r2]\ngamma: 1.0\n\
                optimizer: {lr: 2.0e-4, betas: [0.5, 0.99]}\n\
                batch: 8\nsteps: 6\nema: 0.9\nseed: 5\n";
    for (g, d, cond) in [
        ("{arch: dcgan, width: 4, z_dim: 8}", "{arch: dcgan, width: 4}", true),
        (
            "{arch: resnet, width: 4, z_dim: 8}",
            "{arch: resnet, width: 4, depth: 1, spectral_norm: true}",
            true,
        ),
        ("{arch: selfmod, width: 4, z_dim: 8, mod_hidden: 8}", "{arch: dcgan, width: 4}", true),
        (
            "{arch: stylegan, width: 4, z_dim: 8, mapping_depth: 2, mapping_width: 16, noise: true, style_mixing: 0.5}",
            "{arch: dcgan, width: 4}",
            true,
        ),
        (
            "{arch: stylegan, width: 4, z_dim: 8, mapping_depth: 2, mapping_width: 16, noise: true, style_mixing: 0.9}",
            "{arch: resnet, width: 4, depth: 1}",
            false,
        ),
        (
            "{arch: r3gan, variant: E, width: 8, group_size: 4, z_dim: 8, embed_dim: 4}",
            "{arch: r3gan, variant: E, width: 8, group_size: 4}",
            true,
        ),
    ] {
        check_resume(&format!(
            "generator: {g}\ndiscriminator: {d}\nconditional: {cond}\n{tail}"
        ));
    }
}

/// Config checks of the conditional and StyleGAN keys, and the missing-labels error.
#[test]
fn conditional_config_checks() {
    let cfg = |g: &str, extra: &str| -> anyhow::Result<TrainConfig> {
        let c: TrainConfig = serde_yaml_ng::from_str(&format!(
            "generator: {g}\ndiscriminator: {{arch: dcgan, width: 4}}\nloss: ns\n\
             optimizer: {{lr: 1.0e-3}}\nbatch: 4\nsteps: 1\n{extra}"
        ))?;
        c.validate()?;
        Ok(c)
    };
    assert!(cfg(
        "{arch: stylegan, width: 4, noise: true, style_mixing: 0.9}",
        ""
    )
    .is_ok());
    assert!(cfg(
        "{arch: r3gan, variant: B, width: 4, embed_dim: 8}",
        "conditional: true"
    )
    .is_ok());
    let err = |g: &str, extra: &str| cfg(g, extra).unwrap_err().to_string();
    assert!(err("{arch: dcgan, width: 4, noise: true}", "").contains("noise"));
    assert!(err("{arch: stylegan, width: 4, style_mixing: 1.5}", "").contains("probability"));
    assert!(err(
        "{arch: resnet, width: 4, embed_dim: 8}",
        "conditional: true"
    )
    .contains("embed_dim"));
    assert!(err("{arch: r3gan, variant: B, width: 4, embed_dim: 8}", "").contains("conditional"));
    assert!(err(
        "{arch: dcgan, width: 4, batch_norm: false}",
        "conditional: true"
    )
    .contains("batch_norm"));
    // conditional training needs labels
    let c = cfg("{arch: dcgan, width: 4}", "conditional: true").unwrap();
    let td = DataTensor::Images {
        values: vec![0.0; 2 * 16 * 16],
        n: 2,
        c: 1,
        h: 16,
        w: 16,
    };
    let e = Trainer::new(c.clone(), td.clone(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("labelled data"), "{e}");
    let bad = ClassLabels {
        labels: vec![0, 12],
        classes: 10,
    };
    let e = Trainer::build(c, td, Some(bad), 0, Cpu::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("label 12"), "{e}");
}

/// A conditional MLP GAN on the 8-Gaussian ring, labels = mixture components: samples
/// drawn for class k land nearest centre k (class accuracy by nearest centre), while
/// the unconditional run's samples ignore the label they would be given.
#[test]
fn conditional_ring_puts_each_class_on_its_mode() {
    let mut rng = Rng::new(21);
    let centres: Vec<[f64; 2]> = (0..8)
        .map(|k| {
            let a = k as f64 * std::f64::consts::TAU / 8.0;
            [2.0 * a.cos(), 2.0 * a.sin()]
        })
        .collect();
    let n = 2000;
    let mut data = vec![];
    let mut ys = vec![];
    for _ in 0..n {
        let k = rng.below(8);
        data.push((centres[k][0] + 0.05 * rng.normal()) as f32);
        data.push((centres[k][1] + 0.05 * rng.normal()) as f32);
        ys.push(k);
    }
    let steps = 600;
    let cfg: TrainConfig = serde_yaml_ng::from_str(&format!(
        "generator: {{arch: mlp, width: 64, embed_dim: 8}}\n\
         discriminator: {{arch: mlp, width: 64}}\n\
         conditional: true\nloss: rpgan\npenalties: [r1, r2]\ngamma: 0.05\n\
         optimizer: {{lr: 1.0e-3, betas: [0.5, 0.99]}}\n\
         batch: 64\nsteps: {steps}\nema: 0.99\nseed: 0\n"
    ))
    .unwrap();
    let labels = ClassLabels {
        labels: ys,
        classes: 8,
    };
    let td = DataTensor::Points { values: data, n };
    let mut t = Trainer::build(cfg, td, Some(labels), 0, Cpu::default()).unwrap();
    for _ in 0..steps {
        assert!(t.step().is_finite());
    }
    let s = t.sample_labelled(800, 3, true);
    let wanted = s.labels.clone().unwrap();
    assert_eq!(wanted[..10], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]);
    let flat: Vec<f32> = centres.iter().flatten().map(|&v| v as f32).collect();
    let got = crate::metrics::nearest_centres(&s.values, &flat, 2).unwrap();
    let acc = crate::metrics::class_accuracy(&got, &wanted).unwrap();
    eprintln!("conditional ring: class accuracy {acc}");
    assert!(acc > 0.9, "class accuracy {acc}");
}
