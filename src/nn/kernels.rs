//! Parallel CPU kernels for the rest of the training step: batch norm (train and eval),
//! the resampling ops (2x2 average pooling, 2x nearest / bilinear / FIR up-sampling, FIR
//! down-sampling; in `kernels/resample.rs`), and the in-place Adam and EMA updates.
//!
//! The composed versions in [`super::ops`] and [`super::params`] build every one of these
//! from several dfdx ops (each a full pass over memory, a fresh buffer, and on the CPU a
//! single-threaded kernel). Here each is one dfdx custom op (`split_tape`,
//! `add_backward_op`, `Gradients::get_or_alloc_mut`, as in [`super::fused`]) whose forward
//! and backward are one or two rayon-parallel passes. [`super::Dev`]'s `Cpu` impls route
//! to them; other devices keep the composed default methods.
//!
//! Determinism: work is split into fixed pieces (`(batch, channel)` planes, channels, or
//! fixed-size chunks) whose writes are disjoint, and every reduction runs serially in a
//! fixed order inside one piece (in f64), so results are bit-identical for any number of
//! threads.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{take, values, zeroed};
use super::{Float, T1, T4};

mod pointwise;
mod resample;
pub(crate) use pointwise::map_index;
pub use pointwise::{add_op, tanh_op};
pub use resample::{avg_pool2x2_op, separable_op, upsample_bilinear2x_op, upsample_nearest2x_op};

/// Serial below this many values (rayon's overhead is not worth it).
const PAR_MIN: usize = 1 << 15;
/// Element chunk of the element-wise optimiser kernels.
const CHUNK: usize = 1 << 14;

/// `f` over matching plane pairs of `src` and `dst`, in parallel when the work is large.
fn planes<E: Float, F>(src: &[E], sp: usize, dst: &mut [E], dp: usize, f: F)
where
    F: Fn(usize, &[E], &mut [E]) + Sync + Send,
{
    debug_assert_eq!(src.len() / sp.max(1), dst.len() / dp.max(1));
    if sp == 0 || dp == 0 {
        return;
    }
    if src.len().max(dst.len()) >= PAR_MIN {
        src.par_chunks(sp)
            .zip(dst.par_chunks_mut(dp))
            .enumerate()
            .for_each(|(i, (s, d))| f(i, s, d));
    } else {
        src.chunks(sp)
            .zip(dst.chunks_mut(dp))
            .enumerate()
            .for_each(|(i, (s, d))| f(i, s, d));
    }
}

/// `f(c)` for every channel `c < n`, in parallel when `work` (values touched) is large;
/// results in channel order.
fn per_channel<T: Send, F>(n: usize, work: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> T + Sync + Send,
{
    if work >= PAR_MIN {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// `acc += add`, element-wise (parallel for large slices).
pub(crate) fn add_into<E: Float>(acc: &mut [E], add: &[E]) {
    assert_eq!(acc.len(), add.len());
    let f = |(a, b): (&mut [E], &[E])| {
        for (x, &y) in a.iter_mut().zip(b) {
            *x += y;
        }
    };
    if acc.len() >= PAR_MIN {
        acc.par_chunks_mut(CHUNK)
            .zip(add.par_chunks(CHUNK))
            .for_each(f);
    } else {
        f((acc, add));
    }
}

/// Channels one [`channel_sums`] job sums side by side: independent chains of f64 adds
/// that overlap, where one channel at a time waited on each add in turn.
const LANES: usize = 4;

/// `s += t`, lane by lane (indexed: an iterator over the array by value stays a loop
/// through memory, a third slower here).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn acc<const K: usize>(s: &mut [f64; K], t: [f64; K]) {
    for k in 0..K {
        s[k] += t[k];
    }
}

/// Per-channel sums over `(b, hw)` of the `K` terms `g(channel, index, value)` for data
/// laid out `(b, c, hw)`, in f64; every sum runs serially in `(b, i)` order, whatever the
/// thread count.
fn channel_sums<E: Float, const K: usize>(
    data: &[E],
    (b, c, hw): (usize, usize, usize),
    g: impl Fn(usize, usize, E) -> [f64; K] + Sync + Send,
) -> Vec<[f64; K]> {
    let groups = per_channel(c.div_ceil(LANES), data.len(), |gi| {
        let c0 = gi * LANES;
        let lanes = LANES.min(c - c0);
        let mut s = [[0.0f64; K]; LANES];
        for bi in 0..b {
            let o = (bi * c + c0) * hw;
            if lanes == LANES {
                // the lanes' planes side by side: LANES independent chains
                for i in 0..hw {
                    for (l, s) in s.iter_mut().enumerate() {
                        let j = o + l * hw + i;
                        acc(s, g(c0 + l, j, data[j]));
                    }
                }
            } else {
                for (l, s) in s.iter_mut().take(lanes).enumerate() {
                    let start = o + l * hw;
                    for (j, &v) in data[start..start + hw].iter().enumerate() {
                        acc(s, g(c0 + l, start + j, v));
                    }
                }
            }
        }
        s
    });
    groups.into_iter().flatten().take(c).collect()
}

// ---------------------------------------------------------------- batch norm

/// Batch norm in training mode as one op: batch statistics per channel over `(B, H, W)`
/// (two-pass, in f64), `y = (x - mean) / sqrt(var + eps) * gamma + beta`; returns the
/// mean and biased variance too. Backward: the usual closed form
/// `dx = gamma * inv / n * (n dy - sum dy - xhat sum(dy xhat))`.
pub fn batch_norm_train_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    gamma: T1<E, Cpu, T>,
    beta: T1<E, Cpu, T>,
    eps: f64,
) -> (T4<E, Cpu, T>, Vec<E>, Vec<E>)
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (y, mean, var) = batch_norm_op(x, gamma, beta, eps, None);
    let to_e = |v: Vec<f64>| v.into_iter().map(E::of).collect();
    (y, to_e(mean), to_e(var))
}

/// Batch norm in evaluation mode as one op: `y = (x - rm) / sqrt(rv + eps) * gamma + beta`
/// with constant running statistics (backward: `dx = dy * gamma * inv`).
pub fn batch_norm_eval_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    gamma: T1<E, Cpu, T>,
    beta: T1<E, Cpu, T>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let c = x.shape().1;
    assert_eq!(running_mean.len(), c, "batch_norm: running mean size");
    assert_eq!(running_var.len(), c, "batch_norm: running var size");
    batch_norm_op(x, gamma, beta, eps, Some((running_mean, running_var))).0
}

/// Both batch norms: normalise with the batch's statistics (`running: None`, returned as
/// f64 mean and biased variance) or with the given running ones, then scale and shift
/// per channel. The backward pass differs only in `dx`: batch statistics depend on `x`.
fn batch_norm_op<E: Float, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    gamma: T1<E, Cpu, T>,
    beta: T1<E, Cpu, T>,
    eps: f64,
    running: Option<(&[f64], &[f64])>,
) -> (T4<E, Cpu, T>, Vec<f64>, Vec<f64>)
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let s = *x.shape();
    let (b, c, h, w) = s;
    let hw = h * w;
    assert_eq!(gamma.shape().0, c, "batch_norm: gamma has the wrong size");
    assert_eq!(beta.shape().0, c, "batch_norm: beta has the wrong size");
    let n = (b * hw) as f64;
    // the kernels index memory in logical order: make permuted / broadcast inputs dense
    let (x, tx) = x.contiguous().split_tape();
    let (gamma, tg) = gamma.contiguous().split_tape();
    let (beta, tb) = beta.contiguous().split_tape();
    let dev = x.device().clone();
    let xv = values(&x);
    let gv = gamma.as_vec();
    let bv = beta.as_vec();
    let (mean, var) = match running {
        Some((rm, rv)) => (rm.to_vec(), rv.to_vec()),
        None => {
            let mean: Vec<f64> = channel_sums(&xv, (b, c, hw), |_, _, v| [v.f64()])
                .into_iter()
                .map(|[s]| s / n)
                .collect();
            let var: Vec<f64> = channel_sums(&xv, (b, c, hw), |ch, _, v| {
                let d = v.f64() - mean[ch];
                [d * d]
            })
            .into_iter()
            .map(|[s]| s / n)
            .collect();
            (mean, var)
        }
    };
    let batch_stats = running.is_none();
    let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    // y = x * scale + shift per channel
    let scale: Vec<E> = (0..c).map(|ch| E::of(inv[ch] * gv[ch].f64())).collect();
    let shift: Vec<E> = (0..c)
        .map(|ch| E::of(bv[ch].f64() - mean[ch] * inv[ch] * gv[ch].f64()))
        .collect();
    let mut y = zeroed(xv.len());
    planes(&xv, hw, &mut y, hw, |i, src, dst| {
        let ch = i % c;
        let (a, bb) = (scale[ch], shift[ch]);
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v * a + bb;
        }
    });
    drop(xv);
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, s);
    let stats = (mean.clone(), var);
    let (xg, gg, bg, og) = (x.ghost(), gamma.ghost(), beta.ghost(), out.ghost());
    let mut tape = tx.merge(tg).merge(tb);
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&xg)?;
        // the output gradient, taken: freed when done (see `host::take`)
        let dy = take(grads.get_or_alloc_mut(&og)?);
        let xv = values(&x);
        let xhat = |ch: usize, v: E| (v.f64() - mean[ch]) * inv[ch];
        // sum dy and sum dy * xhat, in one pass
        let (sdy, sdyx): (Vec<f64>, Vec<f64>) = channel_sums(&dy, (b, c, hw), |ch, i, d| {
            [d.f64(), d.f64() * xhat(ch, xv[i])]
        })
        .into_iter()
        .map(|[a, b]| (a, b))
        .unzip();
        // dx, added straight into x's gradient
        planes(&dy, hw, grads.get_or_alloc_mut(&xg)?, hw, |i, d, gx| {
            let ch = i % c;
            if !batch_stats {
                for (o, &dv) in gx.iter_mut().zip(d) {
                    *o += dv * scale[ch];
                }
                return;
            }
            let k = gv[ch].f64() * inv[ch];
            let (m1, m2) = (sdy[ch] / n, sdyx[ch] / n);
            let xs = &xv[i * hw..(i + 1) * hw];
            for ((o, &dv), &xv) in gx.iter_mut().zip(d).zip(xs) {
                *o += E::of(k * (dv.f64() - m1 - xhat(ch, xv) * m2));
            }
        });
        drop(dy);
        let dgamma: Vec<E> = sdyx.iter().map(|&v| E::of(v)).collect();
        let dbeta: Vec<E> = sdy.iter().map(|&v| E::of(v)).collect();
        add_into(grads.get_or_alloc_mut(&gg)?, &dgamma);
        add_into(grads.get_or_alloc_mut(&bg)?, &dbeta);
        Ok(())
    });
    (out.put_tape(tape), stats.0, stats.1)
}

// ---------------------------------------------------------------- optimiser / EMA

/// One Adam step's constants (see [`super::params::Adam::step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// beta1.
    pub b1: f64,
    /// beta2.
    pub b2: f64,
    /// `1 / (1 - beta2^t)`.
    pub inv_bc2: f64,
    /// `lr / (1 - beta1^t)`.
    pub step: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

/// Adam on host slices, in place, in parallel fixed-size chunks; the same arithmetic, in
/// the same order and precision, as the composed update.
pub fn adam_slices<E: Float>(p: &mut [E], g: &[E], m: &mut [E], v: &mut [E], h: AdamStep) {
    let n = p.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "adam: lengths"
    );
    let (b1, c1) = (E::of(h.b1), E::of(1.0 - h.b1));
    let (b2, c2) = (E::of(h.b2), E::of(1.0 - h.b2));
    let (ib, eps, st) = (E::of(h.inv_bc2), E::of(h.eps), E::of(h.step));
    type Chunk<'a, E> = (((&'a mut [E], &'a [E]), &'a mut [E]), &'a mut [E]);
    let f = |(((p, g), m), v): Chunk<E>| {
        for i in 0..p.len() {
            let gi = g[i];
            let mi = m[i] * b1 + gi * c1;
            let vi = v[i] * b2 + gi * gi * c2;
            // sqrt in f64 rounded to E is E's correctly rounded sqrt (as the composed op's)
            let denom = E::of((vi * ib).f64().sqrt()) + eps;
            p[i] -= mi / denom * st;
            m[i] = mi;
            v[i] = vi;
        }
    };
    if n >= PAR_MIN {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(f);
    } else {
        f((((p, g), m), v));
    }
}

/// `p = p * beta + s * (1 - beta)` on host slices, in place, in parallel chunks.
pub fn lerp_slices<E: Float>(p: &mut [E], s: &[E], beta: f64) {
    assert_eq!(p.len(), s.len(), "ema: lengths");
    let (a, b) = (E::of(beta), E::of(1.0 - beta));
    let f = |(p, s): (&mut [E], &[E])| {
        for (x, &y) in p.iter_mut().zip(s) {
            *x = *x * a + y * b;
        }
    };
    if p.len() >= PAR_MIN {
        p.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(f);
    } else {
        f((p, s));
    }
}

/// Grow `buf` to at least `n` values (kept between calls, so steady state allocates
/// nothing) and return the first `n`.
fn scratch<E: Float>(buf: &mut Vec<E>, n: usize) -> &mut [E] {
    if buf.len() < n {
        buf.resize(n, E::default());
    }
    &mut buf[..n]
}

/// Adam on CPU tensors in place: the tensors' values go through `scratch` (one buffer of
/// `4 n`, reused across calls), are updated by [`adam_slices`] and written back into the
/// tensors' own storage (no new tensor).
pub fn adam_cpu<E: Float>(
    p: &mut T1<E, Cpu>,
    g: &T1<E, Cpu>,
    m: &mut T1<E, Cpu>,
    v: &mut T1<E, Cpu>,
    h: AdamStep,
    buf: &mut Vec<E>,
) where
    Cpu: Device<E>,
{
    let n = p.shape().0;
    let s = scratch(buf, 4 * n);
    let (ps, rest) = s.split_at_mut(n);
    let (gs, rest) = rest.split_at_mut(n);
    let (ms, vs) = rest.split_at_mut(n);
    p.copy_into(ps);
    g.copy_into(gs);
    m.copy_into(ms);
    v.copy_into(vs);
    adam_slices(ps, gs, ms, vs, h);
    p.copy_from(ps);
    m.copy_from(ms);
    v.copy_from(vs);
}

/// `p = p * beta + s * (1 - beta)` on CPU tensors, in place (through `buf`, reused).
pub fn lerp_cpu<E: Float>(p: &mut T1<E, Cpu>, s: &T1<E, Cpu>, beta: f64, buf: &mut Vec<E>)
where
    Cpu: Device<E>,
{
    let n = p.shape().0;
    let sc = scratch(buf, 2 * n);
    let (ps, ss) = sc.split_at_mut(n);
    p.copy_into(ps);
    s.copy_into(ss);
    lerp_slices(ps, ss, beta);
    p.copy_from(ps);
}

/// The CPU overrides of the step-kernel methods of [`super::Dev`] for one float type
/// (expanded inside `impl Dev<$e> for Cpu`).
macro_rules! cpu_step_kernels {
    ($e:ty) => {
        fn add<T: Tape<$e, Self>>(a: T4<$e, Self, T>, b: T4<$e, Self, T>) -> T4<$e, Self, T> {
            kernels::add_op(a, b)
        }
        fn tanh<T: Tape<$e, Self>>(x: T4<$e, Self, T>) -> T4<$e, Self, T> {
            kernels::tanh_op(x)
        }
        fn batch_norm_train<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            gamma: T1<$e, Self, T>,
            beta: T1<$e, Self, T>,
            eps: f64,
        ) -> (T4<$e, Self, T>, Vec<$e>, Vec<$e>) {
            kernels::batch_norm_train_op(x, gamma, beta, eps)
        }
        fn batch_norm_eval<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            gamma: T1<$e, Self, T>,
            beta: T1<$e, Self, T>,
            running_mean: &[f64],
            running_var: &[f64],
            eps: f64,
        ) -> T4<$e, Self, T> {
            kernels::batch_norm_eval_op(x, gamma, beta, running_mean, running_var, eps)
        }
        fn avg_pool2x2<T: Tape<$e, Self>>(x: T4<$e, Self, T>) -> T4<$e, Self, T> {
            kernels::avg_pool2x2_op(x)
        }
        fn upsample_nearest2x<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            _: &ops::IdxCache<Self>,
        ) -> T4<$e, Self, T> {
            kernels::upsample_nearest2x_op(x)
        }
        fn upsample_bilinear2x<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            _: &ops::IdxCache<Self>,
        ) -> T4<$e, Self, T> {
            kernels::upsample_bilinear2x_op(x)
        }
        fn upsample_fir2x<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            _: &ops::IdxCache<Self>,
        ) -> T4<$e, Self, T> {
            let (_, _, h, w) = *x.shape();
            kernels::separable_op(x, &resample::fir_up_taps(h), &resample::fir_up_taps(w))
        }
        fn downsample_fir2x<T: Tape<$e, Self>>(
            x: T4<$e, Self, T>,
            _: &ops::IdxCache<Self>,
        ) -> T4<$e, Self, T> {
            let (_, _, h, w) = *x.shape();
            kernels::separable_op(x, &resample::fir_down_taps(h), &resample::fir_down_taps(w))
        }
        fn adam_update(
            p: &mut T1<$e, Self>,
            g: &T1<$e, Self>,
            m: &mut T1<$e, Self>,
            v: &mut T1<$e, Self>,
            h: kernels::AdamStep,
            buf: &mut Vec<$e>,
        ) {
            kernels::adam_cpu(p, g, m, v, h, buf)
        }
        fn lerp_update(p: &mut T1<$e, Self>, s: &T1<$e, Self>, beta: f64, buf: &mut Vec<$e>) {
            kernels::lerp_cpu(p, s, beta, buf)
        }
    };
}
pub(crate) use cpu_step_kernels;
