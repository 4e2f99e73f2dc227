//! Gradient penalties: the exact HVP against f64 finite differences for every
//! discriminator, f32 against f64, the D step's reuse of its loss pass, PyTorch's double
//! backward on identical weights (a committed fixture), and D held fixed in the G step.

use dfdx::prelude::*;

use super::losses::{penalty, penalty_value};
use super::nets::{self, DataShape};
use super::tests::net_cfg;
use super::*;
use crate::nn::{Cpu, Layer, LinearConfig, Net, NetBuilder, Rng, Side, T1, T4};

/// `(|a - r|, |r|)`, Euclidean norms of the difference and of the reference.
pub(super) fn diff_and_norm(a: &[f64], r: &[f64]) -> (f64, f64) {
    let diff = a.iter().zip(r).map(|(a, r)| (a - r).powi(2)).sum::<f64>();
    let norm = r.iter().map(|v| v * v).sum::<f64>();
    (diff.sqrt(), norm.sqrt())
}

/// grad_theta R (the penalty's HVP) vs central differences of R in parameter space, on a
/// dozen entries of every parameter tensor.
fn check_penalty_grad(net: &Net<f64, Cpu>, x: &T4<f64, Cpu>, side: &Side) {
    let (val, an) = penalty(net, x, side, 1e-5, true);
    assert!(val > 0.0);
    let dev = net.dev.clone();
    let h = 1e-6;
    let gmax = an
        .iter()
        .flat_map(|g| g.as_vec())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    let mut checked = 0;
    for (i, g) in an.iter().enumerate() {
        let g = g.as_vec();
        let base = net.params.tensors[i].as_vec();
        let stride = (base.len() / 12).max(1);
        for j in (0..base.len()).step_by(stride) {
            let mut n2 = net.clone();
            let mut v = base.clone();
            v[j] += h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let rp = penalty_value(&n2, x, side, true).0;
            v[j] -= 2.0 * h;
            n2.params.tensors[i] = dev.tensor_from_vec(v.clone(), (v.len(),));
            let rm = penalty_value(&n2, x, side, true).0;
            let num = (rp - rm) / (2.0 * h);
            let err = (num - g[j]).abs() / num.abs().max(g[j].abs()).max(1e-3 * gmax);
            assert!(
                err < 1e-5,
                "{} [{j}]: hvp {} vs fd {num} (rel err {err:e})",
                net.params.names[i],
                g[j]
            );
            checked += 1;
        }
    }
    assert!(checked > 10);
}

/// Every parameter moved by `scale` standard normals: fix-up init zeroes the last conv of
/// every residual branch and biases start at zero, so without this some parameters would
/// not take part.
pub(super) fn jitter<E: crate::nn::Float>(net: &mut Net<E, Cpu>, rng: &mut Rng, scale: f64)
where
    Cpu: crate::nn::Dev<E>,
{
    for t in net.params.tensors.iter_mut() {
        let v: Vec<E> = t
            .as_vec()
            .iter()
            .map(|&v| E::of(v.f64() + scale * rng.normal()))
            .collect();
        *t = net.dev.tensor_from_vec(v, *t.shape());
    }
}

/// The discriminators of the penalty tests: every arch without batch norm (the only D
/// layers that are not piecewise linear), resnet with spectral norm, and each as a
/// projection discriminator, with inputs `[b, c, h, w]`.
pub(super) fn penalty_cases() -> Vec<(NetConfig, DataShape, [usize; 4], Option<usize>)> {
    let mut mlp = net_cfg(Arch::Mlp, None, 16);
    mlp.depth = Some(2);
    let mut resnet = net_cfg(Arch::Resnet, None, 4);
    resnet.spectral_norm = Some(true);
    let img = DataShape::Image { c: 3, res: 8 };
    let mut v = vec![
        (mlp, DataShape::Points, [6, 2, 1, 1]),
        (net_cfg(Arch::Dcgan, None, 4), img, [3, 3, 8, 8]),
        (resnet, img, [3, 3, 8, 8]),
    ];
    for var in [Variant::B, Variant::C, Variant::D, Variant::E] {
        v.push((net_cfg(Arch::R3gan, Some(var), 4), img, [3, 3, 8, 8]));
    }
    v.into_iter()
        .flat_map(|(c, s, x)| [(c.clone(), s, x, None), (c, s, x, Some(3))])
        .collect()
}

/// The exact HVP (a tangent pass with the gates of the pass at x) equals the derivative of
/// the penalty in every parameter for every discriminator, projection heads and spectral
/// norm included, in f64, at inputs where many units sit near their kinks. (The old
/// finite-difference HVP failed this for R3GAN E: units whose pre-activation changes sign
/// between x - eps g and x + eps g added jump / (2 eps) to the gradient.)
#[test]
fn penalty_grad_every_d_vs_f64_fd() {
    let dev = Cpu::default();
    let mut rng = Rng::new(2);
    for (cfg, shape, [b, c, h, w], classes) in penalty_cases() {
        let mut d = nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        assert!(d.is_piecewise_linear(), "{cfg:?}");
        jitter(&mut d, &mut rng, 0.1);
        let x: T4<f64, Cpu> = dev.tensor_from_vec(rng.normals(b * c * h * w), (b, c, h, w));
        let side = Side::labels(classes.map(|k| (0..b).map(|i| i % k).collect()));
        check_penalty_grad(&d, &x, &side);
    }
}

/// D held fixed (`Net::forward_frozen`, the G step's pass) gives every discriminator's
/// outputs and input gradient bit for bit as the ordinary pass does, and leaves the
/// gradients of its convolution weights (4-D parameters, spectral norm or not) at zero,
/// where the ordinary pass fills them.
#[test]
fn frozen_d_same_input_gradient_no_conv_weight_gradients() {
    let dev = Cpu::default();
    let mut rng = Rng::new(8);
    for (cfg, shape, [b, c, h, w], classes) in penalty_cases() {
        let mut d = nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        // off R3GAN's zero-initialised last convs, whose blocks would pass no gradient
        jitter(&mut d, &mut rng, 0.1);
        let x: T4<f64, Cpu> = dev.tensor_from_vec(rng.normals(b * c * h * w), (b, c, h, w));
        let side = Side::labels(classes.map(|k| (0..b).map(|i| i % k).collect()));
        let run = |frozen: bool| {
            let mut g = d.params.alloc_grads();
            g.try_alloc_for(&x).unwrap();
            let xt = x.clone().traced(g);
            let y = if frozen {
                d.forward_frozen(xt, &side, true)
            } else {
                d.forward_side(xt, &side, true)
            };
            let yv = y.retaped::<NoneTape>().as_vec();
            let grads = y.reshape_like(&(b,)).sum::<(), Axis<0>>().backward();
            (yv, grads.get(&x).as_vec(), d.params.grads_of(&grads))
        };
        let (y0, gx0, pg0) = run(false);
        let (y1, gx1, pg1) = run(true);
        assert_eq!(y0, y1, "values, {cfg:?}");
        assert_eq!(gx0, gx1, "input gradient, {cfg:?}");
        let mut convs = 0;
        for (i, s) in d.params.shapes.iter().enumerate() {
            if s.len() == 4 {
                convs += 1;
                let name = &d.params.names[i];
                assert!(pg1[i].as_vec().iter().all(|&v| v == 0.0), "{name}, {cfg:?}");
                assert!(pg0[i].as_vec().iter().any(|&v| v != 0.0), "{name}, {cfg:?}");
            }
        }
        assert!(
            convs > 0 || cfg.arch == Arch::Mlp,
            "no conv weights in {cfg:?}"
        );
    }
}

/// Many units cross zero between x - eps g and x + eps g here, yet the penalty gradient
/// does not depend on where the recording pass's gates would flip: R3GAN E at a larger
/// size has thousands of units within 1e-3 of their kink, and its f32 gradient still
/// matches f64 to rounding.
#[test]
fn penalty_grad_counts_crossings_and_stays_exact() {
    let dev = Cpu::default();
    let mut rng = Rng::new(5);
    let cfg = net_cfg(Arch::R3gan, Some(Variant::E), 8);
    let shape = DataShape::Image { c: 3, res: 16 };
    let mut d64 = nets::discriminator::<f64, Cpu>(&cfg, shape, None, dev.clone(), 4).unwrap();
    jitter(&mut d64, &mut rng, 0.1);
    let x: T4<f64, Cpu> = dev.tensor_from_vec(rng.normals(4 * 3 * 16 * 16), (4, 3, 16, 16));
    // units whose sign flips between x - eps g and x + eps g at the old default step
    let (_, g) = penalty_value(&d64, &x, &Side::default(), true);
    let gv = g.as_vec();
    let rms = (gv.iter().map(|v| v * v).sum::<f64>() / gv.len() as f64).sqrt();
    let eps = 1e-3 / rms;
    let gates = |sign: f64| {
        let xv: Vec<f64> = x
            .as_vec()
            .iter()
            .zip(&gv)
            .map(|(a, b)| a + sign * eps * b)
            .collect();
        let xs: T4<f64, Cpu> = dev.tensor_from_vec(xv, (4, 3, 16, 16));
        let (_, lin) = d64.forward_recording(xs, &Side::default(), true);
        lin
    };
    let (lp, lm) = (gates(1.0), gates(-1.0));
    let flips: usize = (0..lp.len())
        .map(|i| {
            let (a, b) = (lp.gate(i).as_vec(), lm.gate(i).as_vec());
            a.iter()
                .zip(&b)
                .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
                .count()
        })
        .sum();
    eprintln!("R3GAN E, width 8, 16x16, batch 4: {flips} units change sign across +-eps g");
    assert!(flips > 30, "only {flips} crossings: make the case harder");
    check_penalty_grad(&d64, &x, &Side::default());
    // the old central difference without frozen gates is off by jump / (2 eps) per
    // crossing: far from the exact value, which the check above holds to 1e-5
    let (_, exact) = penalty(&d64, &x, &Side::default(), 1e-3, true);
    let step: Vec<f64> = gv.iter().map(|v| v * eps).collect();
    let step: T4<f64, Cpu> = dev.tensor_from_vec(step, (4, 3, 16, 16));
    let both: T4<f64, Cpu> = (x.clone() + step.clone(), x.clone() - step).concat_along(Axis::<0>);
    let k = 1.0 / (4.0 * eps);
    let (_, old, _) =
        super::losses::weighted_pass(&d64, &both, &Side::default(), true, false, |v| {
            (0..v.len()).map(|j| if j < 4 { k } else { -k }).collect()
        });
    let flat = |g: &[T1<f64, Cpu>]| g.iter().flat_map(|t| t.as_vec()).collect::<Vec<f64>>();
    let (e, o) = (flat(&exact), flat(&old));
    let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
    let err = e
        .iter()
        .zip(&o)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
        / norm;
    eprintln!("unfrozen finite difference at delta 1e-3: rel err {err:.2e}");
    assert!(
        err > 1e-2,
        "the crossings should bias the unfrozen difference ({err:.2e})"
    );
}

#[test]
fn penalty_zero_for_constant_d_and_closed_form_for_linear_d() {
    let dev = Cpu::default();
    let x: T4<f64, Cpu> = dev.tensor_from_vec(Rng::new(5).normals(4 * 2), (4, 2, 1, 1));
    // constant D: the last layer's weight is zero, its bias not
    let mut nb = NetBuilder::<f64, Cpu>::new(dev.clone(), 1);
    let l = vec![
        nb.linear("a", 2, 4, LinearConfig::default()),
        Layer::Tanh,
        nb.linear("b", 4, 1, LinearConfig::default().gain(0.0)),
    ];
    let mut d = nb.finish(l, [2, 1, 1]);
    d.params.tensors[3] = dev.tensor_from_vec(vec![0.7], (1,));
    let (v, g) = penalty(&d, &x, &Side::default(), 1e-3, true);
    assert_eq!(v, 0.0);
    assert!(g.iter().all(|t| t.as_vec().iter().all(|&v| v == 0.0)));
    // linear D(x) = w.x + b: R = ||w||^2, dR/dw = 2w, dR/db = 0
    let mut nb = NetBuilder::<f64, Cpu>::new(dev.clone(), 2);
    let l = vec![nb.linear("fc", 2, 1, LinearConfig::default())];
    let d = nb.finish(l, [2, 1, 1]);
    let w = d.params.tensors[0].as_vec();
    let (v, g) = penalty(&d, &x, &Side::default(), 1e-3, true);
    let want = w[0] * w[0] + w[1] * w[1];
    assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    let gw = g[0].as_vec();
    assert!((gw[0] - 2.0 * w[0]).abs() < 1e-9 && (gw[1] - 2.0 * w[1]).abs() < 1e-9);
    assert!(g[1].as_vec()[0].abs() < 1e-9);
}

/// The f32 penalty gradient against the f64 one on identical weights and inputs, for every
/// discriminator: with an exact HVP only rounding separates them.
#[test]
fn penalty_grad_f32_vs_f64() {
    let dev = Cpu::default();
    let mut rng = Rng::new(11);
    for (cfg, shape, [b, c, h, w], classes) in penalty_cases() {
        let mut d32 =
            nets::discriminator::<f32, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        let mut d64 =
            nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        jitter(&mut d32, &mut rng, 0.1);
        for (t64, t32) in d64.params.tensors.iter_mut().zip(&d32.params.tensors) {
            let v: Vec<f64> = t32.as_vec().iter().map(|&v| v as f64).collect();
            *t64 = dev.tensor_from_vec(v, *t64.shape());
        }
        let xv: Vec<f32> = rng
            .normals(b * c * h * w)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let x32: T4<f32, Cpu> = dev.tensor_from_vec(xv.clone(), (b, c, h, w));
        let x64: T4<f64, Cpu> =
            dev.tensor_from_vec(xv.iter().map(|&v| v as f64).collect(), (b, c, h, w));
        let side = Side::labels(classes.map(|k| (0..b).map(|i| i % k).collect()));
        let (v32, g32) = penalty(&d32, &x32, &side, 1e-3, true);
        let (v64, g64) = penalty(&d64, &x64, &side, 1e-3, true);
        assert!(
            (v32 - v64).abs() <= 1e-4 * v64.abs(),
            "{cfg:?}: {v32} vs {v64}"
        );
        let a: Vec<f64> = g32.iter().flat_map(|t| t.as_vec()).map(f64::from).collect();
        let r: Vec<f64> = g64.iter().flat_map(|t| t.as_vec()).collect();
        let (diff, norm) = diff_and_norm(&a, &r);
        assert!(
            diff <= 1e-4 * norm,
            "{cfg:?}: f32 vs f64 {:.2e}",
            diff / norm
        );
    }
}

/// The trainer's D step takes each g_j from the loss pass's input gradient (c_j g_j) and
/// both penalties from one tangent pass over it; that equals the loss gradient plus
/// `gamma/2` times each penalty's own gradient, for rpgan (all coefficients usable), for
/// hinge with real samples beyond the margin (R1's half falls back to its own pass), for
/// one penalty only, and for a conditional D.
#[test]
fn d_step_reuses_the_loss_pass_exactly() {
    use super::losses::weighted_pass;
    let mut rng = Rng::new(21);
    let td = super::tests::tanh_images(&mut rng, [32, 3, 8, 8]);
    let labels = ClassLabels {
        labels: (0..32).map(|i| i % 4).collect(),
        classes: 4,
    };
    let cases = [
        ("rpgan", "[r1, r2]", false, 0.0),
        ("hinge", "[r1, r2]", false, 3.0),
        ("ns", "[r2]", false, 0.0),
        ("rpgan", "[r1, r2]", true, 0.0),
    ];
    for (loss, pens, cond, shift) in cases {
        let yaml = format!(
            "generator: {{arch: r3gan, variant: E, width: 4, z_dim: 8}}\n\
             discriminator: {{arch: r3gan, variant: E, width: 4}}\n\
             loss: {loss}\npenalties: {pens}\ngamma: 2.0\nconditional: {cond}\n\
             optimizer: {{lr: 0.001, betas: [0.0, 0.99]}}\nbatch: 4\nsteps: 1\nseed: 1\n"
        );
        let cfg: TrainConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let mut t = Trainer::build(
            cfg.clone(),
            td.clone(),
            Some(labels.clone()),
            3,
            Cpu::default(),
        )
        .unwrap();
        jitter(&mut t.d, &mut rng, 0.1);
        // hinge: push D(real) beyond the margin so R1's coefficients vanish
        let n = t.d.params.len();
        let bias = t.d.params.tensors[n - 1].as_vec();
        t.d.params.tensors[n - 1] =
            t.d.dev
                .tensor_from_vec(bias.iter().map(|v| v + shift).collect(), (bias.len(),));
        let dev = t.d.dev.clone();
        let xv: Vec<f32> = rng.normals(8 * 3 * 64).iter().map(|&v| v as f32).collect();
        let both: T4<f32, Cpu> = dev.tensor_from_vec(xv.clone(), (8, 3, 8, 8));
        let ys: Vec<usize> = (0..8).map(|i| i % 4).collect();
        let side = Side::labels(cond.then(|| ys.clone()));
        let w = 1.0;
        let (out, got, vals) = t.d_loss_and_penalties(&both, &side, Some(w));
        // reference: the loss pass, then each penalty on its own
        let (_, mut want, _) = weighted_pass(&t.d, &both, &side, true, false, |v| {
            let (_, mut cr, cf) = super::losses::d_loss(cfg.loss, &v[..4], &v[4..]);
            cr.extend(cf);
            cr
        });
        let half = |lo: usize| {
            let x: T4<f32, Cpu> =
                dev.tensor_from_vec(xv[lo * 192..(lo + 4) * 192].to_vec(), (4, 3, 8, 8));
            let s = Side::labels(cond.then(|| ys[lo..lo + 4].to_vec()));
            penalty(&t.d, &x, &s, 1e-3, true)
        };
        for &p in &cfg.penalties {
            let (v, g) = half(if p == Penalty::R1 { 0 } else { 4 });
            let got_v = vals.iter().find(|(q, _)| *q == p).unwrap().1;
            assert!(
                (got_v - v).abs() <= 1e-5 * v,
                "{loss} {p:?}: {got_v} vs {v}"
            );
            for (a, b) in want.iter_mut().zip(g) {
                *a = a.clone() + b * (w as f32);
            }
        }
        assert!(out.loss.is_finite());
        let a: Vec<f64> = got.iter().flat_map(|t| t.as_vec()).map(f64::from).collect();
        let r: Vec<f64> = want
            .iter()
            .flat_map(|t| t.as_vec())
            .map(f64::from)
            .collect();
        let (diff, norm) = diff_and_norm(&a, &r);
        assert!(
            diff <= 1e-5 * norm,
            "{loss} {pens} cond {cond}: {:.2e}",
            diff / norm
        );
    }
}

/// The PyTorch fixture's folder (see `scripts/penalty_fixture.py`).
fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/penalty")
}

/// A fixture case's name, e.g. `r3gan-e-proj`.
pub(super) fn case_name(cfg: &NetConfig, classes: Option<usize>) -> String {
    let mut n = format!("{:?}", cfg.arch).to_lowercase();
    if let Some(v) = cfg.variant {
        n += &format!("-{v:?}").to_lowercase();
    }
    if cfg.spectral_norm == Some(true) {
        n += "-sn";
    }
    if classes.is_some() {
        n += "-proj";
    }
    n
}

/// What `cases.json` records of a net: its layer list, parameter names, spectrally
/// normalised weights and classes.
fn case_json(net: &Net<f64, Cpu>) -> serde_json::Value {
    let sn: Vec<String> = (net.sn.lock().unwrap().iter())
        .map(|s| net.params.names[s.param].clone())
        .collect();
    serde_json::json!({
        "layers": net.layers,
        "param_names": net.params.names,
        "sn": sn,
        "classes": net.classes().unwrap_or(0),
    })
}

/// Writes the fixture's inputs: every penalty case's f64 discriminator with jittered
/// weights, an input batch and labels. Run by hand (see `scripts/penalty_fixture.py`).
#[test]
#[ignore = "writes tests/fixtures/penalty/ when ABLATE_WRITE_FIXTURE is set"]
fn write_penalty_fixture_inputs() {
    use crate::nn::{save_safetensors, NamedTensor};
    if std::env::var_os("ABLATE_WRITE_FIXTURE").is_none() {
        eprintln!(
            "set ABLATE_WRITE_FIXTURE=1 to write {}",
            fixture_dir().display()
        );
        return;
    }
    let dev = Cpu::default();
    let mut rng = Rng::new(31);
    let mut cases = serde_json::Map::new();
    let mut ts = vec![];
    for (cfg, shape, [b, c, h, w], classes) in penalty_cases() {
        let name = case_name(&cfg, classes);
        let mut d = nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 4).unwrap();
        jitter(&mut d, &mut rng, 0.1);
        // one power iteration so u, v are those of these weights
        let one = Side::labels(classes.map(|_| vec![0]));
        let _ = d.forward_side(dev.zeros_like(&(1, c, h, w)), &one, true);
        for mut t in d.to_named() {
            t.name = format!("{name}/{}", t.name);
            ts.push(t);
        }
        ts.push(NamedTensor {
            name: format!("{name}/x"),
            shape: vec![b, c, h, w],
            data: rng.normals(b * c * h * w),
        });
        ts.push(NamedTensor {
            name: format!("{name}/labels"),
            shape: vec![b],
            data: (0..b).map(|i| (i % classes.unwrap_or(1)) as f64).collect(),
        });
        cases.insert(name, case_json(&d));
    }
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::to_string_pretty(&cases).unwrap();
    std::fs::write(dir.join("cases.json"), json + "\n").unwrap();
    save_safetensors(&dir.join("inputs.safetensors"), &ts, Default::default()).unwrap();
}

/// ablate's R1/R2 parameter gradient equals PyTorch's double backward on identical
/// weights and inputs, for every discriminator (the committed fixture of
/// `scripts/penalty_fixture.py`; no PyTorch needed here).
#[test]
fn penalty_matches_pytorch_double_backward() {
    use crate::nn::load_safetensors;
    let dir = fixture_dir();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let (inputs, _) = load_safetensors::<f64>(&dir.join("inputs.safetensors")).unwrap();
    let (expected, meta) = load_safetensors::<f64>(&dir.join("expected.safetensors")).unwrap();
    let dev = Cpu::default();
    let mut n = 0;
    for (cfg, shape, _, classes) in penalty_cases() {
        let name = case_name(&cfg, classes);
        let mut d = nets::discriminator::<f64, Cpu>(&cfg, shape, classes, dev.clone(), 0).unwrap();
        assert_eq!(
            cases[&name],
            case_json(&d),
            "{name}: the net changed since the fixture was made; regenerate it \
             (scripts/penalty_fixture.py)"
        );
        d.load_named(&inputs, &format!("{name}/")).unwrap();
        let x = &inputs[&format!("{name}/x")];
        let xs = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let x: T4<f64, Cpu> = dev.tensor_from_vec(x.data.clone(), xs);
        let labels = inputs[&format!("{name}/labels")]
            .data
            .iter()
            .map(|&v| v as usize);
        let side = Side::labels(classes.map(|_| labels.collect()));
        let (r, grads) = penalty(&d, &x, &side, 1e-3, true);
        let want_r = expected[&format!("{name}/R")].data[0];
        assert!(
            (r - want_r).abs() <= 1e-10 * want_r,
            "{name}: R {r} vs {want_r}"
        );
        let (mut diff, mut norm) = (0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let want = &expected[&format!("{name}/grad/{}", d.params.names[i])].data;
            for (a, b) in g.as_vec().iter().zip(want) {
                diff += (a - b) * (a - b);
                norm += b * b;
            }
        }
        let rel = (diff / norm).sqrt();
        assert!(rel < 1e-9, "{name}: vs PyTorch {rel:.2e} ({meta:?})");
        n += 1;
    }
    assert_eq!(n, cases.as_object().unwrap().len());
}
