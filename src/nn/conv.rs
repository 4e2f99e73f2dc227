//! Convolutions as whole-batch GEMMs: CPU custom ops for [`Dev::conv2d`] and
//! [`Dev::conv_transpose2d`] that call the `gemm` crate directly with rayon parallelism.
//!
//! The composed path (im2col, then dfdx's batched matmul broadcasting the weight over the
//! batch) multiplies one small matrix per sample: at 4x4 or 8x8 feature maps those are a
//! few dozen columns wide, so most of the time goes to edge micro-kernels and per-sample
//! overhead. Here every matrix product spans a whole chunk of the batch instead.
//!
//! ## Layouts
//!
//! Tensors stay NCHW everywhere the rest of the code looks. Inside an op, a chunk of `bc`
//! samples (`N = bc * P` columns, `P` the positions of one sample) is moved to the
//! matrices of [`super::layout`]: columns `cols (Cin * kh * kw, N)` ([`im2col_cb`] /
//! [`col2im_cb`]), channel-major `yt (C, N)` ([`to_cb`] / [`from_cb`]) and
//! position-major `(N, C)` ([`to_pc`]).
//!
//! With `groups` groups, the rows of `cols` and `yt` and the weight's rows are contiguous
//! per group, so every group is one GEMM over the whole chunk (strided views of the same
//! buffers; no transposed copies: the gemm crate takes any row and column strides).
//!
//! Where padding is a large share of the columns (a stride-2 4x4 kernel producing a 4x4
//! map reads padding in a fifth of its (tap, position) pairs), the op uses the split
//! layout of [`super::slots`] instead: positions grouped by the taps their windows have
//! inside the image, each group multiplied with only those taps. `Cols` picks the
//! layout from the shapes and gives both the same steps, so the ops below are written
//! once.
//!
//! ## The three GEMMs of each op (per group `g`, per chunk)
//!
//! `conv2d`, weight `W (Cout, Cin/G, kh, kw)` seen as `(Cout, kk)` with `kk = Cin/G*kh*kw`:
//! - forward: `yt_g = W_g @ cols_g`, then `y = from_cb(yt) + bias` (bias fused in the copy);
//! - weight grad: `dW_g^T += cols_g @ dyp_g` with `dyp` the output gradient
//!   position-major ([`to_pc`]; cols kept from the forward within a budget, else built
//!   again from `x` (see `Kept`); accumulated in place into the gradient; see
//!   `gemm::grouped_weight_grad` for why transposed);
//! - input grad: `dcols_g = W_g^T @ dyt_g`, then `dx += col2im(dcols)`.
//!
//! `conv_transpose2d`, weight `W (Cin, Cout/G, kh, kw)` seen as `(Cin, okk)`: it is the
//! adjoint of a conv2d, so the roles swap:
//! - forward: `cols_g = W_g^T @ xt_g`, then `y = col2im(cols) + bias` (bias is the
//!   initial value of every output plane);
//! - weight grad: `dW_g^T += dcols_g @ xp_g` with `dcols = im2col(dy)` and `xp` the input
//!   position-major;
//! - input grad: `dxt_g = W_g @ dcols_g`, then `dx += from_cb(dxt)`.
//!
//! The bias gradient is a per-channel sum of `dy`.
//!
//! A stride-1 `conv2d` with fewer outputs than inputs (the RGB head of every generator:
//! 3 outputs from 32 or more channels at full resolution) runs as the transposed conv
//! that equals it, with the weight flipped and transposed and padding `k - 1 - p`: its
//! columns have `cout * k * k` rows instead of `cin * k * k` (27 instead of 288 for a
//! 3x3 head on 32 channels), in the forward pass and in both backward products.
//!
//! ## Buffers, chunks and determinism
//!
//! Working matrices come from a small thread-local pool ([`Scratch`], in [`super::gemm`]
//! with the strided GEMM wrappers), so a training step
//! allocates only the op outputs. The batch is cut into chunks so that no working matrix
//! exceeds `cols::CHUNK_MAX` values (bounding the pool); the chunking depends only on
//! the shapes. Every value is reduced in a fixed order: gemm splits the output among threads
//! but runs each output's depth loop in one thread in the same order whatever the thread
//! count, and the copy kernels sum every output element sequentially. The same inputs
//! give bit-identical results on 1 or many threads.
//!
//! [`Dev::conv2d`]: super::Dev::conv2d
//! [`im2col_cb`]: super::layout::im2col_cb
//! [`col2im_cb`]: super::layout::col2im_cb
//! [`to_cb`]: super::layout::to_cb
//! [`from_cb`]: super::layout::from_cb
//! [`to_pc`]: super::layout::to_pc
//! [`Dev::conv_transpose2d`]: super::Dev::conv_transpose2d

use dfdx::prelude::*;

use super::cols::{Cols, Shapes};
use super::defer::Deferral;
use super::fused::Geom;
use super::gemm::{GemmFloat, Kept, Scratch};
use super::host::{take, values, zeroed};
use super::kernels::{add_into, map_index};
use super::layout::{channel_sums, Init};
use super::ops::ParamGrads;
use super::{T1, T4};

/// The three inputs of an op, tape split off and merged.
type Split<E, T> = (T4<E, Cpu>, T4<E, Cpu>, Option<T1<E, Cpu>>, T);

fn split<E: GemmFloat, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
) -> Split<E, T>
where
    Cpu: Device<E>,
{
    // the kernels borrow the storage (`values`): make it dense first, as a rule
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = w.contiguous().split_tape();
    let tape = tx.merge(tw);
    match b {
        Some(b) => {
            let (b, tb) = b.contiguous().split_tape();
            (x, w, Some(b), tape.merge(tb))
        }
        None => (x, w, None, tape),
    }
}

/// 2-D convolution (cross-correlation) of `x (B, Cin, H, W)` with `w (Cout, Cin/groups,
/// kh, kw)`, zero padding `pad`, plus an optional bias `(Cout,)`, as one CPU op whose
/// forward and both backward products are whole-batch GEMMs (see the module doc). With
/// [`ParamGrads::Skipped`] the backward computes the input gradient alone.
pub fn conv2d_op<E: GemmFloat, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    pg: ParamGrads,
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (bsz, cin, _, _) = *x.shape();
    let (cout, cpg, kh, kw) = *w.shape();
    assert!(groups > 0, "conv2d: zero groups");
    assert_eq!(
        cin,
        cpg * groups,
        "conv2d: {cin} input channels, weight wants {cpg}x{groups}"
    );
    assert_eq!(
        cout % groups,
        0,
        "conv2d: {cout} outputs not divisible by {groups} groups"
    );
    if let Some(b) = &b {
        assert_eq!(b.shape().0, cout, "conv2d: bias length");
    }
    if stride == 1 && groups == 1 && kh == kw && pad < kh && cout < cin {
        // few outputs (an RGB head): the same conv as a transposed one, whose columns
        // have `cout * k * k` rows instead of `cin * k * k` (see the module doc)
        let wf = match pg {
            ParamGrads::Computed | ParamGrads::Deferred(_) | ParamGrads::Fused(_) => {
                flip_transposed(w)
            }
            ParamGrads::Skipped => {
                // off the tape: nothing flows back to a fixed weight
                let (w, tape) = w.split_tape();
                flip_transposed(w).put_tape(tape)
            }
        };
        return conv_transpose2d_op(x, wf, b, 1, kh - 1 - pad, 1, pg);
    }
    let sh = Shapes {
        g: Geom::new(*x.shape(), kh, kw, stride, pad),
        co: cout,
        groups,
    };
    let (x, w, b, mut tape) = split(x, w, b);
    let dev = x.device().clone();
    let (g, p) = (sh.g, sh.p());
    let (xs, ys) = (cin * g.plane(), cout * p);
    let chunk = sh.chunk();
    let lay = Cols::of(&sh);

    let mut y = zeroed(bsz * ys);
    // the weight in the split columns' row order, kept for the backward
    let wp = lay.permuted(&values(&w));
    let mode = Mode::of(&pg, bsz * (xs + ys));
    let want = mode.want();
    // the columns, kept for the weight gradient where the backward will want them
    let mut kept = (T::OWNS_TAPE && want)
        .then(|| Kept::reserve(g.cols_len()))
        .flatten();
    {
        let xv = values(&x);
        let wv = values(&w);
        let wl = wp.as_deref().unwrap_or(&wv);
        let bv = b.as_ref().map(|b| values(b));
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut cols = Scratch::take(gc.cols_len());
            lay.im2col(&xv[b0 * xs..(b0 + bc) * xs], &gc, &mut cols);
            let mut yt = Scratch::take(cout * n);
            // yt_g (og x n) = W_g (og x kk) @ cols_g (kk x n)
            lay.forward(bc, &mut yt, wl, &cols);
            lay.unpack(
                &yt,
                (bc, cout, p),
                &mut y[b0 * ys..(b0 + bc) * ys],
                Init::Set(bv.as_deref()),
            );
            if let Some(k) = &mut kept {
                k.chunks.push_back(cols);
            }
        }
    }
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, (bsz, cout, g.ho, g.wo));
    let (xg, wg, bg, outg) = (
        x.ghost(),
        w.ghost(),
        b.as_ref().map(|b| b.ghost()).filter(|_| mode.bias()),
        out.ghost(),
    );
    if let Mode::Fused(held) = mode {
        held.check(x.shape(), ys * bsz, "conv2d");
        // dW_g^T = cols_g(a + t') @ dyp_g, dy the loss pass's output gradient
        let dw = fused_weight_grad(
            &sh,
            &lay,
            &held.sum_with(&x),
            &held.dy,
            w.shape().num_elements(),
        );
        tape.add_backward_op(move |grads| {
            add_into(grads.get_or_alloc_mut(&wg)?, &dw);
            Ok(())
        });
        return out.put_tape(tape);
    }
    tape.add_backward_op(move |grads| {
        let xv = values(&x);
        let wv = values(&w);
        let wl = wp.as_deref().unwrap_or(&wv);
        let mut db = vec![E::default(); if bg.is_some() { cout } else { 0 }];
        // the output gradient, taken: freed when done (see `host::take`)
        let dy_all = take(grads.get_or_alloc_mut(&outg)?);
        let mut kept = kept;
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let dy = &dy_all[b0 * ys..(b0 + bc) * ys];
            let mut dyt = Scratch::take(cout * n);
            lay.pack(dy, (bc, cout, p), &mut dyt);
            if bg.is_some() {
                channel_sums(dy, (bc, cout, p), &mut db);
            }
            let dyp = want.then(|| {
                let mut dyp = Scratch::take(n * cout);
                lay.pack_pos(dy, &dyt, (bc, cout, p), &mut dyp);
                dyp
            });
            let mut cols = match kept.as_mut() {
                Some(k) => k.chunks.pop_front().expect("one kept chunk per chunk"),
                None => Scratch::take(gc.cols_len()),
            };
            if let Some(dyp) = dyp {
                if kept.is_none() {
                    lay.im2col(&xv[b0 * xs..(b0 + bc) * xs], &gc, &mut cols);
                }
                let gw = grads.get_or_alloc_mut(&wg)?;
                // dW_g^T (kk x og) += cols_g (kk x n) @ dyp_g (n x og)
                lay.weight_grad(bc, gw, &cols, &dyp);
            }
            // dcols_g (kk x n) = W_g^T (kk x og) @ dyt_g (og x n), over cols
            lay.backward(bc, &mut cols, wl, &dyt);
            let gx = grads.get_or_alloc_mut(&xg)?;
            lay.col2im(&mut cols, &gc, &mut gx[b0 * xs..(b0 + bc) * xs], Init::Add);
        }
        if let Some(bg) = bg {
            add_into(grads.get_or_alloc_mut(&bg)?, &db);
        }
        mode.hold(&x, dy_all);
        Ok(())
    });
    out.put_tape(tape)
}

/// How an op's backward treats its weight gradient.
enum Mode<E: GemmFloat> {
    /// Computed here (`true`, [`ParamGrads::Computed`]), or not at all (`false`,
    /// [`ParamGrads::Skipped`]).
    Here(bool),
    /// Left in slot `.1` of the deferral.
    Deferred(Deferral, usize),
    /// Fused with the deferred one: what the loss pass held.
    Fused(Held<E>),
}

/// What a deferring op leaves for the tangent pass: its input and its output gradient.
struct Held<E: GemmFloat> {
    x: T4<E, Cpu>,
    dy: Vec<E>,
}

impl<E: GemmFloat> Mode<E>
where
    Cpu: Device<E>,
{
    /// The mode of an op whose input and output hold `len` values together. Where the
    /// deferral has no room for them (or for an op before this one), the op computes
    /// its weight gradient as usual, in both passes.
    fn of(pg: &ParamGrads, len: usize) -> Self {
        match pg {
            ParamGrads::Computed => Mode::Here(true),
            ParamGrads::Skipped => Mode::Here(false),
            ParamGrads::Deferred(d) => d
                .reserve(len)
                .map_or(Mode::Here(true), |i| Mode::Deferred(d.clone(), i)),
            ParamGrads::Fused(d) => d.next::<Held<E>>().map_or(Mode::Here(true), Mode::Fused),
        }
    }
    /// Whether the backward computes the weight gradient.
    fn want(&self) -> bool {
        matches!(self, Mode::Here(true))
    }
    /// Whether the backward computes the bias gradient.
    fn bias(&self) -> bool {
        matches!(self, Mode::Here(true) | Mode::Deferred(..))
    }
    /// The deferring backward's last step: leave `x` and the output gradient `dy`.
    fn hold(&self, x: &T4<E, Cpu>, dy: Vec<E>) {
        if let Mode::Deferred(d, i) = self {
            d.hold(*i, Box::new(Held { x: x.clone(), dy }));
        }
    }
}

impl<E: GemmFloat> Held<E>
where
    Cpu: Device<E>,
{
    /// Panics unless the loss pass's op had input shape `x` and `dy` values out.
    fn check(&self, x: &(usize, usize, usize, usize), dy: usize, op: &str) {
        assert!(
            self.x.shape() == x && self.dy.len() == dy,
            "{op}: the tangent pass does not mirror its loss pass ({:?} vs {x:?})",
            self.x.shape()
        );
    }
    /// `a + t'`: the held input plus the tangent pass's input `t` of the same shape.
    fn sum_with(&self, t: &T4<E, Cpu>) -> Vec<E> {
        let (a, t) = (values(&self.x), values(t));
        map_index(a.len(), |i| a[i] + t[i])
    }
}

/// A fused op's weight gradient (`len` values), `dW_g^T = cols_g(img) @ pos_g(outs)` over
/// the whole batch, a chunk at a time, from its image-side values `img` (conv2d: the
/// input; transposed: the output gradient) and its output-side values `outs` (conv2d: the
/// output gradient; transposed: the input), both NCHW. Computed in the forward, so that
/// neither the loss pass's values nor this pass's input outlive it; the backward adds it.
fn fused_weight_grad<E: GemmFloat>(
    sh: &Shapes,
    lay: &Cols,
    img: &[E],
    outs: &[E],
    len: usize,
) -> Vec<E> {
    let mut gw = zeroed(len);
    let (g, p, co) = (sh.g, sh.p(), sh.co);
    let (is, os) = (g.c * g.plane(), co * p);
    let chunk = sh.chunk();
    for b0 in (0..g.b).step_by(chunk) {
        let bc = chunk.min(g.b - b0);
        let (gc, n) = (sh.part(bc), bc * p);
        let mut cols = Scratch::take(gc.cols_len());
        lay.im2col(&img[b0 * is..(b0 + bc) * is], &gc, &mut cols);
        let oc = &outs[b0 * os..(b0 + bc) * os];
        // the split layout's position-major matrix is the channel-major one transposed
        let mut cb = Scratch::take(if lay.plan.is_some() { co * n } else { 0 });
        if lay.plan.is_some() {
            lay.pack(oc, (bc, co, p), &mut cb);
        }
        let mut pos = Scratch::take(n * co);
        lay.pack_pos(oc, &cb, (bc, co, p), &mut pos);
        lay.weight_grad(bc, &mut gw, &cols, &pos);
    }
    gw
}

/// The weight `wf (Cin, Cout, k, k)` of the transposed conv that equals the stride-1
/// conv2d with weight `w (Cout, Cin, k, k)` and padding `p` (at padding `k - 1 - p`):
/// `wf[ci, co, i, j] = w[co, ci, k-1-i, k-1-j]`. A CPU op (a permutation; its backward
/// the inverse permutation).
fn flip_transposed<E: GemmFloat, T: Tape<E, Cpu>>(w: T4<E, Cpu, T>) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (co, ci, kh, kw) = *w.shape();
    let kk = kh * kw;
    // wf[i, o, t] = w[o, i, kk - 1 - t] (flipping both kernel axes reverses the tap index)
    let wi = move |i: usize, o: usize| (o * ci + i) * kk;
    let (w, mut tape) = w.contiguous().split_tape();
    let wv = values(&w);
    let mut wf = Vec::with_capacity(wv.len());
    for i in 0..ci {
        for o in 0..co {
            wf.extend(wv[wi(i, o)..wi(i, o) + kk].iter().rev());
        }
    }
    let out: T4<E, Cpu> = w.device().tensor_from_vec(wf, (ci, co, kh, kw));
    let (wg, og) = (w.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let gf = take(grads.get_or_alloc_mut(&og)?);
        let gw = grads.get_or_alloc_mut(&wg)?;
        for (f, taps) in gf.chunks_exact(kk.max(1)).enumerate() {
            let (i, o) = (f / co, f % co);
            for (a, &v) in gw[wi(i, o)..wi(i, o) + kk]
                .iter_mut()
                .zip(taps.iter().rev())
            {
                *a += v;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// Transposed 2-D convolution (PyTorch's `ConvTranspose2d`) of `x (B, Cin, H, W)` with
/// `w (Cin, Cout/groups, kh, kw)`, plus an optional bias `(Cout,)`, as one CPU op whose
/// forward and both backward products are whole-batch GEMMs (see the module doc). With
/// [`ParamGrads::Skipped`] the backward computes the input gradient alone.
pub fn conv_transpose2d_op<E: GemmFloat, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
    pg: ParamGrads,
) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let (bsz, cin, h, wd) = *x.shape();
    let (cin2, cog, kh, kw) = *w.shape();
    assert!(groups > 0, "conv_transpose2d: zero groups");
    assert_eq!(
        cin, cin2,
        "conv_transpose2d: {cin} input channels, weight wants {cin2}"
    );
    assert_eq!(
        cin % groups,
        0,
        "conv_transpose2d: {cin} inputs not divisible by {groups} groups"
    );
    let cout = cog * groups;
    if let Some(b) = &b {
        assert_eq!(b.shape().0, cout, "conv_transpose2d: bias length");
    }
    let ho = super::ops::conv_t_out(h, kh, stride, pad);
    let wo = super::ops::conv_t_out(wd, kw, stride, pad);
    // the geometry of the conv2d this op is the adjoint of: image = our output
    let sh = Shapes {
        g: Geom::new((bsz, cout, ho, wo), kh, kw, stride, pad),
        co: cin,
        groups,
    };
    assert_eq!((sh.g.ho, sh.g.wo), (h, wd), "conv_transpose2d: geometry");
    let (x, w, b, mut tape) = split(x, w, b);
    let dev = x.device().clone();
    let (g, p) = (sh.g, sh.p());
    let (xs, ys) = (cin * p, cout * g.plane());
    let chunk = sh.chunk();
    let lay = Cols::of(&sh);

    let mut y = zeroed(bsz * ys);
    // the weight in the split columns' row order, kept for the backward
    let wp = lay.permuted(&values(&w));
    {
        let xv = values(&x);
        let wv = values(&w);
        let wl = wp.as_deref().unwrap_or(&wv);
        let bv = b.as_ref().map(|b| values(b));
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut xt = Scratch::take(cin * n);
            lay.pack(&xv[b0 * xs..(b0 + bc) * xs], (bc, cin, p), &mut xt);
            let mut cols = Scratch::take(gc.cols_len());
            // cols_g (okk x n) = W_g^T (okk x cig) @ xt_g (cig x n)
            lay.backward(bc, &mut cols, wl, &xt);
            lay.col2im(
                &mut cols,
                &gc,
                &mut y[b0 * ys..(b0 + bc) * ys],
                Init::Set(bv.as_deref()),
            );
        }
    }
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, (bsz, cout, ho, wo));
    let mode = Mode::of(&pg, bsz * (xs + ys));
    let want = mode.want();
    let (xg, wg, bg, outg) = (
        x.ghost(),
        w.ghost(),
        b.as_ref().map(|b| b.ghost()).filter(|_| mode.bias()),
        out.ghost(),
    );
    if let Mode::Fused(held) = mode {
        held.check(x.shape(), ys * bsz, "conv_transpose2d");
        // dW_g^T = dcols_g @ xp_g(a + t'), dcols = im2col(dy) of the loss pass
        let dw = fused_weight_grad(
            &sh,
            &lay,
            &held.dy,
            &held.sum_with(&x),
            w.shape().num_elements(),
        );
        tape.add_backward_op(move |grads| {
            add_into(grads.get_or_alloc_mut(&wg)?, &dw);
            Ok(())
        });
        return out.put_tape(tape);
    }
    tape.add_backward_op(move |grads| {
        let xv = values(&x);
        let wv = values(&w);
        let wl = wp.as_deref().unwrap_or(&wv);
        let mut db = vec![E::default(); if bg.is_some() { cout } else { 0 }];
        // the output gradient, taken: freed when done (see `host::take`)
        let dy_all = take(grads.get_or_alloc_mut(&outg)?);
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut dcols = Scratch::take(gc.cols_len());
            {
                let dy = &dy_all[b0 * ys..(b0 + bc) * ys];
                lay.im2col(dy, &gc, &mut dcols);
                if bg.is_some() {
                    channel_sums(dy, (bc, cout, g.plane()), &mut db);
                }
            }
            let mut xt = Scratch::take(cin * n);
            if want {
                let xc = &xv[b0 * xs..(b0 + bc) * xs];
                // the split layout's position-major matrix is the channel-major one
                // transposed: make that first (the plain one reads the chunk alone)
                if lay.plan.is_some() {
                    lay.pack(xc, (bc, cin, p), &mut xt);
                }
                let mut xp = Scratch::take(cin * n);
                lay.pack_pos(xc, &xt, (bc, cin, p), &mut xp);
                let gw = grads.get_or_alloc_mut(&wg)?;
                // dW_g^T (okk x cig) += dcols_g (okk x n) @ xp_g (n x cig)
                lay.weight_grad(bc, gw, &dcols, &xp);
            }
            // dxt_g (cig x n) = W_g (cig x okk) @ dcols_g (okk x n), over xt
            lay.forward(bc, &mut xt, wl, &dcols);
            let gx = grads.get_or_alloc_mut(&xg)?;
            lay.unpack(
                &xt,
                (bc, cin, p),
                &mut gx[b0 * xs..(b0 + bc) * xs],
                Init::Add,
            );
        }
        if let Some(bg) = bg {
            add_into(grads.get_or_alloc_mut(&bg)?, &db);
        }
        mode.hold(&x, dy_all);
        Ok(())
    });
    out.put_tape(tape)
}
