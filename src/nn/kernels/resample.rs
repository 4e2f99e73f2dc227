//! The resampling kernels: 2x2 average pooling, 2x nearest / bilinear up-sampling and
//! the separable FIR up/down-sampling, each one plane op (see the parent module for the
//! conventions).

use dfdx::prelude::*;

use super::{add_into, planes, take, values, zeroed};
use super::{Float, T4};

/// A resampling op `(B, C, H, W) -> (B, C, Ho, Wo)` that works plane by plane:
/// `fwd(src_plane, dst_plane)` overwrites the output plane, `bwd(dy_plane, dx_plane)` adds
/// the adjoint into the input-gradient plane.
fn plane_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    (ho, wo): (usize, usize),
    fwd: impl Fn(&[E], &mut [E]) + Sync + Send,
    bwd: impl Fn(&[E], &mut [E]) + Sync + Send + 'static,
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (b, c, h, w) = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let dev = x.device().clone();
    let xv = values(&x);
    let mut y = zeroed(b * c * ho * wo);
    planes(&xv, h * w, &mut y, ho * wo, |_, s, d| fwd(s, d));
    drop(xv);
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, (b, c, ho, wo));
    let (xg, og) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let mut dx = zeroed(b * c * h * w);
        planes(
            &take(grads.get_or_alloc_mut(&og)?),
            ho * wo,
            &mut dx,
            h * w,
            |_, s, d| bwd(s, d),
        );
        add_into(grads.get_or_alloc_mut(&xg)?, &dx);
        Ok(())
    });
    out.put_tape(tape)
}

/// 2x2 average pooling, stride 2, as one op (H and W even).
pub fn avg_pool2x2_op<E: Float, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (_, _, h, w) = *x.shape();
    assert!(
        h % 2 == 0 && w % 2 == 0,
        "avg_pool2x2 needs even sizes, got {h}x{w}"
    );
    let (ho, wo) = (h / 2, w / 2);
    let q = E::of(0.25);
    plane_op(
        x,
        (ho, wo),
        move |s, d| {
            for oy in 0..ho {
                let (r0, r1) = (&s[2 * oy * w..], &s[(2 * oy + 1) * w..]);
                for ox in 0..wo {
                    let i = 2 * ox;
                    d[oy * wo + ox] = (r0[i] + r0[i + 1] + r1[i] + r1[i + 1]) * q;
                }
            }
        },
        move |dy, dx| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy[oy * wo + ox] * q;
                    for iy in [2 * oy, 2 * oy + 1] {
                        dx[iy * w + 2 * ox] += g;
                        dx[iy * w + 2 * ox + 1] += g;
                    }
                }
            }
        },
    )
}

/// Nearest-neighbour 2x up-sampling as one op.
pub fn upsample_nearest2x_op<E: Float, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (_, _, h, w) = *x.shape();
    let (ho, wo) = (2 * h, 2 * w);
    plane_op(
        x,
        (ho, wo),
        move |s, d| {
            for oy in 0..ho {
                let src = &s[(oy / 2) * w..(oy / 2 + 1) * w];
                for (ox, o) in d[oy * wo..(oy + 1) * wo].iter_mut().enumerate() {
                    *o = src[ox / 2];
                }
            }
        },
        move |dy, dx| {
            for oy in 0..ho {
                let dst = &mut dx[(oy / 2) * w..(oy / 2 + 1) * w];
                for (ox, &g) in dy[oy * wo..(oy + 1) * wo].iter().enumerate() {
                    dst[ox / 2] += g;
                }
            }
        },
    )
}

/// The two taps `(index, weight)` of every output position of a 2x bilinear up-sampling
/// along an axis of `size` (see [`super::resample::bilinear_taps`]).
fn taps<E: Float>(size: usize) -> Vec<[(usize, E); 2]> {
    (0..2 * size)
        .map(|o| crate::nn::resample::bilinear_taps(o, size).map(|(i, wt)| (i, E::of(wt))))
        .collect()
}

/// Bilinear 2x up-sampling (half-pixel centres, PyTorch's `align_corners=False`) as one
/// op: separable, rows first.
pub fn upsample_bilinear2x_op<E: Float, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (_, _, h, w) = *x.shape();
    let (ho, wo) = (2 * h, 2 * w);
    let ty = taps::<E>(h);
    let tx = taps::<E>(w);
    let (ty2, tx2) = (ty.clone(), tx.clone());
    plane_op(
        x,
        (ho, wo),
        move |s, d| {
            for (oy, &[(y0, a0), (y1, a1)]) in ty.iter().enumerate() {
                let (r0, r1) = (&s[y0 * w..(y0 + 1) * w], &s[y1 * w..(y1 + 1) * w]);
                for (ox, &[(x0, b0), (x1, b1)]) in tx.iter().enumerate() {
                    d[oy * wo + ox] =
                        a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
                }
            }
        },
        move |dy, dx| {
            for (oy, &[(y0, a0), (y1, a1)]) in ty2.iter().enumerate() {
                for (ox, &[(x0, b0), (x1, b1)]) in tx2.iter().enumerate() {
                    let g = dy[oy * wo + ox];
                    dx[y0 * w + x0] += g * a0 * b0;
                    dx[y0 * w + x1] += g * a0 * b1;
                    dx[y1 * w + x0] += g * a1 * b0;
                    dx[y1 * w + x1] += g * a1 * b1;
                }
            }
        },
    )
}

/// A resampling with separable fixed taps (`ty[oy]`, `tx[ox]`: the input rows / columns
/// and weights of each output row / column; zero weights are padding) as one plane op:
/// output `(oy, ox)` is the sum over the tap pairs of `a * b * x[iy, ix]`, taps in order.
pub fn separable_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    ty: &[Vec<(usize, f64)>],
    tx: &[Vec<(usize, f64)>],
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (_, _, _, w) = *x.shape();
    let (ho, wo) = (ty.len(), tx.len());
    // per output pixel, its (input offset, weight) pairs: `start[o]..start[o + 1]`
    let (mut start, mut taps) = (vec![0], vec![]);
    for ry in ty {
        for rx in tx {
            for &(iy, a) in ry {
                for &(ix, b) in rx {
                    if a * b != 0.0 {
                        taps.push((iy * w + ix, E::of(a * b)));
                    }
                }
            }
            start.push(taps.len());
        }
    }
    let (start, taps) = (std::sync::Arc::new(start), std::sync::Arc::new(taps));
    let (start2, taps2) = (start.clone(), taps.clone());
    plane_op(
        x,
        (ho, wo),
        move |s, d| {
            for (o, v) in d.iter_mut().enumerate() {
                *v = taps[start[o]..start[o + 1]]
                    .iter()
                    .fold(E::default(), |acc, &(i, a)| acc + a * s[i]);
            }
        },
        move |dy, dx| {
            for (o, &g) in dy.iter().enumerate() {
                for &(i, a) in &taps2[start2[o]..start2[o + 1]] {
                    dx[i] += g * a;
                }
            }
        },
    )
}
