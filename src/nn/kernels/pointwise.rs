//! Element-wise ops of the step that dfdx runs single-threaded on the calling thread: the
//! residual sum `a + b` and the generator's output `tanh`, each one parallel pass forward
//! and backward, with the same arithmetic as dfdx's kernels (so the same bits).

use dfdx::prelude::*;
use rayon::prelude::*;

use super::{add_into, take, values, CHUNK, PAR_MIN};
use super::{Float, T4};

/// `f(i)` for `i < n` into a new vector, in parallel fixed-size chunks when `n` is large.
pub(crate) fn map_index<E: Float>(n: usize, f: impl Fn(usize) -> E + Sync + Send) -> Vec<E> {
    if n >= PAR_MIN {
        (0..n).into_par_iter().with_min_len(CHUNK).map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// `a + b` as one op (the residual sum): backward adds the output gradient into both
/// inputs' gradients.
pub fn add_op<E: Float, T: Tape<E, Cpu>>(a: T4<E, Cpu, T>, b: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let s = *a.shape();
    assert_eq!(s, *b.shape(), "add: shapes differ");
    // gradients are laid out as storage is: make views (broadcasts) dense first
    let (a, ta) = a.contiguous().split_tape();
    let (b, tb) = b.contiguous().split_tape();
    let y = {
        let (av, bv) = (values(&a), values(&b));
        map_index(av.len(), |i| av[i] + bv[i])
    };
    let out: T4<E, Cpu> = a.device().tensor_from_vec(y, s);
    let mut tape = ta.merge(tb);
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (ag, bg, og) = (a.ghost(), b.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&ag)?;
        grads.try_alloc_for(&bg)?;
        // the output gradient, taken: freed when done (see `host::take`)
        let gy = take(grads.get_or_alloc_mut(&og)?);
        add_into(grads.get_or_alloc_mut(&ag)?, &gy);
        add_into(grads.get_or_alloc_mut(&bg)?, &gy);
        Ok(())
    });
    out.put_tape(tape)
}

/// `tanh(x)` as one op; backward `grad_x += (1 - y^2) grad_y` from the output `y`.
pub fn tanh_op<E: Float, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let s = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let y = {
        let xv = values(&x);
        map_index(xv.len(), |i| xv[i].tanh())
    };
    let out: T4<E, Cpu> = x.device().tensor_from_vec(y, s);
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (xg, og, y) = (x.ghost(), out.ghost(), out.clone());
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&xg)?;
        let gy = take(grads.get_or_alloc_mut(&og)?);
        let yv = values(&y);
        let gx = grads.get_or_alloc_mut(&xg)?;
        let f = |(j, gx): (usize, &mut [E])| {
            let o = j * CHUNK;
            for (i, d) in gx.iter_mut().enumerate() {
                // dfdx writes `1 - y.powi(2)`: powi(2) is the one product y * y
                let y = yv[o + i];
                *d += (E::of(1.0) - y * y) * gy[o + i];
            }
        };
        if gx.len() >= PAR_MIN {
            gx.par_chunks_mut(CHUNK).enumerate().for_each(f);
        } else {
            gx.chunks_mut(CHUNK).enumerate().for_each(f);
        }
        Ok(())
    });
    out.put_tape(tape)
}
