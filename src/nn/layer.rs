//! What a network is made of: the [`Layer`] enum (one variant per operation, parameters
//! as indices into the net's [`ParamStore`]) and the facts about layers that the rest of
//! `nn` relies on (which layers are piecewise linear in their input).
//!
//! A layer holds no tensors: [`super::NetBuilder`] allocates its parameters and returns
//! it, [`super::Net`] interprets it in forward and tangent passes, [`super::state`] keeps
//! the spectral-norm and batch-norm state it refers to. The enum serialises (JSON) as the
//! layer list that `scripts/penalty_fixture.py` rebuilds in PyTorch, so its field names
//! are part of that fixture.

#[cfg(doc)]
use super::params::ParamStore;

/// Upsampling method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum UpMode {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (half-pixel centres, PyTorch's `align_corners=False`).
    Bilinear,
}

/// One layer; parameters are indices into the network's [`ParamStore`].
/// Every activation is `(B, C, H, W)`; vectors are `(B, F, 1, 1)`. Serialises (JSON) as
/// the layer list that `scripts/penalty_fixture.py` rebuilds in PyTorch.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Layer {
    /// Fully connected on the flattened input; weight `(out, in)`, output `(B, out, 1, 1)`.
    Linear {
        /// Weight index.
        w: usize,
        /// Bias index.
        b: Option<usize>,
    },
    /// 2-D convolution; weight `(Cout, Cin/groups, k, k)`.
    Conv {
        /// Weight index.
        w: usize,
        /// Bias index.
        b: Option<usize>,
        /// Stride.
        stride: usize,
        /// Zero padding.
        pad: usize,
        /// Groups.
        groups: usize,
    },
    /// Transposed convolution; weight `(Cin, Cout, k, k)`.
    ConvT {
        /// Weight index.
        w: usize,
        /// Bias index.
        b: Option<usize>,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
    },
    /// 2-D batch norm (per channel); running statistics in the network's buffers.
    BatchNorm {
        /// Scale index.
        gamma: usize,
        /// Shift index.
        beta: usize,
        /// Buffer index.
        buf: usize,
        /// Epsilon.
        eps: f64,
        /// Running-average momentum (PyTorch convention, 0.1).
        momentum: f64,
    },
    /// LeakyReLU with the given negative slope.
    LeakyRelu(f64),
    /// ReLU.
    Relu,
    /// tanh.
    Tanh,
    /// Multiply by a constant.
    Scale(f64),
    /// 2x upsampling.
    Up(UpMode),
    /// 2x2 average pooling.
    AvgPool2,
    /// Reshape to `(B, c, h, w)`.
    Reshape([usize; 3]),
    /// Store `body(x)` in context slot `slot` (e.g. z for SELF-MOD, the mapped style w for
    /// StyleGAN); `x` passes through unchanged and keeps the tape of `body`.
    SetCtx {
        /// Context slot.
        slot: usize,
        /// Layers applied to a copy of `x` (empty: store `x` itself).
        body: Vec<Layer>,
        /// Style mixing: when the pass mixes ([`Side::mix`](super::Side::mix)), `body` of a second latent
        /// (same shape as `x`, drawn from the mix seed) goes to this slot.
        mix: Option<usize>,
    },
    /// Style-mixing cut: when the pass mixes with `cutoff == index`, context slot `slot`
    /// is replaced by slot `from` (the second latent's style) for every later layer.
    MixPoint {
        /// Slot read by the later layers.
        slot: usize,
        /// Slot holding the second style.
        from: usize,
        /// Position of the cut (1-based: the first style layer never mixes).
        index: usize,
    },
    /// `concat(x, body(ctx[slot]))` along channels (e.g. `concat(z, embed(c))`); `x` and the
    /// body's output must share height and width.
    ConcatCtx {
        /// Context slot.
        slot: usize,
        /// Context -> extra channels.
        body: Vec<Layer>,
    },
    /// Projection head (Miyato & Koyama 2018): with `phi` the flattened input,
    /// `head(phi) + <embed(ctx[slot]), phi>`, output `(B, 1, 1, 1)`.
    Project {
        /// Context slot (the one-hot labels).
        slot: usize,
        /// Context -> `(B, len(phi), 1, 1)` class embedding.
        embed: Vec<Layer>,
        /// `phi -> (B, 1, 1, 1)`, the unconditional score psi.
        head: Vec<Layer>,
    },
    /// Per-pixel noise with a learned per-channel scale: `x + scale[c] * n[b, h, w]`, `n`
    /// standard normal from the pass's noise seed ([`Side::noise_seed`](super::Side::noise_seed); none: no noise).
    Noise {
        /// Scale index, shape `(C,)`.
        scale: usize,
    },
    /// Normalisation without affine parameters followed by a per-channel modulation from a
    /// context slot: `norm(x) * (1 + gain(ctx)) + bias(ctx)`, where `gain` and `bias` map the
    /// context to `(B, C, 1, 1)` (conditional BN / SELF-MOD with batch norm, AdaIN with
    /// instance norm).
    CondNorm {
        /// Batch or instance statistics.
        norm: Norm,
        /// Context slot.
        slot: usize,
        /// Context -> gain offsets `(B, C, 1, 1)`.
        gain: Vec<Layer>,
        /// Context -> biases `(B, C, 1, 1)`.
        bias: Vec<Layer>,
    },
    /// A learned constant `(C, h, w)` repeated over the batch; the input only sets the batch
    /// size (its tape is kept so that context branches still reach the loss).
    Const {
        /// Parameter index, shape `(C, h, w)`.
        p: usize,
    },
    /// Multiply by a learned scalar (learnable residual scale).
    ParamScale {
        /// Parameter index, shape `(1,)`.
        a: usize,
    },
    /// Sum over height and width: `(B, C, H, W) -> (B, C, 1, 1)`.
    SumPool,
    /// 2x upsampling with the `[1, 3, 3, 1]` low-pass filter (zero insertion, filter with
    /// gain 4), as R3GAN's and StyleGAN2's `upsample2d`; linear.
    FirUp,
    /// 2x downsampling with the `[1, 3, 3, 1]` low-pass filter (filter, keep every second
    /// pixel), as R3GAN's and StyleGAN2's `downsample2d`; linear.
    FirDown,
    /// StyleGAN's `normalize_2nd_moment`: `x / sqrt(mean over channels of x^2 + 1e-8)`.
    PixelNorm,
    /// Fully connected with run-time weight and bias multipliers (equalised learning rate,
    /// StyleGAN's `lr_multiplier`): `x (w_mul W)^T + b_mul b`; no spectral norm.
    ScaledLinear {
        /// Weight index, `(out, in)`.
        w: usize,
        /// Bias index, `(out,)`.
        b: usize,
        /// Weight multiplier.
        w_mul: f64,
        /// Bias multiplier.
        b_mul: f64,
    },
    /// R3GAN's generative basis without bias: a per-channel input `(B, C, 1, 1)` times a
    /// learned basis `(C, h, w)`; output `(B, C, h, w)`.
    BasisScale {
        /// Basis index, shape `(C, h, w)`.
        basis: usize,
    },
    /// `skip(x) + body(x)` (an empty `skip` is the identity).
    Residual {
        /// Residual branch.
        body: Vec<Layer>,
        /// Shortcut branch.
        skip: Vec<Layer>,
    },
}

/// Statistics of a [`Layer::CondNorm`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Norm {
    /// Batch statistics over (B, H, W), running averages in buffer `buf`.
    Batch {
        /// Buffer index.
        buf: usize,
        /// Epsilon.
        eps: f64,
        /// Running-average momentum.
        momentum: f64,
    },
    /// Per-sample, per-channel statistics over (H, W) (no running averages).
    Instance {
        /// Epsilon.
        eps: f64,
    },
    /// No normalisation: plain modulation `x * (1 + gain) + bias`.
    Identity,
}

/// True when the input's path has a convolution and no layer with parameters other than
/// a convolution runs before one (in pass order, a residual's body before its skip; label
/// paths left out): such a layer would need the input gradients that convolutions
/// completing a deferral do not send (see [`super::defer`]), and a net without
/// convolutions has nothing to defer. Conservative: a parameter in one residual branch
/// counts as before a convolution in the other.
pub(super) fn defers(layers: &[Layer]) -> bool {
    /// Walks `layers` backwards; `conv_after`: a convolution runs later in the pass.
    fn walk(layers: &[Layer], conv_after: &mut bool) -> bool {
        layers.iter().rev().all(|l| match l {
            Layer::Conv { .. } | Layer::ConvT { .. } => {
                *conv_after = true;
                true
            }
            Layer::Linear { .. }
            | Layer::ScaledLinear { .. }
            | Layer::ParamScale { .. }
            | Layer::BasisScale { .. }
            | Layer::Noise { .. }
            | Layer::BatchNorm { .. }
            | Layer::CondNorm { .. }
            | Layer::Const { .. } => !*conv_after,
            Layer::Residual { body, skip } => walk(skip, conv_after) && walk(body, conv_after),
            Layer::Project { head, .. } => walk(head, conv_after),
            Layer::SetCtx { body, .. } | Layer::ConcatCtx { body, .. } => walk(body, conv_after),
            Layer::LeakyRelu(_)
            | Layer::Relu
            | Layer::Tanh
            | Layer::Scale(_)
            | Layer::Up(_)
            | Layer::AvgPool2
            | Layer::Reshape(_)
            | Layer::FirUp
            | Layer::FirDown
            | Layer::PixelNorm
            | Layer::MixPoint { .. }
            | Layer::SumPool => true,
        })
    }
    let mut conv = false;
    walk(layers, &mut conv) && conv
}

/// True when every layer on the input's path is linear in it but for ReLU / LeakyReLU
/// gates, so a tangent pass ([`Net::forward_tangent`]) computes the exact Jacobian-vector
/// product. Label paths (projection embeddings) may hold anything: they do not see `x`.
pub(super) fn piecewise_linear(layers: &[Layer]) -> bool {
    layers.iter().all(|l| match l {
        Layer::Linear { .. }
        | Layer::Conv { .. }
        | Layer::ConvT { .. }
        | Layer::LeakyRelu(_)
        | Layer::Relu
        | Layer::Scale(_)
        | Layer::Up(_)
        | Layer::AvgPool2
        | Layer::Reshape(_)
        | Layer::ParamScale { .. }
        | Layer::SumPool
        | Layer::FirUp
        | Layer::FirDown
        | Layer::ScaledLinear { .. }
        | Layer::BasisScale { .. } => true,
        Layer::Residual { body, skip } => piecewise_linear(body) && piecewise_linear(skip),
        Layer::Project { head, .. } => piecewise_linear(head),
        Layer::BatchNorm { .. }
        | Layer::Tanh
        | Layer::SetCtx { .. }
        | Layer::MixPoint { .. }
        | Layer::ConcatCtx { .. }
        | Layer::Noise { .. }
        | Layer::CondNorm { .. }
        | Layer::PixelNorm
        | Layer::Const { .. } => false,
    })
}
