//! Adversarial losses and zero-centred gradient penalties.
//!
//! Losses are functions of the discriminator's outputs only, so they are evaluated on the
//! host in f64 together with their derivatives `c_j = dL/dD_j`; the parameter gradient is
//! then the gradient of the surrogate `sum_j c_j D(x_j)` (one dfdx backward), which equals
//! the loss gradient by the chain rule.
//!
//! Penalties: `R(theta) = mean_i ||grad_x D(x_i)||^2`; the D objective gets `gamma/2 * R`.
//! dfdx has no double backward. `grad_theta R = (2/B) sum_i d/dtheta (g_i . grad_x D(x_i))`
//! with `g_i = grad_x D(x_i)` held fixed, a Hessian-vector product.
//!
//! - **Piecewise-linear D** (every discriminator without batch norm: linear / conv layers,
//!   ReLU and LeakyReLU gates, pooling, residual sums, projection heads; spectral norm acts
//!   on weights only): with its activation gates frozen at `x_i`, `D` is affine in the
//!   input, `D_lin(x_i + v) = D(x_i) + J_i v`, and `g_i . grad_x D(x_i) = J_i g_i`, which
//!   is what a *tangent pass* computes ([`Net::forward_tangent`]: input `g_i`, the gates of
//!   the pass at `x_i` replayed, biases dropped). So `grad_theta R` is the parameter gradient
//!   of `(2/B) sum_i J_i g_i`: one extra first-order pass, equal to double backward for
//!   every input (no step size, no bias from units whose sign would flip between
//!   finite-difference points). It is the `eps -> infinity` limit of the frozen-gate
//!   difference quotient `(grad_theta D_lin(x + eps g) - grad_theta D(x)) / eps`, which is
//!   constant in `eps` on such nets.
//! - **Any other D** (batch norm, tanh): a central finite difference of first-order
//!   gradients with a per-sample step, `sum_i (grad_theta D(x_i + eps_i g_i) -
//!   grad_theta D(x_i - eps_i g_i)) / (B eps_i)`, `eps_i = delta / rms(g_i)`, error
//!   O(delta^2) on smooth nets.

use dfdx::prelude::*;

use super::config::LossKind;
use crate::nn::ops::ParamGrads;
use crate::nn::{Deferral, Dev, Float, Linearisation, Net, Side, T1, T4};

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
    let (out, _) = pass(net, x, side, train, want_x, false, None, coef);
    out
}

/// [`weighted_pass`] that also records the pass's linearisation (`record`), its
/// convolutions leaving their weight gradients to a tangent pass with `defer` (see
/// [`tangent_grads`]; a recording pass of a net that [`Net::defers_penalties`]).
#[allow(clippy::too_many_arguments)]
pub fn pass<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    train: bool,
    want_x: bool,
    record: bool,
    defer: Option<&Deferral>,
    coef: impl FnOnce(&[f64]) -> Vec<f64>,
) -> (PassOut<E, D>, Option<Linearisation<E, D>>) {
    assert!(record || defer.is_none(), "a deferring pass records");
    let mut g = net.params.alloc_grads();
    if want_x {
        g.try_alloc_for(x).unwrap();
    }
    let (out, lin) = if record {
        let pg = defer.map_or(ParamGrads::Computed, |d| ParamGrads::Deferred(d.clone()));
        let (y, lin) = net.forward_recording_pg(x.clone().traced(g), side, train, pg);
        (y, Some(lin))
    } else {
        (net.forward_side(x.clone().traced(g), side, train), None)
    };
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
    ((vals, pg, xg), lin)
}

/// `mean_i ||g_i||^2` of per-sample input gradients `g (B, ...)`.
pub fn mean_sq_norm<E: Float, D: Dev<E>>(g: &T4<E, D>) -> f64 {
    let b = g.shape().0;
    let ss: f64 = g.as_vec().iter().map(|v| v.f64() * v.f64()).sum();
    ss / b as f64
}

/// `mean_i ||grad_x D(x_i)||^2` and the per-sample input gradients (labels, if any, held
/// fixed: the penalty of a conditional D is on `grad_x D(x, y)`).
pub fn penalty_value<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    train: bool,
) -> (f64, T4<E, D>) {
    let (_, _, g) = weighted_pass(net, x, side, train, true, |v| vec![1.0; v.len()]);
    let g = g.unwrap();
    (mean_sq_norm(&g), g)
}

/// The parameter gradient of `sum_i w_i J_i g_i` by one tangent pass, where `J_i` is D's
/// input Jacobian at the input of the recording pass `lin` (see the module doc): with
/// `w_i = 2/B` and `g_i = grad_x D(x_i)` it is `grad_theta mean_i ||grad_x D(x_i)||^2`.
///
/// With `defer`, the deferral of that recording pass: the convolutions' weight gradients
/// of both passes, in one product each (`nn::defer`). That is the sum of the two passes'
/// parameter gradients only where `w_i` is the recording pass's output gradient `c_i`
/// (the loss's derivative), so the penalty's own weight goes into `g_i`: for `p_i J_i g_i`
/// pass `w_i = c_i` and `g_i p_i / c_i`. The weight gradients the recording pass left
/// out are only in the result.
pub fn tangent_grads<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    g: &T4<E, D>,
    side: &Side,
    train: bool,
    lin: &Linearisation<E, D>,
    w: &[f64],
    defer: Option<&Deferral>,
) -> Vec<T1<E, D>> {
    let b = g.shape().0;
    assert_eq!(w.len(), b, "one weight per sample");
    let pg = defer.map_or(ParamGrads::Computed, |d| ParamGrads::Fused(d.clone()));
    let dx = g.clone().traced(net.params.alloc_grads());
    let out = net.forward_tangent_pg(dx, side, train, lin, pg);
    let out = out.reshape_like(&(b,));
    let wt: T1<E, D> = net
        .dev
        .tensor_from_vec(w.iter().map(|&v| E::of(v)).collect(), (b,));
    let grads = (out * wt).sum::<(), Axis<0>>().backward();
    if let Some(d) = defer {
        assert!(
            d.settled(),
            "the tangent pass left deferred weight gradients"
        );
    }
    net.params.grads_of(&grads)
}

/// Penalty value `R = mean_i ||grad_x D(x_i)||^2` and its parameter gradient: exact by a
/// tangent pass on piecewise-linear nets, else by the central finite difference with
/// per-sample steps of RMS `delta` (see the module doc).
pub fn penalty<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    delta: f64,
    train: bool,
) -> (f64, Vec<T1<E, D>>) {
    let bsz = x.shape().0;
    if net.is_piecewise_linear() {
        let ((_, _, g), lin) = pass(net, x, side, train, true, true, None, |v| {
            vec![1.0; v.len()]
        });
        let (g, lin) = (g.unwrap(), lin.unwrap());
        let w = vec![2.0 / bsz as f64; bsz];
        let grads = tangent_grads(net, &g, side, train, &lin, &w, None);
        return (mean_sq_norm(&g), grads);
    }
    let (value, g) = penalty_value(net, x, side, train);
    penalty_fd(net, x, side, delta, train, value, g)
}

/// The central-difference HVP of [`penalty`] for nets that are not piecewise linear.
fn penalty_fd<E: Float, D: Dev<E>>(
    net: &Net<E, D>,
    x: &T4<E, D>,
    side: &Side,
    delta: f64,
    train: bool,
    value: f64,
    g: T4<E, D>,
) -> (f64, Vec<T1<E, D>>) {
    let s = *x.shape();
    let (bsz, per) = (s.0, s.1 * s.2 * s.3);
    let gv = g.as_vec();
    // eps_i = delta / rms(g_i); samples with a zero gradient contribute nothing
    let eps: Vec<f64> = gv
        .chunks(per)
        .map(|gi| {
            let rms = (gi.iter().map(|v| v.f64() * v.f64()).sum::<f64>() / per as f64).sqrt();
            if rms > 0.0 && rms.is_finite() {
                delta / rms
            } else {
                0.0
            }
        })
        .collect();
    let step: Vec<E> = gv
        .chunks(per)
        .zip(&eps)
        .flat_map(|(gi, &e)| gi.iter().map(move |&v| E::of(v.f64() * e)))
        .collect();
    let step: T4<E, D> = net.dev.tensor_from_vec(step, s);
    let xp = x.clone() + step.clone();
    let xm = x.clone() - step;
    let both: T4<E, D> = (xp, xm).concat_along(Axis::<0>);
    let k: Vec<f64> = eps
        .iter()
        .map(|&e| if e > 0.0 { 1.0 / (bsz as f64 * e) } else { 0.0 })
        .collect();
    let (_, grads, _) = weighted_pass(net, &both, &side.repeated(2), train, false, |v| {
        (0..v.len())
            .map(|j| if j < bsz { k[j] } else { -k[j - bsz] })
            .collect()
    });
    (value, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Rng;

    /// `ln(1 + e^x)` written plainly (fine for the moderate values used here).
    fn sp(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    /// Values against the textbook formulas, and every derivative against a central
    /// difference of the loss, for all three losses, on both sides of hinge's margins.
    #[test]
    fn losses_values_and_derivatives() {
        let mut rng = Rng::new(3);
        let b = 7;
        let dr: Vec<f64> = (0..b).map(|_| 2.0 * rng.normal()).collect();
        let df: Vec<f64> = (0..b).map(|_| 2.0 * rng.normal()).collect();
        assert!(dr.iter().any(|&v| v > 1.0) && dr.iter().any(|&v| v < 1.0));
        let mean = |f: &dyn Fn(usize) -> f64| (0..b).map(f).sum::<f64>() / b as f64;
        for kind in [LossKind::Ns, LossKind::Rpgan, LossKind::Hinge] {
            let want_d = match kind {
                LossKind::Ns => mean(&|i| sp(-dr[i]) + sp(df[i])),
                LossKind::Rpgan => mean(&|i| sp(df[i] - dr[i])),
                LossKind::Hinge => mean(&|i| (1.0 - dr[i]).max(0.0) + (1.0 + df[i]).max(0.0)),
            };
            let want_g = match kind {
                LossKind::Ns => mean(&|i| sp(-df[i])),
                LossKind::Rpgan => mean(&|i| sp(dr[i] - df[i])),
                LossKind::Hinge => mean(&|i| -df[i]),
            };
            let (ld, cr, cf) = d_loss(kind, &dr, &df);
            let (lg, cg) = g_loss(kind, &dr, &df);
            assert!((ld - want_d).abs() < 1e-12, "{kind:?} D: {ld} vs {want_d}");
            assert!((lg - want_g).abs() < 1e-12, "{kind:?} G: {lg} vs {want_g}");
            let h = 1e-6;
            let fd = |f: &dyn Fn(&[f64], &[f64]) -> f64, real: bool, i: usize| {
                let (mut a, mut c) = (dr.clone(), df.clone());
                let v = if real { &mut a } else { &mut c };
                v[i] += h;
                let up = f(&a, &c);
                let v = if real { &mut a } else { &mut c };
                v[i] -= 2.0 * h;
                (up - f(&a, &c)) / (2.0 * h)
            };
            let dl = |a: &[f64], c: &[f64]| d_loss(kind, a, c).0;
            let gl = |a: &[f64], c: &[f64]| g_loss(kind, a, c).0;
            for i in 0..b {
                for (got, want) in [
                    (cr[i], fd(&dl, true, i)),
                    (cf[i], fd(&dl, false, i)),
                    (cg[i], fd(&gl, false, i)),
                ] {
                    assert!(
                        (got - want).abs() < 1e-7,
                        "{kind:?} [{i}]: {got} vs fd {want}"
                    );
                }
            }
        }
    }

    /// The stable softplus and sigmoid hold far from zero, where the plain formulas
    /// overflow.
    #[test]
    fn softplus_and_sigmoid_are_stable() {
        assert_eq!(softplus(-800.0), 0.0);
        assert_eq!(softplus(800.0), 800.0);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(sigmoid(-800.0), 0.0);
        assert_eq!(sigmoid(800.0), 1.0);
        assert!((sigmoid(1.5) - 1.0 / (1.0 + (-1.5f64).exp())).abs() < 1e-15);
    }
}
