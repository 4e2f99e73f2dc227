//! The D step's gradients: the loss pass with its penalties over real and fake together
//! (a piecewise-linear D: one tangent pass for both penalties, which also completes the
//! loss pass's deferred convolution weight gradients), or apart (batch norm in D).

use dfdx::prelude::*;

use super::{add_scaled, mean, Trainer};
use crate::gan::config::Penalty;
use crate::gan::losses::{d_loss, mean_sq_norm, pass, penalty, tangent_grads};
use crate::nn::{Deferral, Dev, Side, T1, T4};

/// What a D loss pass reports: the loss and the mean outputs on real and fake.
pub(crate) struct DOut {
    pub(crate) loss: f64,
    pub(crate) real: f64,
    pub(crate) fake: f64,
}

/// A D loss pass with its penalties: what it reports, the summed gradients, the penalty
/// values.
pub(crate) type DStep<D> = (DOut, Vec<T1<f32, D>>, Vec<(Penalty, f64)>);

/// Rows `r` (`b` of them) of a batch.
fn rows_of<D: Dev<f32>>(g: &T4<f32, D>, r: std::ops::Range<usize>, b: usize) -> T4<f32, D> {
    let s = *g.shape();
    g.clone()
        .slice((r, .., .., ..))
        .reshape_like(&(b, s.1, s.2, s.3))
}

impl<D: Dev<f32>> Trainer<D> {
    /// D's loss gradient on `both = concat(real, fake)` and, with `penalty_weight`
    /// (`gamma / 2`, times the lazy interval), the configured penalties' gradients added
    /// with that weight. A piecewise-linear D only: the loss pass records its gates and
    /// its input gradient `c_j g_j` (`c_j` the loss's derivative in `D(x_j)`, `g_j =
    /// grad_x D(x_j)`) gives every `g_j` where `c_j` is not (nearly) zero, so both
    /// penalties take one tangent pass over the loss pass's batch (`gan::losses`); a half
    /// with a vanishing coefficient (e.g. hinge beyond its margin) gets its own penalty
    /// pass. Where D [`Net::defers_penalties`], the loss pass leaves its convolution
    /// weight gradients to that tangent pass, which computes them with its own in one
    /// product each (`nn::defer`). Returns the loss, the gradients and the penalty values.
    pub(crate) fn d_loss_and_penalties(
        &self,
        both: &T4<f32, D>,
        side: &Side,
        penalty_weight: Option<f64>,
    ) -> DStep<D> {
        let b = both.shape().0 / 2;
        let kind = self.cfg.loss;
        let on = penalty_weight.is_some();
        let (mut dl, mut coefs) = (0.0, vec![]);
        let defer = (on && self.d.defers_penalties()).then(Deferral::new);
        let ((vals, mut grads, xg), lin) =
            pass(&self.d, both, side, true, on, on, defer.as_ref(), |v| {
                let (l, mut cr, cf) = d_loss(kind, &v[..b], &v[b..]);
                dl = l;
                cr.extend(cf);
                coefs = cr.clone();
                cr
            });
        let out = DOut {
            loss: dl,
            real: mean(&vals[..b]),
            fake: mean(&vals[b..]),
        };
        let (Some(w), Some(xg), Some(lin)) = (penalty_weight, xg, lin) else {
            return (out, grads, vec![]);
        };
        // the cotangent each row had, as the pass used it (in f32)
        let c32: Vec<f32> = coefs.iter().map(|&c| c as f32).collect();
        let usable = |rows: std::ops::Range<usize>| c32[rows].iter().all(|c| c.abs() >= 1e-25);
        let half = |p: Penalty| match p {
            Penalty::R1 => 0..b,
            Penalty::R2 => b..2 * b,
        };
        let (reuse, own): (Vec<Penalty>, Vec<Penalty>) =
            self.cfg.penalties.iter().partition(|&&p| usable(half(p)));
        let mut values = vec![];
        // g_j = grad_x D(x_j) (zero where c_j is)
        let inv: Vec<f32> = c32
            .iter()
            .map(|&c| if c != 0.0 { 1.0 / c } else { 0.0 })
            .collect();
        let s = *xg.shape();
        let per_row = |v: Vec<f32>| {
            let t: T1<f32, D> = self.dev.tensor_from_vec(v, (2 * b,));
            t.broadcast_like::<_, Axes3<1, 2, 3>>(&s)
        };
        let g = xg * per_row(inv);
        for &p in &reuse {
            values.push((p, mean_sq_norm(&rows_of(&g, half(p), b))));
        }
        if let Some(defer) = &defer {
            // every row through the tangent pass, which completes the loss pass's
            // weight gradients: output gradient c_j, input g_j * w (2/B) / c_j for the
            // rows of a reused penalty, zero for the others
            let mut k = vec![0f32; 2 * b];
            for j in reuse.iter().flat_map(|&p| half(p)) {
                k[j] = (w * 2.0 / b as f64 / c32[j] as f64) as f32;
            }
            let gk = g * per_row(k);
            let pg = tangent_grads(&self.d, &gk, side, true, &lin, &coefs, Some(defer));
            add_scaled(&mut grads, pg, 1.0);
        } else if !reuse.is_empty() {
            let (g, lin, side) = if reuse.len() == 2 {
                (g, lin, side.clone())
            } else {
                let r = half(reuse[0]);
                let gs = rows_of(&g, r.clone(), b);
                let side = Side {
                    labels: side.labels.as_ref().map(|l| l[r.clone()].to_vec()),
                    ..side.clone()
                };
                (gs, lin.rows(r.start, r.end), side)
            };
            let n = g.shape().0;
            let pg = tangent_grads(
                &self.d,
                &g,
                &side,
                true,
                &lin,
                &vec![2.0 / b as f64; n],
                None,
            );
            add_scaled(&mut grads, pg, w);
        }
        for p in own {
            let r = half(p);
            let x = both.clone().slice((r.clone(), .., .., ..)).reshape_like(&(
                b,
                both.shape().1,
                both.shape().2,
                both.shape().3,
            ));
            let ps = Side {
                labels: side.labels.as_ref().map(|l| l[r].to_vec()),
                ..side.clone()
            };
            let (val, pg) = penalty(&self.d, &x, &ps, self.cfg.hvp_delta, true);
            add_scaled(&mut grads, pg, w);
            values.push((p, val));
        }
        values.sort_by_key(|(p, _)| *p == Penalty::R2);
        (out, grads, values)
    }

    /// D's loss gradient with the real and fake batches in separate passes (batch norm in
    /// D keeps their statistics apart).
    pub(super) fn d_loss_apart(
        &self,
        real: &T4<f32, D>,
        real_side: &Side,
        fake: &T4<f32, D>,
        fake_side: &Side,
    ) -> (DOut, Vec<T1<f32, D>>) {
        let b = real.shape().0;
        let run = |x: &T4<f32, D>, side: &Side| {
            let out = self
                .d
                .forward_side(x.clone().traced(self.d.params.alloc_grads()), side, true)
                .reshape_like(&(b,));
            let v: Vec<f64> = out.as_vec().into_iter().map(f64::from).collect();
            (out, v)
        };
        let (out_r, dr) = run(real, real_side);
        let (out_f, df) = run(fake, fake_side);
        let (dl, cr, cf) = d_loss(self.cfg.loss, &dr, &df);
        let back = |out: T1<f32, D, OwnedTape<f32, D>>, c: Vec<f64>| {
            let ct: T1<f32, D> = self
                .dev
                .tensor_from_vec(c.into_iter().map(|v| v as f32).collect(), (b,));
            let g = (out * ct).sum::<(), Axis<0>>().backward();
            self.d.params.grads_of(&g)
        };
        let mut grads = back(out_r, cr);
        add_scaled(&mut grads, back(out_f, cf), 1.0);
        let out = DOut {
            loss: dl,
            real: mean(&dr),
            fake: mean(&df),
        };
        (out, grads)
    }
}
