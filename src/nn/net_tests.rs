//! Parameter gradients of whole networks against central finite differences (f64):
//! residual and basis layers, context slots, AdaIN and conditional batch norm, labels,
//! noise and style mixing; closed forms of the conditional and style layers.

use dfdx::prelude::*;

use super::*;

type F = f64;

fn dev() -> Cpu {
    Cpu::default()
}

/// Parameter gradients of whole networks (residual, basis, grouped conv, layers graph).
#[test]
fn net_param_grads() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 5);
    let body = vec![
        nb.conv("blk.conv1", 4, 8, 1, ConvConfig::default()),
        Layer::LeakyRelu(0.2),
        nb.conv("blk.conv2", 8, 8, 3, ConvConfig::default().pad(1).groups(2)),
        Layer::Tanh,
        nb.conv("blk.conv3", 8, 4, 1, ConvConfig::default()),
    ];
    let mut layers = nb.gen_basis("basis", 3, 4, 2, 2);
    layers.extend([
        Layer::Residual { body, skip: vec![] },
        Layer::Up(UpMode::Bilinear),
        nb.batch_norm("bn", 4),
        nb.conv_t("up", 4, 2, 4, ConvConfig::default().stride(2).pad(1)),
        Layer::AvgPool2,
        Layer::Scale(0.5),
        nb.linear("fc", 2 * 4 * 4, 1, LinearConfig::default()),
    ]);
    let net = nb.finish(layers, [3, 1, 1]);
    assert_eq!(net.out_shape, [1, 1, 1]);
    let mut rng = Rng::new(9);
    let x: T4<F, Cpu> = dev.tensor_from_vec(rng.normals(2 * 3), (2, 3, 1, 1));
    let loss = |net: &Net<F, Cpu>| -> F {
        let y = net.forward(x.clone(), true);
        y.reshape_like(&(2,)).square().sum::<(), Axis<0>>().array()
    };
    let y = net.forward(x.clone().traced(net.params.alloc_grads()), true);
    let grads = y
        .reshape_like(&(2,))
        .square()
        .sum::<(), Axis<0>>()
        .backward();
    let an = net.params.grads_of(&grads);
    assert_fd_param_grads(&net, &an, loss);
}

/// Central differences of `sum(net(x)^2)` in every third element of every parameter
/// (training mode), against the tape's gradients.
fn check_net_param_grads(net: &Net<F, Cpu>, x: &T4<F, Cpu>) {
    check_net_param_grads_side(net, x, &Side::default())
}

/// [`check_net_param_grads`] for a pass with side inputs (labels, noise, mixing).
fn check_net_param_grads_side(net: &Net<F, Cpu>, x: &T4<F, Cpu>, side: &Side) {
    let b = x.shape().0;
    let n_out: usize = net.out_shape.iter().product();
    let loss = |net: &Net<F, Cpu>| -> F {
        let y = net.forward_side(x.clone(), side, true);
        y.reshape_like(&(b * n_out,))
            .square()
            .sum::<(), Axis<0>>()
            .array()
    };
    let y = net.forward_side(x.clone().traced(net.params.alloc_grads()), side, true);
    let grads = y
        .reshape_like(&(b * n_out,))
        .square()
        .sum::<(), Axis<0>>()
        .backward();
    let an = net.params.grads_of(&grads);
    for (i, g) in an.iter().enumerate() {
        assert!(
            g.as_vec().iter().any(|v| v.abs() > 1e-9),
            "{}: zero gradient",
            net.params.names[i]
        );
    }
    assert_fd_param_grads(net, &an, loss);
}

/// Central differences (step 1e-6) of `loss` in every third element of every parameter
/// against the tape's gradients `an`, to 1e-6 relative.
fn assert_fd_param_grads(net: &Net<F, Cpu>, an: &[T1<F, Cpu>], loss: impl Fn(&Net<F, Cpu>) -> F) {
    let dev = dev();
    let h = 1e-6;
    for (i, g) in an.iter().enumerate() {
        let g = g.as_vec();
        let base = net.params.tensors[i].as_vec();
        for j in (0..base.len()).step_by(3) {
            let mut n2 = net.clone();
            let mut v = base.clone();
            v[j] += h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let lp = loss(&n2);
            v[j] -= 2.0 * h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let lm = loss(&n2);
            let num = (lp - lm) / (2.0 * h);
            let err = (num - g[j]).abs() / (1.0 + num.abs());
            assert!(
                err < 1e-6,
                "{} [{j}]: {} vs {num}",
                net.params.names[i],
                g[j]
            );
        }
    }
}

/// Context slots (SetCtx), learned constant input, AdaIN (instance norm + modulation),
/// SELF-MOD-style conditional batch norm, learned residual scale, sum pooling and
/// spectrally normalised conv / linear weights: parameter gradients vs finite differences.
#[test]
fn cond_layers_param_grads() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 7);
    let slot = nb.ctx_slot();
    let map = vec![
        nb.linear("map", 3, 4, LinearConfig::default()),
        Layer::LeakyRelu(0.2),
    ];
    let g1 = vec![nb.linear("in.gain", 4, 2, LinearConfig::default())];
    let b1 = vec![nb.linear("in.bias", 4, 2, LinearConfig::default())];
    let g2 = vec![
        nb.linear("bn.gain.fc1", 4, 3, LinearConfig::default()),
        Layer::Relu,
        nb.linear("bn.gain.fc2", 3, 2, LinearConfig::default()),
    ];
    let b2 = vec![nb.linear("bn.bias", 4, 2, LinearConfig::default())];
    let mut layers = vec![
        Layer::SetCtx {
            slot,
            body: map,
            mix: None,
        },
        nb.const_input("const", 2, 3, 3),
        nb.cond_norm("in", 2, false, slot, g1, b1),
        // no bias: the batch norm after it would cancel it
        nb.conv("c1", 2, 2, 3, ConvConfig::default().pad(1).bias(false)),
        nb.cond_norm("bn", 2, true, slot, g2, b2),
        Layer::Tanh,
    ];
    let body = vec![
        nb.conv("res.conv", 2, 2, 3, ConvConfig::default().pad(1)),
        nb.param_scale("res.alpha", 0.7),
    ];
    layers.push(Layer::Residual { body, skip: vec![] });
    nb.spectral_norm = true;
    layers.push(nb.conv("sn_conv", 2, 3, 3, ConvConfig::default().pad(1)));
    layers.push(Layer::Tanh);
    layers.push(Layer::SumPool);
    layers.push(nb.linear("sn_fc", 3, 1, LinearConfig::default()));
    let net = nb.finish(layers, [3, 1, 1]);
    assert_eq!(net.out_shape, [1, 1, 1]);
    assert_eq!(net.sn.lock().unwrap().len(), 2);
    let mut rng = Rng::new(11);
    let x: T4<F, Cpu> = dev.tensor_from_vec(rng.normals(3 * 3), (3, 3, 1, 1));
    // the first training pass runs the power iteration; later passes reuse u, v
    net.forward(x.clone(), true);
    assert!(net.sn.lock().unwrap().iter().all(|s| s.synced == Some(0)));
    check_net_param_grads(&net, &x);
}

/// The class-conditional layers: a class embedding concatenated to the input, label
/// modulation without normalisation (SELF-MOD's z'), conditional batch norm, per-pixel
/// noise from a fixed seed and a projection head: parameter gradients vs finite
/// differences, with labels held fixed.
#[test]
fn label_layers_param_grads() {
    let dev = dev();
    let k = 3;
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 5);
    let slot = nb.labels(k);
    let emb = nb.embedding("embed", k, 2, 1.0);
    let scale = nb.embedding("mod.scale", k, 4, 0.5);
    let shift = nb.embedding("mod.shift", k, 4, 0.5);
    let gain = nb.embedding("bn.gain", k, 2, 0.5);
    let bias = nb.embedding("bn.bias", k, 2, 0.5);
    let mut layers = vec![
        Layer::ConcatCtx { slot, body: emb },
        nb.modulation(slot, scale, shift),
        nb.linear("fc", 4, 2 * 3 * 3, LinearConfig::default()),
        Layer::Reshape([2, 3, 3]),
        nb.noise("noise", 2),
        nb.cond_norm("bn", 2, true, slot, gain, bias),
        Layer::Tanh,
    ];
    let embed = nb.embedding("proj.embed", k, 18, 0.3);
    let head = vec![nb.linear("proj.fc", 18, 1, LinearConfig::default())];
    layers.push(Layer::Project { slot, embed, head });
    let mut net = nb.finish(layers, [2, 1, 1]);
    assert_eq!((net.out_shape, net.classes()), ([1, 1, 1], Some(3)));
    // the noise scales start at zero; move them so the noise reaches the output
    let i = net
        .params
        .names
        .iter()
        .position(|n| n == "noise.scale")
        .unwrap();
    net.params.tensors[i] = dev.tensor_from_vec(vec![0.3, -0.2], (2,));
    let mut rng = Rng::new(12);
    let x: T4<F, Cpu> = dev.tensor_from_vec(rng.normals(5 * 2), (5, 2, 1, 1));
    let side = Side {
        labels: Some(vec![0, 2, 1, 2, 0]),
        noise_seed: Some(77),
        mix: None,
    };
    check_net_param_grads_side(&net, &x, &side);
}

/// Style mixing: the mapping runs on z and on a second latent drawn from the mix seed,
/// and every layer after the cut reads the second style; gradients of both passes
/// through the shared mapping vs finite differences.
#[test]
fn style_mixing_param_grads() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 8);
    let (slot, from) = (nb.ctx_slot(), nb.ctx_slot());
    let map = vec![
        nb.linear("map", 3, 4, LinearConfig::default()),
        Layer::LeakyRelu(0.2),
    ];
    let g1 = vec![nb.linear("a1.gain", 4, 2, LinearConfig::default())];
    let b1 = vec![nb.linear("a1.bias", 4, 2, LinearConfig::default())];
    let g2 = vec![nb.linear("a2.gain", 4, 2, LinearConfig::default())];
    let b2 = vec![nb.linear("a2.bias", 4, 2, LinearConfig::default())];
    let mut layers = vec![
        Layer::SetCtx {
            slot,
            body: map,
            mix: Some(from),
        },
        nb.const_input("const", 2, 3, 3),
        nb.cond_norm("a1", 2, false, slot, g1, b1),
        // no bias: the instance norm after it would cancel it
        nb.conv("c", 2, 2, 3, ConvConfig::default().pad(1).bias(false)),
    ];
    layers.push(nb.mix_point(slot, from));
    layers.push(nb.cond_norm("a2", 2, false, slot, g2, b2));
    // (a sum over each plane would see only a2's bias: instance norm centres the planes)
    layers.push(nb.linear("fc", 2 * 3 * 3, 1, LinearConfig::default()));
    let net = nb.finish(layers, [3, 1, 1]);
    assert_eq!(net.mix_points, 1);
    let x: T4<F, Cpu> = dev.tensor_from_vec(Rng::new(2).normals(4 * 3), (4, 3, 1, 1));
    let mix = Side {
        mix: Some(Mix { cutoff: 1, seed: 5 }),
        ..Side::default()
    };
    check_net_param_grads_side(&net, &x, &mix);
    let plain = net.forward(x.clone(), false).as_vec();
    let mixed = net.forward_side(x.clone(), &mix, false).as_vec();
    assert!(plain.iter().zip(&mixed).all(|(a, b)| (a - b).abs() > 1e-9));
    // a cut the net does not have changes nothing
    let never = Side {
        mix: Some(Mix { cutoff: 2, seed: 5 }),
        ..Side::default()
    };
    assert_eq!(net.forward_side(x, &never, false).as_vec(), plain);
}

/// Per-pixel noise: one standard-normal image per sample, shared by the channels and
/// scaled per channel; the same seed gives the same noise, no seed no noise.
#[test]
fn noise_input_is_per_pixel_and_scaled_per_channel() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 1);
    let layers = vec![nb.const_input("const", 2, 4, 4), nb.noise("noise", 2)];
    let mut net = nb.finish(layers, [1, 1, 1]);
    net.params.tensors[1] = dev.tensor_from_vec(vec![0.5, -2.0], (2,));
    let base = net.params.tensors[0].as_vec();
    let x: T4<F, Cpu> = dev.zeros_like(&(3, 1, 1, 1));
    let side = |s| Side {
        noise_seed: Some(s),
        ..Side::default()
    };
    let y = net.forward_side(x.clone(), &side(4), false).as_vec();
    let mut noise = vec![];
    for b in 0..3 {
        for p in 0..16 {
            let n0 = (y[b * 32 + p] - base[p]) / 0.5;
            let n1 = (y[b * 32 + 16 + p] - base[16 + p]) / -2.0;
            assert!((n0 - n1).abs() < 1e-12, "channels share the noise image");
            noise.push(n0);
        }
    }
    let mean = noise.iter().sum::<F>() / 48.0;
    let var = noise.iter().map(|v| (v - mean).powi(2)).sum::<F>() / 47.0;
    assert!(
        mean.abs() < 0.5 && (0.5..2.0).contains(&var),
        "{mean} {var}"
    );
    assert_ne!(noise[..16], noise[16..32], "samples get their own noise");
    assert_eq!(y, net.forward_side(x.clone(), &side(4), false).as_vec());
    assert_ne!(y, net.forward_side(x.clone(), &side(5), false).as_vec());
    let none = net.forward(x, false).as_vec();
    assert_eq!(none[..32], base[..]);
}

/// Conditional batch norm with per-class gain and bias: each sample is normalised with
/// the batch statistics and scaled / shifted by its own class's row, by hand.
#[test]
fn conditional_batch_norm_closed_form() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 3);
    let slot = nb.labels(2);
    let gain = nb.embedding("bn.gain", 2, 2, 1.0);
    let bias = nb.embedding("bn.bias", 2, 2, 1.0);
    let layers = vec![nb.cond_norm("bn", 2, true, slot, gain, bias)];
    let net = nb.finish(layers, [2, 2, 2]);
    // embedding weights are (channels, classes): G[c][k], B[c][k]
    let gw = net.params.tensors[0].as_vec();
    let bw = net.params.tensors[1].as_vec();
    let mut rng = Rng::new(6);
    let xv = rng.normals(3 * 2 * 4);
    let x: T4<F, Cpu> = dev.tensor_from_vec(xv.clone(), (3, 2, 2, 2));
    let labels = vec![1, 0, 1];
    let y = net
        .forward_side(x.clone(), &Side::labels(Some(labels.clone())), true)
        .as_vec();
    for c in 0..2 {
        let vals: Vec<F> = (0..3)
            .flat_map(|b| xv[b * 8 + c * 4..b * 8 + c * 4 + 4].to_vec())
            .collect();
        let m = vals.iter().sum::<F>() / 12.0;
        let v = vals.iter().map(|a| (a - m).powi(2)).sum::<F>() / 12.0;
        for (b, &k) in labels.iter().enumerate() {
            for p in 0..4 {
                let i = b * 8 + c * 4 + p;
                let want = (xv[i] - m) / (v + 1e-5).sqrt() * (1.0 + gw[c * 2 + k]) + bw[c * 2 + k];
                assert!((y[i] - want).abs() < 1e-12, "{} vs {want}", y[i]);
            }
        }
    }
    // the output depends on the label
    let other = net
        .forward_side(x, &Side::labels(Some(vec![0, 0, 1])), true)
        .as_vec();
    assert!((0..8).all(|i| (other[i] - y[i]).abs() > 1e-9));
}

/// AdaIN: every (sample, channel) plane of the output has mean `bias` and std `1 + gain`.
#[test]
fn adain_output_statistics() {
    let dev = dev();
    let mut rng = Rng::new(4);
    let x: T4<F, Cpu> = dev.tensor_from_vec(
        rng.normals(2 * 3 * 5 * 5)
            .iter()
            .map(|v| 3.0 * v + 1.5)
            .collect(),
        (2, 3, 5, 5),
    );
    let g = rng.normals(6);
    let b = rng.normals(6);
    let gt: T4<F, Cpu> = dev.tensor_from_vec(g.clone(), (2, 3, 1, 1));
    let bt: T4<F, Cpu> = dev.tensor_from_vec(b.clone(), (2, 3, 1, 1));
    let y = cond::modulate(cond::instance_norm(x, 1e-5), gt, bt).as_vec();
    for p in 0..6 {
        let plane = &y[p * 25..(p + 1) * 25];
        let m = plane.iter().sum::<F>() / 25.0;
        let sd = (plane.iter().map(|v| (v - m) * (v - m)).sum::<F>() / 25.0).sqrt();
        assert!((m - b[p]).abs() < 1e-9, "mean {m} vs {}", b[p]);
        assert!(
            (sd - (1.0 + g[p]).abs()).abs() < 1e-4,
            "std {sd} vs {}",
            1.0 + g[p]
        );
    }
}
