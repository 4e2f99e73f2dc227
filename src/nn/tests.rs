//! Gradient tests of every layer against central finite differences (f64), and the
//! finite-difference helpers [`super::official_tests`] shares.

use dfdx::prelude::*;

use super::ops::{self, IdxCache, ParamGrads::Computed};
use super::*;

pub(super) type F = f64;
pub(super) type Tp = OwnedTape<F, Cpu>;
pub(super) type In = T1<F, Cpu, Tp>;

pub(super) fn dev() -> Cpu {
    Cpu::default()
}

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<F> {
    rng.normals(n)
}

/// Checks d f / d inputs against central differences on every element (inputs are small).
pub(super) fn gradcheck(shapes: &[usize], seed: u64, f: impl Fn(Vec<In>) -> T0<F, Cpu, Tp>) {
    let dev = dev();
    let mut rng = Rng::new(seed);
    let vals: Vec<Vec<F>> = shapes.iter().map(|&n| rand_vec(&mut rng, n)).collect();
    let mk = |vals: &Vec<Vec<F>>| -> Vec<T1<F, Cpu>> {
        vals.iter()
            .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
            .collect()
    };
    let ts = mk(&vals);
    let traced: Vec<In> = ts.iter().map(|t| t.retaped::<Tp>()).collect();
    let mut g0 = Gradients::leaky();
    for t in &ts {
        g0.try_alloc_for(t).unwrap();
    }
    let mut traced = traced;
    traced[0] = ts[0].clone().traced(g0);
    let grads = f(traced).backward();
    let eval = |vals: &Vec<Vec<F>>| -> F {
        let ts = mk(vals);
        f(ts.iter().map(|t| t.retaped::<Tp>()).collect()).array()
    };
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for (i, t) in ts.iter().enumerate() {
        let an = grads.get(t).as_vec();
        for j in 0..vals[i].len() {
            let mut vp = vals.clone();
            vp[i][j] += h;
            let mut vm = vals.clone();
            vm[i][j] -= h;
            let num = (eval(&vp) - eval(&vm)) / (2.0 * h);
            let err = (num - an[j]).abs() / (1.0 + num.abs().max(an[j].abs()));
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "input {i} elem {j}: analytic {} numeric {num} (err {err})",
                an[j]
            );
        }
    }
    assert!(worst < 1e-6);
}

/// A fixed random projection to a scalar: sum(y * r).
pub(super) fn project<S: Shape>(y: Tensor<S, F, Cpu, Tp>, seed: u64) -> T0<F, Cpu, Tp> {
    let n = y.shape().num_elements();
    let mut rng = Rng::new(seed);
    let r: T1<F, Cpu> = dev().tensor_from_vec(rng.normals(n), (n,));
    (y.reshape_like(&(n,)) * r).sum::<(), Axis<0>>()
}

pub(super) fn r4(t: In, s: [usize; 4]) -> T4<F, Cpu, Tp> {
    t.reshape_like(&(s[0], s[1], s[2], s[3]))
}

#[test]
fn linear_grad() {
    gradcheck(&[12, 20, 5], 1, |v| {
        let mut it = v.into_iter();
        let x = it.next().unwrap().reshape_like(&(3, 4));
        let w = it.next().unwrap().reshape_like(&(5, 4));
        let b = it.next().unwrap();
        project(ops::linear(x, w, Some(b)), 7)
    });
}

fn naive_conv(
    x: &[F],
    xs: [usize; 4],
    w: &[F],
    ws: [usize; 4],
    s: usize,
    p: usize,
    g: usize,
) -> Vec<F> {
    let [b, c, h, wd] = xs;
    let [co, cpg, k, _] = ws;
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (wd + 2 * p - k) / s + 1;
    let og = co / g;
    let mut out = vec![0.0; b * co * ho * wo];
    for bi in 0..b {
        for o in 0..co {
            let gi = o / og;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0;
                    for cl in 0..cpg {
                        let ci = gi * cpg + cl;
                        for ki in 0..k {
                            for kj in 0..k {
                                let iy = (oy * s + ki) as isize - p as isize;
                                let ix = (ox * s + kj) as isize - p as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x[((bi * c + ci) * h + iy as usize) * wd + ix as usize]
                                        * w[((o * cpg + cl) * k + ki) * k + kj];
                                }
                            }
                        }
                    }
                    out[((bi * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    let _ = c;
    out
}

#[test]
fn conv2d_matches_naive_and_fd() {
    let dev = dev();
    let mut rng = Rng::new(3);
    for &(xs, ws, s, p, g) in &[
        ([2, 4, 5, 5], [6, 2, 3, 3], 2, 1, 2),
        ([2, 3, 6, 6], [4, 3, 4, 4], 2, 1, 1),
        ([1, 2, 4, 4], [2, 2, 3, 3], 1, 0, 1),
        ([2, 4, 4, 4], [4, 1, 4, 4], 1, 0, 4),
    ] {
        let xn: usize = xs.iter().product();
        let wn: usize = ws.iter().product();
        let xv = rng.normals(xn);
        let wv = rng.normals(wn);
        let x: T4<F, Cpu> = dev.tensor_from_vec(xv.clone(), (xs[0], xs[1], xs[2], xs[3]));
        let w: T4<F, Cpu> = dev.tensor_from_vec(wv.clone(), (ws[0], ws[1], ws[2], ws[3]));
        let y = ops::conv2d(x, w, None, s, p, g, Computed, &IdxCache::default()).as_vec();
        let want = naive_conv(&xv, xs, &wv, ws, s, p, g);
        assert_eq!(y.len(), want.len());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-10, "{a} vs {b}");
        }
        let cache = IdxCache::default();
        gradcheck(&[xn, wn, ws[0]], 5, move |v| {
            let mut it = v.into_iter();
            let x = r4(it.next().unwrap(), xs);
            let w = r4(it.next().unwrap(), ws);
            let b = it.next().unwrap();
            project(ops::conv2d(x, w, Some(b), s, p, g, Computed, &cache), 9)
        });
    }
}

#[test]
fn conv_transpose_matches_naive_and_fd() {
    let dev = dev();
    let mut rng = Rng::new(4);
    let (xs, ws, s, p) = ([2usize, 3, 3, 3], [3usize, 2, 4, 4], 2usize, 1usize);
    let xv = rng.normals(xs.iter().product());
    let wv = rng.normals(ws.iter().product());
    // naive scatter
    let (ho, wo) = ((xs[2] - 1) * s + 4 - 2 * p, (xs[3] - 1) * s + 4 - 2 * p);
    let mut want = vec![0.0; xs[0] * ws[1] * ho * wo];
    for b in 0..xs[0] {
        for ci in 0..xs[1] {
            for iy in 0..xs[2] {
                for ix in 0..xs[3] {
                    for co in 0..ws[1] {
                        for ki in 0..4 {
                            for kj in 0..4 {
                                let oy = (iy * s + ki) as isize - p as isize;
                                let ox = (ix * s + kj) as isize - p as isize;
                                if oy >= 0 && ox >= 0 && (oy as usize) < ho && (ox as usize) < wo {
                                    want[((b * ws[1] + co) * ho + oy as usize) * wo
                                        + ox as usize] += xv
                                        [((b * xs[1] + ci) * xs[2] + iy) * xs[3] + ix]
                                        * wv[((ci * ws[1] + co) * 4 + ki) * 4 + kj];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let x: T4<F, Cpu> = dev.tensor_from_vec(xv, (xs[0], xs[1], xs[2], xs[3]));
    let w: T4<F, Cpu> = dev.tensor_from_vec(wv, (ws[0], ws[1], ws[2], ws[3]));
    let y = ops::conv_transpose2d(x, w, None, s, p, Computed, &IdxCache::default());
    assert_eq!(*y.shape(), (2, 2, 6, 6));
    for (a, b) in y.as_vec().iter().zip(&want) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
    let cache = IdxCache::default();
    gradcheck(&[54, 96, 2], 6, move |v| {
        let mut it = v.into_iter();
        let x = r4(it.next().unwrap(), xs);
        let w = r4(it.next().unwrap(), ws);
        let b = it.next().unwrap();
        project(
            ops::conv_transpose2d(x, w, Some(b), s, p, Computed, &cache),
            10,
        )
    });
}

#[test]
fn upsampling_and_pooling() {
    let dev = dev();
    let cache = IdxCache::default();
    // values: nearest copies, bilinear of a constant is the constant, pool averages
    let x: T4<F, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2));
    let n = resample::upsample_nearest2x(x.clone(), &cache).as_vec();
    assert_eq!(&n[..4], &[1.0, 1.0, 2.0, 2.0]);
    let b = resample::upsample_bilinear2x(x.clone(), &cache).as_vec();
    // PyTorch F.interpolate(scale_factor=2, mode="bilinear", align_corners=False) first row
    let want = [1.0, 1.25, 1.75, 2.0];
    for (a, w) in b[..4].iter().zip(want) {
        assert!((a - w).abs() < 1e-12, "{b:?}");
    }
    let c: T4<F, Cpu> = dev.tensor_from_vec(vec![0.5; 9], (1, 1, 3, 3));
    assert!(resample::upsample_bilinear2x(c, &cache)
        .as_vec()
        .iter()
        .all(|v| (v - 0.5).abs() < 1e-12));
    assert_eq!(resample::avg_pool2x2(x).as_vec(), vec![2.5]);
    for kind in 0..3 {
        let cache = IdxCache::default();
        gradcheck(&[2 * 3 * 3 * 4], 11 + kind, move |v| {
            let x = r4(v.into_iter().next().unwrap(), [2, 3, 3, 4]);
            match kind {
                0 => project(resample::upsample_nearest2x(x, &cache), 1),
                1 => project(resample::upsample_bilinear2x(x, &cache), 2),
                _ => project(
                    resample::avg_pool2x2(
                        x.reshape_like(&(2, 3, 6, 2))
                            .permute::<_, Axes4<0, 1, 3, 2>>(),
                    ),
                    3,
                ),
            }
        });
    }
}

#[test]
fn batch_norm_grad_and_stats() {
    gradcheck(&[3 * 2 * 2 * 2, 2, 2], 21, |v| {
        let mut it = v.into_iter();
        let x = r4(it.next().unwrap(), [3, 2, 2, 2]);
        let (y, _, _) = ops::batch_norm_train(x, it.next().unwrap(), it.next().unwrap(), 1e-5);
        project(y, 4)
    });
    gradcheck(&[3 * 2 * 2 * 2, 2, 2], 22, |v| {
        let mut it = v.into_iter();
        let x = r4(it.next().unwrap(), [3, 2, 2, 2]);
        let y = ops::batch_norm_eval(
            x,
            it.next().unwrap(),
            it.next().unwrap(),
            &[0.3, -0.1],
            &[2.0, 0.5],
            1e-5,
        );
        project(y, 5)
    });
    // train-mode output has zero mean, unit variance per channel; stats returned
    let dev = dev();
    let mut rng = Rng::new(1);
    let x: T4<F, Cpu> = dev.tensor_from_vec(
        rng.normals(4 * 2 * 3 * 3)
            .iter()
            .map(|v| v * 3.0 + 1.0)
            .collect(),
        (4, 2, 3, 3),
    );
    let ones: T1<F, Cpu> = dev.ones_like(&(2,));
    let zeros: T1<F, Cpu> = dev.zeros_like(&(2,));
    let (y, m, v) = ops::batch_norm_train(x, ones, zeros, 0.0);
    let y = y.as_vec();
    for c in 0..2 {
        let vals: Vec<F> = (0..4)
            .flat_map(|b| (0..9).map(move |i| (b, i)))
            .map(|(b, i)| y[(b * 2 + c) * 9 + i])
            .collect();
        let mean = vals.iter().sum::<F>() / 36.0;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<F>() / 36.0;
        assert!(mean.abs() < 1e-10 && (var - 1.0).abs() < 1e-8);
        assert!(v[c] > 1.0 && m[c].abs() < 5.0);
    }
}

#[test]
fn activations_grad() {
    for kind in 0..4 {
        gradcheck(&[17], 30 + kind, move |v| {
            let x = v.into_iter().next().unwrap() * 3.0;
            match kind {
                0 => project(ops::leaky_relu(x, 0.2), 1),
                1 => project(x.relu(), 2),
                2 => project(x.tanh(), 3),
                _ => project(ops::softplus(x), 4),
            }
        });
    }
    // softplus is stable for large |x|
    let dev = dev();
    let x: T1<F, Cpu> = dev.tensor_from_vec(vec![-800.0, 0.0, 800.0], (3,));
    let y = ops::softplus(x).as_vec();
    assert!(y[0] >= 0.0 && y[0] < 1e-300);
    assert!((y[1] - 2f64.ln()).abs() < 1e-15);
    assert_eq!(y[2], 800.0);
}

/// Geometries for the fused im2col / col2im tests: stride 1 and 2, padding 0..2, kernel
/// 1, 3, 4 and 5 (larger than the padded image minus one), non-square images.
fn geoms() -> Vec<fused::Geom> {
    [
        ((2, 3, 5, 4), 3, 3, 1, 1),
        ((1, 2, 6, 6), 4, 4, 2, 1),
        ((2, 1, 7, 5), 3, 2, 2, 0),
        ((1, 2, 4, 4), 1, 1, 1, 0),
        ((1, 1, 3, 3), 5, 5, 1, 2),
        ((1, 2, 8, 8), 4, 4, 2, 2),
    ]
    .into_iter()
    .map(|(s, kh, kw, st, p)| fused::Geom::new(s, kh, kw, st, p))
    .collect()
}

#[test]
fn fused_im2col_col2im_fd_grad() {
    for (i, g) in geoms().into_iter().enumerate() {
        gradcheck(&[g.img_len()], 30 + i as u64, |v| {
            let x = r4(v.into_iter().next().unwrap(), [g.b, g.c, g.h, g.w]);
            project(fused::im2col_op(x, g), 5)
        });
        gradcheck(&[g.cols_len()], 40 + i as u64, |v| {
            project(fused::col2im_op(v.into_iter().next().unwrap(), g), 6)
        });
    }
}

/// The fused CPU ops equal the composed (gather) ones in value and in gradient, and are
/// each other's adjoint: <im2col(x), c> == <x, col2im(c)>.
#[test]
fn fused_matches_composed() {
    let dev = dev();
    let cache = IdxCache::<Cpu>::default();
    let mut rng = Rng::new(9);
    for g in geoms() {
        let xv = rng.normals(g.img_len());
        let cv = rng.normals(g.cols_len());
        let x: T4<F, Cpu> = dev.tensor_from_vec(xv.clone(), (g.b, g.c, g.h, g.w));
        let c: T1<F, Cpu> = dev.tensor_from_vec(cv.clone(), (g.cols_len(),));
        // im2col: values and input gradients
        let run_i = |fused_path: bool| {
            let y = if fused_path {
                fused::im2col_op(x.clone().traced(Gradients::leaky()), g)
            } else {
                ops::im2col_composed(x.clone().traced(Gradients::leaky()), g, &cache)
            };
            let yv = y.retaped::<Tp>().as_vec();
            let grads = project(y, 3).backward();
            (yv, grads.get(&x).as_vec())
        };
        let (yf, gf) = run_i(true);
        let (yc, gc) = run_i(false);
        assert_eq!(yf, yc, "{g:?}: im2col values");
        for (a, b) in gf.iter().zip(&gc) {
            assert!((a - b).abs() < 1e-12, "{g:?}: im2col grad {a} vs {b}");
        }
        // col2im: values and input gradients
        let run_c = |fused_path: bool| {
            let y = if fused_path {
                fused::col2im_op(c.clone().traced(Gradients::leaky()), g)
            } else {
                ops::col2im_composed(c.clone().traced(Gradients::leaky()), g, &cache)
            };
            let yv = y.retaped::<Tp>().as_vec();
            let grads = project(y, 4).backward();
            (yv, grads.get(&c).as_vec())
        };
        let (yf, gf) = run_c(true);
        let (yc, gc) = run_c(false);
        for (a, b) in yf.iter().zip(&yc) {
            assert!((a - b).abs() < 1e-12, "{g:?}: col2im value {a} vs {b}");
        }
        assert_eq!(gf, gc, "{g:?}: col2im grads");
        // adjointness
        let mut cols = vec![0.0; g.cols_len()];
        fused::im2col_cpu(&xv, g, &mut cols);
        let mut img = vec![0.0; g.img_len()];
        fused::col2im_add_cpu(&cv, g, &mut img);
        let l: F = cols.iter().zip(&cv).map(|(a, b)| a * b).sum();
        let r: F = xv.iter().zip(&img).map(|(a, b)| a * b).sum();
        assert!((l - r).abs() < 1e-10 * (1.0 + l.abs()), "{g:?}: {l} vs {r}");
    }
}
