//! The copies between NCHW tensors and the matrices the CPU convolutions ([`super::conv`])
//! multiply, for a chunk of `b` samples (`N = b * P` columns, `P` the positions of one
//! sample):
//!
//! - columns `cols (C * kh * kw, N)`: row `(c, ki, kj)`, column `(b, oy, ox)` holds
//!   `x[b, c, oy * s + ki - p, ox * s + kj - p]` (zero outside the image) ([`im2col_cb`];
//!   its adjoint [`col2im_cb`] sums columns back into an NCHW image). A strided kernel
//!   reads each plane through its stride x stride `Phases`, so every tap row is one
//!   contiguous run;
//! - channel-major `(C, N)`: an NCHW chunk with the batch axis moved inside ([`to_cb`] /
//!   [`from_cb`], bias fused);
//! - position-major `(N, C)` (NHWC, [`to_pc`]), the right operand of a weight gradient.
//!
//! Every kernel writes disjoint pieces in parallel and sums each value in a fixed order,
//! so results do not depend on the thread count.

use rayon::prelude::*;

use super::fused::Geom;
use super::gemm::{GemmFloat, Scratch};
use super::Float;

/// Serial copy kernels below this many values (rayon's overhead is not worth it).
const PAR_MIN: usize = 1 << 14;

/// One kernel tap `(ki, kj)`: the output rows `ylo..yhi` and columns `xlo..xhi` whose
/// input pixel lies inside the image.
#[derive(Clone, Debug)]
struct Tap {
    ylo: usize,
    yhi: usize,
    xlo: usize,
    xhi: usize,
    /// Where the tap reads in a plane's [`Phases`]: `(phase, dy, dx)`, see [`Tap::phase`].
    ph: (usize, isize, isize),
    /// Its valid outputs as one run, see [`Tap::block_of`].
    block: Option<(usize, usize, isize)>,
    /// The positions of one `ho x wo` segment beside the valid columns of the valid rows
    /// (what [`Tap::zero_edges`] zeroes).
    edges: Vec<u32>,
}

impl Tap {
    fn new(g: &Geom, ki: usize, kj: usize) -> Self {
        let (ylo, yhi) = Geom::valid(g.ho, ki, g.stride, g.pad, g.h);
        let (xlo, xhi) = Geom::valid(g.wo, kj, g.stride, g.pad, g.w);
        let mut t = Tap {
            ylo,
            yhi,
            xlo,
            xhi,
            ph: Self::phase(g, ki, kj),
            block: None,
            edges: vec![],
        };
        t.block = t.block_of(g, &Phases::of(g));
        let wo = g.wo;
        t.edges = (ylo..yhi)
            .flat_map(|y| (0..xlo).chain(xhi..wo).map(move |x| (y * wo + x) as u32))
            .collect();
        t
    }
    /// The tap's valid outputs as one run of a sample's `ho * wo` values: with phase rows
    /// as long as output rows (`ws == wo`, true of "same" and stride-halving kernels),
    /// output `o = oy * wo + ox` reads phase pixel `o + off` for every valid `(oy, ox)`,
    /// so `start..end` (first to last valid output) is one contiguous copy or sum, give or
    /// take the columns beside the valid ones ([`Tap::zero_edges`]). `None` where the rows
    /// differ in length or the tap reads nothing.
    fn block_of(&self, g: &Geom, ps: &Phases) -> Option<(usize, usize, isize)> {
        if ps.ws != g.wo || self.ylo >= self.yhi || self.xlo >= self.xhi {
            return None;
        }
        let (_, dy, dx) = self.ph;
        let start = self.ylo * g.wo + self.xlo;
        let end = (self.yhi - 1) * g.wo + self.xhi;
        Some((start, end, dy * ps.ws as isize + dx))
    }
    /// Zeroes the columns outside `xlo..xhi` of the valid rows of one `ho x wo` segment,
    /// one store per position: a tap's edges are a column or two of short rows, where a
    /// `fill` per row (a `memset` call for one or two values) cost 4% of a DCGAN step.
    #[inline]
    fn zero_edges<E: Float>(&self, seg: &mut [E]) {
        for &i in &self.edges {
            seg[i as usize] = E::default();
        }
    }
    /// Every tap of the kernel, row-major.
    fn all(g: &Geom) -> Vec<Tap> {
        (0..g.kh * g.kw)
            .map(|t| Tap::new(g, t / g.kw, t % g.kw))
            .collect()
    }
    /// Where tap `(ki, kj)` reads in the [`Phases`] of a plane: phase `py * s + px` and the
    /// offsets `(dy, dx)` with input pixel `(s*oy + ki - pad, s*ox + kj - pad)` at phase
    /// position `(oy + dy, ox + dx)`.
    fn phase(g: &Geom, ki: usize, kj: usize) -> (usize, isize, isize) {
        let s = g.stride as isize;
        let oy = ki as isize - g.pad as isize;
        let ox = kj as isize - g.pad as isize;
        let (py, px) = (oy.rem_euclid(s) as usize, ox.rem_euclid(s) as usize);
        (py * g.stride + px, oy.div_euclid(s), ox.div_euclid(s))
    }
}

/// A strided convolution's input plane split into its `s * s` phases: phase `(py, px)` is
/// the `hs x ws` plane of pixels `(py + s*qy, px + s*qx)` (zero past the image). Every tap
/// of a stride-`s` kernel reads (and its adjoint writes) one phase at unit stride, so the
/// column copies are contiguous runs instead of strided gathers and scatters.
#[derive(Clone, Copy, Debug)]
struct Phases {
    s: usize,
    hs: usize,
    ws: usize,
}

impl Phases {
    fn of(g: &Geom) -> Self {
        Phases {
            s: g.stride,
            hs: g.h.div_ceil(g.stride),
            ws: g.w.div_ceil(g.stride),
        }
    }
    /// Values of one phase.
    #[inline]
    fn phase(&self) -> usize {
        self.hs * self.ws
    }
    /// Values of all phases of one plane.
    #[inline]
    fn len(&self) -> usize {
        self.s * self.s * self.phase()
    }
    /// Splits an image plane `(h, w)` into `dst` (all phases).
    fn split<E: Float>(&self, g: &Geom, plane: &[E], dst: &mut [E]) {
        if self.s == 2 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2) {
            // the common case, as one pass of pairs: row iy's even and odd pixels
            let (ph, ws) = (self.phase(), self.ws);
            for (iy, r) in plane.chunks_exact(g.w).enumerate() {
                let (py, qy) = (iy % 2, iy / 2);
                let (a, b) = dst[2 * py * ph..(2 * py + 2) * ph].split_at_mut(ph);
                let (a, b) = (&mut a[qy * ws..][..ws], &mut b[qy * ws..][..ws]);
                for ((x, y), pair) in a.iter_mut().zip(b.iter_mut()).zip(r.chunks_exact(2)) {
                    *x = pair[0];
                    *y = pair[1];
                }
            }
            return;
        }
        let s = self.s;
        for (ph, d) in dst.chunks_exact_mut(self.phase()).enumerate() {
            let (py, px) = (ph / s, ph % s);
            // phase columns qx with px + s*qx < w
            let nx = (g.w - px).div_ceil(s);
            for (qy, row) in d.chunks_exact_mut(self.ws).enumerate() {
                let iy = py + s * qy;
                if iy >= g.h {
                    row.fill(E::default());
                    continue;
                }
                let src = &plane[iy * g.w + px..(iy + 1) * g.w];
                for (qx, v) in row[..nx].iter_mut().enumerate() {
                    *v = src[s * qx];
                }
                row[nx..].fill(E::default());
            }
        }
    }
    /// The adjoint of [`Phases::split`] into an image plane: each pixel becomes `start + its
    /// phase value` (`start` the plane's bias, zero, or its current value per `init`).
    fn merge<E: Float>(&self, g: &Geom, src: &[E], c: usize, init: Init<'_, E>, plane: &mut [E]) {
        if self.s == 2 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2) {
            // the common case, as one pass of pairs (see `split`)
            let (ph, ws) = (self.phase(), self.ws);
            for (iy, r) in plane.chunks_exact_mut(g.w).enumerate() {
                let (py, qy) = (iy % 2, iy / 2);
                let a = &src[2 * py * ph + qy * ws..][..ws];
                let b = &src[(2 * py + 1) * ph + qy * ws..][..ws];
                let pairs = r.chunks_exact_mut(2).zip(a.iter().zip(b));
                match init {
                    Init::Set(bias) => {
                        let b0 = bias.map_or(E::default(), |b| b[c]);
                        for (o, (&x, &y)) in pairs {
                            o[0] = b0 + x;
                            o[1] = b0 + y;
                        }
                    }
                    Init::Add => {
                        for (o, (&x, &y)) in pairs {
                            o[0] += x;
                            o[1] += y;
                        }
                    }
                }
            }
            return;
        }
        let s = self.s;
        for (iy, row) in plane.chunks_exact_mut(g.w).enumerate() {
            let (py, qy) = (iy % s, iy / s);
            for px in 0..s.min(g.w) {
                let a = &src[(py * s + px) * self.phase() + qy * self.ws..][..self.ws];
                let nx = (g.w - px).div_ceil(s);
                let row = &mut row[px..];
                match init {
                    Init::Set(Some(b)) => {
                        for (qx, &v) in a[..nx].iter().enumerate() {
                            row[s * qx] = b[c] + v;
                        }
                    }
                    Init::Set(None) => {
                        for (qx, &v) in a[..nx].iter().enumerate() {
                            row[s * qx] = v;
                        }
                    }
                    Init::Add => {
                        for (qx, &v) in a[..nx].iter().enumerate() {
                            row[s * qx] += v;
                        }
                    }
                }
            }
        }
    }
}

/// One kernel tap of one image plane, read from the plane's [`Phases`] (for stride 1 the
/// plane itself): the `ho * wo` values it reads, written to `dst` (zero where it falls in
/// the padding). See [`Tap::block_of`] for the copy.
fn tap_read<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let src = &src[t.ph.0 * ps.phase()..(t.ph.0 + 1) * ps.phase()];
    let Some((start, end, off)) = t.block else {
        return tap_read_rows(src, g, ps, t, dst);
    };
    dst[..start].fill(E::default());
    dst[end..].fill(E::default());
    dst[start..end].copy_from_slice(&src[(start as isize + off) as usize..][..end - start]);
    // the block also copied the pixels beside the valid columns: zero them
    t.zero_edges(dst);
}

/// [`tap_read`] one output row at a time, for geometries where the phase rows and output
/// rows differ in length.
fn tap_read_rows<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let (wo, len) = (g.wo, t.xhi - t.xlo);
    dst[..t.ylo * wo].fill(E::default());
    dst[t.yhi * wo..].fill(E::default());
    let (_, dy, dx) = t.ph;
    for oy in t.ylo..t.yhi {
        let row = &mut dst[oy * wo..(oy + 1) * wo];
        row[..t.xlo].fill(E::default());
        row[t.xhi..].fill(E::default());
        if len == 0 {
            continue;
        }
        let qy = (oy as isize + dy) as usize;
        let qx = (t.xlo as isize + dx) as usize;
        row[t.xlo..t.xhi].copy_from_slice(&src[qy * ps.ws + qx..][..len]);
    }
}

/// The adjoint of [`tap_read`]: `ho * wo` values added into the plane's [`Phases`] at the
/// pixels the tap reads. `src` must be zero beside the valid columns (see
/// [`zero_tap_edges`]): the block sum adds those zeros to neighbouring pixels.
fn tap_add<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let dst = &mut dst[t.ph.0 * ps.phase()..(t.ph.0 + 1) * ps.phase()];
    let Some((start, end, off)) = t.block else {
        return tap_add_rows(src, g, ps, t, dst);
    };
    let d = &mut dst[(start as isize + off) as usize..][..end - start];
    for (a, &v) in d.iter_mut().zip(&src[start..end]) {
        *a += v;
    }
}

/// [`tap_add`] one output row at a time (padding columns skipped).
fn tap_add_rows<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let len = t.xhi - t.xlo;
    if len == 0 {
        return;
    }
    let (_, dy, dx) = t.ph;
    for oy in t.ylo..t.yhi {
        let row = &src[oy * g.wo + t.xlo..][..len];
        let qy = (oy as isize + dy) as usize;
        let qx = (t.xlo as isize + dx) as usize;
        for (a, &v) in dst[qy * ps.ws + qx..][..len].iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Zeroes, in every sample's `ho * wo` segment of the columns (rows `(c, tap)` of `cols (c
/// * kh * kw, b * ho * wo)`), the values of the output columns where a tap reads padding,
/// so that [`tap_add`]'s block sums add nothing there. Parallel over rows.
fn zero_tap_edges<E: Float>(cols: &mut [E], g: &Geom, taps: &[Tap]) {
    let (p, n) = (g.ho * g.wo, g.b * g.ho * g.wo);
    let row = |(r, row): (usize, &mut [E])| {
        let t = &taps[r % taps.len()];
        if !t.edges.is_empty() {
            for seg in row.chunks_exact_mut(p) {
                t.zero_edges(seg);
            }
        }
    };
    if cols.len() >= PAR_MIN {
        cols.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        cols.chunks_mut(n).enumerate().for_each(row);
    }
}

/// im2col of a batch chunk: `img (g.b, g.c, g.h, g.w)` to `cols (g.c * kh * kw, g.b * ho
/// * wo)` (row `(c, ki, kj)`, column `(b, oy, ox)`), overwriting `cols`. Parallel over rows.
pub fn im2col_cb<E: GemmFloat>(img: &[E], g: &Geom, cols: &mut [E]) {
    assert_eq!(img.len(), g.img_len(), "im2col_cb: image length");
    assert_eq!(cols.len(), g.cols_len(), "im2col_cb: columns length");
    let p = g.ho * g.wo;
    let n = g.b * p;
    if n == 0 {
        return;
    }
    let taps = Tap::all(g);
    let ps = Phases::of(g);
    // strided: split every plane into its phases once (stride 1: the image is its phase)
    let mut phases = Scratch::take(if g.stride > 1 {
        g.b * g.c * ps.len()
    } else {
        0
    });
    if g.stride > 1 {
        let split = |(i, d): (usize, &mut [E])| {
            ps.split(g, &img[i * g.plane()..(i + 1) * g.plane()], d);
        };
        if phases.len() >= PAR_MIN {
            phases.par_chunks_mut(ps.len()).enumerate().for_each(split);
        } else {
            phases.chunks_mut(ps.len()).enumerate().for_each(split);
        }
    }
    let src: &[E] = if g.stride > 1 { &phases } else { img };
    let row = |(r, dst): (usize, &mut [E])| {
        let (c, t) = (r / taps.len(), &taps[r % taps.len()]);
        for (b, d) in dst.chunks_exact_mut(p).enumerate() {
            let s = (b * g.c + c) * ps.len();
            tap_read(&src[s..s + ps.len()], g, &ps, t, d);
        }
    };
    if cols.len() >= PAR_MIN {
        cols.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        cols.chunks_mut(n).enumerate().for_each(row);
    }
}

/// How [`col2im_cb`] and [`from_cb`] treat the existing contents of their output.
#[derive(Clone, Copy)]
pub enum Init<'a, E> {
    /// Overwrite; every plane of channel `c` starts at `bias[c]` (or zero).
    Set(Option<&'a [E]>),
    /// Add to what is there.
    Add,
}

impl<E: Float> Init<'_, E> {
    fn start(&self, c: usize, plane: &mut [E]) {
        match self {
            Init::Set(Some(b)) => plane.fill(b[c]),
            Init::Set(None) => plane.fill(E::default()),
            Init::Add => {}
        }
    }
}

/// col2im of a batch chunk, the adjoint of [`im2col_cb`]: `cols (g.c * kh * kw, g.b * ho *
/// wo)` summed into `img (g.b, g.c, g.h, g.w)` per `init`; the values of `cols` where a tap
/// reads padding are zeroed on the way (they are not part of the sum). Parallel over image planes;
/// every pixel sums its taps in the fixed order `(ki, kj, oy, ox)` (strided kernels: into
/// the plane's phases, then added to its start value).
pub fn col2im_cb<E: GemmFloat>(cols: &mut [E], g: &Geom, img: &mut [E], init: Init<'_, E>) {
    assert_eq!(img.len(), g.img_len(), "col2im_cb: image length");
    assert_eq!(cols.len(), g.cols_len(), "col2im_cb: columns length");
    let p = g.ho * g.wo;
    let n = g.b * p;
    let taps = Tap::all(g);
    let ps = Phases::of(g);
    if g.plane() == 0 {
        return;
    }
    zero_tap_edges(cols, g, &taps);
    let cols = &*cols;
    let plane = |acc: &mut Vec<E>, (i, dst): (usize, &mut [E])| {
        let (b, c) = (i / g.c, i % g.c);
        if g.stride > 1 {
            // strided: sum the taps into the plane's phases (contiguous runs), then merge
            acc.clear();
            acc.resize(ps.len(), E::default());
            for (ti, t) in taps.iter().enumerate() {
                let s = (c * taps.len() + ti) * n + b * p;
                tap_add(&cols[s..s + p], g, &ps, t, acc);
            }
            ps.merge(g, acc, c, init, dst);
            return;
        }
        // stride 1: the plane is its own phase
        init.start(c, dst);
        for (ti, t) in taps.iter().enumerate() {
            let s = (c * taps.len() + ti) * n + b * p;
            tap_add(&cols[s..s + p], g, &ps, t, dst);
        }
    };
    if cols.len().max(img.len()) >= PAR_MIN {
        img.par_chunks_mut(g.plane())
            .enumerate()
            .for_each_init(Vec::new, plane);
    } else {
        let mut acc = Vec::new();
        for job in img.chunks_mut(g.plane()).enumerate() {
            plane(&mut acc, job);
        }
    }
}

/// NCHW chunk `src (b, c, p)` to channel-major `dst (c, b * p)`. Parallel over channels.
pub fn to_cb<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), dst: &mut [E]) {
    assert_eq!(src.len(), b * c * p, "to_cb: source length");
    assert_eq!(dst.len(), b * c * p, "to_cb: destination length");
    if p == 0 || b == 0 {
        return;
    }
    let row = |(ci, d): (usize, &mut [E])| {
        for (bi, seg) in d.chunks_exact_mut(p).enumerate() {
            let s = (bi * c + ci) * p;
            seg.copy_from_slice(&src[s..s + p]);
        }
    };
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(b * p).enumerate().for_each(row);
    } else {
        dst.chunks_mut(b * p).enumerate().for_each(row);
    }
}

/// Side of the square tiles [`transpose_tile`] moves (16 f32: one 64-byte line).
pub(super) const TILE: usize = 16;

/// One tile of a transpose: for rows `r0..r1` and columns `c0..c1` (at most [`TILE`] of
/// each) of the row-major `src` (row stride `ss`), `f(&mut dst[j * ds + i], src[i * ss +
/// j])`. Reads one run per source row and writes one run per destination row, through a
/// tile on the stack (`f` sets or adds; either way each destination value is touched once).
#[inline(always)]
pub(super) fn transpose_tile<E: Float>(
    src: &[E],
    ss: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    dst: &mut [E],
    ds: usize,
    f: impl Fn(&mut E, E),
) {
    let mut tile = [[E::default(); TILE]; TILE];
    for (i, row) in (r0..r1).zip(tile.iter_mut()) {
        for (t, &v) in row.iter_mut().zip(&src[i * ss + c0..i * ss + c1]) {
            *t = v;
        }
    }
    for (k, j) in (c0..c1).enumerate() {
        for (d, row) in dst[j * ds + r0..j * ds + r1].iter_mut().zip(&tile) {
            f(d, row[k]);
        }
    }
}

/// NCHW chunk `src (b, c, p)` to position-major `dst (b * p, c)` (NHWC: one row per
/// sample position), in `TILE` x `TILE` tiles so that both reads and writes are
/// contiguous runs (a position-at-a-time loop wrote one value per row, `c` apart: 10% of
/// an R3GAN step's samples, 6% now). Parallel over samples.
pub fn to_pc<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), dst: &mut [E]) {
    assert_eq!(src.len(), b * c * p, "to_pc: source length");
    assert_eq!(dst.len(), b * c * p, "to_pc: destination length");
    if p == 0 || c == 0 {
        return;
    }
    let sample = |(bi, d): (usize, &mut [E])| {
        let s = &src[bi * c * p..(bi + 1) * c * p];
        for p0 in (0..p).step_by(TILE) {
            let p1 = (p0 + TILE).min(p);
            for c0 in (0..c).step_by(TILE) {
                let c1 = (c0 + TILE).min(c);
                transpose_tile(s, p, (c0, c1), (p0, p1), d, c, |d, v| *d = v);
            }
        }
    };
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(c * p).enumerate().for_each(sample);
    } else {
        dst.chunks_mut(c * p).enumerate().for_each(sample);
    }
}

/// Channel-major `src (c, b * p)` back to NCHW `dst (b, c, p)`, per `init` (bias fused).
/// Parallel over planes.
pub fn from_cb<E: Float>(
    src: &[E],
    (b, c, p): (usize, usize, usize),
    dst: &mut [E],
    init: Init<'_, E>,
) {
    assert_eq!(src.len(), b * c * p, "from_cb: source length");
    assert_eq!(dst.len(), b * c * p, "from_cb: destination length");
    if p == 0 || c == 0 {
        return;
    }
    let plane = |(i, d): (usize, &mut [E])| {
        let (bi, ci) = (i / c, i % c);
        let s = &src[ci * b * p + bi * p..][..p];
        match init {
            Init::Set(None) => d.copy_from_slice(s),
            Init::Set(Some(bias)) => {
                for (o, &v) in d.iter_mut().zip(s) {
                    *o = v + bias[ci];
                }
            }
            Init::Add => {
                for (o, &v) in d.iter_mut().zip(s) {
                    *o += v;
                }
            }
        }
    };
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(p).enumerate().for_each(plane);
    } else {
        dst.chunks_mut(p).enumerate().for_each(plane);
    }
}

/// `acc[c] += sum over b, p of src[b, c, p]` for an NCHW chunk `(b, c, p)`, each channel
/// summed sequentially (sample-major). Parallel over channels.
pub fn channel_sums<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), acc: &mut [E]) {
    let one = |(ci, a): (usize, &mut E)| {
        let mut s = E::default();
        for bi in 0..b {
            for &v in &src[(bi * c + ci) * p..][..p] {
                s += v;
            }
        }
        *a += s;
    };
    if src.len() >= PAR_MIN {
        acc.par_iter_mut().enumerate().for_each(one);
    } else {
        acc.iter_mut().enumerate().for_each(one);
    }
}

#[cfg(test)]
#[test]
fn to_pc_moves_channels_last() {
    // one partial tile; whole tiles only; whole tiles plus remainders on both axes; and
    // a chunk large enough for the parallel path
    fn check<E: Float>((b, c, p): (usize, usize, usize)) {
        let src: Vec<E> = (0..b * c * p).map(|v| E::of(v as f64)).collect();
        let mut dst = vec![E::of(-1.0); src.len()];
        to_pc(&src, (b, c, p), &mut dst);
        for bi in 0..b {
            for ci in 0..c {
                for pi in 0..p {
                    assert_eq!(
                        dst[(bi * p + pi) * c + ci],
                        src[(bi * c + ci) * p + pi],
                        "{b}x{c}x{p}: sample {bi}, channel {ci}, position {pi}"
                    );
                }
            }
        }
    }
    for s in [(2, 3, 5), (1, 16, 32), (3, 37, 21), (4, 64, 256)] {
        check::<f32>(s);
        check::<f64>(s);
    }
}
