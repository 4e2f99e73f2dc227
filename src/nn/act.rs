//! Piecewise-linear activations (ReLU, LeakyReLU) as a gated product, and the linearised
//! ("tangent") passes that exact gradient penalties are built on.
//!
//! Every ReLU / LeakyReLU is written as `y = x * s(gate)` with the slope
//! `s(v) = 1 if v > 0 else a` (PyTorch's convention at 0) and `gate = x` in an ordinary pass.
//! A *recording* pass keeps each activation's gate (its pre-activation, an `Arc` clone, no
//! copy); a *tangent* pass feeds a direction `dx` through the same network with every gate
//! replayed from the recording and every additive constant (biases) dropped. On a network
//! whose only nonlinearities are these activations, the tangent pass computes `J(x) dx`
//! exactly, where `J(x)` is the network's input Jacobian at the recorded point, so the
//! parameter gradient of `sum_i w_i (J(x_i) dx_i)` is the Hessian-vector product
//! `sum_i w_i d/dtheta (grad_x D(x_i) . dx_i)` that double backward would give (the
//! second derivative of a piecewise-linear activation is zero almost everywhere). See
//! `gan::losses` for its use in R1/R2.
//!
//! The gated product has one CPU kernel (elementwise, rayon-parallel over fixed-size
//! chunks, so results do not depend on the thread count) and a composed dfdx fallback for
//! every other device.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{take, values, zeroed};
use super::{Dev, Float, T4};

/// Slope of the gated product for gate value `v`: 1 above zero, `a` at or below. A
/// select, not a branch: a gate's sign is a coin flip, and the branch the compiler chose
/// was mispredicted half the time (the kernel ran 4x slower).
#[inline(always)]
fn slope<E: Float>(v: E, a: E) -> E {
    std::hint::select_unpredictable(v > E::default(), E::of(1.0), a)
}

/// Elements per parallel chunk of the CPU kernels (work below one chunk stays serial).
const CHUNK: usize = 1 << 14;

/// `out[i] = x[i] * s(gate[i])` (or `out[i] += ...` with `add`) on the CPU.
pub fn gated_cpu<E: Float>(x: &[E], gate: &[E], a: E, out: &mut [E], add: bool) {
    assert_eq!(x.len(), gate.len());
    assert_eq!(x.len(), out.len());
    let kernel = |((o, x), g): ((&mut [E], &[E]), &[E])| {
        if add {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o += x * slope(g, a);
            }
        } else {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = x * slope(g, a);
            }
        }
    };
    if out.len() > CHUNK {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(gate.par_chunks(CHUNK))
            .for_each(kernel);
    } else {
        kernel(((out, x), gate));
    }
}

/// The gated product from dfdx ops (any device): the slopes as a constant tensor, then a
/// product (its backward multiplies by the slopes).
pub fn gated_composed<E: Float, D: Dev<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    gate: &T4<E, D>,
    a: f64,
) -> T4<E, D, T> {
    let s = *gate.shape();
    let dev = gate.device().clone();
    let ones: T4<E, D> = dev.ones_like(&s);
    let slopes: T4<E, D> = dev.ones_like(&s) * E::of(a);
    let m = gate.gt(E::default()).choose(ones, slopes);
    x * m
}

/// The gated product on the CPU as one custom op: `x * s(gate)` with `gate = x` when none
/// is given (a plain ReLU / LeakyReLU), backward `grad_x += grad_y * s(gate)` (no gradient
/// flows to the gate).
pub fn gated_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    gate: Option<&T4<E, Cpu>>,
    a: f64,
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let s = *x.shape();
    if let Some(g) = gate {
        assert_eq!(s, *g.shape(), "gated product: shapes differ");
    }
    let a = E::of(a);
    let (x, mut tape) = x.contiguous().split_tape();
    // the gate is kept for the backward pass as a tensor (a shared handle, no copy)
    let gate = gate.cloned().unwrap_or_else(|| x.clone());
    let mut y = zeroed(s.num_elements());
    gated_cpu(&values(&x), &values(&gate), a, &mut y, false);
    let out: T4<E, Cpu> = x.device().tensor_from_vec(y, s);
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (xg, og) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&xg)?;
        // the output gradient, taken: freed when done (see `host::take`)
        let gy = take(grads.get_or_alloc_mut(&og)?);
        gated_cpu(&gy, &values(&gate), a, grads.get_or_alloc_mut(&xg)?, true);
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Rng;

    /// The CPU op against the composed path, values and input gradients, at sizes on both
    /// sides of the parallel threshold, with gates at exactly zero included.
    #[test]
    fn gated_op_matches_composed() {
        let dev = Cpu::default();
        let mut rng = Rng::new(7);
        for (b, c, h, w) in [(1, 1, 1, 3), (2, 3, 5, 7), (4, 16, 32, 17)] {
            let n = b * c * h * w;
            let mut xv = rng.normals(n);
            xv[0] = 0.0;
            let gv = rng.normals(n);
            let yv = rng.normals(n);
            for a in [0.0, 0.2] {
                let x: T4<f64, Cpu> = dev.tensor_from_vec(xv.clone(), (b, c, h, w));
                let gate: T4<f64, Cpu> = dev.tensor_from_vec(gv.clone(), (b, c, h, w));
                let cot: T4<f64, Cpu> = dev.tensor_from_vec(yv.clone(), (b, c, h, w));
                let run = |fused: bool| {
                    let t = x.leaky_trace();
                    let y = if fused {
                        gated_op(t, Some(&gate), a)
                    } else {
                        gated_composed(t, &gate, a)
                    };
                    let vals = y.as_vec();
                    let g = (y * cot.clone()).sum::<(), _>().backward();
                    (vals, g.get(&x).as_vec())
                };
                let (y1, g1) = run(true);
                let (y2, g2) = run(false);
                assert_eq!(y1, y2);
                assert_eq!(g1, g2);
                // hand check: slope 1 strictly above zero, `a` at or below
                for i in 0..n {
                    let s = if gv[i] > 0.0 { 1.0 } else { a };
                    assert_eq!(y1[i], xv[i] * s);
                    assert_eq!(g1[i], yv[i] * s);
                }
            }
        }
    }

    /// One thread and several give the same bits.
    #[test]
    fn gated_op_is_thread_count_independent() {
        let dev = Cpu::default();
        let mut rng = Rng::new(8);
        let n = 3 * 8 * 40 * 40;
        let x: T4<f32, Cpu> = dev.tensor_from_vec(
            rng.normals(n).iter().map(|&v| v as f32).collect(),
            (3, 8, 40, 40),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = gated_op(x.leaky_trace(), None, 0.2);
                let v = y.as_vec();
                let g = y.square().sum::<(), _>().backward();
                (v, g.get(&x).as_vec())
            })
        };
        assert_eq!(run(1), run(3));
    }
}
