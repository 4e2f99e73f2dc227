//! The state a net carries besides its parameters: standing batch-norm statistics and
//! the EMA update's spectral-norm vectors, against hand-computed values.

use dfdx::prelude::*;

use super::*;

type F = f64;

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
