//! Convolutions that skip the padding: the "split" column layout of [`super::conv`].
//!
//! A stride-2 4x4 kernel with padding 1 producing a 4x4 map reads the padding in 60 of
//! the 256 (tap, position) pairs of each channel; at 8x8 outputs, 124 of 1024. The plain
//! layout multiplies those zeros like any other value: about a fifth of the work of a
//! DCGAN's 4x4 and 8x8 layers. Here the output positions are grouped by which taps their
//! window has inside the image ([`Plan`]), and each group is multiplied with only its
//! taps: a few GEMMs on sub-blocks of the same matrices instead of one.
//!
//! ## Layout
//!
//! For that, a group's columns and its taps' rows must each be one contiguous range:
//! - columns `n = slot * B + b` (`B` the chunk's samples): the positions in [`Plan`]'s
//!   order (a group's positions are consecutive slots), the batch innermost. The
//!   channel-major matrices `(C, P * B)` of the output side use the same order
//!   ([`to_slots`] / [`from_slots`]);
//! - rows `(t, c)` per group (tap-major, `t = ki * kw + kj`): a group that misses the
//!   first kernel row reads taps `kw..kh * kw`, one range. The weight is permuted to
//!   match ([`permute_weight`]), and its gradient permuted back as it is added
//!   ([`piece_weight_grad`]).
//!
//! The image side goes through `(C, H, W, B)` (a transpose of the NCHW chunk), where
//! every (tap, position) pair is one run of `B` values to copy ([`im2col_slots`]) or sum
//! ([`col2im_slots`]).
//!
//! ## Groups and pieces
//!
//! Output rows with the same valid kernel rows form runs (three for the usual padding:
//! the first row, the middle, the last), and so do columns. A run of edge rows is one
//! group over all its columns, with the taps of its valid kernel rows (the corner
//! positions also read a padding column: they are too few to be worth more GEMMs). The
//! middle rows are split by column run: the interior has every tap, and an edge column
//! misses a kernel column, which in tap-major order is one range per kernel row (a GEMM
//! each, accumulating).
//!
//! Every sum runs in a fixed order (pieces in [`Plan`]'s order, then gemm's depth loop),
//! so the result does not depend on the thread count.

use rayon::prelude::*;

use super::fused::Geom;
use super::gemm::{matmul, per_group, GemmFloat, Scratch, View};
use super::layout::{transpose_tile, Init, TILE};
use super::Float;

/// Serial kernels below this many values.
const PAR_MIN: usize = 1 << 14;

/// Chunks of fewer samples keep the plain layout: its copies run over whole planes,
/// these over `B` values at a time.
const MIN_CHUNK: usize = 16;

/// The split layout is used where it multiplies at most this fraction of the plain
/// layout's (tap, position) pairs. Its extra copies, weight permutation and smaller GEMMs
/// cost about as much as an eighth of the work: a DCGAN's 4x4 maps (81% of the work)
/// gain 5-11% per op, its 8x8 maps (89%) nothing.
const MAX_WORK: f64 = 0.85;

#[cfg(test)]
thread_local! {
    /// Tests force the split layout on (`Some(true)`, whenever the geometry allows) or
    /// off on their thread.
    pub(crate) static SPLIT_TEST: std::cell::Cell<Option<bool>> =
        const { std::cell::Cell::new(None) };
}

/// One GEMM's share of a group: taps `t0..t1` (rows `t * cg..` of each group's block)
/// of the positions in slots `s0..s1`. `first`: the first piece of its slots (the
/// products that sum over taps overwrite there, and accumulate for the others).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Piece {
    pub t0: usize,
    pub t1: usize,
    pub s0: usize,
    pub s1: usize,
    pub first: bool,
}

/// The output positions of a convolution grouped by the taps their windows have inside
/// the image, and the GEMM pieces that multiply only those (see the module doc).
#[derive(Clone, Debug)]
pub struct Plan {
    /// The output position (`oy * wo + ox`) of each slot.
    pub order: Vec<u32>,
    pub pieces: Vec<Piece>,
}

/// Maximal runs `(o0, o1, lo, hi)` of outputs `o0..o1` of one axis whose valid taps are
/// `lo..hi` (input `o * stride + t - pad` inside `0..size`).
fn runs(out: usize, k: usize, stride: usize, pad: usize, size: usize) -> Vec<[usize; 4]> {
    let taps = |o: usize| {
        let base = (o * stride) as isize - pad as isize;
        let lo = (-base).clamp(0, k as isize) as usize;
        let hi = (size as isize - base).clamp(0, k as isize) as usize;
        (lo, hi.max(lo))
    };
    let mut v: Vec<[usize; 4]> = vec![];
    for o in 0..out {
        let (lo, hi) = taps(o);
        match v.last_mut() {
            Some(r) if (r[2], r[3]) == (lo, hi) => r[1] = o + 1,
            _ => v.push([o, o + 1, lo, hi]),
        }
    }
    v
}

impl Plan {
    /// The plan of geometry `g` (see the module doc for the grouping).
    pub fn new(g: &Geom) -> Self {
        let (kh, kw) = (g.kh, g.kw);
        let rows = runs(g.ho, kh, g.stride, g.pad, g.h);
        let cols = runs(g.wo, kw, g.stride, g.pad, g.w);
        let mut plan = Plan {
            order: Vec::with_capacity(g.ho * g.wo),
            pieces: vec![],
        };
        for &[y0, y1, a0, a1] in &rows {
            let edge_rows = (a0, a1) != (0, kh) && cols.len() > 1;
            let col_runs = if edge_rows {
                vec![[0, g.wo, 0, kw]]
            } else {
                cols.clone()
            };
            for [x0, x1, b0, b1] in col_runs {
                let s0 = plan.order.len();
                for oy in y0..y1 {
                    plan.order
                        .extend((x0..x1).map(|ox| (oy * g.wo + ox) as u32));
                }
                let s1 = plan.order.len();
                let piece = |t0, t1, first| Piece {
                    t0,
                    t1,
                    s0,
                    s1,
                    first,
                };
                if (b0, b1) == (0, kw) || a0 == a1 || b0 == b1 {
                    // whole kernel rows (or nothing: one empty piece zeroes the output)
                    let (t0, t1) = if b0 == b1 { (0, 0) } else { (a0 * kw, a1 * kw) };
                    plan.pieces.push(piece(t0, t1, true));
                } else {
                    for ki in a0..a1 {
                        plan.pieces
                            .push(piece(ki * kw + b0, ki * kw + b1, ki == a0));
                    }
                }
            }
        }
        plan
    }

    /// The plan of `g` where the split layout pays for a chunk of `chunk` samples (at
    /// least `MIN_CHUNK`, at most `MAX_WORK` of the plain work), else `None`. Depends
    /// on the shapes alone.
    pub fn worth(g: &Geom, chunk: usize) -> Option<Self> {
        #[cfg(test)]
        if let Some(force) = SPLIT_TEST.with(|s| s.get()) {
            return force.then(|| Plan::new(g));
        }
        if chunk < MIN_CHUNK || g.ho * g.wo == 0 {
            return None;
        }
        let plan = Plan::new(g);
        let work: usize = plan
            .pieces
            .iter()
            .map(|p| (p.t1 - p.t0) * (p.s1 - p.s0))
            .sum();
        let full = (g.kh * g.kw * g.ho * g.wo) as f64;
        (work as f64 <= MAX_WORK * full).then_some(plan)
    }

    /// Output coordinates of slot `s` in a map `wo` wide.
    #[inline]
    fn pos(&self, s: usize, wo: usize) -> (usize, usize) {
        let p = self.order[s] as usize;
        (p / wo, p % wo)
    }
}

/// Where tap `t` of the output at `(oy, ox)` reads in the image: `(iy, ix)` when inside.
#[inline]
fn pixel(g: &Geom, t: usize, (oy, ox): (usize, usize)) -> Option<(usize, usize)> {
    let iy = (oy * g.stride + t / g.kw).checked_sub(g.pad)?;
    let ix = (ox * g.stride + t % g.kw).checked_sub(g.pad)?;
    (iy < g.h && ix < g.w).then_some((iy, ix))
}

/// `f((i, chunk i))` for the chunks of `dst` of `size` values, in parallel when `dst` has
/// [`PAR_MIN`] values or more.
fn for_chunks<E: Send>(dst: &mut [E], size: usize, f: impl Fn((usize, &mut [E])) + Send + Sync) {
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(size).enumerate().for_each(f);
    } else {
        dst.chunks_mut(size).enumerate().for_each(f);
    }
}

/// `dst (c x r) = src (r x c)` transposed, in tiles. Parallel over bands of `dst` rows.
pub fn transpose<E: Float>(src: &[E], (r, c): (usize, usize), dst: &mut [E]) {
    assert_eq!(src.len(), r * c, "transpose: source length");
    assert_eq!(dst.len(), r * c, "transpose: destination length");
    if r == 0 || c == 0 {
        return;
    }
    let band = |(jb, d): (usize, &mut [E])| {
        let (c0, c1) = (jb * TILE, (jb * TILE + TILE).min(c));
        for r0 in (0..r).step_by(TILE) {
            let r1 = (r0 + TILE).min(r);
            transpose_tile(&src[c0..], c, (r0, r1), (0, c1 - c0), d, r, |d, v| *d = v);
        }
    };
    for_chunks(dst, TILE * r, band);
}

/// Rows of a cols block: `(group, tap, channel in group)` of row `r`, for `cg` channels
/// per group and `taps` taps.
#[inline]
fn row_of(r: usize, cg: usize, taps: usize) -> (usize, usize, usize) {
    let kk = cg * taps;
    (r / kk, (r % kk) / cg, r % cg)
}

/// im2col in the split layout: `img (g.c * g.h * g.w, g.b)` (the chunk transposed,
/// [`transpose`]) to `cols (g.c * kh * kw, P * g.b)`, rows `(group, tap, channel)`,
/// writing the pieces' blocks (zero where a tap reads padding) and nothing else.
/// Parallel over rows.
pub fn im2col_slots<E: Float>(img: &[E], g: &Geom, groups: usize, plan: &Plan, cols: &mut [E]) {
    let (b, taps) = (g.b, g.kh * g.kw);
    let n = g.ho * g.wo * b;
    assert_eq!(img.len(), g.img_len(), "im2col_slots: image length");
    assert_eq!(cols.len(), g.c * taps * n, "im2col_slots: columns length");
    if n == 0 {
        return;
    }
    let cg = g.c / groups;
    let row = |(r, dst): (usize, &mut [E])| {
        let (gi, t, ci) = row_of(r, cg, taps);
        let plane = &img[(gi * cg + ci) * g.plane() * b..][..g.plane() * b];
        for pc in plan.pieces.iter().filter(|pc| (pc.t0..pc.t1).contains(&t)) {
            for s in pc.s0..pc.s1 {
                let d = &mut dst[s * b..(s + 1) * b];
                match pixel(g, t, plan.pos(s, g.wo)) {
                    Some((iy, ix)) => d.copy_from_slice(&plane[(iy * g.w + ix) * b..][..b]),
                    None => d.fill(E::default()),
                }
            }
        }
    };
    for_chunks(cols, n, row);
}

/// col2im in the split layout, the adjoint of [`im2col_slots`]: the pieces' blocks of
/// `cols` summed (padding taps dropped) into the NCHW chunk `img (g.b, g.c, g.h, g.w)`
/// per `init`. Every pixel sums in the fixed order (piece, tap, slot). Parallel over
/// channels.
pub fn col2im_slots<E: GemmFloat>(
    cols: &[E],
    g: &Geom,
    groups: usize,
    plan: &Plan,
    img: &mut [E],
    init: Init<'_, E>,
) {
    let (b, taps) = (g.b, g.kh * g.kw);
    let n = g.ho * g.wo * b;
    assert_eq!(img.len(), g.img_len(), "col2im_slots: image length");
    assert_eq!(cols.len(), g.c * taps * n, "col2im_slots: columns length");
    let cg = g.c / groups;
    let len = g.plane() * b;
    let mut acc = Scratch::take(g.c * len);
    let channel = |(ch, a): (usize, &mut [E])| {
        a.fill(E::default());
        let (gi, ci) = (ch / cg, ch % cg);
        for pc in &plan.pieces {
            for t in pc.t0..pc.t1 {
                let src = &cols[(gi * cg * taps + t * cg + ci) * n..][..n];
                for s in pc.s0..pc.s1 {
                    if let Some((iy, ix)) = pixel(g, t, plan.pos(s, g.wo)) {
                        let d = &mut a[(iy * g.w + ix) * b..][..b];
                        for (d, &v) in d.iter_mut().zip(&src[s * b..(s + 1) * b]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    };
    if len == 0 {
        return;
    }
    for_chunks(&mut acc, len, channel);
    // the accumulator is (c, h * w, b): slots in plain position order
    unslot(&acc, (b, g.c, g.plane()), None, img, init);
}

/// The NCHW chunk `src (b, c, p)` to channel-major slots `dst (c, p * b)`: `dst[c, s * b +
/// bi] = src[bi, c, order[s]]`. Parallel over channels.
pub fn to_slots<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), plan: &Plan, dst: &mut [E]) {
    assert_eq!(src.len(), b * c * p, "to_slots: source length");
    assert_eq!(dst.len(), b * c * p, "to_slots: destination length");
    if p == 0 || b == 0 {
        return;
    }
    let row = |(ci, d): (usize, &mut [E])| {
        for (s, run) in d.chunks_exact_mut(b).enumerate() {
            let at = ci * p + plan.order[s] as usize;
            for (bi, v) in run.iter_mut().enumerate() {
                *v = src[bi * c * p + at];
            }
        }
    };
    for_chunks(dst, p * b, row);
}

/// The adjoint of [`to_slots`] into an NCHW chunk, per `init` (bias fused). Parallel over
/// samples.
pub fn from_slots<E: Float>(
    src: &[E],
    bcp: (usize, usize, usize),
    plan: &Plan,
    dst: &mut [E],
    init: Init<'_, E>,
) {
    unslot(src, bcp, Some(&plan.order), dst, init)
}

/// `src (c, p * b)` (batch innermost, slot `s` holding position `order[s]`, or position
/// `s` without an order) to the NCHW chunk `dst (b, c, p)` per `init`: every plane of
/// channel `c` starts at `bias[c]`, or adds to what is there.
fn unslot<E: Float>(
    src: &[E],
    (b, c, p): (usize, usize, usize),
    order: Option<&[u32]>,
    dst: &mut [E],
    init: Init<'_, E>,
) {
    assert_eq!(src.len(), b * c * p, "unslot: source length");
    assert_eq!(dst.len(), b * c * p, "unslot: destination length");
    if p == 0 || c == 0 {
        return;
    }
    let sample = |(bi, d): (usize, &mut [E])| {
        for (ci, plane) in d.chunks_exact_mut(p).enumerate() {
            let s = &src[ci * p * b + bi..];
            let b0 = match init {
                Init::Set(bias) => bias.map_or(E::default(), |v| v[ci]),
                Init::Add => E::default(),
            };
            for si in 0..p {
                let (o, v) = (order.map_or(si, |o| o[si] as usize), s[si * b]);
                match init {
                    Init::Set(_) => plane[o] = b0 + v,
                    Init::Add => plane[o] += v,
                }
            }
        }
    };
    for_chunks(dst, c * p, sample);
}

/// A weight `(o, cg, taps)` (PyTorch's order) with its rows permuted tap-major: `(o, taps,
/// cg)`, the row order of the split columns.
pub fn permute_weight<E: Float>(w: &[E], (o, cg, taps): (usize, usize, usize)) -> Vec<E> {
    assert_eq!(w.len(), o * cg * taps, "permute_weight: length");
    let mut out = vec![E::default(); w.len()];
    // each row is a (cg, taps) matrix transposed, in tiles (a value-at-a-time gather, a
    // read `taps` apart per write, took 1% of a DCGAN-64 step)
    let row = |(oi, d): (usize, &mut [E])| {
        let s = &w[oi * cg * taps..][..cg * taps];
        for r0 in (0..cg).step_by(TILE) {
            for c0 in (0..taps).step_by(TILE) {
                let (r1, c1) = ((r0 + TILE).min(cg), (c0 + TILE).min(taps));
                transpose_tile(s, taps, (r0, r1), (c0, c1), d, cg, |d, v| *d = v);
            }
        }
    };
    for_chunks(&mut out, (cg * taps).max(1), row);
    out
}

/// The sizes of one grouped product over a plan: `m` rows of each group's weight block
/// (the output side's channels per group), `cg` image-side channels per group, `taps`
/// kernel taps, `b` samples (columns per slot), `n` columns.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub groups: usize,
    pub m: usize,
    pub cg: usize,
    pub taps: usize,
    pub b: usize,
}

impl Dims {
    fn kk(&self) -> usize {
        self.cg * self.taps
    }
    fn n(&self, plan: &Plan) -> usize {
        plan.order.len() * self.b
    }
    /// The rows `r0..` (count) and columns `c0..` (count) of piece `pc` in a group's block.
    fn span(&self, pc: &Piece) -> (usize, usize, usize, usize) {
        (
            pc.t0 * self.cg,
            (pc.t1 - pc.t0) * self.cg,
            pc.s0 * self.b,
            (pc.s1 - pc.s0) * self.b,
        )
    }
}

/// Per group, `y_g (m x n) = w_g (m x kk) @ cols_g (kk x n)` over the pieces: each
/// piece's columns of `y` from its taps' rows of `cols` and columns of `w` (the permuted
/// weight, [`permute_weight`]). `y (groups * m, n)`, `cols (groups * kk, n)`.
pub fn piece_forward<E: GemmFloat>(d: Dims, plan: &Plan, y: &mut [E], w: &[E], cols: &[E]) {
    let (kk, n) = (d.kk(), d.n(plan));
    assert_eq!(y.len(), d.groups * d.m * n, "piece_forward: output length");
    per_group(d.groups, (d.m, n, kk), y, |gi, yg, split| {
        for pc in &plan.pieces {
            let (r0, rk, c0, cn) = d.span(pc);
            matmul(
                (d.m, cn, rk),
                yg,
                View::rows(c0, n),
                !pc.first,
                w,
                View::rows(gi * d.m * kk + r0, kk),
                cols,
                View::rows(gi * kk * n + r0 * n + c0, n),
                split,
            );
        }
    });
}

/// Per group, `cols_g (kk x n) = w_g^T (kk x m) @ y_g (m x n)` over the pieces (each
/// writes its own block of `cols`; the rest is not written).
pub fn piece_backward<E: GemmFloat>(d: Dims, plan: &Plan, cols: &mut [E], w: &[E], y: &[E]) {
    let (kk, n) = (d.kk(), d.n(plan));
    assert_eq!(
        cols.len(),
        d.groups * kk * n,
        "piece_backward: columns length"
    );
    per_group(d.groups, (kk, n, d.m), cols, |gi, cg, split| {
        for pc in &plan.pieces {
            let (r0, rk, c0, cn) = d.span(pc);
            matmul(
                (rk, cn, d.m),
                cg,
                View::rows(r0 * n + c0, n),
                false,
                w,
                View::rows_t(gi * d.m * kk + r0, kk),
                y,
                View::rows(gi * d.m * n + c0, n),
                split,
            );
        }
    });
}

/// The weight gradient over the pieces: per group `dW_g^T (kk x m) += cols_g (kk x n) @
/// yp_g (n x m)`, `yp (n, groups * m)` position-major, each piece its rows and columns,
/// into a scratch then added to `dw (groups * m, cg, taps)` in PyTorch's order.
pub fn piece_weight_grad<E: GemmFloat>(d: Dims, plan: &Plan, dw: &mut [E], cols: &[E], yp: &[E]) {
    let (kk, n, m) = (d.kk(), d.n(plan), d.m);
    assert_eq!(
        dw.len(),
        d.groups * m * kk,
        "piece_weight_grad: gradient length"
    );
    per_group(d.groups, (kk, m, n), dw, |gi, dg, split| {
        let mut t = Scratch::take(kk * m);
        t.fill(E::default());
        for pc in &plan.pieces {
            let (r0, rk, c0, cn) = d.span(pc);
            matmul(
                (rk, m, cn),
                &mut t,
                View::rows(r0 * m, m),
                true,
                cols,
                View::rows(gi * kk * n + r0 * n + c0, n),
                yp,
                View {
                    off: c0 * d.groups * m + gi * m,
                    rs: d.groups * m,
                    cs: 1,
                },
                split,
            );
        }
        // dg[j, ci, tap] += t[tap * cg + ci, j]: per channel a (taps x m) transpose
        for ci in 0..d.cg {
            for t0 in (0..d.taps).step_by(TILE) {
                let t1 = (t0 + TILE).min(d.taps);
                for j0 in (0..m).step_by(TILE) {
                    let j1 = (j0 + TILE).min(m);
                    transpose_tile(
                        &t[ci * m..],
                        d.cg * m,
                        (t0, t1),
                        (j0, j1),
                        &mut dg[ci * d.taps..],
                        d.cg * d.taps,
                        |a, v| *a += v,
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot's pieces cover each of its in-image taps exactly once, and besides
    /// them only padding taps; the slots are a permutation of the positions; each group
    /// of slots has one `first` piece, ahead of the others.
    #[test]
    fn plans_cover_the_valid_taps_once() {
        for (h, k, s, p) in [
            (8, 4, 2, 1),
            (16, 4, 2, 1),
            (4, 3, 1, 1),
            (5, 3, 2, 2),
            (1, 4, 1, 2),
            (2, 5, 1, 2),
            (7, 1, 1, 0),
            (3, 3, 1, 0),
            (1, 3, 1, 2),
        ] {
            let g = Geom::new((1, 1, h, h + 1), k, k, s, p);
            let plan = Plan::new(&g);
            let mut seen = plan.order.clone();
            seen.sort();
            let all: Vec<u32> = (0..(g.ho * g.wo) as u32).collect();
            assert_eq!(seen, all, "{g:?}: slots are not the positions");
            for slot in 0..plan.order.len() {
                let pos = plan.pos(slot, g.wo);
                let mine: Vec<&Piece> = plan
                    .pieces
                    .iter()
                    .filter(|pc| (pc.s0..pc.s1).contains(&slot))
                    .collect();
                assert!(
                    mine[0].first && mine[1..].iter().all(|pc| !pc.first),
                    "{g:?}"
                );
                for t in 0..k * k {
                    let n = mine.iter().filter(|pc| (pc.t0..pc.t1).contains(&t)).count();
                    let inside = pixel(&g, t, pos).is_some();
                    assert!(n <= 1, "{g:?}: slot {slot} tap {t} in {n} pieces");
                    assert!(!inside || n == 1, "{g:?}: slot {slot} misses tap {t}");
                }
            }
        }
    }

    /// The DCGAN geometries: the 4x4 map multiplies 208 of 256 (tap, position) pairs (196
    /// read the image), worth splitting; the 8x8 map 912 of 1024 (900), not worth it.
    #[test]
    fn dcgan_plans_skip_most_padding() {
        for (h, want) in [(8, 208), (16, 912)] {
            let g = Geom::new((64, 8, h, h), 4, 4, 2, 1);
            let plan = Plan::new(&g);
            let work: usize = plan
                .pieces
                .iter()
                .map(|p| (p.t1 - p.t0) * (p.s1 - p.s0))
                .sum();
            assert_eq!(work, want, "{h}x{h} input");
            assert_eq!(Plan::worth(&g, 64).is_some(), h == 8, "{h}x{h} input");
        }
        // no padding: nothing to skip
        assert!(Plan::worth(&Geom::new((64, 8, 4, 4), 4, 4, 1, 0), 64).is_none());
        // too few samples per chunk
        assert!(Plan::worth(&Geom::new((8, 8, 8, 8), 4, 4, 2, 1), 8).is_none());
    }
}
