//! Tests of the layers behind R3GAN's and StyleGAN's official builds: FIR resampling
//! against upfirdn2d's definition and a hand-worked example, pixel norm, and forward
//! values and parameter gradients (central differences, f64) of the official layers.
//! The finite-difference helpers are those of [`super::tests`].

use dfdx::prelude::*;

use super::ops::{self, IdxCache, ParamGrads::Computed};
use super::tests::{dev, gradcheck, project, r4, F};
use super::*;

/// upfirdn2d by its definition (StyleGAN2-ADA's `_upfirdn2d_ref`) on one plane: insert
/// `up - 1` zeros after every pixel, pad by `(p0, p1)`, correlate with the 2-D filter
/// `outer(f, f) * gain`, keep every `down`-th pixel.
#[allow(clippy::too_many_arguments)]
fn upfirdn2d_ref(
    x: &[F],
    h: usize,
    w: usize,
    f: &[F],
    up: usize,
    down: usize,
    pad: (usize, usize),
    gain: F,
) -> (Vec<F>, usize, usize) {
    let (uh, uw) = (h * up + pad.0 + pad.1, w * up + pad.0 + pad.1);
    let mut u = vec![0.0; uh * uw];
    for i in 0..h {
        for j in 0..w {
            u[(i * up + pad.0) * uw + j * up + pad.0] = x[i * w + j];
        }
    }
    let k = f.len();
    let (ho, wo) = ((uh - k) / down + 1, (uw - k) / down + 1);
    let mut y = vec![0.0; ho * wo];
    for oy in 0..ho {
        for ox in 0..wo {
            let mut s = 0.0;
            for a in 0..k {
                for b in 0..k {
                    s += u[(oy * down + a) * uw + ox * down + b] * f[a] * f[b] * gain;
                }
            }
            y[oy * wo + ox] = s;
        }
    }
    (y, ho, wo)
}

/// The `[1, 3, 3, 1]` resamplers: a hand-worked example, upfirdn2d's definition, the
/// conv / transposed-conv form of R3GAN's reference resamplers, constants, gradients.
#[test]
fn fir_resampling() {
    let dev = dev();
    let cache = IdxCache::default();
    // hand-worked: up of [[1, 2], [3, 4]]; along an axis [a, b] -> [3a/4, (3a+b)/4,
    // (a+3b)/4, 3b/4], so row 0 is 3/4 of the upsampled row [1, 2]: [0.75, 1.25, 1.75,
    // 1.5] * 0.75, and row 1 is (3 [1, 2] + [3, 4]) / 4 = [1.5, 2.5] upsampled:
    // [1.125, 1.75, 2.25, 1.875]
    let x: T4<F, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2));
    let up = resample::upsample_fir2x(x.clone(), &cache).as_vec();
    let want_r0 = [0.5625, 0.9375, 1.3125, 1.125];
    let want_r1 = [1.125, 1.75, 2.25, 1.875];
    for (a, b) in up[..8].iter().zip(want_r0.iter().chain(&want_r1)) {
        assert!((a - b).abs() < 1e-12, "{up:?}");
    }
    // hand-worked: down of a 4-wide row [1, 2, 3, 4] -> [(0 + 3 + 6 + 3) / 8,
    // (2 + 9 + 12 + 0) / 8] = [1.5, 2.875]; as a 2-D image of identical rows
    // r = [1, 2, 3, 4], the column filter of a constant column gives 7/8 at both borders
    let row = [1.0, 2.0, 3.0, 4.0];
    let img: Vec<F> = (0..4).flat_map(|_| row).collect();
    let x4: T4<F, Cpu> = dev.tensor_from_vec(img, (1, 1, 4, 4));
    let dn = resample::downsample_fir2x(x4, &cache).as_vec();
    let want = [1.5 * 0.875, 2.875 * 0.875, 1.5 * 0.875, 2.875 * 0.875];
    for (a, b) in dn.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{dn:?}");
    }
    // random planes vs upfirdn2d's definition (paddings of upsample2d / downsample2d for
    // a 4-tap filter: (2, 1) and (1, 1)), and vs R3GAN's reference resamplers:
    // conv_transpose2d with 4 * outer(f)/64, stride 2, padding 1 (up) and conv2d with
    // outer(f)/64, stride 2, padding 1 (down), every plane a batch row
    let f = [1.0, 3.0, 3.0, 1.0].map(|v: F| v / 8.0);
    let k2: Vec<F> = (0..16).map(|i| f[i / 4] * f[i % 4]).collect();
    let (b, c, h, w) = (2, 3, 4, 6);
    let mut rng = Rng::new(17);
    let xv = rng.normals(b * c * h * w);
    let x: T4<F, Cpu> = dev.tensor_from_vec(xv.clone(), (b, c, h, w));
    let planes: T4<F, Cpu> = x.clone().reshape_like(&(b * c, 1, h, w));
    let up = resample::upsample_fir2x(x.clone(), &cache).as_vec();
    let dn = resample::downsample_fir2x(x, &cache).as_vec();
    let kt: T4<F, Cpu> = dev.tensor_from_vec(k2.iter().map(|v| 4.0 * v).collect(), (1, 1, 4, 4));
    let kd: T4<F, Cpu> = dev.tensor_from_vec(k2.clone(), (1, 1, 4, 4));
    let up_t = ops::conv_transpose2d(planes.clone(), kt, None, 2, 1, Computed, &cache).as_vec();
    let dn_c = ops::conv2d(planes, kd, None, 2, 1, 1, Computed, &cache).as_vec();
    let (mut up_r, mut dn_r) = (vec![], vec![]);
    for p in xv.chunks(h * w) {
        let (y, ho, wo) = upfirdn2d_ref(p, h, w, &f, 2, 1, (2, 1), 4.0);
        assert_eq!((ho, wo), (2 * h, 2 * w));
        up_r.extend(y);
        let (y, ho, wo) = upfirdn2d_ref(p, h, w, &f, 1, 2, (1, 1), 1.0);
        assert_eq!((ho, wo), (h / 2, w / 2));
        dn_r.extend(y);
    }
    for (name, got, refs) in [("up", &up, [&up_r, &up_t]), ("down", &dn, [&dn_r, &dn_c])] {
        for r in refs {
            assert_eq!(got.len(), r.len(), "{name}");
            for (a, b) in got.iter().zip(r) {
                assert!((a - b).abs() < 1e-12, "{name}: {a} vs {b}");
            }
        }
    }
    // a constant image stays constant in the interior (up: all but the outer ring, which
    // sees 3/4 of it; down: all but the outer ring, 7/8 of it)
    let cst: T4<F, Cpu> = dev.tensor_from_vec(vec![0.5; 36], (1, 1, 6, 6));
    let up = resample::upsample_fir2x(cst.clone(), &cache).as_vec();
    let dn = resample::downsample_fir2x(cst, &cache).as_vec();
    for (v, n, edge) in [(up, 12usize, 0.75), (dn, 3, 0.875)] {
        for i in 0..n {
            for j in 0..n {
                let k = [i, j].iter().filter(|&&t| t == 0 || t == n - 1).count();
                let want = 0.5 * F::powi(edge, k as i32);
                assert!((v[i * n + j] - want).abs() < 1e-12, "({i},{j}) of {n}");
            }
        }
    }
    for kind in 0..2 {
        let cache = IdxCache::default();
        gradcheck(&[2 * 3 * 4 * 6], 41 + kind, move |v| {
            let x = r4(v.into_iter().next().unwrap(), [2, 3, 4, 6]);
            match kind {
                0 => project(resample::upsample_fir2x(x, &cache), 5),
                _ => project(resample::downsample_fir2x(x, &cache), 6),
            }
        });
    }
}

/// Pixel norm: unit mean square over channels, gradients.
#[test]
fn pixel_norm_values_and_grad() {
    let dev = dev();
    let x: T4<F, Cpu> = dev.tensor_from_vec(vec![3.0, 4.0, 0.0, -1.0], (2, 2, 1, 1));
    let y = ops::pixel_norm(x, 1e-8).as_vec();
    // rows [3, 4] (mean square 12.5) and [0, -1] (0.5)
    let want = [
        3.0 / 12.5f64.sqrt(),
        4.0 / 12.5f64.sqrt(),
        0.0,
        -1.0 / 0.5f64.sqrt(),
    ];
    for (a, b) in y.iter().zip(want) {
        assert!((a - b).abs() < 1e-7, "{y:?}");
    }
    gradcheck(&[3 * 5 * 2 * 2], 45, |v| {
        let x = r4(v.into_iter().next().unwrap(), [3, 5, 2, 2]);
        project(ops::pixel_norm(x, 1e-8), 7)
    });
}

/// The layers behind R3GAN's and StyleGAN's official builds (generative basis without
/// bias, FIR resampling, pixel norm, equalised-lr linear): forward values and parameter
/// gradients against central differences.
#[test]
fn official_layers_values_and_param_grads() {
    let dev = dev();
    let lr_mul = 0.01;
    let mut nb = NetBuilder::<F, Cpu>::new(dev.clone(), 8);
    let map = nb.eq_linear("map", 3, 4, lr_mul);
    // stored weights N(0, 1 / lr_mul^2): used as W * lr_mul / sqrt(3)
    let mut layers = vec![Layer::PixelNorm, map.clone(), Layer::LeakyRelu(0.2)];
    layers.extend(nb.gen_basis("basis", 4, 2, 2, 2));
    layers.extend([
        Layer::FirUp,
        nb.conv("c", 2, 2, 3, ConvConfig::default().pad(1)),
        Layer::Tanh,
        Layer::FirDown,
        nb.linear("fc", 2 * 2 * 2, 1, LinearConfig::default()),
    ]);
    let mut net = nb.finish(layers, [3, 1, 1]);
    assert_eq!(net.out_shape, [1, 1, 1]);
    let w = net.params.tensors[0].as_vec();
    let sd = (w.iter().map(|v| v * v).sum::<F>() / w.len() as F).sqrt();
    assert!(sd > 30.0 && sd < 300.0, "stored std {sd}");
    // ScaledLinear alone: x (lr W / sqrt 3)^T + lr b, by hand
    net.params.tensors[1] = dev.tensor_from_vec(vec![10.0, 20.0, 30.0, 40.0], (4,));
    let single = Net {
        layers: vec![map],
        ..net.clone()
    };
    let xin = [0.5, -1.0, 2.0];
    let xt: T4<F, Cpu> = dev.tensor_from_vec(xin.to_vec(), (1, 3, 1, 1));
    let y = single.forward(xt, false).as_vec();
    for (o, yo) in y.iter().enumerate() {
        let dot: F = (0..3).map(|i| w[o * 3 + i] * xin[i]).sum();
        let want = dot * lr_mul / 3f64.sqrt() + lr_mul * 10.0 * (o + 1) as F;
        assert!((yo - want).abs() < 1e-12, "{o}: {yo} vs {want}");
    }
    // the basis alone: output (b, c, i, j) = (W z)_c * basis[c, i, j]; its parameters
    // are 2 (basis (2, 2, 2)) and 3 (weight (2, 4))
    let single = Net {
        layers: net.layers[3..5].to_vec(),
        ..net.clone()
    };
    let z = [0.3, -0.2, 0.7, 1.1];
    let zt: T4<F, Cpu> = dev.tensor_from_vec(z.to_vec(), (1, 4, 1, 1));
    let y = single.forward(zt, false).as_vec();
    let (bas, wl) = (
        net.params.tensors[2].as_vec(),
        net.params.tensors[3].as_vec(),
    );
    assert_eq!(y.len(), 8);
    for (k, yk) in y.iter().enumerate() {
        let c = k / 4;
        let coef: F = (0..4).map(|i| wl[c * 4 + i] * z[i]).sum();
        assert!((yk - coef * bas[k]).abs() < 1e-12, "{k}");
    }
    let mut rng = Rng::new(3);
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
    for (i, g) in an.iter().enumerate() {
        let g = g.as_vec();
        let base = net.params.tensors[i].as_vec();
        // a relative step: the stored mapping weights are ~100
        let h = 1e-6 * base.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for j in 0..base.len() {
            let mut n2 = net.clone();
            let mut v = base.clone();
            v[j] += h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let lp = loss(&n2);
            v[j] -= 2.0 * h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let lm = loss(&n2);
            let num = (lp - lm) / (2.0 * h);
            let err = (num - g[j]).abs() / (1e-3 + num.abs().max(g[j].abs()));
            assert!(
                err < 1e-5,
                "{} [{j}]: {} vs {num}",
                net.params.names[i],
                g[j]
            );
        }
    }
}
