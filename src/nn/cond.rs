//! Instance normalisation and per-channel modulation (AdaIN, conditional / SELF-MOD BN).

use dfdx::prelude::*;

use super::{Dev, Float, T4};

/// Instance norm without affine parameters: each `(b, c)` plane normalised with its own
/// mean and biased variance over `(H, W)`.
pub fn instance_norm<E: Float, D: Dev<E>, T: Tape<E, D>>(x: T4<E, D, T>, eps: f64) -> T4<E, D, T> {
    let s = *x.shape();
    let mean = x.retaped::<T>().mean::<(usize, usize), Axes2<2, 3>>();
    let centered = x - mean.broadcast_like::<_, Axes2<2, 3>>(&s);
    let var = centered
        .retaped::<T>()
        .square()
        .mean::<(usize, usize), Axes2<2, 3>>();
    let inv = (var + E::of(eps)).sqrt().recip();
    centered * inv.broadcast_like::<_, Axes2<2, 3>>(&s)
}

/// `x * (1 + gain) + bias` with per-sample, per-channel `gain`, `bias` of shape `(B, C, 1, 1)`.
pub fn modulate<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gain: T4<E, D, T>,
    bias: T4<E, D, T>,
) -> T4<E, D, T> {
    let s = *x.shape();
    let (b, c) = (s.0, s.1);
    let g = (gain.reshape_like(&(b, c)) + E::of(1.0)).broadcast_like::<_, Axes2<2, 3>>(&s);
    let bb = bias
        .reshape_like(&(b, c))
        .broadcast_like::<_, Axes2<2, 3>>(&s);
    x * g + bb
}
