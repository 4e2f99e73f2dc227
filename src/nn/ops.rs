//! Functional layers on run-time shapes, built only from dfdx's differentiable ops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfdx::prelude::*;

use super::fused::Geom;
use super::{Dev, Float, T1, T2, T4};

type IdxMap<D> = HashMap<[usize; 9], Tensor<(usize,), usize, D>>;

/// Cache of gather indices (im2col / col2im), keyed by the op's geometry.
/// Shared by every layer of one network; cheap to clone (an `Arc`).
pub struct IdxCache<D: Storage<usize>> {
    map: Arc<Mutex<IdxMap<D>>>,
}

impl<D: Storage<usize>> Clone for IdxCache<D> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<D: Storage<usize>> Default for IdxCache<D> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<D: Storage<usize> + TensorFromVec<usize>> IdxCache<D> {
    fn get(
        &self,
        dev: &D,
        key: [usize; 9],
        build: impl FnOnce() -> Vec<usize>,
    ) -> Tensor<(usize,), usize, D> {
        let mut m = self.map.lock().unwrap();
        m.entry(key)
            .or_insert_with(|| {
                let v = build();
                let n = v.len();
                dev.tensor_from_vec(v, (n,))
            })
            .clone()
    }
}

/// Output size of a convolution along one axis.
pub fn conv_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    assert!(
        size + 2 * pad >= k,
        "kernel {k} larger than padded input {size}+2*{pad}"
    );
    (size + 2 * pad - k) / stride + 1
}

/// Output size of a transposed convolution along one axis.
pub fn conv_t_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size - 1) * stride + k - 2 * pad
}

/// Flatten and append one zero slot (index `n`), the target of out-of-range gathers.
fn flat_with_zero<E: Float, D: Dev<E>, S: Shape, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> T1<E, D, T> {
    let n = x.shape().num_elements();
    let dev = x.device().clone();
    let xf = x.reshape_like(&(n,));
    let z: T1<E, D> = dev.zeros_like(&(1usize,));
    (xf, z).concat_along(Axis::<0>)
}

/// `x (B, in) @ w^T (in, out) + b`, weight `(out, in)` as in PyTorch.
pub fn linear<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    w: T2<E, D, T>,
    b: Option<T1<E, D, T>>,
) -> T2<E, D, T> {
    let (bsz, _) = *x.shape();
    let (out, _) = *w.shape();
    let y = x.matmul(w.permute::<(usize, usize), Axes2<1, 0>>());
    match b {
        Some(b) => y + b.broadcast_like::<(usize, usize), Axis<0>>(&(bsz, out)),
        None => y,
    }
}

/// Add a per-channel bias `(C,)` to `(B, C, H, W)`.
pub fn add_channel_bias<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    b: T1<E, D, T>,
) -> T4<E, D, T> {
    let s = *x.shape();
    x + b.broadcast_like::<(usize, usize, usize, usize), Axes3<0, 2, 3>>(&s)
}

/// im2col from dfdx ops (any device): a cached gather index into the flat input with one
/// zero slot for padding; dfdx derives the scatter-add backward. Layout as [`Dev::im2col`].
pub fn im2col_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    g: Geom,
    cache: &IdxCache<D>,
) -> T1<E, D, T> {
    assert_eq!(
        *x.shape(),
        (g.b, g.c, g.h, g.w),
        "im2col: shape vs geometry"
    );
    let dev = x.device().clone();
    let n = g.img_len();
    let key = [0, g.b, g.c, g.h, g.w, g.kh, g.kw, g.stride, g.pad];
    let idx = cache.get(&dev, key, || {
        let mut v = Vec::with_capacity(g.cols_len());
        for bi in 0..g.b {
            for c in 0..g.c {
                let base = (bi * g.c + c) * g.h * g.w;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        for oy in 0..g.ho {
                            let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                            for ox in 0..g.wo {
                                let ix = (ox * g.stride + kj) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    v.push(n);
                                } else {
                                    v.push(base + iy as usize * g.w + ix as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    });
    flat_with_zero(x).gather(idx)
}

/// col2im from dfdx ops (any device): a gather of the at most `ceil(k/s)^2` column values
/// that land on every image pixel, and a sum. Layout as [`Dev::im2col`].
pub fn col2im_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    cols: T1<E, D, T>,
    g: Geom,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    assert_eq!(cols.shape().0, g.cols_len(), "col2im: length vs geometry");
    let (kh, kw, stride, pad) = (g.kh, g.kw, g.stride, g.pad);
    let ty = kh.div_ceil(stride);
    let tx = kw.div_ceil(stride);
    let dev = cols.device().clone();
    let n = g.cols_len();
    let key = [1, g.b, g.c, g.ho, g.wo, kh, kw, stride, pad];
    let idx = cache.get(&dev, key, || {
        // candidates (kernel offset, column position) along one axis for image position o
        let cands = |o: usize, k: usize, size: usize, t: usize| {
            let mut c: Vec<Option<(usize, usize)>> = Vec::with_capacity(t);
            for ki in 0..k {
                let num = o as isize + pad as isize - ki as isize;
                if num >= 0
                    && num % stride as isize == 0
                    && ((num / stride as isize) as usize) < size
                {
                    c.push(Some((ki, (num / stride as isize) as usize)));
                }
            }
            assert!(c.len() <= t);
            c.resize(t, None);
            c
        };
        let ys: Vec<_> = (0..g.h).map(|o| cands(o, kh, g.ho, ty)).collect();
        let xs: Vec<_> = (0..g.w).map(|o| cands(o, kw, g.wo, tx)).collect();
        let mut v = Vec::with_capacity(g.img_len() * ty * tx);
        for bi in 0..g.b {
            for co in 0..g.c {
                for cy in ys.iter() {
                    for cx in xs.iter() {
                        for a in cy {
                            for bb in cx {
                                match (a, bb) {
                                    (Some((ki, iy)), Some((kj, ix))) => v.push(
                                        (((bi * g.c + co) * kh + ki) * kw + kj) * g.ho * g.wo
                                            + iy * g.wo
                                            + ix,
                                    ),
                                    _ => v.push(n),
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    });
    flat_with_zero(cols)
        .gather(idx)
        .reshape_like(&(g.img_len(), ty * tx))
        .sum::<(usize,), Axis<1>>()
        .reshape_like(&(g.b, g.c, g.h, g.w))
}

/// 2-D convolution (cross-correlation, as PyTorch's `Conv2d`). `x (B, Cin, H, W)`,
/// `w (Cout, Cin/groups, k, k)`, optional bias `(Cout,)`; zero padding `pad`. Runs
/// [`Dev::conv2d`]: on the CPU one custom op of whole-batch GEMMs ([`super::conv`]),
/// elsewhere [`conv2d_composed`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T4<E, D, T>,
    b: Option<T1<E, D, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::conv2d(x, w, b, stride, pad, groups, cache)
}

/// Transposed 2-D convolution (as PyTorch's `ConvTranspose2d`, weight `(Cin, Cout, k, k)`,
/// one group). Runs [`Dev::conv_transpose2d`]: on the CPU one custom op of whole-batch
/// GEMMs ([`super::conv`]), elsewhere [`conv_transpose2d_composed`].
pub fn conv_transpose2d<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T4<E, D, T>,
    b: Option<T1<E, D, T>>,
    stride: usize,
    pad: usize,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::conv_transpose2d(x, w, b, stride, pad, 1, cache)
}

/// Grouped transposed 2-D convolution, weight `(Cin, Cout/groups, k, k)` (as PyTorch's
/// `ConvTranspose2d(groups=...)`), e.g. the input gradient of a grouped [`conv2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_grouped<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T4<E, D, T>,
    b: Option<T1<E, D, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::conv_transpose2d(x, w, b, stride, pad, groups, cache)
}

/// 2-D convolution from dfdx ops (any device): im2col ([`Dev::im2col`]) + a batched
/// matmul broadcasting the weight over the batch. Arguments as [`conv2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T4<E, D, T>,
    b: Option<T1<E, D, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (bsz, cin, _, _) = *x.shape();
    let (cout, cpg, kh, kw) = *w.shape();
    assert_eq!(
        cin,
        cpg * groups,
        "conv2d: {cin} input channels, weight wants {cpg}x{groups}"
    );
    assert_eq!(
        cout % groups,
        0,
        "conv2d: {cout} outputs not divisible by {groups} groups"
    );
    let g = Geom::new(*x.shape(), kh, kw, stride, pad);
    let (ho, wo) = (g.ho, g.wo);
    let kk = cpg * kh * kw;
    let cols = if kh == 1 && kw == 1 && stride == 1 && pad == 0 {
        // a 1x1 convolution's columns are the input itself
        x.reshape_like(&(bsz, groups, kk, ho * wo))
    } else {
        D::im2col(x, g, cache).reshape_like(&(bsz, groups, kk, ho * wo))
    };
    let og = cout / groups;
    let wm = w
        .reshape_like(&(groups, og, kk))
        .broadcast_like::<(usize, usize, usize, usize), Axis<0>>(&(bsz, groups, og, kk));
    let y = wm.matmul(cols).reshape_like(&(bsz, cout, ho, wo));
    match b {
        Some(b) => add_channel_bias(y, b),
        None => y,
    }
}

/// Transposed 2-D convolution from dfdx ops (any device): per group a dense batched matmul
/// `(Cout/groups*k*k, Cin/groups) @ (Cin/groups, H*W)` followed by col2im
/// ([`Dev::col2im`], the adjoint of the im2col of the output image). Arguments as
/// [`conv_transpose2d_grouped`].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T4<E, D, T>,
    b: Option<T1<E, D, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (bsz, cin, h, wd) = *x.shape();
    let (cin2, cog, kh, kw) = *w.shape();
    assert_eq!(
        cin, cin2,
        "conv_transpose2d: {cin} input channels, weight wants {cin2}"
    );
    assert_eq!(
        cin % groups,
        0,
        "conv_transpose2d: {cin} inputs not divisible by {groups} groups"
    );
    let cout = cog * groups;
    let ho = conv_t_out(h, kh, stride, pad);
    let wo = conv_t_out(wd, kw, stride, pad);
    let g = Geom::new((bsz, cout, ho, wo), kh, kw, stride, pad);
    assert_eq!((g.ho, g.wo), (h, wd), "conv_transpose2d: geometry");
    let (cig, okk) = (cin / groups, cog * kh * kw);
    let xm = x.reshape_like(&(bsz, groups, cig, h * wd));
    let wm = w
        .reshape_like(&(groups, cig, okk))
        .permute::<(usize, usize, usize), Axes3<0, 2, 1>>()
        .broadcast_like::<(usize, usize, usize, usize), Axis<0>>(&(bsz, groups, okk, cig));
    // (B, groups, okk, H*W) is the column layout (B, Cout, kh, kw, H, W) of Dev::col2im
    let cols = wm.matmul(xm);
    let y = D::col2im(cols.reshape_like(&(g.cols_len(),)), g, cache);
    match b {
        Some(b) => add_channel_bias(y, b),
        None => y,
    }
}

/// Nearest-neighbour 2x upsampling ([`Dev::upsample_nearest2x`]: one parallel op on the
/// CPU, [`upsample_nearest2x_composed`] elsewhere).
pub fn upsample_nearest2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::upsample_nearest2x(x, cache)
}

/// Nearest-neighbour 2x upsampling from dfdx ops (a gather).
pub fn upsample_nearest2x_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (b, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let idx = cache.get(&dev, [2, b, c, h, w, 0, 0, 0, 0], || {
        let mut v = Vec::with_capacity(b * c * h * w * 4);
        for bc in 0..b * c {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    v.push((bc * h + oy / 2) * w + ox / 2);
                }
            }
        }
        v
    });
    let n = b * c * h * w;
    x.reshape_like(&(n,))
        .gather(idx)
        .reshape_like(&(b, c, 2 * h, 2 * w))
}

/// The two source taps (index, weight) of output position `o` of a 2x bilinear
/// upsampling along an axis of `size` (half-pixel centres, edges clamped; PyTorch's
/// `align_corners=False`).
pub(crate) fn bilinear_taps(o: usize, size: usize) -> [(usize, f64); 2] {
    let s = ((o as f64 + 0.5) / 2.0 - 0.5).max(0.0);
    let i0 = (s.floor() as usize).min(size - 1);
    let i1 = (i0 + 1).min(size - 1);
    let l = s - i0 as f64;
    [(i0, 1.0 - l), (i1, l)]
}

/// Bilinear 2x upsampling (half-pixel centres, as PyTorch's `align_corners=False`;
/// [`Dev::upsample_bilinear2x`]: one parallel op on the CPU,
/// [`upsample_bilinear2x_composed`] elsewhere).
pub fn upsample_bilinear2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::upsample_bilinear2x(x, cache)
}

/// Bilinear 2x upsampling from dfdx ops: a gather of the 4 taps of every output pixel, a
/// product with constant weights, a sum.
pub fn upsample_bilinear2x_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (b, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let (ho, wo) = (2 * h, 2 * w);
    let idx = cache.get(&dev, [3, b, c, h, w, 0, 0, 0, 0], || {
        let mut v = Vec::with_capacity(b * c * ho * wo * 4);
        for bc in 0..b * c {
            for oy in 0..ho {
                let ty = bilinear_taps(oy, h);
                for ox in 0..wo {
                    let tx = bilinear_taps(ox, w);
                    for (iy, _) in ty {
                        for (ix, _) in tx {
                            v.push((bc * h + iy) * w + ix);
                        }
                    }
                }
            }
        }
        v
    });
    let mut wts = Vec::with_capacity(ho * wo * 4);
    for oy in 0..ho {
        let ty = bilinear_taps(oy, h);
        for ox in 0..wo {
            let tx = bilinear_taps(ox, w);
            for (_, a) in ty {
                for (_, bb) in tx {
                    wts.push(E::of(a * bb));
                }
            }
        }
    }
    let wt: Tensor<(usize, usize), E, D> = dev.tensor_from_vec(wts, (ho * wo, 4));
    let n = b * c * h * w;
    let g = x
        .reshape_like(&(n,))
        .gather(idx)
        .reshape_like(&(b * c, ho * wo, 4usize));
    let s = *g.shape();
    (g * wt.broadcast_like::<_, Axis<0>>(&s))
        .sum::<(usize, usize), Axis<2>>()
        .reshape_like(&(b, c, ho, wo))
}

/// 2x2 average pooling, stride 2 (H and W must be even; [`Dev::avg_pool2x2`]: one
/// parallel op on the CPU, [`avg_pool2x2_composed`] elsewhere).
pub fn avg_pool2x2<E: Float, D: Dev<E>, T: Tape<E, D>>(x: T4<E, D, T>) -> T4<E, D, T> {
    D::avg_pool2x2(x)
}

/// 2x2 average pooling from dfdx ops (a reshape and a sum).
pub fn avg_pool2x2_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(x: T4<E, D, T>) -> T4<E, D, T> {
    let (b, c, h, w) = *x.shape();
    assert!(
        h % 2 == 0 && w % 2 == 0,
        "avg_pool2x2 needs even sizes, got {h}x{w}"
    );
    x.reshape_like(&(b, c, h / 2, 2usize, w / 2, 2usize))
        .sum::<(usize, usize, usize, usize), Axes2<3, 5>>()
        * E::of(0.25)
}

/// Batch norm in training mode: normalises with the batch statistics over (B, H, W) and
/// returns them too (mean, biased variance) for the running averages
/// ([`Dev::batch_norm_train`]: one fused parallel op on the CPU,
/// [`batch_norm_train_composed`] elsewhere).
pub fn batch_norm_train<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gamma: T1<E, D, T>,
    beta: T1<E, D, T>,
    eps: f64,
) -> (T4<E, D, T>, Vec<E>, Vec<E>) {
    D::batch_norm_train(x, gamma, beta, eps)
}

/// [`batch_norm_train`] from dfdx ops.
pub fn batch_norm_train_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gamma: T1<E, D, T>,
    beta: T1<E, D, T>,
    eps: f64,
) -> (T4<E, D, T>, Vec<E>, Vec<E>) {
    let s = *x.shape();
    let mean = x.retaped::<T>().mean::<(usize,), Axes3<0, 2, 3>>();
    let mean_v = mean.as_vec();
    let centered = x - mean.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    let var = centered
        .retaped::<T>()
        .square()
        .mean::<(usize,), Axes3<0, 2, 3>>();
    let var_v = var.as_vec();
    let inv = (var + E::of(eps)).sqrt().recip();
    let y = centered * inv.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    let y = y * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    (add_channel_bias(y, beta), mean_v, var_v)
}

/// Batch norm in evaluation mode with given running statistics ([`Dev::batch_norm_eval`]:
/// one parallel op on the CPU, [`batch_norm_eval_composed`] elsewhere).
pub fn batch_norm_eval<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gamma: T1<E, D, T>,
    beta: T1<E, D, T>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> T4<E, D, T> {
    D::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)
}

/// [`batch_norm_eval`] from dfdx ops.
pub fn batch_norm_eval_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gamma: T1<E, D, T>,
    beta: T1<E, D, T>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> T4<E, D, T> {
    let s = *x.shape();
    let dev = x.device().clone();
    let c = s.1;
    let rm: T1<E, D> = dev.tensor_from_vec(running_mean.iter().map(|&v| E::of(-v)).collect(), (c,));
    let inv: T1<E, D> = dev.tensor_from_vec(
        running_var
            .iter()
            .map(|&v| E::of(1.0 / (v + eps).sqrt()))
            .collect(),
        (c,),
    );
    let y = x + rm.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    let y = y * inv.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    let y = y * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s);
    add_channel_bias(y, beta)
}

/// LeakyReLU with slope `a` for negative inputs.
pub fn leaky_relu<E: Float, D: Dev<E>, S: Shape, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    a: f64,
) -> Tensor<S, E, D, T> {
    x.prelu(E::of(a))
}

/// softplus(x) = relu(x) + ln(1 + exp(-|x|)), stable for large |x|.
pub fn softplus<E: Float, D: Dev<E>, S: Shape, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let r = x.retaped::<T>().relu();
    let l = (x.abs().negate().exp() + E::of(1.0)).ln();
    r + l
}

/// Taps of a separable resampling along one axis: for every output coordinate, its
/// `(input index, weight)` pairs (a tap outside the input has weight 0 and index 0).
type AxisTaps = Vec<Vec<(usize, f64)>>;

/// The 4-tap low-pass filter `[1, 3, 3, 1] / 8` of StyleGAN2's and R3GAN's resampling
/// (R3GAN: `[1, 2, 1]` convolved with `[1, 1]`; the 2-D kernel is its outer product).
pub const FIR_1331: [f64; 4] = [0.125, 0.375, 0.375, 0.125];

/// Taps of `upfirdn2d` with `up = 2`, the filter `FIR_1331` times the gain 2 per axis and
/// padding `(2, 1)`: output `2i` is `3/4 x[i] + 1/4 x[i-1]`, output `2i+1` is
/// `3/4 x[i] + 1/4 x[i+1]`, zero outside the input.
fn fir_up_taps(size: usize) -> AxisTaps {
    (0..2 * size)
        .map(|o| {
            let i = o / 2;
            // zero-inserted signal u[2i] = x[i]; out[o] = sum_j u[o + j - 2] * 2 f[j]
            (0..4)
                .filter_map(|j| {
                    let k = o as isize + j as isize - 2;
                    (k >= 0 && k % 2 == 0 && ((k / 2) as usize) < size)
                        .then(|| ((k / 2) as usize, 2.0 * FIR_1331[j]))
                })
                .chain(std::iter::repeat((i.min(size - 1), 0.0)))
                .take(2)
                .collect()
        })
        .collect()
}

/// Taps of `upfirdn2d` with `down = 2` and padding `(1, 1)`: output `o` is
/// `(x[2o-1] + 3 x[2o] + 3 x[2o+1] + x[2o+2]) / 8`, zero outside the input.
fn fir_down_taps(size: usize) -> AxisTaps {
    (0..size / 2)
        .map(|o| {
            (0..4)
                .map(|j| {
                    let k = 2 * o as isize + j as isize - 1;
                    if k >= 0 && (k as usize) < size {
                        (k as usize, FIR_1331[j])
                    } else {
                        (0, 0.0)
                    }
                })
                .collect()
        })
        .collect()
}

/// A separable resampling of every channel plane with fixed per-axis taps: a cached gather
/// of the `ty * tx` taps of every output pixel, a product with the constant weights, a sum.
/// Linear in `x`; `kind` keys the gather cache.
fn resample_taps<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    kind: usize,
    ty: &AxisTaps,
    tx: &AxisTaps,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (b, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let (ho, wo) = (ty.len(), tx.len());
    let k = ty[0].len() * tx[0].len();
    let idx = cache.get(&dev, [kind, b, c, h, w, 0, 0, 0, 0], || {
        let mut v = Vec::with_capacity(b * c * ho * wo * k);
        for bc in 0..b * c {
            for ry in ty {
                for rx in tx {
                    for &(iy, _) in ry {
                        for &(ix, _) in rx {
                            v.push((bc * h + iy) * w + ix);
                        }
                    }
                }
            }
        }
        v
    });
    let mut wts = Vec::with_capacity(ho * wo * k);
    for ry in ty {
        for rx in tx {
            for &(_, a) in ry {
                for &(_, bb) in rx {
                    wts.push(E::of(a * bb));
                }
            }
        }
    }
    let wt: T2<E, D> = dev.tensor_from_vec(wts, (ho * wo, k));
    let g = x
        .reshape_like(&(b * c * h * w,))
        .gather(idx)
        .reshape_like(&(b * c, ho * wo, k));
    let s = *g.shape();
    (g * wt.broadcast_like::<_, Axis<0>>(&s))
        .sum::<(usize, usize), Axis<2>>()
        .reshape_like(&(b, c, ho, wo))
}

/// 2x upsampling as StyleGAN2's / R3GAN's `upsample2d`: zero insertion, then the
/// `[1, 3, 3, 1]` low-pass filter with gain 4 (zero padding at the borders). Equal to
/// `conv_transpose2d` of every plane with the 4x4 kernel `outer([1,3,3,1])/16`, stride 2,
/// padding 1. Linear in `x`.
pub fn upsample_fir2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (_, _, h, w) = *x.shape();
    resample_taps(x, 40, &fir_up_taps(h), &fir_up_taps(w), cache)
}

/// 2x downsampling as StyleGAN2's / R3GAN's `downsample2d`: the `[1, 3, 3, 1]` low-pass
/// filter, then every second pixel (zero padding at the borders). Equal to `conv2d` of
/// every plane with the 4x4 kernel `outer([1,3,3,1])/64`, stride 2, padding 1. Linear in
/// `x`; H and W must be even.
pub fn downsample_fir2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (_, _, h, w) = *x.shape();
    assert!(
        h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0,
        "downsample_fir2x needs even sizes, got {h}x{w}"
    );
    resample_taps(x, 41, &fir_down_taps(h), &fir_down_taps(w), cache)
}

/// StyleGAN's `normalize_2nd_moment` over channels: `x / sqrt(mean_c(x^2) + eps)`.
pub fn pixel_norm<E: Float, D: Dev<E>, T: Tape<E, D>>(x: T4<E, D, T>, eps: f64) -> T4<E, D, T> {
    let s = *x.shape();
    let ms = x
        .retaped::<T>()
        .square()
        .mean::<(usize, usize, usize), Axis<1>>();
    let r = (ms + E::of(eps)).sqrt().recip();
    x * r.broadcast_like::<_, Axis<1>>(&s)
}
