//! The step kernels ([`super::kernels`]) against the composed dfdx paths they replace,
//! against f64 central finite differences, and for bit-identical results with 1 and
//! several threads.

use dfdx::prelude::*;

use super::kernels::{self, AdamStep};
use super::ops::{self, IdxCache};
use super::params::adam_update_composed;
use super::*;

type Tp<E> = OwnedTape<E, Cpu>;

/// The ops under test, by name.
const OPS: [&str; 9] = [
    "bn_train", "bn_eval", "pool", "nearest", "bilinear", "fir_up", "fir_down", "add", "tanh",
];

/// Ops whose kernel does dfdx's arithmetic in dfdx's order: equal to the bit.
const EXACT: [&str; 2] = ["add", "tanh"];

/// Ops with gradients for `gamma` (and for batch norm `beta`) to check.
fn has_gamma(op: &str) -> bool {
    op.starts_with("bn") || op == "add"
}

/// Shapes: batch 1, odd channel counts and odd sizes (downsampling gets even sizes).
fn shapes(op: &str) -> Vec<[usize; 4]> {
    if op == "pool" || op == "fir_down" {
        vec![[1, 1, 2, 2], [1, 3, 4, 6], [3, 2, 6, 2], [2, 5, 8, 4]]
    } else {
        vec![[1, 1, 1, 1], [1, 3, 3, 5], [3, 2, 1, 4], [2, 5, 5, 3]]
    }
}

/// `op` on `x` (and per-channel `gamma`, `beta` for batch norm) by the kernel or the
/// composed path; running statistics fixed for eval.
fn apply<E: Float, T: Tape<E, Cpu>>(
    op: &str,
    kernel: bool,
    x: T4<E, Cpu, T>,
    gamma: T1<E, Cpu, T>,
    beta: T1<E, Cpu, T>,
) -> T4<E, Cpu, T>
where
    Cpu: Dev<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let c = x.shape().1;
    let rm: Vec<f64> = (0..c).map(|i| 0.3 - 0.2 * i as f64).collect();
    let rv: Vec<f64> = (0..c).map(|i| 0.5 + 0.7 * i as f64).collect();
    let cache = IdxCache::<Cpu>::default();
    let s = *x.shape();
    match (op, kernel) {
        // `b` a broadcast (not dense) view: the kernel reads it through a copy
        ("add", true) => kernels::add_op(x, gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s)),
        ("add", false) => x + gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s),
        ("tanh", true) => kernels::tanh_op(x),
        ("tanh", false) => x.tanh(),
        ("bn_train", true) => kernels::batch_norm_train_op(x, gamma, beta, 1e-5).0,
        ("bn_train", false) => ops::batch_norm_train_composed(x, gamma, beta, 1e-5).0,
        ("bn_eval", true) => kernels::batch_norm_eval_op(x, gamma, beta, &rm, &rv, 1e-5),
        ("bn_eval", false) => ops::batch_norm_eval_composed(x, gamma, beta, &rm, &rv, 1e-5),
        ("pool", true) => kernels::avg_pool2x2_op(x),
        ("pool", false) => resample::avg_pool2x2_composed(x),
        ("nearest", true) => kernels::upsample_nearest2x_op(x),
        ("nearest", false) => resample::upsample_nearest2x_composed(x, &cache),
        ("bilinear", true) => kernels::upsample_bilinear2x_op(x),
        ("bilinear", false) => resample::upsample_bilinear2x_composed(x, &cache),
        ("fir_up", true) => resample::upsample_fir2x(x, &cache),
        ("fir_up", false) => resample::upsample_fir2x_composed(x, &cache),
        ("fir_down", true) => resample::downsample_fir2x(x, &cache),
        ("fir_down", false) => resample::downsample_fir2x_composed(x, &cache),
        _ => unreachable!(),
    }
}

/// Output values and the gradients of `sum(y * r)` (fixed random `r`) with respect to
/// `x`, `gamma` and `beta`.
type Run<E> = (Vec<E>, Vec<E>, Vec<E>, Vec<E>);

fn run<E: Float>(op: &str, kernel: bool, s: [usize; 4], seed: u64) -> Run<E>
where
    Cpu: Dev<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let dev = Cpu::default();
    let mut rng = Rng::new(seed);
    let n = s.iter().product();
    let mk = |v: Vec<f64>| -> Vec<E> { v.into_iter().map(E::of).collect() };
    let x: T4<E, Cpu> = dev.tensor_from_vec(mk(rng.normals(n)), (s[0], s[1], s[2], s[3]));
    let gamma: T1<E, Cpu> = dev.tensor_from_vec(mk(rng.normals(s[1])), (s[1],));
    let beta: T1<E, Cpu> = dev.tensor_from_vec(mk(rng.normals(s[1])), (s[1],));
    let mut g = Gradients::leaky();
    g.try_alloc_for(&gamma).unwrap();
    g.try_alloc_for(&beta).unwrap();
    // three tapes the op must merge: gradients of gamma and beta still arrive
    let y = apply(
        op,
        kernel,
        x.clone().traced(g),
        gamma.clone().retaped::<Tp<E>>(),
        beta.clone().retaped::<Tp<E>>(),
    );
    let yv = y.retaped::<Tp<E>>().as_vec();
    let m = yv.len();
    let r: T1<E, Cpu> = dev.tensor_from_vec(mk(Rng::new(seed + 100).normals(m)), (m,));
    let loss = (y.reshape_like(&(m,)) * r).sum::<(), Axis<0>>();
    let grads = loss.backward();
    let get = |t: &T1<E, Cpu>| grads.get(t).as_vec();
    (yv, grads.get(&x).as_vec(), get(&gamma), get(&beta))
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// Kernel and composed path agree in values and in every gradient (f64).
#[test]
fn kernels_match_composed() {
    for op in OPS {
        for (i, s) in shapes(op).into_iter().enumerate() {
            let (yk, xk, gk, bk) = run::<f64>(op, true, s, 10 + i as u64);
            let (yc, xc, gc, bc) = run::<f64>(op, false, s, 10 + i as u64);
            let w = format!("{op} {s:?}");
            let tol = if EXACT.contains(&op) { 0.0 } else { 1e-10 };
            close(&yk, &yc, tol, &format!("{w} y"));
            close(&xk, &xc, tol, &format!("{w} dx"));
            if has_gamma(op) {
                close(&gk, &gc, tol, &format!("{w} dgamma"));
                close(&bk, &bc, tol, &format!("{w} dbeta"));
            }
        }
    }
}

/// Every kernel's gradient against central finite differences of the kernel itself
/// (f64), for x, gamma and beta.
#[test]
fn kernels_fd_gradients() {
    let dev = Cpu::default();
    for op in OPS {
        for (i, s) in shapes(op).into_iter().enumerate() {
            let seed = 50 + i as u64;
            let (_, dx, dg, db) = run::<f64>(op, true, s, seed);
            let mut rng = Rng::new(seed);
            let n: usize = s.iter().product();
            let x0 = rng.normals(n);
            let g0 = rng.normals(s[1]);
            let b0 = rng.normals(s[1]);
            let eval = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                let xt: T4<f64, Cpu> = dev.tensor_from_vec(x.to_vec(), (s[0], s[1], s[2], s[3]));
                let gt: T1<f64, Cpu> = dev.tensor_from_vec(g.to_vec(), (s[1],));
                let bt: T1<f64, Cpu> = dev.tensor_from_vec(b.to_vec(), (s[1],));
                let y = apply(op, true, xt, gt, bt).as_vec();
                let r = Rng::new(seed + 100).normals(y.len());
                y.iter().zip(&r).map(|(a, b)| a * b).sum()
            };
            let h = 1e-6;
            let fd = |which: usize, j: usize| {
                let (mut xp, mut gp, mut bp) = (x0.clone(), g0.clone(), b0.clone());
                let (mut xm, mut gm, mut bm) = (x0.clone(), g0.clone(), b0.clone());
                let (p, m) = match which {
                    0 => (&mut xp, &mut xm),
                    1 => (&mut gp, &mut gm),
                    _ => (&mut bp, &mut bm),
                };
                p[j] += h;
                m[j] -= h;
                (eval(&xp, &gp, &bp) - eval(&xm, &gm, &bm)) / (2.0 * h)
            };
            let w = format!("{op} {s:?}");
            let num: Vec<f64> = (0..n).map(|j| fd(0, j)).collect();
            // batch 1 of size 1x1 in train mode: x - mean is 0, the gradient too
            close(&dx, &num, 1e-6, &format!("{w} dx vs FD"));
            if has_gamma(op) {
                let num: Vec<f64> = (0..s[1]).map(|j| fd(1, j)).collect();
                close(&dg, &num, 1e-6, &format!("{w} dgamma vs FD"));
            }
            if op.starts_with("bn") {
                let num: Vec<f64> = (0..s[1]).map(|j| fd(2, j)).collect();
                close(&db, &num, 1e-6, &format!("{w} dbeta vs FD"));
            }
        }
    }
}

/// Large enough for the parallel paths; bit-identical under 1 and 3 threads (f32).
#[test]
fn kernels_deterministic_across_threads() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let (p1, p3) = (pool(1), pool(3));
    for op in OPS {
        let s = [3, 7, 40, 42];
        let a = p1.install(|| run::<f32>(op, true, s, 3));
        let b = p3.install(|| run::<f32>(op, true, s, 3));
        assert!(a.0 == b.0 && a.1 == b.1 && a.2 == b.2 && a.3 == b.3, "{op}");
    }
    // Adam and EMA kernels
    let n = 100_003;
    let mut rng = Rng::new(4);
    let mut vecs: Vec<Vec<f32>> = (0..4)
        .map(|_| rng.normals(n).into_iter().map(|v| v as f32).collect())
        .collect();
    for v in &mut vecs[3] {
        *v = v.abs();
    }
    let h = AdamStep {
        b1: 0.5,
        b2: 0.99,
        inv_bc2: 1.0 / (1.0 - 0.99f64.powi(3)),
        step: 2e-4 / (1.0 - 0.5f64.powi(3)),
        eps: 1e-8,
    };
    let go = |pl: &rayon::ThreadPool| {
        let mut v = vecs.clone();
        pl.install(|| {
            let (p, rest) = v.split_at_mut(1);
            let (g, rest) = rest.split_at_mut(1);
            let (m, vv) = rest.split_at_mut(1);
            kernels::adam_slices(&mut p[0], &g[0], &mut m[0], &mut vv[0], h);
            kernels::lerp_slices(&mut m[0], &g[0], 0.999);
        });
        v
    };
    assert!(go(&p1) == go(&p3), "adam / ema");
}

/// The in-place Adam and EMA updates on tensors equal the composed dfdx updates
/// (the same arithmetic in the same order: bit for bit), over several steps.
#[test]
fn adam_and_ema_match_composed() {
    let dev = Cpu::default();
    let mut rng = Rng::new(6);
    for n in [1usize, 7, 40_000] {
        let mk = |v: Vec<f64>| -> T1<f32, Cpu> {
            dev.tensor_from_vec(v.into_iter().map(|x| x as f32).collect(), (n,))
        };
        let p0 = mk(rng.normals(n));
        let p0v = p0.as_vec();
        let (mut pk, mut mk_, mut vk) = (p0.clone(), p0.clone() * 0.0, p0.clone() * 0.0);
        let (mut pc, mut mc, mut vc) = (p0.clone(), p0.clone() * 0.0, p0.clone() * 0.0);
        let mut buf = vec![];
        for t in 1..=3 {
            let g = mk(rng.normals(n));
            let h = AdamStep {
                b1: 0.5,
                b2: 0.99,
                inv_bc2: 1.0 / (1.0 - 0.99f64.powi(t)),
                step: 1e-2 / (1.0 - 0.5f64.powi(t)),
                eps: 1e-8,
            };
            <Cpu as Dev<f32>>::adam_update(&mut pk, &g, &mut mk_, &mut vk, h, &mut buf);
            adam_update_composed(&mut pc, &g, &mut mc, &mut vc, h);
            assert_eq!(pk.as_vec(), pc.as_vec(), "adam p, n {n}, t {t}");
            assert_eq!(mk_.as_vec(), mc.as_vec(), "adam m, n {n}, t {t}");
            assert_eq!(vk.as_vec(), vc.as_vec(), "adam v, n {n}, t {t}");
        }
        // the original tensor shared storage with pk at first: it must be untouched
        assert_eq!(p0.as_vec(), p0v, "the shared original was written to");
        let s = mk(rng.normals(n));
        let want = (pk.clone() * 0.9f32 + s.clone() * ((1.0f64 - 0.9) as f32)).as_vec();
        <Cpu as Dev<f32>>::lerp_update(&mut pk, &s, 0.9, &mut buf);
        assert_eq!(pk.as_vec(), want, "ema n {n}");
    }
}

/// Whole training steps (BN, nearest and bilinear up-sampling, pooling, Adam, EMA, and
/// dfdx's matrix products) give bit-identical losses and weights on 1 and 3 threads.
#[test]
fn training_steps_identical_across_threads() {
    use crate::data::DataTensor;
    use crate::gan::{TrainConfig, Trainer};
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    // (batch norm in D refuses penalties: that case trains without them)
    for (g, d, pens) in [
        (
            serde_json::json!({"arch": "resnet", "width": 16, "z_dim": 32}),
            serde_json::json!({"arch": "resnet", "width": 16}),
            serde_json::json!(["r1", "r2"]),
        ),
        (
            serde_json::json!({"arch": "r3gan", "variant": "E", "width": 16, "z_dim": 32}),
            serde_json::json!({"arch": "dcgan", "width": 16, "batch_norm": true}),
            serde_json::json!([]),
        ),
    ] {
        let cfg: TrainConfig = serde_json::from_value(serde_json::json!({
            "generator": g, "discriminator": d, "loss": "rpgan", "penalties": pens,
            "gamma": 0.1, "optimizer": {"lr": 2e-4, "betas": [0.0, 0.99]},
            "batch": 16, "steps": 10, "ema": 0.9, "seed": 3,
        }))
        .unwrap();
        let run = |threads| {
            pool(threads).install(|| {
                let mut rng = Rng::new(1);
                let n = 32;
                let data = DataTensor::Images {
                    values: (0..n * 3 * 32 * 32)
                        .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
                        .collect(),
                    n,
                    c: 3,
                    h: 32,
                    w: 32,
                };
                let mut t = Trainer::new(cfg.clone(), data, 1).unwrap();
                let logs: Vec<_> = (0..2).map(|_| t.step()).collect();
                let w: Vec<Vec<f32>> = t.g_ema.params.tensors.iter().map(|p| p.as_vec()).collect();
                (logs, w)
            })
        };
        let (l1, w1) = run(1);
        let (l3, w3) = run(3);
        assert!(l1[1].d_loss.is_finite());
        assert_eq!(l1, l3, "{g} / {d}: step logs");
        assert!(w1 == w3, "{g} / {d}: G_ema weights");
    }
}
