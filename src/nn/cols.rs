//! The steps of the CPU convolutions ([`super::conv`]) in either column layout, and how
//! a batch is cut into chunks.
//!
//! An op works on its batch a chunk at a time, so that no working matrix exceeds
//! [`CHUNK_MAX`] values; the chunking depends only on the shapes ([`Shapes`]). Within a
//! chunk, [`Cols`] picks the layout of the columns from the shapes: the plain one
//! ([`super::layout`]) or, where the padding is a large share of the work, the split one
//! ([`super::slots`]), and gives both the same steps (im2col, col2im, the packing of the
//! output side, and the three products), so `conv2d_op` and `conv_transpose2d_op` are
//! written once for both.

use super::fused::Geom;
use super::gemm::{grouped_matmul, grouped_weight_grad, GemmFloat, Op, Scratch};
use super::layout::{col2im_cb, from_cb, im2col_cb, to_cb, to_pc, Init};
use super::slots::{self, Dims, Plan};

/// Largest working matrix (values) an op builds for one batch chunk, unless one sample
/// alone is larger.
pub const CHUNK_MAX: usize = 1 << 21;

#[cfg(test)]
thread_local! {
    /// Tests lower [`CHUNK_MAX`] on their thread to exercise the chunked path.
    pub(crate) static CHUNK_MAX_TEST: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// Samples per chunk for working matrices of `per_sample` values per sample.
fn chunk_len(b: usize, per_sample: usize) -> usize {
    #[cfg(test)]
    let max = CHUNK_MAX_TEST.with(|c| c.get()).unwrap_or(CHUNK_MAX);
    #[cfg(not(test))]
    let max = CHUNK_MAX;
    (max / per_sample.max(1)).clamp(1, b.max(1))
}

/// Shapes of one convolution (`conv2d`) or its adjoint (`conv_transpose2d`): `img` is the
/// conv2d input side, `(oh, ow)` the conv2d output side.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shapes {
    /// The im2col geometry of the whole batch (`c` channels of the image side).
    pub g: Geom,
    /// Channels on the "output" side (conv2d output / transposed-conv input).
    pub co: usize,
    pub groups: usize,
}

impl Shapes {
    /// Output-side channels per group.
    pub(super) fn og(&self) -> usize {
        self.co / self.groups
    }
    /// Positions per sample on the output side.
    pub(super) fn p(&self) -> usize {
        self.g.ho * self.g.wo
    }
    /// Samples per chunk.
    pub(super) fn chunk(&self) -> usize {
        let per = (self.g.c * self.g.kh * self.g.kw * self.p())
            .max(self.co * self.p())
            .max(self.g.plane() * self.g.c);
        chunk_len(self.g.b, per)
    }
    /// The geometry of samples `b0..b0 + bc`.
    pub(super) fn part(&self, bc: usize) -> Geom {
        Geom { b: bc, ..self.g }
    }
}

/// The column layout of one op, chosen from its shapes: the plain one ([`super::layout`])
/// or, where the padding is a large share of the work, the split one ([`super::slots`]),
/// which multiplies only the taps inside the image. Each method is one step of the ops of
/// [`super::conv`] in whichever layout; `m` is the output side's channels per group.
pub(super) struct Cols {
    pub plan: Option<Plan>,
    groups: usize,
    m: usize,
    /// Image-side channels per group.
    cg: usize,
    taps: usize,
}

impl Cols {
    pub(super) fn of(sh: &Shapes) -> Self {
        Cols {
            plan: Plan::worth(&sh.g, sh.chunk()),
            groups: sh.groups,
            m: sh.og(),
            cg: sh.g.c / sh.groups,
            taps: sh.g.kh * sh.g.kw,
        }
    }
    pub(super) fn dims(&self, b: usize) -> Dims {
        Dims {
            groups: self.groups,
            m: self.m,
            cg: self.cg,
            taps: self.taps,
            b,
        }
    }
    /// The weight `(groups * m, cg * taps)` permuted to the split columns' row order, or
    /// `None` where the plain layout reads it as it is.
    pub(super) fn permuted<E: GemmFloat>(&self, w: &[E]) -> Option<Vec<E>> {
        let shape = (self.groups * self.m, self.cg, self.taps);
        self.plan.as_ref().map(|_| slots::permute_weight(w, shape))
    }
    /// Columns of the NCHW image chunk `img`.
    pub(super) fn im2col<E: GemmFloat>(&self, img: &[E], g: &Geom, cols: &mut [E]) {
        let Some(plan) = &self.plan else {
            return im2col_cb(img, g, cols);
        };
        let mut t = Scratch::take(img.len());
        slots::transpose(img, (g.b, g.c * g.plane()), &mut t);
        slots::im2col_slots(&t, g, self.groups, plan, cols);
    }
    /// The columns summed into the NCHW image chunk `img` per `init` (may clobber `cols`).
    pub(super) fn col2im<E: GemmFloat>(
        &self,
        cols: &mut [E],
        g: &Geom,
        img: &mut [E],
        init: Init<'_, E>,
    ) {
        match &self.plan {
            None => col2im_cb(cols, g, img, init),
            Some(plan) => slots::col2im_slots(cols, g, self.groups, plan, img, init),
        }
    }
    /// An output-side NCHW chunk `(b, c, p)` to its channel-major matrix `(c, n)`.
    pub(super) fn pack<E: GemmFloat>(&self, src: &[E], bcp: (usize, usize, usize), dst: &mut [E]) {
        match &self.plan {
            None => to_cb(src, bcp, dst),
            Some(plan) => slots::to_slots(src, bcp, plan, dst),
        }
    }
    /// The adjoint of [`Cols::pack`], per `init`.
    pub(super) fn unpack<E: GemmFloat>(
        &self,
        src: &[E],
        bcp: (usize, usize, usize),
        dst: &mut [E],
        init: Init<'_, E>,
    ) {
        match &self.plan {
            None => from_cb(src, bcp, dst, init),
            Some(plan) => slots::from_slots(src, bcp, plan, dst, init),
        }
    }
    /// The position-major matrix `(n, c)` of an output-side chunk, from the NCHW chunk
    /// `src` or its channel-major matrix `cb` ([`Cols::pack`]).
    pub(super) fn pack_pos<E: GemmFloat>(
        &self,
        src: &[E],
        cb: &[E],
        (b, c, p): (usize, usize, usize),
        dst: &mut [E],
    ) {
        match &self.plan {
            None => to_pc(src, (b, c, p), dst),
            Some(_) => slots::transpose(cb, (c, b * p), dst),
        }
    }
    /// Rows per group of the columns, and columns of an output-side matrix of `len`
    /// values.
    pub(super) fn kk_n(&self, len: usize) -> (usize, usize) {
        (self.cg * self.taps, len / (self.groups * self.m).max(1))
    }
    /// `yt_g = w_g @ cols_g` (`w` from [`Cols::permuted`] or as it is) for a chunk of `b` samples.
    pub(super) fn forward<E: GemmFloat>(&self, b: usize, yt: &mut [E], w: &[E], cols: &[E]) {
        let (kk, n) = self.kk_n(yt.len());
        match &self.plan {
            None => grouped_matmul(
                self.groups,
                (self.m, n, kk),
                yt,
                false,
                Op::N(w),
                Op::N(cols),
            ),
            Some(plan) => slots::piece_forward(self.dims(b), plan, yt, w, cols),
        }
    }
    /// `cols_g = w_g^T @ yt_g` for a chunk of `b` samples.
    pub(super) fn backward<E: GemmFloat>(&self, b: usize, cols: &mut [E], w: &[E], yt: &[E]) {
        let (kk, n) = self.kk_n(yt.len());
        match &self.plan {
            None => grouped_matmul(
                self.groups,
                (kk, n, self.m),
                cols,
                false,
                Op::T(w),
                Op::N(yt),
            ),
            Some(plan) => slots::piece_backward(self.dims(b), plan, cols, w, yt),
        }
    }
    /// `dW_g^T += cols_g @ yp_g` into the weight gradient `dw` (PyTorch's order), with
    /// `yp` from [`Cols::pack_pos`], for a chunk of `b` samples.
    pub(super) fn weight_grad<E: GemmFloat>(&self, b: usize, dw: &mut [E], cols: &[E], yp: &[E]) {
        let (kk, n) = self.kk_n(yp.len());
        match &self.plan {
            None => grouped_weight_grad(self.groups, (kk, self.m, n), dw, cols, yp),
            Some(plan) => slots::piece_weight_grad(self.dims(b), plan, dw, cols, yp),
        }
    }
}
