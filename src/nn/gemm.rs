//! Strided GEMMs on the `gemm` crate for the CPU convolutions ([`super::conv`]): a
//! bounds-checked [`matmul`] on row/column-strided [`View`]s, its per-group form
//! `grouped_matmul`, the thread-local buffer pool ([`Scratch`]) their working matrices
//! come from, and the budget of columns a forward keeps for its backward ([`Kept`]).
//!
//! Determinism: gemm splits the output among threads but runs each output's depth loop
//! in one thread in the same order, whatever the thread count.

use std::cell::RefCell;
use std::thread::LocalKey;

use gemm::Parallelism;
use rayon::prelude::*;

use super::layout::{transpose_tile, TILE};
use super::Float;

/// GEMMs with fewer multiply-adds run on the calling thread.
const GEMM_PAR_MIN: usize = 1 << 18;

/// Buffers a thread keeps for reuse (a conv's backward holds five at once).
const POOL_MAX: usize = 12;

/// Element types the gemm crate multiplies (f32 and f64), each with its scratch pool.
pub trait GemmFloat: Float {
    /// This thread's pool of reusable buffers.
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
}

thread_local! {
    static POOL_F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static POOL_F64: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

impl GemmFloat for f32 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>> {
        &POOL_F32
    }
}

impl GemmFloat for f64 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>> {
        &POOL_F64
    }
}

/// A working buffer taken from the thread's pool and given back on drop. Its contents on
/// taking are unspecified (callers overwrite them). Taking moves the buffer out of the
/// pool, so a nested op (a task rayon runs on this thread while gemm waits) simply gets
/// another buffer.
///
/// The buffer keeps every value it ever held initialised (`len` is how many this use
/// sees), so taking a buffer that once held `len` values writes nothing: truncating and
/// re-growing the `Vec` instead zero-filled the regrown part, serially, on every take.
pub struct Scratch<E: GemmFloat> {
    buf: Vec<E>,
    len: usize,
}

impl<E: GemmFloat> Scratch<E> {
    /// A buffer of `len` values.
    pub fn take(len: usize) -> Self {
        // the smallest pooled buffer that holds `len` values (else the largest, grown), so
        // a step's mix of sizes settles on buffers that fit instead of re-growing them
        let mut buf = E::pool()
            .with(|p| {
                let mut p = p.borrow_mut();
                let fit = (0..p.len())
                    .filter(|&i| p[i].len() >= len)
                    .min_by_key(|&i| p[i].len());
                let i = fit.or_else(|| (0..p.len()).max_by_key(|&i| p[i].len()))?;
                Some(p.swap_remove(i))
            })
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, E::default());
        }
        Scratch { buf, len }
    }
}

impl<E: GemmFloat> std::ops::Deref for Scratch<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.buf[..self.len]
    }
}

impl<E: GemmFloat> std::ops::DerefMut for Scratch<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut self.buf[..self.len]
    }
}

impl<E: GemmFloat> Drop for Scratch<E> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.buf);
        // `try_with`: the pool may already be gone while the thread exits
        let _ = E::pool().try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(v);
            }
        });
    }
}

/// Most column values the `conv2d` forwards of one thread keep at once for their
/// backwards (see [`Kept`]): 128 MiB of f32.
pub const KEEP_MAX: usize = 1 << 25;

thread_local! {
    /// Column values this thread's [`Kept`] buffers hold now.
    static KEPT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A `conv2d` forward's columns ([`super::conv`]), kept for the weight gradient of its
/// backward instead of being built again from the input there (an im2col per op and
/// pass: 8% of a DCGAN-32 step). Only within the thread's budget ([`KEEP_MAX`]), so deep
/// nets at large sizes keep the columns of their first layers and rebuild the rest;
/// which ones are kept changes the speed and the memory, never a value. The budget is
/// given back when the buffers drop: by the backward, or with a tape that is dropped
/// unused. (A `Kept` dropped on another thread than the one that reserved it would leave
/// that thread's budget spent: it would keep less, at no other cost. Forward and
/// backward run on the training thread.)
pub struct Kept<E: GemmFloat> {
    pub chunks: std::collections::VecDeque<Scratch<E>>,
    len: usize,
}

impl<E: GemmFloat> Kept<E> {
    /// Room for `len` values in the budget, or `None`.
    pub fn reserve(len: usize) -> Option<Self> {
        KEPT.with(|k| {
            let now = k.get();
            (now + len <= KEEP_MAX).then(|| {
                k.set(now + len);
                Kept {
                    chunks: Default::default(),
                    len,
                }
            })
        })
    }
}

impl<E: GemmFloat> Drop for Kept<E> {
    fn drop(&mut self) {
        // `try_with`: the counter may be gone while the thread exits
        let _ = KEPT.try_with(|k| k.set(k.get().saturating_sub(self.len)));
    }
}

/// Column values this thread's `conv2d` forwards keep now.
#[cfg(test)]
pub fn kept_now() -> usize {
    KEPT.with(|k| k.get())
}

/// A strided matrix view into a slice: element `(i, j)` at `off + i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Offset of element `(0, 0)`.
    pub off: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl View {
    /// Row-major with `cols` columns, starting at `off`.
    pub fn rows(off: usize, cols: usize) -> Self {
        View {
            off,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of [`View::rows`]: element `(i, j)` at `off + j * cols + i`.
    pub fn rows_t(off: usize, cols: usize) -> Self {
        View {
            off,
            rs: 1,
            cs: cols,
        }
    }
    fn check(&self, len: usize, r: usize, c: usize, what: &str) {
        if r > 0 && c > 0 {
            let last = self.off + (r - 1) * self.rs + (c - 1) * self.cs;
            assert!(
                last < len,
                "gemm: {what} view {self:?} ({r}x{c}) past {len}"
            );
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) @ rhs (k x n)` on strided views (bounds checked),
/// on the current rayon pool's threads when large enough and `split` allows.
#[allow(clippy::too_many_arguments)]
pub fn matmul<E: GemmFloat>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [E],
    dv: View,
    accumulate: bool,
    lhs: &[E],
    lv: View,
    rhs: &[E],
    rv: View,
    split: bool,
) {
    dv.check(dst.len(), m, n, "dst");
    lv.check(lhs.len(), m, k, "lhs");
    rv.check(rhs.len(), k, n, "rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[dv.off + i * dv.rs + j * dv.cs] = E::default();
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if split && threads > 1 && m * n * k >= GEMM_PAR_MIN {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its slice; `dst` is borrowed mutably
    // and so overlaps neither operand; gemm::gemm supports f32 and f64 (GemmFloat).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.off),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            lhs.as_ptr().add(lv.off),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr().add(rv.off),
            rv.cs as isize,
            rv.rs as isize,
            E::of(1.0),
            E::of(1.0),
            false,
            false,
            false,
            par,
        )
    }
}

/// A block operand of [`grouped_matmul`]: stored as the product reads it (`N`) or
/// transposed (`T`, BLAS's convention).
#[derive(Clone, Copy)]
pub(super) enum Op<'a, E> {
    N(&'a [E]),
    T(&'a [E]),
}

impl<'a, E> Op<'a, E> {
    /// The slice and the view of block `gi` of a `(rows x cols)` operand.
    fn block(self, gi: usize, rows: usize, cols: usize) -> (&'a [E], View) {
        match self {
            Op::N(v) => (v, View::rows(gi * rows * cols, cols)),
            Op::T(v) => (v, View::rows_t(gi * rows * cols, rows)),
        }
    }
}

/// The weight gradients of both convolutions: per group `g`, `dW_g^T (m x n) +=
/// a_g (m x k) @ b_g (k x n)`, with `dW (groups * n, m)` row-major (so its group-`g` block
/// transposed is `dW_g^T`), `a (groups * m, k)` row-major (block `g` its rows `g*m..`) and
/// `b (k, groups * n)` row-major (block `g` its columns `g*n..`).
///
/// Both operands of a weight gradient come with the batch (the depth `k`) as their
/// contiguous axis. gemm packs that fast only into a row-major destination with the right
/// operand contiguous along `n` (150-210 GFLOP/s on our shapes); accumulated straight into
/// `dW`'s transposed (column-major) view, the same product ran at 2-110. So each group's
/// product goes to a small row-major scratch `(m x n)` (the weight's size), then is added
/// into `dW` transposed.
pub(super) fn grouped_weight_grad<E: GemmFloat>(
    groups: usize,
    (m, n, k): (usize, usize, usize),
    dw: &mut [E],
    a: &[E],
    b: &[E],
) {
    assert_eq!(dw.len(), groups * m * n, "weight gradient length");
    let group = |gi: usize, dg: &mut [E], split: bool| {
        let mut t = Scratch::take(m * n);
        let bv = View {
            off: gi * n,
            rs: groups * n,
            cs: 1,
        };
        let av = View::rows(gi * m * k, k);
        matmul(
            (m, n, k),
            &mut t,
            View::rows(0, n),
            false,
            a,
            av,
            b,
            bv,
            split,
        );
        // dW_g row j += column j of t: each task a band of rows, t read in tiles (reading
        // down t's columns directly was 5% of a DCGAN-64 step)
        let add = |(jb, rows): (usize, &mut [E])| {
            let (j0, nj) = (jb * TILE, rows.len() / m);
            for i0 in (0..m).step_by(TILE) {
                let i1 = (i0 + TILE).min(m);
                transpose_tile(&t[j0..], n, (i0, i1), (0, nj), rows, m, |d, v| *d += v);
            }
        };
        if split && m * n >= 1 << 16 {
            dg.par_chunks_mut(TILE * m).enumerate().for_each(add);
        } else {
            dg.chunks_mut(TILE * m).enumerate().for_each(add);
        }
    };
    per_group(groups, (m, n, k), dw, group);
}

/// `f(g, block g of dst, split)` for every group, `dst` cut into `groups` equal blocks.
/// Where the groups share the threads evenly (as many groups as threads or a multiple, or
/// many more), or each product is too small for gemm to split, the groups run in parallel,
/// each product on one thread (`split` false): a grouped convolution's dozens of small
/// GEMMs had run one after another, each split by gemm into slivers with a barrier per
/// block, a fifth of an R3GAN E step with one worker idle. Otherwise one group at a time,
/// each product split among the threads. Every group is computed alike either way (gemm
/// runs each output's depth loop in the same order), so the bits do not depend on the
/// thread count.
pub(super) fn per_group<E: GemmFloat>(
    groups: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [E],
    f: impl Fn(usize, &mut [E], bool) + Sync + Send,
) {
    if groups == 0 || dst.is_empty() {
        return;
    }
    let block = dst.len() / groups;
    let threads = rayon::current_num_threads();
    let even = groups.is_multiple_of(threads) || groups >= 4 * threads;
    if groups > 1 && threads > 1 && (even || m * n * k < GEMM_PAR_MIN) {
        dst.par_chunks_mut(block)
            .enumerate()
            .for_each(|(gi, d)| f(gi, d, false));
    } else {
        for (gi, d) in dst.chunks_mut(block).enumerate() {
            f(gi, d, true);
        }
    }
}

/// `groups` independent products `dst_g (m x n) = [dst_g +] lhs_g (m x k) @ rhs_g (k x n)`,
/// block `g` of each buffer starting at `g` times the block's size: the grouped GEMMs of
/// both convolutions and of their backward passes.
pub(super) fn grouped_matmul<E: GemmFloat>(
    groups: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [E],
    accumulate: bool,
    lhs: Op<'_, E>,
    rhs: Op<'_, E>,
) {
    assert_eq!(
        dst.len(),
        groups * m * n,
        "grouped product: destination length"
    );
    per_group(groups, (m, n, k), dst, |gi, d, split| {
        let (l, lv) = lhs.block(gi, m, k);
        let (r, rv) = rhs.block(gi, k, n);
        matmul(
            (m, n, k),
            d,
            View::rows(0, n),
            accumulate,
            l,
            lv,
            r,
            rv,
            split,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Rng;

    /// Against the defining triple loop, accumulating onto a non-zero gradient, with two
    /// groups and sizes that fill no micro-kernel tile (3 output channels included), and
    /// sizes that span several transposed-add tiles with remainders.
    #[test]
    fn weight_grad_matches_the_naive_product() {
        let mut rng = Rng::new(11);
        for (groups, m, n, k) in [(1, 5, 3, 37), (2, 7, 4, 130), (3, 1, 1, 9), (2, 37, 21, 50)] {
            let a = rng.normals(groups * m * k);
            let b = rng.normals(k * groups * n);
            let init = rng.normals(groups * n * m);
            let mut dw = init.clone();
            grouped_weight_grad(groups, (m, n, k), &mut dw, &a, &b);
            for g in 0..groups {
                for j in 0..n {
                    for i in 0..m {
                        let want = init[(g * n + j) * m + i]
                            + (0..k)
                                .map(|t| a[(g * m + i) * k + t] * b[t * groups * n + g * n + j])
                                .sum::<f64>();
                        let got = dw[(g * n + j) * m + i];
                        assert!(
                            (got - want).abs() < 1e-12,
                            "g{g} ({j}, {i}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
