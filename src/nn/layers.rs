//! A small run-time layer graph with named parameters.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use dfdx::prelude::*;

use super::ops::{self, IdxCache};
use super::params::{NamedTensor, ParamStore};
use super::{Dev, Float, Rng, T1, T2, T4};

type T3<E, D> = Tensor<(usize, usize, usize), E, D>;

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
    /// R3GAN's generative basis: `basis (C, h, w) * (W x + b)` per channel, on a flattened
    /// input; output `(B, C, h, w)`.
    Basis {
        /// Basis index, shape `(C, h, w)`.
        basis: usize,
        /// Linear weight index, `(C, in)`.
        w: usize,
        /// Linear bias index, `(C,)`.
        b: usize,
    },
    /// Store `body(x)` in context slot `slot` (e.g. z for SELF-MOD, the mapped style w for
    /// StyleGAN); `x` passes through unchanged and keeps the tape of `body`.
    SetCtx {
        /// Context slot.
        slot: usize,
        /// Layers applied to a copy of `x` (empty: store `x` itself).
        body: Vec<Layer>,
        /// Style mixing: when the pass mixes ([`Side::mix`]), `body` of a second latent
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
    /// standard normal from the pass's noise seed ([`Side::noise_seed`]; none: no noise).
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

/// What a forward pass gets besides `x`. The default is an unconditional pass without
/// noise or mixing, which is all a net without such layers needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    /// One class label per batch row; required by conditional nets ([`Net::classes`]).
    pub labels: Option<Vec<usize>>,
    /// Seed of the [`Layer::Noise`] inputs (none: no noise is added).
    pub noise_seed: Option<u64>,
    /// Style mixing for this pass.
    pub mix: Option<Mix>,
}

/// Style mixing of one pass: from cut `cutoff` on, the style comes from a second latent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Cut position, `1..=Net::mix_points`.
    pub cutoff: usize,
    /// Seed of the second latent.
    pub seed: u64,
}

impl Side {
    /// A pass with labels only.
    pub fn labels(labels: Option<Vec<usize>>) -> Self {
        Self {
            labels,
            ..Self::default()
        }
    }
    /// The same side inputs for a batch that repeats the original `times` times along
    /// the batch axis (labels repeated; noise and mixing are per pass and kept).
    pub fn repeated(&self, times: usize) -> Self {
        Self {
            labels: self.labels.as_ref().map(|l| l.repeat(times)),
            ..self.clone()
        }
    }
}

/// Per-pass state: context slots, the side inputs, the noise-layer counter, and how the
/// pass treats its piecewise-linear activations.
struct Fwd<'a, E: Float, D: Dev<E>> {
    ctx: Vec<Option<T4<E, D>>>,
    side: &'a Side,
    noise_i: u64,
    lin: Lin<'a, E, D>,
    /// A tangent pass: additive constants (biases) are dropped on the input's path.
    tangent: bool,
}

/// What a pass does with the gates of its ReLU / LeakyReLU layers (see [`super::act`]).
enum Lin<'a, E: Float, D: Dev<E>> {
    /// Gate on the layer's own input.
    Off,
    /// Gate on the layer's own input and keep the gates, in pass order.
    Record(Vec<T4<E, D>>),
    /// Gate on recorded gates, consumed in pass order.
    Replay { gates: &'a [T4<E, D>], next: usize },
}

/// The gates (pre-activations) of a net's ReLU / LeakyReLU layers in one pass, in pass
/// order: what [`Net::forward_tangent`] replays to linearise the net at that pass's input.
pub struct Linearisation<E: Float, D: Dev<E>> {
    gates: Vec<T4<E, D>>,
}

impl<E: Float, D: Dev<E>> Linearisation<E, D> {
    /// The linearisation of batch rows `lo..hi` (for a pass over a concatenated batch).
    pub fn rows(&self, lo: usize, hi: usize) -> Self {
        let gates = self
            .gates
            .iter()
            .map(|g| {
                let (b, c, h, w) = *g.shape();
                assert!(lo < hi && hi <= b, "rows {lo}..{hi} of a batch of {b}");
                g.clone()
                    .slice((lo..hi, .., .., ..))
                    .reshape_like(&(hi - lo, c, h, w))
            })
            .collect();
        Self { gates }
    }
    /// Gate `i` (the input of the pass's `i`-th ReLU / LeakyReLU).
    pub fn gate(&self, i: usize) -> &T4<E, D> {
        &self.gates[i]
    }
    /// Number of recorded gates.
    pub fn len(&self) -> usize {
        self.gates.len()
    }
    /// True when the pass had no ReLU / LeakyReLU.
    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }
}

/// True when every layer on the input's path is linear in it but for ReLU / LeakyReLU
/// gates, so a tangent pass ([`Net::forward_tangent`]) computes the exact Jacobian-vector
/// product. Label paths (projection embeddings) may hold anything: they do not see `x`.
fn piecewise_linear(layers: &[Layer]) -> bool {
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
        | Layer::Basis { .. }
        | Layer::ParamScale { .. }
        | Layer::SumPool
        | Layer::FirUp
        | Layer::FirDown
        | Layer::BasisScale { .. }
        | Layer::ScaledLinear { .. } => true,
        Layer::Residual { body, skip } => piecewise_linear(body) && piecewise_linear(skip),
        Layer::Project { head, .. } => piecewise_linear(head),
        Layer::BatchNorm { .. }
        | Layer::Tanh
        | Layer::SetCtx { .. }
        | Layer::MixPoint { .. }
        | Layer::ConcatCtx { .. }
        | Layer::Noise { .. }
        | Layer::CondNorm { .. }
        | Layer::Const { .. }
        | Layer::PixelNorm => false,
    })
}

/// Spectral-normalisation state of one weight (Miyato et al. 2018): the weight reshaped to
/// `(rows, rest)` is divided by `sigma = u^T W v`, with `u`, `v` held fixed in the pass.
#[derive(Clone, Debug)]
pub struct SnState {
    /// Parameter index of the weight.
    pub param: usize,
    /// Left singular vector estimate (`rows`).
    pub u: Vec<f64>,
    /// Right singular vector estimate (`rest`).
    pub v: Vec<f64>,
    /// `ParamStore::version` the vectors were last iterated for (`None`: never).
    pub synced: Option<u64>,
}

impl SnState {
    /// One power iteration on the host copy `w` (`rows x rest`, row-major):
    /// `v = normalize(W^T u)`, `u = normalize(W v)`.
    pub fn power_iteration(&mut self, w: &[f64]) {
        let (o, k) = (self.u.len(), self.v.len());
        let mut v = vec![0.0; k];
        for (i, ui) in self.u.iter().enumerate() {
            for (vj, wij) in v.iter_mut().zip(&w[i * k..(i + 1) * k]) {
                *vj += wij * ui;
            }
        }
        normalize(&mut v);
        let mut u: Vec<f64> = (0..o)
            .map(|i| {
                w[i * k..(i + 1) * k]
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        normalize(&mut u);
        self.u = u;
        self.v = v;
    }
}

fn normalize(x: &mut [f64]) {
    let n = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    for v in x {
        *v /= n;
    }
}

/// Running statistics of one batch-norm layer.
#[derive(Clone, Debug)]
pub struct BnStats {
    /// Layer name (`G.blocks.0.bn`).
    pub name: String,
    /// Running mean.
    pub mean: Vec<f64>,
    /// Running (unbiased) variance.
    pub var: Vec<f64>,
}

/// A network: layers, named parameters, batch-norm buffers.
pub struct Net<E: Float, D: Dev<E>> {
    /// Trainable parameters.
    pub params: ParamStore<E, D>,
    /// Batch-norm running statistics.
    pub buffers: Mutex<Vec<BnStats>>,
    /// Spectral-normalisation states (one power iteration per parameter update, in the
    /// first training-mode forward pass after it).
    pub sn: Mutex<Vec<SnState>>,
    /// Context slots used by [`Layer::SetCtx`] / [`Layer::CondNorm`].
    pub n_ctx: usize,
    /// Conditional nets: (context slot of the one-hot labels, number of classes).
    pub label_slot: Option<(usize, usize)>,
    /// Number of [`Layer::MixPoint`] cuts (0: the net cannot mix styles).
    pub mix_points: usize,
    /// Number of [`Layer::Noise`] inputs.
    pub noise_inputs: usize,
    /// Layers, applied in order.
    pub layers: Vec<Layer>,
    /// Input shape without batch.
    pub in_shape: [usize; 3],
    /// Output shape without batch.
    pub out_shape: [usize; 3],
    /// Gather-index cache.
    pub cache: IdxCache<D>,
    /// Device.
    pub dev: D,
}

/// A 1-D state vector (spectral-norm u/v, batch-norm running statistics) from a
/// checkpoint, checking that it is there and has the expected length.
fn load_vector<E: Float>(
    map: &HashMap<String, NamedTensor<E>>,
    name: &str,
    len: usize,
) -> Result<Vec<f64>> {
    let t = map
        .get(name)
        .ok_or_else(|| anyhow!("missing tensor {name:?}"))?;
    if t.shape != vec![len] {
        bail!(
            "tensor {name:?}: shape {:?} in file, [{len}] expected",
            t.shape
        );
    }
    Ok(t.data.iter().map(|x| x.f64()).collect())
}

impl<E: Float, D: Dev<E>> Clone for Net<E, D> {
    fn clone(&self) -> Self {
        Self {
            params: self.params.clone(),
            buffers: Mutex::new(self.buffers.lock().unwrap().clone()),
            sn: Mutex::new(self.sn.lock().unwrap().clone()),
            n_ctx: self.n_ctx,
            label_slot: self.label_slot,
            mix_points: self.mix_points,
            noise_inputs: self.noise_inputs,
            layers: self.layers.clone(),
            in_shape: self.in_shape,
            out_shape: self.out_shape,
            cache: self.cache.clone(),
            dev: self.dev.clone(),
        }
    }
}

impl<E: Float, D: Dev<E>> Net<E, D> {
    fn p<T: Tape<E, D>>(&self, i: usize) -> T1<E, D, T> {
        self.params.tensors[i].retaped::<T>()
    }
    /// A weight, spectrally normalised when it has an [`SnState`]; in training mode the
    /// state gets one power iteration per parameter update (`ParamStore::version`).
    fn weight<T: Tape<E, D>>(&self, i: usize, train: bool) -> T1<E, D, T> {
        let w = self.p::<T>(i);
        let mut sn = self.sn.lock().unwrap();
        let Some(st) = sn.iter_mut().find(|s| s.param == i) else {
            return w;
        };
        if train && st.synced != Some(self.params.version) {
            let host: Vec<f64> = self.params.tensors[i]
                .as_vec()
                .into_iter()
                .map(|x| x.f64())
                .collect();
            st.power_iteration(&host);
            // kept rounded to E so checkpoints (in E) restore them exactly
            for x in st.u.iter_mut().chain(st.v.iter_mut()) {
                *x = E::of(*x).f64();
            }
            st.synced = Some(self.params.version);
        }
        let (o, k) = (st.u.len(), st.v.len());
        let u: T2<E, D> = self
            .dev
            .tensor_from_vec(st.u.iter().map(|&x| E::of(x)).collect(), (o, 1));
        let v: T2<E, D> = self
            .dev
            .tensor_from_vec(st.v.iter().map(|&x| E::of(x)).collect(), (k, 1));
        drop(sn);
        let sigma = (w.retaped::<T>().reshape_like(&(o, k)).matmul(v) * u).sum::<(), _>();
        let n = o * k;
        w * sigma.recip().broadcast_like(&(n,))
    }
    fn w4<T: Tape<E, D>>(&self, i: usize, train: bool) -> T4<E, D, T> {
        let s = &self.params.shapes[i];
        self.weight::<T>(i, train)
            .reshape_like(&(s[0], s[1], s[2], s[3]))
    }

    /// Forward pass of an unconditional net without noise inputs (see
    /// [`Net::forward_side`]); `train` selects batch statistics (and updates the running
    /// ones) in batch norm. Works with any tape (`NoneTape` for inference, `OwnedTape` to
    /// train).
    pub fn forward<T: Tape<E, D> + 'static>(&self, x: T4<E, D, T>, train: bool) -> T4<E, D, T> {
        self.forward_side(x, &Side::default(), train)
    }

    /// Forward pass with side inputs: labels (required by conditional nets), the noise
    /// seed and style mixing.
    ///
    /// # Panics
    /// When a conditional net gets no labels, or labels that do not match the batch or
    /// the number of classes.
    pub fn forward_side<T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &Side,
        train: bool,
    ) -> T4<E, D, T> {
        self.pass(x, side, train, Lin::Off, false).0
    }

    /// [`Net::forward_side`] that also returns the gates of its ReLU / LeakyReLU layers,
    /// for tangent passes at this input.
    pub fn forward_recording<T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &Side,
        train: bool,
    ) -> (T4<E, D, T>, Linearisation<E, D>) {
        let (y, lin) = self.pass(x, side, train, Lin::Record(vec![]), false);
        let Lin::Record(gates) = lin else {
            unreachable!()
        };
        (y, Linearisation { gates })
    }

    /// The tangent pass: `J(x) dx` per sample, where `J(x)` is the net's input Jacobian at
    /// the input `x` of the recording pass `lin` (same side inputs and `train`): the gates
    /// are replayed and additive constants dropped. Exact on piecewise-linear nets
    /// ([`Net::is_piecewise_linear`]), which its parameter gradient needs to be the
    /// Hessian-vector product of `gan::losses`.
    ///
    /// # Panics
    /// On a net that is not piecewise linear, or a `lin` from another net or batch size.
    pub fn forward_tangent<T: Tape<E, D> + 'static>(
        &self,
        dx: T4<E, D, T>,
        side: &Side,
        train: bool,
        lin: &Linearisation<E, D>,
    ) -> T4<E, D, T> {
        assert!(
            self.is_piecewise_linear(),
            "tangent pass of a net that is not piecewise linear"
        );
        let replay = Lin::Replay {
            gates: &lin.gates,
            next: 0,
        };
        let (y, rest) = self.pass(dx, side, train, replay, true);
        if let Lin::Replay { next, .. } = rest {
            assert_eq!(next, lin.gates.len(), "linearisation of another net");
        }
        y
    }

    /// True when the net is linear in its input but for ReLU / LeakyReLU gates (no batch
    /// norm, tanh, context or noise layers on the input's path): every discriminator
    /// without batch norm.
    pub fn is_piecewise_linear(&self) -> bool {
        piecewise_linear(&self.layers)
    }

    fn pass<'a, T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &'a Side,
        train: bool,
        lin: Lin<'a, E, D>,
        tangent: bool,
    ) -> (T4<E, D, T>, Lin<'a, E, D>) {
        let mut st = Fwd {
            ctx: vec![None; self.n_ctx],
            side,
            noise_i: 0,
            lin,
            tangent,
        };
        if let Some((slot, k)) = self.label_slot {
            let labels = side
                .labels
                .as_ref()
                .expect("a conditional net needs labels (Side::labels)");
            st.ctx[slot] = Some(self.one_hot(labels, k, x.shape().0));
        }
        let y = self.run(&self.layers, x, train, &mut st);
        (y, st.lin)
    }

    /// ReLU (`a = 0`) or LeakyReLU as a gated product, recording or replaying its gate.
    fn act<T: Tape<E, D>>(&self, x: T4<E, D, T>, a: f64, st: &mut Fwd<E, D>) -> T4<E, D, T> {
        match &mut st.lin {
            Lin::Off => D::gated(x, None, a),
            Lin::Record(gates) => {
                gates.push(x.retaped::<NoneTape>());
                D::gated(x, None, a)
            }
            Lin::Replay { gates, next } => {
                let g = gates
                    .get(*next)
                    .expect("tangent pass: more activations than recorded");
                assert_eq!(g.shape(), x.shape(), "tangent pass: gate shape");
                *next += 1;
                D::gated(x, Some(g), a)
            }
        }
    }

    /// Classes of a conditional net (`None`: unconditional).
    pub fn classes(&self) -> Option<usize> {
        self.label_slot.map(|(_, k)| k)
    }

    /// Labels as one-hot vectors `(B, k, 1, 1)`.
    fn one_hot(&self, labels: &[usize], k: usize, batch: usize) -> T4<E, D> {
        assert_eq!(
            labels.len(),
            batch,
            "{} labels for a batch of {batch}",
            labels.len()
        );
        let mut v = vec![E::of(0.0); batch * k];
        for (i, &l) in labels.iter().enumerate() {
            assert!(l < k, "label {l} outside 0..{k}");
            v[i * k + l] = E::of(1.0);
        }
        self.dev.tensor_from_vec(v, (batch, k, 1, 1))
    }

    fn run<T: Tape<E, D> + 'static>(
        &self,
        layers: &[Layer],
        mut x: T4<E, D, T>,
        train: bool,
        st: &mut Fwd<E, D>,
    ) -> T4<E, D, T> {
        for l in layers {
            x = self.apply(l, x, train, st);
        }
        x
    }

    /// Batch norm with the given (possibly constant) affine parameters; running statistics
    /// of buffer `buf` updated in training mode.
    #[allow(clippy::too_many_arguments)]
    fn bn<T: Tape<E, D>>(
        &self,
        x: T4<E, D, T>,
        g: T1<E, D, T>,
        bt: T1<E, D, T>,
        buf: usize,
        eps: f64,
        momentum: f64,
        train: bool,
    ) -> T4<E, D, T> {
        if train {
            let (bsz, _, h, wd) = *x.shape();
            let n = (bsz * h * wd) as f64;
            let (y, mean, var) = ops::batch_norm_train(x, g, bt, eps);
            let mut bufs = self.buffers.lock().unwrap();
            let st = &mut bufs[buf];
            let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            for (r, m) in st.mean.iter_mut().zip(&mean) {
                // kept rounded to E so checkpoints (in E) restore them exactly
                *r = E::of((1.0 - momentum) * *r + momentum * m.f64()).f64();
            }
            for (r, v) in st.var.iter_mut().zip(&var) {
                *r = E::of((1.0 - momentum) * *r + momentum * v.f64() * unbias).f64();
            }
            y
        } else {
            let bufs = self.buffers.lock().unwrap();
            let st = &bufs[buf];
            ops::batch_norm_eval(x, g, bt, &st.mean, &st.var, eps)
        }
    }

    fn apply<T: Tape<E, D> + 'static>(
        &self,
        l: &Layer,
        x: T4<E, D, T>,
        train: bool,
        st: &mut Fwd<E, D>,
    ) -> T4<E, D, T> {
        assert!(
            !st.tangent || piecewise_linear(std::slice::from_ref(l)),
            "a tangent pass cannot go through {l:?}"
        );
        match l {
            Layer::Linear { w, b } => {
                let (bsz, c, h, wd) = *x.shape();
                let s = &self.params.shapes[*w];
                let (o, i) = (s[0], s[1]);
                assert_eq!(
                    i,
                    c * h * wd,
                    "linear {}: input {c}x{h}x{wd}",
                    self.params.names[*w]
                );
                let wt = self.weight::<T>(*w, train).reshape_like(&(o, i));
                let b = b.filter(|_| !st.tangent).map(|b| self.p::<T>(b));
                let y = ops::linear(x.reshape_like(&(bsz, i)), wt, b);
                y.reshape_like(&(bsz, o, 1, 1))
            }
            Layer::Conv {
                w,
                b,
                stride,
                pad,
                groups,
            } => ops::conv2d(
                x,
                self.w4::<T>(*w, train),
                b.filter(|_| !st.tangent).map(|b| self.p::<T>(b)),
                *stride,
                *pad,
                *groups,
                &self.cache,
            ),
            Layer::ConvT { w, b, stride, pad } => ops::conv_transpose2d(
                x,
                self.w4::<T>(*w, train),
                b.filter(|_| !st.tangent).map(|b| self.p::<T>(b)),
                *stride,
                *pad,
                &self.cache,
            ),
            Layer::BatchNorm {
                gamma,
                beta,
                buf,
                eps,
                momentum,
            } => {
                let g = self.p::<T>(*gamma);
                let bt = self.p::<T>(*beta);
                self.bn(x, g, bt, *buf, *eps, *momentum, train)
            }
            Layer::LeakyRelu(a) => self.act(x, *a, st),
            Layer::Relu => self.act(x, 0.0, st),
            Layer::Tanh => x.tanh(),
            Layer::Scale(s) => x * E::of(*s),
            Layer::Up(UpMode::Nearest) => ops::upsample_nearest2x(x, &self.cache),
            Layer::Up(UpMode::Bilinear) => ops::upsample_bilinear2x(x, &self.cache),
            Layer::AvgPool2 => ops::avg_pool2x2(x),
            Layer::Reshape([c, h, w]) => {
                let bsz = x.shape().0;
                x.reshape_like(&(bsz, *c, *h, *w))
            }
            Layer::Basis { basis, w, b } => {
                let (bsz, c, h, wd) = *x.shape();
                let bs = &self.params.shapes[*basis];
                let (oc, oh, ow) = (bs[0], bs[1], bs[2]);
                let i = c * h * wd;
                let wt = self.p::<T>(*w).reshape_like(&(oc, i));
                let b = (!st.tangent).then(|| self.p::<T>(*b));
                let coef = ops::linear(x.reshape_like(&(bsz, i)), wt, b);
                let s = (bsz, oc, oh, ow);
                let coef = coef.broadcast_like::<_, Axes2<2, 3>>(&s);
                let base = self
                    .p::<T>(*basis)
                    .reshape_like(&(oc, oh, ow))
                    .broadcast_like::<_, Axis<0>>(&s);
                coef * base
            }
            Layer::FirUp => ops::upsample_fir2x(x, &self.cache),
            Layer::FirDown => ops::downsample_fir2x(x, &self.cache),
            Layer::PixelNorm => ops::pixel_norm(x, 1e-8),
            Layer::ScaledLinear { w, b, w_mul, b_mul } => {
                let (bsz, c, h, wd) = *x.shape();
                let s = &self.params.shapes[*w];
                let (o, i) = (s[0], s[1]);
                assert_eq!(
                    i,
                    c * h * wd,
                    "linear {}: input {c}x{h}x{wd}",
                    self.params.names[*w]
                );
                let wt = self.p::<T>(*w).reshape_like(&(o, i)) * E::of(*w_mul);
                let bt = (!st.tangent).then(|| self.p::<T>(*b) * E::of(*b_mul));
                let y = ops::linear(x.reshape_like(&(bsz, i)), wt, bt);
                y.reshape_like(&(bsz, o, 1, 1))
            }
            Layer::BasisScale { basis } => {
                let (bsz, c, h, wd) = *x.shape();
                let bs = &self.params.shapes[*basis];
                let (oc, oh, ow) = (bs[0], bs[1], bs[2]);
                assert_eq!(
                    (c, h, wd),
                    (oc, 1, 1),
                    "basis {}: input {c}x{h}x{wd}",
                    self.params.names[*basis]
                );
                let s = (bsz, oc, oh, ow);
                let coef = x
                    .reshape_like(&(bsz, oc))
                    .broadcast_like::<_, Axes2<2, 3>>(&s);
                let base = self
                    .p::<T>(*basis)
                    .reshape_like(&(oc, oh, ow))
                    .broadcast_like::<_, Axis<0>>(&s);
                coef * base
            }
            Layer::Residual { body, skip } => {
                let xs = x.retaped::<T>();
                let yb = self.run(body, x, train, st);
                let ys = self.run(skip, xs, train, st);
                ys + yb
            }
            Layer::SetCtx { slot, body, mix } => {
                let c = self.run(body, x.retaped::<T>(), train, st);
                let (c, ct) = c.split_tape();
                st.ctx[*slot] = Some(c);
                let (x, xt) = x.split_tape();
                let mut tape = xt.merge(ct);
                if let (Some(ms), Some(m)) = (mix, st.side.mix) {
                    let s = *x.shape();
                    let mut rng = Rng::new(m.seed);
                    let n = s.0 * s.1 * s.2 * s.3;
                    let z2: T4<E, D> = self
                        .dev
                        .tensor_from_vec((0..n).map(|_| E::of(rng.normal())).collect(), s);
                    let c2 = self.run(body, z2.retaped::<T>(), train, st);
                    let (c2, c2t) = c2.split_tape();
                    st.ctx[*ms] = Some(c2);
                    tape = tape.merge(c2t);
                }
                x.put_tape(tape)
            }
            Layer::MixPoint { slot, from, index } => {
                if st.side.mix.map(|m| m.cutoff) == Some(*index) {
                    st.ctx[*slot] = st.ctx[*from].clone();
                }
                x
            }
            Layer::ConcatCtx { slot, body } => {
                let c = st.ctx[*slot]
                    .clone()
                    .expect("ConcatCtx before its context is set")
                    .retaped::<T>();
                let e = self.run(body, c, train, st);
                (x, e).concat_along(Axis::<1>)
            }
            Layer::Project { slot, embed, head } => {
                let (bsz, c, h, wd) = *x.shape();
                let n = c * h * wd;
                let phi = x.reshape_like(&(bsz, n, 1, 1));
                let psi = self.run(head, phi.retaped::<T>(), train, st);
                let y = st.ctx[*slot]
                    .clone()
                    .expect("Project without labels")
                    .retaped::<T>();
                // the embedding is a factor of phi, not an additive constant: a tangent
                // pass computes it as it is
                let tangent = std::mem::replace(&mut st.tangent, false);
                let e = self.run(embed, y, train, st);
                st.tangent = tangent;
                let proj = (phi * e)
                    .reshape_like(&(bsz, n))
                    .sum::<(usize,), Axis<1>>()
                    .reshape_like(&(bsz, 1, 1, 1));
                psi + proj
            }
            Layer::Noise { scale } => {
                let k = st.noise_i;
                st.noise_i += 1;
                let Some(seed) = st.side.noise_seed else {
                    return x;
                };
                let s = *x.shape();
                let (bsz, c, h, wd) = s;
                let mut rng = Rng::derived(seed, k);
                let n: T3<E, D> = self.dev.tensor_from_vec(
                    (0..bsz * h * wd).map(|_| E::of(rng.normal())).collect(),
                    (bsz, h, wd),
                );
                let sc = self
                    .p::<T>(*scale)
                    .reshape_like(&(c,))
                    .broadcast_like::<_, Axes3<0, 2, 3>>(&s);
                x + sc * n.broadcast_like::<_, Axis<1>>(&s)
            }
            Layer::CondNorm {
                norm,
                slot,
                gain,
                bias,
            } => {
                let c = st.ctx[*slot]
                    .clone()
                    .expect("CondNorm before its SetCtx")
                    .retaped::<T>();
                let gn = self.run(gain, c.retaped::<T>(), train, st);
                let bs = self.run(bias, c, train, st);
                let xn = match norm {
                    Norm::Batch { buf, eps, momentum } => {
                        let ch = x.shape().1;
                        let one: T1<E, D> = self.dev.ones_like(&(ch,));
                        let zero: T1<E, D> = self.dev.zeros_like(&(ch,));
                        self.bn(
                            x,
                            one.retaped(),
                            zero.retaped(),
                            *buf,
                            *eps,
                            *momentum,
                            train,
                        )
                    }
                    Norm::Instance { eps } => super::cond::instance_norm(x, *eps),
                    Norm::Identity => x,
                };
                super::cond::modulate(xn, gn, bs)
            }
            Layer::Const { p } => {
                let bsz = x.shape().0;
                let s = &self.params.shapes[*p];
                let sh = (bsz, s[0], s[1], s[2]);
                let c = self
                    .p::<T>(*p)
                    .reshape_like(&(s[0], s[1], s[2]))
                    .broadcast_like::<_, Axis<0>>(&sh);
                let (_, xt) = x.split_tape();
                let (c, ct) = c.split_tape();
                c.put_tape(ct.merge(xt))
            }
            Layer::ParamScale { a } => {
                let s = *x.shape();
                let a = self.p::<T>(*a).reshape_like(&()).broadcast_like(&s);
                x * a
            }
            Layer::SumPool => {
                let (bsz, c, _, _) = *x.shape();
                x.sum::<(usize, usize), Axes2<2, 3>>()
                    .reshape_like(&(bsz, c, 1, 1))
            }
        }
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.params.count()
    }

    /// Parameters and batch-norm buffers (`{bn}.running_mean`, `{bn}.running_var`) as
    /// named host tensors, names prefixed with `prefix` (e.g. `""` or `"G_ema."`-style
    /// re-prefixing is done by the caller).
    pub fn to_named(&self) -> Vec<NamedTensor<E>> {
        let mut v = self.params.to_named();
        for st in self.sn.lock().unwrap().iter() {
            for (kind, x) in [("u", &st.u), ("v", &st.v)] {
                v.push(NamedTensor {
                    name: format!("{}_{kind}", self.params.names[st.param]),
                    shape: vec![x.len()],
                    data: x.iter().map(|&x| E::of(x)).collect(),
                });
            }
        }
        for b in self.buffers.lock().unwrap().iter() {
            let c = b.mean.len();
            v.push(NamedTensor {
                name: format!("{}.running_mean", b.name),
                shape: vec![c],
                data: b.mean.iter().map(|&x| E::of(x)).collect(),
            });
            v.push(NamedTensor {
                name: format!("{}.running_var", b.name),
                shape: vec![c],
                data: b.var.iter().map(|&x| E::of(x)).collect(),
            });
        }
        v
    }

    /// Load what [`Net::to_named`] wrote (each name looked up as `prefix + name`), checking
    /// every name and shape; the first mismatch is the error. Spectral-norm vectors
    /// (`{weight}_u`, `{weight}_v`) count as iterated for the loaded weights.
    pub fn load_named(
        &mut self,
        map: &HashMap<String, NamedTensor<E>>,
        prefix: &str,
    ) -> Result<()> {
        self.params.load_named(map, prefix)?;
        for st in self.sn.lock().unwrap().iter_mut() {
            let wname = self.params.names[st.param].clone();
            for (kind, dst) in [("u", &mut st.u), ("v", &mut st.v)] {
                let name = format!("{prefix}{wname}_{kind}");
                *dst = load_vector(map, &name, dst.len())?;
            }
            st.synced = Some(self.params.version);
        }
        for b in self.buffers.lock().unwrap().iter_mut() {
            for (kind, dst) in [("running_mean", &mut b.mean), ("running_var", &mut b.var)] {
                let name = format!("{prefix}{}.{kind}", b.name);
                *dst = load_vector(map, &name, dst.len())?;
            }
        }
        Ok(())
    }

    /// `self = beta * self + (1 - beta) * src` for parameters. Buffers (batch-norm running
    /// statistics) are left alone: an averaged net keeps statistics of its own activations.
    pub fn ema_update(&mut self, src: &Net<E, D>, beta: f64) {
        for (p, s) in self.params.tensors.iter_mut().zip(&src.params.tensors) {
            *p = p.clone() * E::of(beta) + s.clone() * E::of(1.0 - beta);
        }
    }
}

/// Builds a [`Net`]: allocates named, initialised parameters and returns layers.
pub struct NetBuilder<E: Float, D: Dev<E>> {
    /// Device.
    pub dev: D,
    /// Init RNG.
    pub rng: Rng,
    /// Parameters so far.
    pub params: ParamStore<E, D>,
    /// Buffers so far.
    pub buffers: Vec<BnStats>,
    /// Spectral-norm states so far.
    pub sn: Vec<SnState>,
    /// Give every new linear / conv / transposed-conv weight spectral normalisation.
    pub spectral_norm: bool,
    /// Context slots allocated so far.
    pub n_ctx: usize,
    /// (slot, classes) once [`NetBuilder::labels`] was called.
    pub label_slot: Option<(usize, usize)>,
    /// Style-mixing cuts so far.
    pub mix_points: usize,
    /// Noise inputs so far.
    pub noise_inputs: usize,
}

impl<E: Float, D: Dev<E>> NetBuilder<E, D> {
    /// New builder; `seed` drives the initialisation.
    pub fn new(dev: D, seed: u64) -> Self {
        Self {
            dev,
            rng: Rng::new(seed),
            params: ParamStore::default(),
            buffers: vec![],
            sn: vec![],
            spectral_norm: false,
            n_ctx: 0,
            label_slot: None,
            mix_points: 0,
            noise_inputs: 0,
        }
    }
    /// The context slot of the one-hot class labels `(B, classes, 1, 1)`, allocated on
    /// first use; the net becomes conditional.
    pub fn labels(&mut self, classes: usize) -> usize {
        if let Some((slot, k)) = self.label_slot {
            assert_eq!(k, classes, "one net, one number of classes");
            return slot;
        }
        let slot = self.ctx_slot();
        self.label_slot = Some((slot, classes));
        slot
    }
    /// A class embedding: the one-hot labels through a bias-free linear map
    /// `classes -> dim` with weights N(0, std^2); column `c` of the weight `(dim, classes)`
    /// is class `c`'s embedding.
    pub fn embedding(&mut self, name: &str, classes: usize, dim: usize, std: f64) -> Vec<Layer> {
        vec![self.linear(name, classes, dim, false, std * (classes as f64).sqrt())]
    }
    /// Per-pixel noise input over `c` channels, its scale starting at zero.
    pub fn noise(&mut self, name: &str, c: usize) -> Layer {
        let scale = self
            .params
            .push(&self.dev, format!("{name}.scale"), vec![c], vec![0.0; c]);
        self.noise_inputs += 1;
        Layer::Noise { scale }
    }
    /// The next style-mixing cut: slot `slot` takes slot `from` when a pass mixes here.
    pub fn mix_point(&mut self, slot: usize, from: usize) -> Layer {
        self.mix_points += 1;
        Layer::MixPoint {
            slot,
            from,
            index: self.mix_points,
        }
    }
    /// Modulation without normalisation: `x * (1 + gain(ctx)) + bias(ctx)`.
    pub fn modulation(&mut self, slot: usize, gain: Vec<Layer>, bias: Vec<Layer>) -> Layer {
        Layer::CondNorm {
            norm: Norm::Identity,
            slot,
            gain,
            bias,
        }
    }
    /// Register spectral normalisation of weight `w` with `rows` output rows (when
    /// `spectral_norm` is on); `u` starts random, `v` is set by the first iteration.
    fn maybe_sn(&mut self, w: usize, rows: usize) {
        if !self.spectral_norm {
            return;
        }
        let n: usize = self.params.shapes[w].iter().product();
        let mut u = self.normal(rows, 1.0);
        normalize(&mut u);
        let mut v = vec![0.0; n / rows];
        v[0] = 1.0;
        self.sn.push(SnState {
            param: w,
            u,
            v,
            synced: None,
        });
    }
    /// A new context slot (for [`Layer::SetCtx`]).
    pub fn ctx_slot(&mut self) -> usize {
        self.n_ctx += 1;
        self.n_ctx - 1
    }
    /// Learned constant input `(c, h, w)`, N(0, 1).
    pub fn const_input(&mut self, name: &str, c: usize, h: usize, w: usize) -> Layer {
        let v = self.normal(c * h * w, 1.0);
        let p = self
            .params
            .push(&self.dev, name.to_string(), vec![c, h, w], v);
        Layer::Const { p }
    }
    /// Learned scalar multiplier starting at `init`.
    pub fn param_scale(&mut self, name: &str, init: f64) -> Layer {
        let a = self
            .params
            .push(&self.dev, name.to_string(), vec![1], vec![init]);
        Layer::ParamScale { a }
    }
    /// Conditional norm over `c` channels: batch statistics (`batch`, with running
    /// averages) or instance statistics, modulated by `gain` / `bias` layers on `slot`.
    pub fn cond_norm(
        &mut self,
        name: &str,
        c: usize,
        batch: bool,
        slot: usize,
        gain: Vec<Layer>,
        bias: Vec<Layer>,
    ) -> Layer {
        let norm = if batch {
            self.buffers.push(BnStats {
                name: name.to_string(),
                mean: vec![0.0; c],
                var: vec![1.0; c],
            });
            Norm::Batch {
                buf: self.buffers.len() - 1,
                eps: 1e-5,
                momentum: 0.1,
            }
        } else {
            Norm::Instance { eps: 1e-5 }
        };
        Layer::CondNorm {
            norm,
            slot,
            gain,
            bias,
        }
    }
    fn normal(&mut self, n: usize, std: f64) -> Vec<f64> {
        if std == 0.0 {
            vec![0.0; n]
        } else {
            (0..n).map(|_| self.rng.normal() * std).collect()
        }
    }
    /// Linear `inp -> out`, weight N(0, (gain^2 / inp)).
    pub fn linear(&mut self, name: &str, inp: usize, out: usize, bias: bool, gain: f64) -> Layer {
        let v = self.normal(inp * out, gain / (inp as f64).sqrt());
        let w = self
            .params
            .push(&self.dev, format!("{name}.weight"), vec![out, inp], v);
        self.maybe_sn(w, out);
        let b = bias.then(|| {
            self.params
                .push(&self.dev, format!("{name}.bias"), vec![out], vec![0.0; out])
        });
        Layer::Linear { w, b }
    }
    /// Conv `cin -> cout`, kernel `k`, weight N(0, gain^2 / fan_in).
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
        gain: f64,
    ) -> Layer {
        assert!(
            cin.is_multiple_of(groups) && cout.is_multiple_of(groups),
            "{name}: groups {groups} do not divide {cin}->{cout}"
        );
        let fan_in = cin / groups * k * k;
        let v = self.normal(cout * fan_in, gain / (fan_in as f64).sqrt());
        let w = self.params.push(
            &self.dev,
            format!("{name}.weight"),
            vec![cout, cin / groups, k, k],
            v,
        );
        self.maybe_sn(w, cout);
        let b = bias.then(|| {
            self.params.push(
                &self.dev,
                format!("{name}.bias"),
                vec![cout],
                vec![0.0; cout],
            )
        });
        Layer::Conv {
            w,
            b,
            stride,
            pad,
            groups,
        }
    }
    /// Transposed conv `cin -> cout`, kernel `k`; weight N(0, gain^2 * s^2 / (cin k^2)).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_t(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        gain: f64,
    ) -> Layer {
        let fan_in = (cin * k * k) as f64 / (stride * stride) as f64;
        let v = self.normal(cin * cout * k * k, gain / fan_in.sqrt());
        let w = self.params.push(
            &self.dev,
            format!("{name}.weight"),
            vec![cin, cout, k, k],
            v,
        );
        self.maybe_sn(w, cin);
        let b = bias.then(|| {
            self.params.push(
                &self.dev,
                format!("{name}.bias"),
                vec![cout],
                vec![0.0; cout],
            )
        });
        Layer::ConvT { w, b, stride, pad }
    }
    /// Generative basis `(c, h, w)` modulated per channel by a linear map of the input.
    pub fn basis(&mut self, name: &str, inp: usize, c: usize, h: usize, w: usize) -> Layer {
        let v = self.normal(c * h * w, 1.0);
        let basis = self
            .params
            .push(&self.dev, format!("{name}.basis"), vec![c, h, w], v);
        let v = self.normal(inp * c, 1.0 / (inp as f64).sqrt());
        let w = self
            .params
            .push(&self.dev, format!("{name}.weight"), vec![c, inp], v);
        let b = self
            .params
            .push(&self.dev, format!("{name}.bias"), vec![c], vec![0.0; c]);
        Layer::Basis { basis, w, b }
    }
    /// StyleGAN2's `FullyConnectedLayer` with learning-rate multiplier `lr_mul`: weights
    /// stored N(0, 1 / lr_mul^2) and used times `lr_mul / sqrt(inp)`, bias stored 0 and used
    /// times `lr_mul`, so that Adam moves them `lr_mul` times as fast in function space.
    pub fn eq_linear(&mut self, name: &str, inp: usize, out: usize, lr_mul: f64) -> Layer {
        assert!(lr_mul > 0.0, "{name}: lr_mul must be positive");
        let v = self.normal(inp * out, 1.0 / lr_mul);
        let w = self
            .params
            .push(&self.dev, format!("{name}.weight"), vec![out, inp], v);
        let b = self
            .params
            .push(&self.dev, format!("{name}.bias"), vec![out], vec![0.0; out]);
        Layer::ScaledLinear {
            w,
            b,
            w_mul: lr_mul / (inp as f64).sqrt(),
            b_mul: lr_mul,
        }
    }
    /// R3GAN's `GenerativeBasis`: a bias-free linear map `inp -> c` (MSR init, gain 1) whose
    /// outputs scale a learned N(0, 1) basis `(c, h, w)` per channel.
    pub fn gen_basis(
        &mut self,
        name: &str,
        inp: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Vec<Layer> {
        let v = self.normal(c * h * w, 1.0);
        let basis = self
            .params
            .push(&self.dev, format!("{name}.basis"), vec![c, h, w], v);
        vec![
            self.linear(&format!("{name}.linear"), inp, c, false, 1.0),
            Layer::BasisScale { basis },
        ]
    }
    /// Batch norm over `c` channels (gamma 1, beta 0, eps 1e-5, momentum 0.1).
    pub fn batch_norm(&mut self, name: &str, c: usize) -> Layer {
        let gamma = self
            .params
            .push(&self.dev, format!("{name}.weight"), vec![c], vec![1.0; c]);
        let beta = self
            .params
            .push(&self.dev, format!("{name}.bias"), vec![c], vec![0.0; c]);
        self.buffers.push(BnStats {
            name: name.to_string(),
            mean: vec![0.0; c],
            var: vec![1.0; c],
        });
        Layer::BatchNorm {
            gamma,
            beta,
            buf: self.buffers.len() - 1,
            eps: 1e-5,
            momentum: 0.1,
        }
    }
    /// Finish: the output shape is found by running a batch of one through the layers.
    pub fn finish(self, layers: Vec<Layer>, in_shape: [usize; 3]) -> Net<E, D> {
        let mut net = Net {
            params: self.params,
            buffers: Mutex::new(self.buffers),
            sn: Mutex::new(self.sn),
            n_ctx: self.n_ctx,
            label_slot: self.label_slot,
            mix_points: self.mix_points,
            noise_inputs: self.noise_inputs,
            layers,
            in_shape,
            out_shape: [0; 3],
            cache: IdxCache::default(),
            dev: self.dev,
        };
        let x: T4<E, D> = net
            .dev
            .zeros_like(&(1, in_shape[0], in_shape[1], in_shape[2]));
        let side = Side::labels(net.label_slot.map(|_| vec![0]));
        let y = net.forward_side(x, &side, false);
        let (_, c, h, w) = *y.shape();
        net.out_shape = [c, h, w];
        net
    }
}
