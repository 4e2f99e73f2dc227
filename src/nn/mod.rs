//! Layers on dfdx tensor ops with run-time (`usize`) shapes.
//!
//! dfdx 0.13's own convolution, pooling, modules, optimisers and safetensors helpers want
//! const-generic shapes (and conv/pool its broken `nightly` feature), so this module builds
//! what the GAN code needs from dfdx's differentiable primitives (gather, matmul, reshape,
//! broadcast, reductions, upscale2d), which also run on the CUDA backend:
//!
//! - [`ops`]: functional layers (linear, conv2d via im2col gather, transposed conv via dense
//!   matmul + col2im gather, batch norm, activations, softplus, pixel norm);
//! - [`resample`]: 2x up/down sampling (nearest, bilinear, average pooling, FIR);
//! - [`conv`]: the CPU's convolutions as whole-batch GEMMs (custom ops on [`gemm`]);
//! - [`gemm`]: strided and grouped matrix products on the `gemm` crate, scratch buffers;
//! - [`layer`]: what a network is made of, one [`Layer`] per operation;
//! - [`net`]: a network ([`Net`]) and its forward, recording and tangent passes;
//! - [`builder`]: [`NetBuilder`], which allocates named, initialised parameters;
//! - [`state`]: spectral-norm and batch-norm state, checkpoint I/O and EMA of a [`Net`];
//! - [`cond`]: instance norm and per-channel modulation (AdaIN, conditional BN);
//! - [`params`]: the parameter list, Adam, and safetensors I/O;
//! - [`fused`], [`kernels`]: parallel CPU custom ops behind [`Dev`]'s methods;
//! - [`host`]: borrowing CPU tensors' values and zeroing their outputs, for those ops;
//! - [`rng`]: a tiny seedable RNG whose whole state fits a checkpoint.
//!
//! Activations are always 4-D `(batch, channels, height, width)`; vectors are
//! `(batch, features, 1, 1)`.

pub mod act;
pub mod builder;
mod cols;
pub mod cond;
pub mod conv;
pub mod defer;
pub mod fused;
pub mod gemm;
pub mod host;
pub mod kernels;
pub mod layer;
pub mod layout;
pub mod net;
pub mod ops;
pub mod params;
pub mod resample;
pub mod rng;
pub mod slots;
pub mod state;

#[cfg(test)]
mod conv_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod official_tests;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

pub use builder::{ConvConfig, LinearConfig, NetBuilder};
pub use defer::Deferral;
pub use layer::{Layer, Norm, UpMode};
pub use net::{Linearisation, Mix, Net, Side};
pub use params::{load_safetensors, save_safetensors, Adam, AdamConfig, NamedTensor, ParamStore};
pub use rng::Rng;
pub use state::{BnStats, SnState};

use dfdx::prelude::*;

/// Re-export of the dfdx tensor types used in signatures.
pub use dfdx::prelude::{Cpu, Gradients, NoneTape, OwnedTape, Tape, Tensor};

/// Float element types the networks run in (f32 for training, f64 for gradient tests).
pub trait Float: Dtype + dfdx::dtypes::Unit {
    /// The safetensors dtype tag of this type.
    const ST_DTYPE: safetensors::Dtype;
    /// Lossless-enough conversion from f64.
    fn of(x: f64) -> Self;
    /// Conversion to f64.
    fn f64(self) -> f64;
    /// Hyperbolic tangent (the standard library's, as dfdx's `tanh` kernel uses).
    fn tanh(self) -> Self;
    /// Little-endian bytes of a slice.
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8>;
    /// Parse little-endian bytes.
    fn from_le_bytes_vec(b: &[u8]) -> Vec<Self>;
}

impl Float for f32 {
    const ST_DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl Float for f64 {
    const ST_DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// The dfdx devices the networks run on (`Cpu`, and `Cuda` with the `cuda` feature),
/// with the device-specific versions of the hot spots: the default methods compose dfdx
/// ops (they run anywhere); the CPU overrides them with fused, parallel custom ops.
pub trait Dev<E: Float>: Device<E> {
    /// Whether the convolutions can defer weight gradients to a tangent pass
    /// ([`ops::ParamGrads::Deferred`], see [`defer`]); the composed ones cannot.
    const DEFERS: bool = false;
    /// ReLU (`a = 0`) / LeakyReLU as the gated product `x * s(gate)`, `s(v) = 1` for
    /// `v > 0` else `a`, with `gate = x` when none is given. See [`act`].
    fn gated<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        gate: Option<&T4<E, Self>>,
        a: f64,
    ) -> T4<E, Self, T> {
        match gate {
            Some(g) => act::gated_composed(x, g, a),
            None => {
                let g = x.retaped::<NoneTape>();
                act::gated_composed(x, &g, a)
            }
        }
    }
    /// im2col: `x (B, C, H, W)` to flat columns laid out `(B, C, kh, kw, ho, wo)`
    /// (zero for padding taps). See [`fused`].
    fn im2col<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        g: fused::Geom,
        cache: &ops::IdxCache<Self>,
    ) -> T1<E, Self, T> {
        ops::im2col_composed(x, g, cache)
    }
    /// col2im, the adjoint of [`Dev::im2col`]: flat columns summed into the image
    /// `(B, C, H, W)` of geometry `g`.
    fn col2im<T: Tape<E, Self>>(
        cols: T1<E, Self, T>,
        g: fused::Geom,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        ops::col2im_composed(cols, g, cache)
    }
    /// 2-D convolution `x (B, Cin, H, W)` * `w (Cout, Cin/groups, kh, kw)` + bias `(Cout,)`
    /// (as PyTorch's `Conv2d`). Default: [`ops::conv2d_composed`].
    #[allow(clippy::too_many_arguments)]
    fn conv2d<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        w: T4<E, Self, T>,
        b: Option<T1<E, Self, T>>,
        stride: usize,
        pad: usize,
        groups: usize,
        pg: ops::ParamGrads,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        let _ = pg; // computed anyway (a dfdx op has no say in which gradients are kept)
        ops::conv2d_composed(x, w, b, stride, pad, groups, cache)
    }
    /// Transposed 2-D convolution `x (B, Cin, H, W)` with `w (Cin, Cout/groups, kh, kw)`
    /// plus bias `(Cout,)` (as PyTorch's `ConvTranspose2d`). Default:
    /// [`ops::conv_transpose2d_composed`].
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose2d<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        w: T4<E, Self, T>,
        b: Option<T1<E, Self, T>>,
        stride: usize,
        pad: usize,
        groups: usize,
        pg: ops::ParamGrads,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        let _ = pg; // as in `conv2d`
        ops::conv_transpose2d_composed(x, w, b, stride, pad, groups, cache)
    }

    // Step kernels (see [`kernels`]): batch norm, resampling, Adam and EMA updates.

    /// [`ops::batch_norm_train`].
    fn batch_norm_train<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        gamma: T1<E, Self, T>,
        beta: T1<E, Self, T>,
        eps: f64,
    ) -> (T4<E, Self, T>, Vec<E>, Vec<E>) {
        ops::batch_norm_train_composed(x, gamma, beta, eps)
    }
    /// [`ops::batch_norm_eval`].
    fn batch_norm_eval<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        gamma: T1<E, Self, T>,
        beta: T1<E, Self, T>,
        running_mean: &[f64],
        running_var: &[f64],
        eps: f64,
    ) -> T4<E, Self, T> {
        ops::batch_norm_eval_composed(x, gamma, beta, running_mean, running_var, eps)
    }
    /// [`resample::avg_pool2x2`].
    fn avg_pool2x2<T: Tape<E, Self>>(x: T4<E, Self, T>) -> T4<E, Self, T> {
        resample::avg_pool2x2_composed(x)
    }
    /// [`resample::upsample_nearest2x`].
    fn upsample_nearest2x<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        resample::upsample_nearest2x_composed(x, cache)
    }
    /// [`resample::upsample_bilinear2x`].
    fn upsample_bilinear2x<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        resample::upsample_bilinear2x_composed(x, cache)
    }
    /// [`resample::upsample_fir2x`].
    fn upsample_fir2x<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        resample::upsample_fir2x_composed(x, cache)
    }
    /// [`resample::downsample_fir2x`].
    fn downsample_fir2x<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        cache: &ops::IdxCache<Self>,
    ) -> T4<E, Self, T> {
        resample::downsample_fir2x_composed(x, cache)
    }
    /// `a + b` (a residual sum).
    fn add<T: Tape<E, Self>>(a: T4<E, Self, T>, b: T4<E, Self, T>) -> T4<E, Self, T> {
        a + b
    }
    /// `tanh(x)`.
    fn tanh<T: Tape<E, Self>>(x: T4<E, Self, T>) -> T4<E, Self, T> {
        x.tanh()
    }
    /// One Adam update of parameter `p` with gradient `g` and moments `m`, `v`, in place
    /// where the device allows (`buf`: scratch kept by the caller between calls).
    fn adam_update(
        p: &mut T1<E, Self>,
        g: &T1<E, Self>,
        m: &mut T1<E, Self>,
        v: &mut T1<E, Self>,
        h: kernels::AdamStep,
        buf: &mut Vec<E>,
    ) {
        let _ = buf;
        params::adam_update_composed(p, g, m, v, h)
    }
    /// `p = p * beta + s * (1 - beta)` (the EMA update), in place where the device allows.
    fn lerp_update(p: &mut T1<E, Self>, s: &T1<E, Self>, beta: f64, buf: &mut Vec<E>) {
        let _ = buf;
        *p = p.clone() * E::of(beta) + s.clone() * E::of(1.0 - beta);
    }
}

/// The CPU's fused kernels for one float type (f32 and f64 alike).
macro_rules! cpu_dev {
    ($E:ty) => {
        impl Dev<$E> for Cpu {
            const DEFERS: bool = true;
            fn gated<T: Tape<$E, Self>>(
                x: T4<$E, Self, T>,
                gate: Option<&T4<$E, Self>>,
                a: f64,
            ) -> T4<$E, Self, T> {
                act::gated_op(x, gate, a)
            }
            fn im2col<T: Tape<$E, Self>>(
                x: T4<$E, Self, T>,
                g: fused::Geom,
                _: &ops::IdxCache<Self>,
            ) -> T1<$E, Self, T> {
                fused::im2col_op(x, g)
            }
            fn col2im<T: Tape<$E, Self>>(
                cols: T1<$E, Self, T>,
                g: fused::Geom,
                _: &ops::IdxCache<Self>,
            ) -> T4<$E, Self, T> {
                fused::col2im_op(cols, g)
            }
            fn conv2d<T: Tape<$E, Self>>(
                x: T4<$E, Self, T>,
                w: T4<$E, Self, T>,
                b: Option<T1<$E, Self, T>>,
                stride: usize,
                pad: usize,
                groups: usize,
                pg: ops::ParamGrads,
                _: &ops::IdxCache<Self>,
            ) -> T4<$E, Self, T> {
                conv::conv2d_op(x, w, b, stride, pad, groups, pg)
            }
            fn conv_transpose2d<T: Tape<$E, Self>>(
                x: T4<$E, Self, T>,
                w: T4<$E, Self, T>,
                b: Option<T1<$E, Self, T>>,
                stride: usize,
                pad: usize,
                groups: usize,
                pg: ops::ParamGrads,
                _: &ops::IdxCache<Self>,
            ) -> T4<$E, Self, T> {
                conv::conv_transpose2d_op(x, w, b, stride, pad, groups, pg)
            }
            kernels::cpu_step_kernels!($E);
        }
    };
}

cpu_dev!(f32);
cpu_dev!(f64);

#[cfg(feature = "cuda")]
impl Dev<f32> for dfdx::prelude::Cuda {}
#[cfg(feature = "cuda")]
impl Dev<f64> for dfdx::prelude::Cuda {}

/// 4-D activation `(batch, channels, height, width)`.
pub type T4<E, D, T = NoneTape> = Tensor<(usize, usize, usize, usize), E, D, T>;
/// 2-D tensor.
pub type T2<E, D, T = NoneTape> = Tensor<(usize, usize), E, D, T>;
/// Flat tensor (every parameter is stored flat and reshaped at use).
pub type T1<E, D, T = NoneTape> = Tensor<(usize,), E, D, T>;
/// Scalar.
pub type T0<E, D, T = NoneTape> = Tensor<(), E, D, T>;
