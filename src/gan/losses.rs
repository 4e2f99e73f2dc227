//! Adversarial losses and zero-centred gradient penalties.
//!
//! Losses are functions of the discriminator's outputs only, so they are evaluated on the
//! host in f64 together with their derivatives `c_j = dL/dD_j`; the parameter gradient is
//! then the gradient of the surrogate `sum_j c_j D(x_j)` (one dfdx backward), which equals
//! the loss gradient by the chain rule.
//!
//! Penalties: `R(theta) = mean_i ||grad_x D(x_i)||^2`; the D objective gets `gamma/2 * R`.
//! dfdx has no double backward, so `grad_theta R = (2/B) sum_i H_i g_i` (with
//! `g_i = grad_x D(x_i)` held fixed) is taken as a central finite difference of first-order
//! gradients: `(grad_theta S(x + eps g) - grad_theta S(x - eps g)) / (B eps)` with
//! `S = sum_i D(x_i)`, error O(eps^2). `eps = delta / rms(g)`, so the input moves by an
//! RMS of `delta` per element whatever the gradient's scale.

use dfdx::prelude::*;

use super::config::LossKind;
use crate::nn::{Dev, Float, Net, Side, T1, T4};

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// D loss and its derivatives w.r.t. `D(real)` and `D(fake)` (paired by index).
pub fn d_loss(kind: LossKind, dr: &[f64], df: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let b = dr.len() as f64;
    assert_eq!(dr.len(), df.len());
    let (mut l, mut cr, mut cf) = (0.0, vec![0.0; dr.len()], vec![0.0; df.len()]);
    for i in 0..dr.len() {
        match kind {
            LossKind::Ns => {
                l += softplus(-dr[i]) + softplus(df[i]);
                cr[i] = -sigmoid(-dr[i]) / b;
                cf[i] = sigmoid(df[i]) / b;
            }
            LossKind::Rpgan => {
                let u = df[i] - dr[i];
                l += softplus(u);
                cf[i] = sigmoid(u) / b;
                cr[i] = -cf[i];
            }
            LossKind::Hinge => {
                l += (1.0 - dr[i]).max(0.0) + (1.0 + df[i]).max(0.0);
                cr[i] = if 1.0 - dr[i] > 0.0 { -1.0 / b } else { 0.0 };
                cf[i] = if 1.0 + df[i] > 0.0 { 1.0 / b } else { 0.0 };
            }
        }
    }
    (l / b, cr, cf)
}

/// G loss and its derivative w.r.t. `D(fake)`; `dr` (D on a real batch) is used by rpgan.
pub fn g_loss(kind: LossKind, dr: &[f64], df: &[f64]) -> (f64, Vec<f64>) {
    let b = df.len() as f64;
    let mut l = 0.0;
    let mut c = vec![0.0; df.len()];
    for i in 0..df.len() {
        match kind {
            LossKind::Ns => {
                l += softplus(-df[i]);
                c[i] = -sigmoid(-df[i]) / b;
            }
            LossKind::Rpgan => {
                let u = dr[i] - df[i];
                l += softplus(u);
                c[i] = -sigmoid(u) / b;
            }
            LossKind::Hinge => {
                l -= df[i];
                c[i] = -1.0 / b;
            }
        }
    }
    (l / b, c)
}

/// Outputs, parameter gradients and (optionally) the input gradient of a pass.
pub type PassOut<E, D> = (Vec<f64>, Vec<T1<E, D>>, Option<T4<E, D>>);

/// One forward/backward of `net` on `x` (with side inputs `side`, e.g. the labels of a
/// conditional D): returns the outputs `D(x_j)` (host), the parameter gradients of
/// `sum_j coef(D)_j D(x_j)` and, if `want_x`, the input gradient. `coef` sees the outputs
/// first (so a loss can be linearised in the same pass).
pub fn weighted_pass<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    train: bool,
    want_x: bool,
    coef: impl FnOnce(&[f64]) -> Vec<f64>,
) -> PassOut<E, D> {
    let mut g = net.params.alloc_grads();
    if want_x {
        g.try_alloc_for(x).unwrap();
    }
    let out = net.forward_side(x.clone().traced(g), side, train);
    let n = out.shape().num_elements();
    let out = out.reshape_like(&(n,));
    let vals: Vec<f64> = out.as_vec().into_iter().map(|v| v.f64()).collect();
    let c = coef(&vals);
    let ct: T1<E, D> = net
        .dev
        .tensor_from_vec(c.into_iter().map(E::of).collect(), (n,));
    let grads = (out * ct).sum::<(), Axis<0>>().backward();
    let pg = net.params.grads_of(&grads);
    let xg = want_x.then(|| grads.get(x));
    (vals, pg, xg)
}

/// `mean_i ||grad_x D(x_i)||^2` and the per-sample input gradients (labels, if any, held
/// fixed: the penalty of a conditional D is on `grad_x D(x, y)`).
pub fn penalty_value<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    train: bool,
) -> (f64, T4<E, D>) {
    let b = x.shape().0;
    let (_, _, g) = weighted_pass(net, x, side, train, true, |v| vec![1.0; v.len()]);
    let g = g.unwrap();
    let ss: f64 = g.as_vec().iter().map(|v| v.f64() * v.f64()).sum();
    (ss / b as f64, g)
}

/// Penalty value `R = mean_i ||grad_x D(x_i)||^2` and its parameter gradient by the
/// finite-difference Hessian-vector product (two extra first-order passes, batched as one).
pub fn penalty<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    delta: f64,
    train: bool,
) -> (f64, Vec<T1<E, D>>) {
    let (bsz, c, h, w) = *x.shape();
    let (value, g) = penalty_value(net, x, side, train);
    let numel = (bsz * c * h * w) as f64;
    let rms = (value * bsz as f64 / numel).sqrt();
    if rms == 0.0 || !rms.is_finite() {
        let z = net
            .params
            .tensors
            .iter()
            .map(|t| t.device().zeros_like(t.shape()))
            .collect();
        return (value, z);
    }
    let eps = delta / rms;
    let step = g * E::of(eps);
    let xp = x.clone() + step.clone();
    let xm = x.clone() - step;
    let both: T4<E, D> = (xp, xm).concat_along(Axis::<0>);
    let k = 1.0 / (bsz as f64 * eps);
    let (_, grads, _) = weighted_pass(net, &both, &side.repeated(2), train, false, |v| {
        (0..v.len()).map(|j| if j < bsz { k } else { -k }).collect()
    });
    (value, grads)
}
