//! The state a net carries besides its parameters, against hand-computed values: Adam,
//! checkpoint I/O, spectral norm, standing batch-norm statistics and the EMA update's
//! spectral-norm vectors.

use dfdx::prelude::*;

use super::params::{Adam, AdamConfig};
use super::*;

type F = f64;

fn dev() -> Cpu {
    Cpu::default()
}

/// Per-channel mean and unbiased variance of a `(b, c, h, w)` batch, in f64.
fn channel_stats(x: &[F], (b, c, hw): (usize, usize, usize)) -> (Vec<F>, Vec<F>) {
    let n = (b * hw) as F;
    let vals = |ch: usize| {
        (0..b).flat_map(move |i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().copied())
    };
    let mean: Vec<F> = (0..c).map(|ch| vals(ch).sum::<F>() / n).collect();
    let var = (0..c)
        .map(|ch| vals(ch).map(|v| (v - mean[ch]).powi(2)).sum::<F>() / (n - 1.0))
        .collect();
    (mean, var)
}

/// `accumulate_bn_stats` over three batches leaves the mean of their per-channel means and
/// unbiased variances (whatever the buffers held), and a later ordinary training pass
/// updates them with the layer's own momentum (0.1) again.
#[test]
fn standing_stats_average_the_batches() {
    let dev = Cpu::default();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 1);
    let l = vec![nb.batch_norm("bn", 2)];
    let net = nb.finish(l, [2, 3, 3]);
    net.buffers.lock().unwrap()[0].mean = vec![7.0, -7.0];
    let mut rng = Rng::new(4);
    let shape = (4, 2, 9);
    let mut want_mean = [0.0; 2];
    let mut want_var = [0.0; 2];
    for k in 0..3 {
        // batches with different means and spreads
        let x: Vec<F> = rng
            .normals(4 * 2 * 9)
            .iter()
            .map(|v| (1.0 + k as F) * v + k as F)
            .collect();
        let (m, v) = channel_stats(&x, shape);
        for ch in 0..2 {
            want_mean[ch] += m[ch] / 3.0;
            want_var[ch] += v[ch] / 3.0;
        }
        let xt: T4<F, Cpu> = dev.tensor_from_vec(x, (4, 2, 3, 3));
        net.accumulate_bn_stats(xt, &Side::default(), k);
    }
    let st = net.buffers.lock().unwrap()[0].clone();
    for ch in 0..2 {
        assert!((st.mean[ch] - want_mean[ch]).abs() < 1e-12, "{st:?}");
        assert!((st.var[ch] - want_var[ch]).abs() < 1e-12, "{st:?}");
    }
    let x = rng.normals(4 * 2 * 9);
    let (m, v) = channel_stats(&x, shape);
    net.forward(dev.tensor_from_vec(x, (4, 2, 3, 3)), true);
    let after = net.buffers.lock().unwrap()[0].clone();
    for ch in 0..2 {
        assert!((after.mean[ch] - (0.9 * st.mean[ch] + 0.1 * m[ch])).abs() < 1e-12);
        assert!((after.var[ch] - (0.9 * st.var[ch] + 0.1 * v[ch])).abs() < 1e-12);
    }
}

/// After `ema_update` with beta 0 an averaged net is its source: with the source's
/// spectral-norm vectors it computes the source's outputs in eval mode, and a training
/// pass does not iterate them again (its own vectors, from another seed and never
/// iterated on these weights, give other outputs).
#[test]
fn ema_update_copies_spectral_norm_vectors() {
    let dev = Cpu::default();
    let build = |seed| {
        let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), seed);
        nb.spectral_norm = true;
        let l = vec![
            nb.linear("fc1", 3, 5, LinearConfig::default()),
            Layer::LeakyRelu(0.2),
            nb.linear("fc2", 5, 2, LinearConfig::default()),
        ];
        nb.finish(l, [3, 1, 1])
    };
    let (mut avg, src) = (build(1), build(2));
    let x: T4<F, Cpu> = dev.tensor_from_vec(Rng::new(7).normals(4 * 3), (4, 3, 1, 1));
    avg.forward(x.clone(), true);
    for _ in 0..3 {
        src.forward(x.clone(), true);
    }
    let want = src.forward(x.clone(), false).as_vec();
    let own = {
        let mut a = avg.clone();
        a.ema_update(&src, 0.0);
        *a.sn.get_mut().unwrap() = avg.sn.lock().unwrap().clone();
        a.forward(x.clone(), false).as_vec()
    };
    let diff = |a: &[F]| {
        a.iter()
            .zip(&want)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, F::max)
    };
    assert!(
        diff(&own) > 1e-3,
        "the nets' own vectors should differ: {own:?}"
    );
    avg.ema_update(&src, 0.0);
    assert!(diff(&avg.forward(x.clone(), false).as_vec()) < 1e-12);
    assert!(diff(&avg.forward(x, true).as_vec()) < 1e-12);
}

#[test]
fn adam_matches_formula() {
    let dev = dev();
    let mut ps = ParamStore::<F, Cpu>::default();
    ps.push(&dev, "p".into(), vec![2], vec![1.0, -1.0]);
    let cfg = AdamConfig {
        lr: 0.1,
        betas: (0.5, 0.9),
        eps: 1e-8,
    };
    let mut opt = Adam::new(cfg, &ps);
    let (mut m, mut v, mut p) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -1.0]);
    for t in 1..=3 {
        let g = [p[0] * 2.0, p[1] + 3.0];
        opt.step(&mut ps, vec![dev.tensor_from_vec(g.to_vec(), (2,))]);
        for k in 0..2 {
            m[k] = 0.5 * m[k] + 0.5 * g[k];
            v[k] = 0.9 * v[k] + 0.1 * g[k] * g[k];
            let mh = m[k] / (1.0 - 0.5f64.powi(t));
            let vh = v[k] / (1.0 - 0.9f64.powi(t));
            p[k] -= 0.1 * mh / (vh.sqrt() + 1e-8);
        }
    }
    let got = ps.tensors[0].as_vec();
    for k in 0..2 {
        assert!((got[k] - p[k]).abs() < 1e-12);
    }
}

#[test]
fn safetensors_roundtrip_and_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 1);
    let l = vec![
        nb.linear("fc", 3, 2, LinearConfig::default()),
        nb.batch_norm("bn", 2),
    ];
    let net = nb.finish(l, [3, 1, 1]);
    let mut named = net.to_named();
    for t in &mut named {
        t.name = format!("G.{}", t.name);
    }
    let meta = [("step".to_string(), "7".to_string())]
        .into_iter()
        .collect();
    save_safetensors(&path, &named, meta).unwrap();
    let (map, meta) = load_safetensors::<F>(&path).unwrap();
    assert_eq!(meta["step"], "7");
    let mut n2 = NetBuilder::<F, Cpu>::new(dev.clone(), 2);
    let l = vec![
        n2.linear("fc", 3, 2, LinearConfig::default()),
        n2.batch_norm("bn", 2),
    ];
    let mut n2 = n2.finish(l, [3, 1, 1]);
    n2.load_named(&map, "G.").unwrap();
    assert_eq!(
        n2.params.tensors[0].as_vec(),
        net.params.tensors[0].as_vec()
    );
    // wrong shape -> first mismatch named
    let mut n3 = NetBuilder::<F, Cpu>::new(dev.clone(), 2);
    let l = vec![n3.linear("fc", 4, 2, LinearConfig::default())];
    let mut n3 = n3.finish(l, [4, 1, 1]);
    let e = n3.load_named(&map, "G.").unwrap_err().to_string();
    assert!(e.contains("G.fc.weight") && e.contains("shape"), "{e}");
    let e = n3.load_named(&map, "D.").unwrap_err().to_string();
    assert!(e.contains("missing tensor \"D.fc.weight\""), "{e}");
    // f32 loader refuses f64 files
    assert!(load_safetensors::<f32>(&path).is_err());
}

/// Spectral norm: after enough power iterations (one per parameter version) the largest
/// singular value of W / sigma is 1 within 1e-3 (checked by a long power iteration on
/// W^T W); u and v travel through to_named / load_named.
#[test]
fn spectral_norm_power_iteration() {
    let dev = dev();
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 3);
    nb.spectral_norm = true;
    let layers = vec![nb.linear("fc", 10, 6, LinearConfig::default().bias(false))];
    let mut net = nb.finish(layers, [10, 1, 1]);
    let x: T4<F, Cpu> = dev.zeros_like(&(1, 10, 1, 1));
    for _ in 0..200 {
        net.params.version += 1;
        net.forward(x.clone(), true);
    }
    let w = net.params.tensors[0].as_vec();
    let st = net.sn.lock().unwrap()[0].clone();
    let sigma: F = (0..6)
        .map(|i| st.u[i] * (0..10).map(|j| w[i * 10 + j] * st.v[j]).sum::<F>())
        .sum();
    let wn: Vec<F> = w.iter().map(|v| v / sigma).collect();
    // independent estimate: power iteration on Wn^T Wn from a fixed start
    let mut v = vec![1.0; 10];
    let mut lam = 0.0;
    for _ in 0..5000 {
        let u: Vec<F> = (0..6)
            .map(|i| (0..10).map(|j| wn[i * 10 + j] * v[j]).sum())
            .collect();
        let nv: Vec<F> = (0..10)
            .map(|j| (0..6).map(|i| wn[i * 10 + j] * u[i]).sum())
            .collect();
        lam = nv.iter().map(|a| a * a).sum::<F>().sqrt();
        v = nv.iter().map(|a| a / lam).collect();
    }
    let smax = lam.sqrt();
    assert!((smax - 1.0).abs() < 1e-3, "largest singular value {smax}");
    // the normalised weight is what the layer applies
    let xs: Vec<F> = (0..10).map(|j| j as F * 0.1 - 0.3).collect();
    let y = net
        .forward(dev.tensor_from_vec(xs.clone(), (1, 10, 1, 1)), false)
        .as_vec();
    for i in 0..6 {
        let want: F = (0..10).map(|j| wn[i * 10 + j] * xs[j]).sum();
        assert!((y[i] - want).abs() < 1e-12);
    }
    // checkpoint round trip
    let named = net.to_named();
    assert!(named
        .iter()
        .any(|t| t.name == "fc.weight_u" && t.shape == vec![6]));
    assert!(named
        .iter()
        .any(|t| t.name == "fc.weight_v" && t.shape == vec![10]));
    let map: std::collections::HashMap<_, _> =
        named.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut fresh = {
        let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 99);
        nb.spectral_norm = true;
        let layers = vec![nb.linear("fc", 10, 6, LinearConfig::default().bias(false))];
        nb.finish(layers, [10, 1, 1])
    };
    fresh.load_named(&map, "").unwrap();
    let fs = fresh.sn.lock().unwrap()[0].clone();
    assert_eq!(fs.u, st.u);
    assert_eq!(fs.v, st.v);
    assert_eq!(fs.synced, Some(fresh.params.version));
}
