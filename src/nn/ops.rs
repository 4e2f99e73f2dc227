//! Functional layers on run-time shapes, built only from dfdx's differentiable ops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfdx::prelude::*;

use super::defer::Deferral;
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
    /// The gather indices of geometry `key`, built by `build` on first use.
    pub(super) fn get(
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

/// Which gradients a convolution's backward computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParamGrads {
    /// The input's, the weight's and the bias's.
    #[default]
    Computed,
    /// The input's only: the weight and bias are held fixed (D while G trains; see
    /// [`super::Net::forward_frozen`]), their gradients are neither computed nor
    /// allocated. The CPU op skips the weight gradient's GEMM, its im2col and the bias
    /// sums; the composed path (other devices) computes them anyway.
    Skipped,
    /// A loss pass's: the input's and the bias's; the weight's is left to the tangent
    /// pass that completes the [`Deferral`] (CPU ops only; see [`super::defer`]).
    Deferred(Deferral),
    /// A tangent pass's: the weight's, of this pass and of the loss pass that deferred
    /// it, in one product; nothing reaches the input (see [`super::defer`]).
    Fused(Deferral),
}

impl ParamGrads {
    /// What ops off the input's path (a projection head's label embedding) compute: as
    /// in an ordinary pass where this pass defers or fuses.
    pub fn off_path(&self) -> Self {
        match self {
            Self::Deferred(_) | Self::Fused(_) => Self::Computed,
            other => other.clone(),
        }
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
    pg: ParamGrads,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::conv2d(x, w, b, stride, pad, groups, pg, cache)
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
    pg: ParamGrads,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::conv_transpose2d(x, w, b, stride, pad, 1, pg, cache)
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
    D::conv_transpose2d(x, w, b, stride, pad, groups, ParamGrads::Computed, cache)
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
