//! Fused im2col / col2im as dfdx custom ops, with rayon-parallel CPU kernels.
//!
//! The composed path (a cached gather index into the flat input, dfdx deriving the
//! scatter-add backward) works on every device but dfdx's CPU gather and its backward
//! are single-threaded and read a `usize` index per element. On the CPU, [`Dev::im2col`]
//! and [`Dev::col2im`] are instead one custom op each (dfdx 0.13's public `split_tape` /
//! `add_backward_op` / `Gradients::get_or_alloc_mut`): the two kernels below, which are
//! each other's adjoint, run in parallel over `(batch, channel)` planes whose writes are
//! disjoint. Other devices (CUDA) keep the composed default methods.
//!
//! Column layout (both ops): `(B, C, kh, kw, ho, wo)` flattened, i.e. for every input
//! plane `(b, c)` a contiguous block of `kh * kw * ho * wo` values, where `(ho, wo)` are
//! the convolution's output positions. Out-of-image taps (zero padding) read as zero.
//!
//! [`Dev::im2col`]: super::Dev::im2col
//! [`Dev::col2im`]: super::Dev::col2im

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{take, values, zeroed};
use super::{Float, T1, T4};

/// Geometry of an im2col: an image `(b, c, h, w)`, a `kh x kw` kernel, stride, padding,
/// and the resulting `ho x wo` output positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geom {
    /// Batch.
    pub b: usize,
    /// Channels.
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub pad: usize,
    /// Output rows.
    pub ho: usize,
    /// Output columns.
    pub wo: usize,
}

impl Geom {
    /// Geometry of a convolution of a `(b, c, h, w)` image with a `kh x kw` kernel.
    pub fn new(
        (b, c, h, w): (usize, usize, usize, usize),
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let ho = super::ops::conv_out(h, kh, stride, pad);
        let wo = super::ops::conv_out(w, kw, stride, pad);
        Self {
            b,
            c,
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        }
    }
    /// Values per input plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Column values per input plane.
    pub fn col_plane(&self) -> usize {
        self.kh * self.kw * self.ho * self.wo
    }
    /// Total column values.
    pub fn cols_len(&self) -> usize {
        self.b * self.c * self.col_plane()
    }
    /// Total image values.
    pub fn img_len(&self) -> usize {
        self.b * self.c * self.plane()
    }
    /// Output positions `lo..hi` along one axis whose tap `k` lands inside `0..size`.
    pub(crate) fn valid(
        o: usize,
        k: usize,
        stride: usize,
        pad: usize,
        size: usize,
    ) -> (usize, usize) {
        // i = o * stride + k - pad must satisfy 0 <= i < size
        let lo = if k >= pad {
            0
        } else {
            (pad - k).div_ceil(stride)
        };
        let hi = if size + pad > k {
            ((size + pad - k - 1) / stride + 1).min(o)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Serial work below this many column values (rayon's overhead is not worth it).
const PAR_MIN: usize = 1 << 15;

/// Columns from an image (`img.len() == g.img_len()`, `cols.len() == g.cols_len()`),
/// overwriting `cols`.
pub fn im2col_cpu<E: Float>(img: &[E], g: Geom, cols: &mut [E]) {
    assert_eq!(img.len(), g.img_len());
    assert_eq!(cols.len(), g.cols_len());
    let (cp, p) = (g.col_plane(), g.plane());
    let plane = |(src, dst): (&[E], &mut [E])| {
        let mut o = 0;
        for ki in 0..g.kh {
            let (ylo, yhi) = Geom::valid(g.ho, ki, g.stride, g.pad, g.h);
            for kj in 0..g.kw {
                let (xlo, xhi) = Geom::valid(g.wo, kj, g.stride, g.pad, g.w);
                for oy in 0..g.ho {
                    let row = &mut dst[o..o + g.wo];
                    o += g.wo;
                    if oy < ylo || oy >= yhi {
                        row.fill(E::default());
                        continue;
                    }
                    let iy = oy * g.stride + ki - g.pad;
                    let s = &src[iy * g.w..(iy + 1) * g.w];
                    row[..xlo].fill(E::default());
                    row[xhi..].fill(E::default());
                    if g.stride == 1 {
                        let x0 = xlo + kj - g.pad;
                        row[xlo..xhi].copy_from_slice(&s[x0..x0 + xhi - xlo]);
                    } else {
                        for (ox, r) in row.iter_mut().enumerate().take(xhi).skip(xlo) {
                            *r = s[ox * g.stride + kj - g.pad];
                        }
                    }
                }
            }
        }
    };
    if cols.len() >= PAR_MIN {
        img.par_chunks(p)
            .zip(cols.par_chunks_mut(cp))
            .for_each(plane);
    } else {
        img.chunks(p).zip(cols.chunks_mut(cp)).for_each(plane);
    }
}

/// The adjoint of [`im2col_cpu`]: every column value added into the image pixel it was
/// read from (`img += col2im(cols)`; padding taps are dropped).
pub fn col2im_add_cpu<E: Float>(cols: &[E], g: Geom, img: &mut [E]) {
    assert_eq!(img.len(), g.img_len());
    assert_eq!(cols.len(), g.cols_len());
    let (cp, p) = (g.col_plane(), g.plane());
    let plane = |(src, dst): (&[E], &mut [E])| {
        let mut o = 0;
        for ki in 0..g.kh {
            let (ylo, yhi) = Geom::valid(g.ho, ki, g.stride, g.pad, g.h);
            for kj in 0..g.kw {
                let (xlo, xhi) = Geom::valid(g.wo, kj, g.stride, g.pad, g.w);
                for oy in 0..g.ho {
                    let row = &src[o..o + g.wo];
                    o += g.wo;
                    if oy < ylo || oy >= yhi {
                        continue;
                    }
                    let iy = oy * g.stride + ki - g.pad;
                    let d = &mut dst[iy * g.w..(iy + 1) * g.w];
                    if g.stride == 1 {
                        let x0 = xlo + kj - g.pad;
                        for (a, &v) in d[x0..x0 + xhi - xlo].iter_mut().zip(&row[xlo..xhi]) {
                            *a += v;
                        }
                    } else {
                        for (ox, &v) in row.iter().enumerate().take(xhi).skip(xlo) {
                            d[ox * g.stride + kj - g.pad] += v;
                        }
                    }
                }
            }
        }
    };
    if cols.len() >= PAR_MIN {
        cols.par_chunks(cp)
            .zip(img.par_chunks_mut(p))
            .for_each(plane);
    } else {
        cols.chunks(cp).zip(img.chunks_mut(p)).for_each(plane);
    }
}

/// Fused im2col on the CPU: `x (B, C, H, W)` to flat columns, backward by a parallel col2im.
pub fn im2col_op<E: Float, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>, g: Geom) -> T1<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    assert_eq!(
        *x.shape(),
        (g.b, g.c, g.h, g.w),
        "im2col: shape vs geometry"
    );
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let xv = values(&x);
    let mut cols = zeroed(g.cols_len());
    im2col_cpu(&xv, g, &mut cols);
    let out: T1<E, Cpu> = dev.tensor_from_vec(cols, (g.cols_len(),));
    let (xg, og) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let mut acc = vec![E::default(); g.img_len()];
        col2im_add_cpu(&take(grads.get_or_alloc_mut(&og)?), g, &mut acc);
        let gx = grads.get_or_alloc_mut(&xg)?;
        for (a, v) in gx.iter_mut().zip(acc) {
            *a += v;
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// Fused col2im on the CPU: flat columns to the image `(B, C, H, W)` they sum into (the
/// adjoint of [`im2col_op`]; transposed convolution), backward by a parallel im2col.
pub fn col2im_op<E: Float, T: Tape<E, Cpu>>(cols: T1<E, Cpu, T>, g: Geom) -> T4<E, Cpu, T>
where
    Cpu: Device<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    assert_eq!(cols.shape().0, g.cols_len(), "col2im: length vs geometry");
    let (cols, mut tape) = cols.split_tape();
    let dev = cols.device().clone();
    let cv = values(&cols);
    let mut img = zeroed(g.img_len());
    col2im_add_cpu(&cv, g, &mut img);
    let out: T4<E, Cpu> = dev.tensor_from_vec(img, (g.b, g.c, g.h, g.w));
    let (cg, og) = (cols.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let mut acc = vec![E::default(); g.cols_len()];
        im2col_cpu(&take(grads.get_or_alloc_mut(&og)?), g, &mut acc);
        let gc = grads.get_or_alloc_mut(&cg)?;
        for (a, v) in gc.iter_mut().zip(acc) {
            *a += v;
        }
        Ok(())
    });
    out.put_tape(tape)
}
