//! Network shapes, parameter counts and initialisation of every generator and
//! discriminator family, against counts and formulas worked out by hand from the
//! reference architectures (SNGAN, R3GAN's and StyleGAN2's official code).

use dfdx::prelude::*;

use super::nets::{self, DataShape};
use super::tests::{count, net_cfg};
use super::*;
use crate::nn::{Cpu, Layer, Rng, T4};

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
