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
//! samples (`N = bc * P` columns, `P` the positions of one sample) is moved to
//! "channel-major" matrices whose columns run over (sample, position):
//!
//! - columns `cols (Cin * kh * kw, N)`: row `(c, ki, kj)`, column `(b, oy, ox)` holds
//!   `x[b, c, oy * s + ki - p, ox * s + kj - p]` (zero outside the image) ([`im2col_cb`];
//!   its adjoint [`col2im_cb`] sums columns back into an NCHW image);
//! - `yt (C, N)`: an NCHW chunk with the batch axis moved inside ([`to_cb`] / [`from_cb`]).
//!
//! With `groups` groups, the rows of `cols` and `yt` and the weight's rows are contiguous
//! per group, so every group is one GEMM over the whole chunk (strided views of the same
//! buffers; no transposed copies: the gemm crate takes any row and column strides).
//!
//! ## The three GEMMs of each op (per group `g`, per chunk)
//!
//! `conv2d`, weight `W (Cout, Cin/G, kh, kw)` seen as `(Cout, kk)` with `kk = Cin/G*kh*kw`:
//! - forward: `yt_g = W_g @ cols_g`, then `y = from_cb(yt) + bias` (bias fused in the copy);
//! - weight grad: `dW_g^T += cols_g @ dyp_g` with `dyp` the output gradient
//!   position-major ([`to_pc`]; cols recomputed from `x`, accumulated in place into the
//!   gradient; see [`grouped_weight_grad`] for why transposed);
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
//! ## Buffers, chunks and determinism
//!
//! Working matrices come from a small thread-local pool ([`Scratch`], in [`super::gemm`]
//! with the strided GEMM wrappers), so a training step
//! allocates only the op outputs. The batch is cut into chunks so that no working matrix
//! exceeds [`CHUNK_MAX`] values (bounding the pool); the chunking depends only on the
//! shapes. Every value is reduced in a fixed order: gemm splits the output among threads
//! but runs each output's depth loop in one thread in the same order whatever the thread
//! count, and the copy kernels sum every output element sequentially. The same inputs
//! give bit-identical results on 1 or many threads.
//!
//! [`Dev::conv2d`]: super::Dev::conv2d
//! [`Dev::conv_transpose2d`]: super::Dev::conv_transpose2d

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::Geom;
use super::gemm::{grouped_matmul, grouped_weight_grad, GemmFloat, Op, Scratch};
use super::{Float, T1, T4};

/// Largest working matrix (values) an op builds for one batch chunk, unless one sample
/// alone is larger.
pub const CHUNK_MAX: usize = 1 << 21;

/// Serial copy kernels below this many values (rayon's overhead is not worth it).
const PAR_MIN: usize = 1 << 14;

/// One kernel tap `(ki, kj)`: the output rows `ylo..yhi` and columns `xlo..xhi` whose
/// input pixel lies inside the image.
#[derive(Clone, Copy, Debug)]
struct Tap {
    ylo: usize,
    yhi: usize,
    xlo: usize,
    xhi: usize,
    /// Where the tap reads in a plane's [`Phases`]: `(phase, dy, dx)`, see [`Tap::phase`].
    ph: (usize, isize, isize),
}

impl Tap {
    fn new(g: &Geom, ki: usize, kj: usize) -> Self {
        let (ylo, yhi) = Geom::valid(g.ho, ki, g.stride, g.pad, g.h);
        let (xlo, xhi) = Geom::valid(g.wo, kj, g.stride, g.pad, g.w);
        Tap {
            ylo,
            yhi,
            xlo,
            xhi,
            ph: Self::phase(g, ki, kj),
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
    fn phase(&self) -> usize {
        self.hs * self.ws
    }
    /// Values of all phases of one plane.
    fn len(&self) -> usize {
        self.s * self.s * self.phase()
    }
    /// Splits an image plane `(h, w)` into `dst` (all phases).
    fn split<E: Float>(&self, g: &Geom, plane: &[E], dst: &mut [E]) {
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
/// the padding); every row one contiguous copy.
fn tap_read<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let (wo, len) = (g.wo, t.xhi - t.xlo);
    dst[..t.ylo * wo].fill(E::default());
    dst[t.yhi * wo..].fill(E::default());
    let (ph, dy, dx) = t.ph;
    let src = &src[ph * ps.phase()..(ph + 1) * ps.phase()];
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
/// pixels the tap reads (padding taps dropped); every row one contiguous sum.
fn tap_add<E: Float>(src: &[E], g: &Geom, ps: &Phases, t: &Tap, dst: &mut [E]) {
    let len = t.xhi - t.xlo;
    if len == 0 {
        return;
    }
    let (ph, dy, dx) = t.ph;
    let dst = &mut dst[ph * ps.phase()..(ph + 1) * ps.phase()];
    for oy in t.ylo..t.yhi {
        let row = &src[oy * g.wo + t.xlo..][..len];
        let qy = (oy as isize + dy) as usize;
        let qx = (t.xlo as isize + dx) as usize;
        for (a, &v) in dst[qy * ps.ws + qx..][..len].iter_mut().zip(row) {
            *a += v;
        }
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
/// wo)` summed into `img (g.b, g.c, g.h, g.w)` per `init`. Parallel over image planes;
/// every pixel sums its taps in the fixed order `(ki, kj, oy, ox)` (strided kernels: into
/// the plane's phases, then added to its start value).
pub fn col2im_cb<E: GemmFloat>(cols: &[E], g: &Geom, img: &mut [E], init: Init<'_, E>) {
    assert_eq!(img.len(), g.img_len(), "col2im_cb: image length");
    assert_eq!(cols.len(), g.cols_len(), "col2im_cb: columns length");
    let p = g.ho * g.wo;
    let n = g.b * p;
    let taps = Tap::all(g);
    let ps = Phases::of(g);
    let plane = |(i, dst): (usize, &mut [E])| {
        let (b, c) = (i / g.c, i % g.c);
        if g.stride > 1 {
            // strided: sum the taps into the plane's phases (contiguous runs), then merge
            let mut acc = vec![E::default(); ps.len()];
            for (ti, t) in taps.iter().enumerate() {
                let s = (c * taps.len() + ti) * n + b * p;
                tap_add(&cols[s..s + p], g, &ps, t, &mut acc);
            }
            ps.merge(g, &acc, c, init, dst);
            return;
        }
        // stride 1: the plane is its own phase
        init.start(c, dst);
        for (ti, t) in taps.iter().enumerate() {
            let s = (c * taps.len() + ti) * n + b * p;
            tap_add(&cols[s..s + p], g, &ps, t, dst);
        }
    };
    if g.plane() == 0 {
        return;
    }
    if cols.len().max(img.len()) >= PAR_MIN {
        img.par_chunks_mut(g.plane()).enumerate().for_each(plane);
    } else {
        img.chunks_mut(g.plane()).enumerate().for_each(plane);
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

/// NCHW chunk `src (b, c, p)` to position-major `dst (b * p, c)` (NHWC: one row per
/// sample position). Parallel over samples.
pub fn to_pc<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), dst: &mut [E]) {
    assert_eq!(src.len(), b * c * p, "to_pc: source length");
    assert_eq!(dst.len(), b * c * p, "to_pc: destination length");
    if p == 0 || c == 0 {
        return;
    }
    // 16 positions at a time: reads stay sequential along each plane, writes touch 16 rows
    const BLOCK: usize = 16;
    let sample = |(bi, d): (usize, &mut [E])| {
        let s = &src[bi * c * p..(bi + 1) * c * p];
        for p0 in (0..p).step_by(BLOCK) {
            let p1 = (p0 + BLOCK).min(p);
            for ci in 0..c {
                let plane = &s[ci * p..(ci + 1) * p];
                for pi in p0..p1 {
                    d[pi * c + ci] = plane[pi];
                }
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
fn channel_sums<E: Float>(src: &[E], (b, c, p): (usize, usize, usize), acc: &mut [E]) {
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
    let (b, c, p) = (2, 3, 5);
    let src: Vec<f64> = (0..b * c * p).map(|v| v as f64).collect();
    let mut dst = vec![0.0; src.len()];
    to_pc(&src, (b, c, p), &mut dst);
    for bi in 0..b {
        for ci in 0..c {
            for pi in 0..p {
                assert_eq!(dst[(bi * p + pi) * c + ci], src[(bi * c + ci) * p + pi]);
            }
        }
    }
}

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
struct Shapes {
    /// The im2col geometry of the whole batch (`c` channels of the image side).
    g: Geom,
    /// Channels on the "output" side (conv2d output / transposed-conv input).
    co: usize,
    groups: usize,
}

impl Shapes {
    /// Rows of cols per group.
    fn kk(&self) -> usize {
        self.g.c / self.groups * self.g.kh * self.g.kw
    }
    /// Output-side channels per group.
    fn og(&self) -> usize {
        self.co / self.groups
    }
    /// Positions per sample on the output side.
    fn p(&self) -> usize {
        self.g.ho * self.g.wo
    }
    /// Samples per chunk.
    fn chunk(&self) -> usize {
        let per = (self.g.c * self.g.kh * self.g.kw * self.p())
            .max(self.co * self.p())
            .max(self.g.plane() * self.g.c);
        chunk_len(self.g.b, per)
    }
    /// The geometry of samples `b0..b0 + bc`.
    fn part(&self, bc: usize) -> Geom {
        Geom { b: bc, ..self.g }
    }
}

/// Copies a tensor's (contiguous) values into a scratch buffer.
fn read<E: GemmFloat, S: Shape>(t: &Tensor<S, E, Cpu>) -> Scratch<E>
where
    Cpu: Device<E>,
{
    let mut s = Scratch::take(t.shape().num_elements());
    t.copy_into(&mut s);
    s
}

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
    // copy_into reads physical storage: make sure it is laid out as the shape says
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
/// forward and both backward products are whole-batch GEMMs (see the module doc).
pub fn conv2d_op<E: GemmFloat, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
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
    let sh = Shapes {
        g: Geom::new(*x.shape(), kh, kw, stride, pad),
        co: cout,
        groups,
    };
    let (x, w, b, mut tape) = split(x, w, b);
    let dev = x.device().clone();
    let (g, p, kk, og) = (sh.g, sh.p(), sh.kk(), sh.og());
    let (xs, ys) = (cin * g.plane(), cout * p);
    let chunk = sh.chunk();

    let mut y = vec![E::default(); bsz * ys];
    {
        let xv = read(&x);
        let wv = read(&w);
        let bv = b.as_ref().map(read);
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut cols = Scratch::take(gc.cols_len());
            im2col_cb(&xv[b0 * xs..(b0 + bc) * xs], &gc, &mut cols);
            let mut yt = Scratch::take(cout * n);
            // yt_g (og x n) = W_g (og x kk) @ cols_g (kk x n)
            grouped_matmul(
                groups,
                (og, n, kk),
                &mut yt,
                false,
                Op::N(&wv),
                Op::N(&cols),
            );
            from_cb(
                &yt,
                (bc, cout, p),
                &mut y[b0 * ys..(b0 + bc) * ys],
                Init::Set(bv.as_deref()),
            );
        }
    }
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, (bsz, cout, g.ho, g.wo));
    let (xg, wg, bg, outg) = (
        x.ghost(),
        w.ghost(),
        b.as_ref().map(|b| b.ghost()),
        out.ghost(),
    );
    tape.add_backward_op(move |grads| {
        let xv = read(&x);
        let wv = read(&w);
        let mut db = vec![E::default(); if bg.is_some() { cout } else { 0 }];
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut dyt = Scratch::take(cout * n);
            let mut dyp = Scratch::take(n * cout);
            {
                let dy = &grads.get_or_alloc_mut(&outg)?[b0 * ys..(b0 + bc) * ys];
                to_cb(dy, (bc, cout, p), &mut dyt);
                to_pc(dy, (bc, cout, p), &mut dyp);
                if bg.is_some() {
                    channel_sums(dy, (bc, cout, p), &mut db);
                }
            }
            let mut cols = Scratch::take(gc.cols_len());
            im2col_cb(&xv[b0 * xs..(b0 + bc) * xs], &gc, &mut cols);
            let gw = grads.get_or_alloc_mut(&wg)?;
            // dW_g^T (kk x og) += cols_g (kk x n) @ dyp_g (n x og)
            grouped_weight_grad(groups, (kk, og, n), gw, &cols, &dyp);
            drop(dyp);
            // dcols_g (kk x n) = W_g^T (kk x og) @ dyt_g (og x n), over cols
            grouped_matmul(
                groups,
                (kk, n, og),
                &mut cols,
                false,
                Op::T(&wv),
                Op::N(&dyt),
            );
            let gx = grads.get_or_alloc_mut(&xg)?;
            col2im_cb(&cols, &gc, &mut gx[b0 * xs..(b0 + bc) * xs], Init::Add);
        }
        if let Some(bg) = bg {
            for (a, v) in grads.get_or_alloc_mut(&bg)?.iter_mut().zip(db) {
                *a += v;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// Transposed 2-D convolution (PyTorch's `ConvTranspose2d`) of `x (B, Cin, H, W)` with
/// `w (Cin, Cout/groups, kh, kw)`, plus an optional bias `(Cout,)`, as one CPU op whose
/// forward and both backward products are whole-batch GEMMs (see the module doc).
pub fn conv_transpose2d_op<E: GemmFloat, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
    stride: usize,
    pad: usize,
    groups: usize,
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
    let (g, p, okk, cig) = (sh.g, sh.p(), sh.kk(), sh.og());
    let (xs, ys) = (cin * p, cout * g.plane());
    let chunk = sh.chunk();

    let mut y = vec![E::default(); bsz * ys];
    {
        let xv = read(&x);
        let wv = read(&w);
        let bv = b.as_ref().map(read);
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut xt = Scratch::take(cin * n);
            to_cb(&xv[b0 * xs..(b0 + bc) * xs], (bc, cin, p), &mut xt);
            let mut cols = Scratch::take(gc.cols_len());
            // cols_g (okk x n) = W_g^T (okk x cig) @ xt_g (cig x n)
            grouped_matmul(
                groups,
                (okk, n, cig),
                &mut cols,
                false,
                Op::T(&wv),
                Op::N(&xt),
            );
            col2im_cb(
                &cols,
                &gc,
                &mut y[b0 * ys..(b0 + bc) * ys],
                Init::Set(bv.as_deref()),
            );
        }
    }
    let out: T4<E, Cpu> = dev.tensor_from_vec(y, (bsz, cout, ho, wo));
    let (xg, wg, bg, outg) = (
        x.ghost(),
        w.ghost(),
        b.as_ref().map(|b| b.ghost()),
        out.ghost(),
    );
    tape.add_backward_op(move |grads| {
        let xv = read(&x);
        let wv = read(&w);
        let mut db = vec![E::default(); if bg.is_some() { cout } else { 0 }];
        for b0 in (0..bsz).step_by(chunk) {
            let bc = chunk.min(bsz - b0);
            let (gc, n) = (sh.part(bc), bc * p);
            let mut dcols = Scratch::take(gc.cols_len());
            {
                let dy = &grads.get_or_alloc_mut(&outg)?[b0 * ys..(b0 + bc) * ys];
                im2col_cb(dy, &gc, &mut dcols);
                if bg.is_some() {
                    channel_sums(dy, (bc, cout, g.plane()), &mut db);
                }
            }
            let mut xt = Scratch::take(cin * n);
            to_pc(&xv[b0 * xs..(b0 + bc) * xs], (bc, cin, p), &mut xt);
            let gw = grads.get_or_alloc_mut(&wg)?;
            // dW_g^T (okk x cig) += dcols_g (okk x n) @ xp_g (n x cig), with xp the
            // chunk position-major (in xt's buffer)
            grouped_weight_grad(groups, (okk, cig, n), gw, &dcols, &xt);
            // dxt_g (cig x n) = W_g (cig x okk) @ dcols_g (okk x n), over xt
            grouped_matmul(
                groups,
                (cig, n, okk),
                &mut xt,
                false,
                Op::N(&wv),
                Op::N(&dcols),
            );
            let gx = grads.get_or_alloc_mut(&xg)?;
            from_cb(
                &xt,
                (bc, cin, p),
                &mut gx[b0 * xs..(b0 + bc) * xs],
                Init::Add,
            );
        }
        if let Some(bg) = bg {
            for (a, v) in grads.get_or_alloc_mut(&bg)?.iter_mut().zip(db) {
                *a += v;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}
