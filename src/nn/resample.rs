//! Resampling layers on run-time shapes: 2x nearest / bilinear upsampling, 2x2 average
//! pooling, and the `[1, 3, 3, 1]` FIR up/down-sampling of StyleGAN2 and R3GAN. Each
//! public op dispatches to [`Dev`] (one parallel op on the CPU, see [`super::kernels`]);
//! the `_composed` versions build it from dfdx gathers and sums (any device).

use dfdx::prelude::*;

use super::ops::IdxCache;
use super::{Dev, Float, T2, T4};

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

/// Taps of a separable resampling along one axis: for every output coordinate, its
/// `(input index, weight)` pairs (a tap outside the input has weight 0 and index 0).
pub(super) type AxisTaps = Vec<Vec<(usize, f64)>>;

/// The 4-tap low-pass filter `[1, 3, 3, 1] / 8` of StyleGAN2's and R3GAN's resampling
/// (R3GAN: `[1, 2, 1]` convolved with `[1, 1]`; the 2-D kernel is its outer product).
pub const FIR_1331: [f64; 4] = [0.125, 0.375, 0.375, 0.125];

/// Taps of `upfirdn2d` with `up = 2`, the filter `FIR_1331` times the gain 2 per axis and
/// padding `(2, 1)`: output `2i` is `3/4 x[i] + 1/4 x[i-1]`, output `2i+1` is
/// `3/4 x[i] + 1/4 x[i+1]`, zero outside the input.
pub(super) fn fir_up_taps(size: usize) -> AxisTaps {
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
pub(super) fn fir_down_taps(size: usize) -> AxisTaps {
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
/// padding 1. Linear in `x`. [`Dev::upsample_fir2x`]: one parallel op on the CPU,
/// [`upsample_fir2x_composed`] elsewhere.
pub fn upsample_fir2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    D::upsample_fir2x(x, cache)
}

/// [`upsample_fir2x`] from dfdx ops (a gather of the taps, a product, a sum).
pub fn upsample_fir2x_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (_, _, h, w) = *x.shape();
    resample_taps(x, 40, &fir_up_taps(h), &fir_up_taps(w), cache)
}

/// 2x downsampling as StyleGAN2's / R3GAN's `downsample2d`: the `[1, 3, 3, 1]` low-pass
/// filter, then every second pixel (zero padding at the borders). Equal to `conv2d` of
/// every plane with the 4x4 kernel `outer([1,3,3,1])/64`, stride 2, padding 1. Linear in
/// `x`; H and W must be even. [`Dev::downsample_fir2x`]: one parallel op on the CPU,
/// [`downsample_fir2x_composed`] elsewhere.
pub fn downsample_fir2x<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (_, _, h, w) = *x.shape();
    assert!(
        h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0,
        "downsample_fir2x needs even sizes, got {h}x{w}"
    );
    D::downsample_fir2x(x, cache)
}

/// [`downsample_fir2x`] from dfdx ops (a gather of the taps, a product, a sum).
pub fn downsample_fir2x_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    cache: &IdxCache<D>,
) -> T4<E, D, T> {
    let (_, _, h, w) = *x.shape();
    resample_taps(x, 41, &fir_down_taps(h), &fir_down_taps(w), cache)
}
