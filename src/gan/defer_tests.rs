//! Deferred convolution weight gradients (`nn::defer`): a loss pass that leaves them to
//! the penalty's tangent pass, and that tangent pass, against the two passes apart.

use dfdx::prelude::*;

use super::config::Arch;
use super::losses::{pass, tangent_grads};
use super::nets::{self, DataShape};
use super::penalty_tests::{case_name, diff_and_norm, jitter, penalty_cases};
use super::tests::net_cfg;
use crate::nn::defer::DEFER_MAX_TEST;
use crate::nn::{Cpu, Deferral, Rng, Side, T4};

/// A loss pass that leaves its convolution weight gradients to the tangent pass
/// (`nn::defer`) and that tangent pass give, summed, both passes' gradients as computed
/// apart, to f64 rounding, for every discriminator that defers (projection heads, spectral
/// norm and residual branches included); the loss pass alone leaves the deferred weights'
/// gradients at zero. One row has no penalty (its tangent input is zero). With room for
/// all but the last deferred op, and for none, the ops past the room compute theirs as
/// usual in both passes, with the same sums. A parameter on the input's path before a
/// convolution (a learnt residual scale) keeps a net from deferring, and so does having
/// no convolution (the mlp).
#[test]
fn deferred_weight_grads_equal_the_two_passes() {
    let dev = Cpu::default();
    let mut rng = Rng::new(5);
    let mut deferring = vec![];
    for (cfg, shape, [b, ch, h, w], classes) in penalty_cases() {
        let mut d = nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        if !d.defers_penalties() {
            continue;
        }
        deferring.push(case_name(&cfg, classes));
        jitter(&mut d, &mut rng, 0.1);
        let x: T4<f64, Cpu> = dev.tensor_from_vec(rng.normals(b * ch * h * w), (b, ch, h, w));
        let side = Side::labels(classes.map(|k| (0..b).map(|i| i % k).collect()));
        // loss derivatives c_j of either sign and penalty weights p_j (none for row 1)
        let cs: Vec<f64> = (0..b)
            .map(|j| (0.3 + rng.uniform()) * [1.0, -1.0][j % 2])
            .collect();
        let ps: Vec<f64> = (0..b)
            .map(|j| if j == 1 { 0.0 } else { 0.5 + rng.uniform() })
            .collect();
        let run = |defer: Option<&Deferral>| {
            let ((_, mut grads, xg), lin) =
                pass(&d, &x, &side, true, true, true, defer, |_| cs.clone());
            if let Some(defer) = defer {
                // the deferred ones are the first convolutions' weights
                let (n, _) = defer.held();
                let convs = (0..grads.len()).filter(|&i| d.params.shapes[i].len() == 4);
                for (k, i) in convs.enumerate().filter(|(k, _)| *k < n) {
                    let zero = grads[i].as_vec().iter().all(|&v| v == 0.0);
                    assert!(zero, "{}: conv {k} deferred, computed", d.params.names[i]);
                }
            }
            // g_j = xg_j / c_j; apart: input g_j, output gradient p_j; deferred: input
            // g_j p_j / c_j, output gradient c_j
            let per = ch * h * w;
            let scale = |j: usize| match defer {
                Some(_) => ps[j] / (cs[j] * cs[j]),
                None => 1.0 / cs[j],
            };
            let xg = xg.unwrap().as_vec();
            let dx = (0..b * per).map(|i| xg[i] * scale(i / per)).collect();
            let dx: T4<f64, Cpu> = dev.tensor_from_vec(dx, (b, ch, h, w));
            let wt = if defer.is_some() { &cs } else { &ps };
            let tg = tangent_grads(&d, &dx, &side, true, &lin.unwrap(), wt, defer);
            for (a, t) in grads.iter_mut().zip(tg) {
                *a = a.clone() + t;
            }
            grads
        };
        let want = run(None);
        let full = Deferral::new();
        let mut runs = vec![(run(Some(&full)), full.held().0)];
        let (n, len) = full.held();
        assert!(n > 0, "{}: nothing deferred", case_name(&cfg, classes));
        for room in [len.saturating_sub(1), 0] {
            DEFER_MAX_TEST.with(|c| c.set(Some(room)));
            let part = Deferral::new();
            runs.push((run(Some(&part)), part.held().0));
            DEFER_MAX_TEST.with(|c| c.set(None));
        }
        let held: Vec<usize> = runs.iter().map(|r| r.1).collect();
        assert_eq!(
            held,
            [n, n.saturating_sub(1), 0],
            "{}",
            case_name(&cfg, classes)
        );
        for (got, _) in &runs {
            for (i, (a, r)) in got.iter().zip(&want).enumerate() {
                let (diff, norm) = diff_and_norm(&a.as_vec(), &r.as_vec());
                assert!(norm > 0.0, "{}: zero gradient", d.params.names[i]);
                assert!(
                    diff <= 1e-12 * norm,
                    "{}: deferred vs apart {:.2e}",
                    d.params.names[i],
                    diff / norm
                );
            }
        }
    }
    // every case but the mlp's two, which have no convolution to defer
    assert_eq!(deferring.len(), penalty_cases().len() - 2, "{deferring:?}");
    let mut res = net_cfg(Arch::Resnet, None, 4);
    res.learn_residual_scale = Some(true);
    let img = DataShape::Image { c: 3, res: 8 };
    let d = nets::discriminator::<f64, Cpu>(&res, img, None, dev.clone(), 0).unwrap();
    assert!(d.is_piecewise_linear() && !d.defers_penalties());
    let mlp = net_cfg(Arch::Mlp, None, 16);
    let d = nets::discriminator::<f64, Cpu>(&mlp, DataShape::Points, None, dev, 0).unwrap();
    assert!(d.is_piecewise_linear() && !d.defers_penalties());
}
