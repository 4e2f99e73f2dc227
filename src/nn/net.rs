//! [`Net`], a network as a list of [`Layer`]s over named parameters, and its interpreter:
//! the forward pass (with [`Side`] inputs: labels, noise seed, style mixing), the
//! recording pass that keeps the gates of its ReLU / LeakyReLU layers
//! ([`Linearisation`]), and the tangent pass that replays them (`J(x) dx`, used by the
//! penalties in `gan::losses`).
//!
//! How a pass runs each layer kind (the match over [`Layer`]) is in `net/apply.rs`.
//! Building a net is [`super::NetBuilder`]'s job; spectral-norm and batch-norm state,
//! checkpoint I/O and the EMA update live in [`super::state`].

use std::sync::Mutex;

use dfdx::prelude::*;

use super::layer::{defers, piecewise_linear, Layer};
use super::ops::{IdxCache, ParamGrads};
use super::params::ParamStore;
use super::state::{BnStats, SnState};
use super::{Dev, Float, T1, T4};

mod apply;

type T3<E, D> = Tensor<(usize, usize, usize), E, D>;

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
    /// Whether convolutions compute their weights' gradients.
    pg: ParamGrads,
    /// Momentum of every batch norm's running-statistics update in this pass, in place
    /// of the layer's own ([`Net::accumulate_bn_stats`]).
    bn_momentum: Option<f64>,
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
    /// Parameter `i` on tape `T`.
    pub(super) fn p<T: Tape<E, D>>(&self, i: usize) -> T1<E, D, T> {
        self.params.tensors[i].retaped::<T>()
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
        self.pass(x, side, train, Lin::Off, false, ParamGrads::Computed)
            .0
    }

    /// [`Net::forward_side`] of a net held fixed: the backward reaches the input (and
    /// whatever made it: G, when this is D in a G step) but computes no gradient of this
    /// net's convolution weights or biases, which are neither computed nor allocated
    /// ([`ParamGrads::Skipped`]); the other layers' parameters (linear, normalisation)
    /// still get theirs. Values and input gradients are those of `forward_side`, bit for
    /// bit.
    pub fn forward_frozen<T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &Side,
        train: bool,
    ) -> T4<E, D, T> {
        let mut st = self.fwd(side, Lin::Off, false, x.shape().0);
        st.pg = ParamGrads::Skipped;
        self.run(&self.layers, x, train, &mut st)
    }

    /// A training-mode pass over `x` (values discarded) whose batch norms fold this
    /// batch's statistics into their running ones as term `k + 1` of an equal-weight
    /// average (momentum `1 / (k + 1)`; `k = 0` replaces them): passes `k = 0..n` over
    /// `n` batches leave the mean of their statistics, BigGAN's standing statistics
    /// (PyTorch's batch norm with `momentum=None`).
    pub fn accumulate_bn_stats(&self, x: T4<E, D>, side: &Side, k: usize) {
        let mut st = self.fwd(side, Lin::Off, false, x.shape().0);
        st.bn_momentum = Some(1.0 / (k + 1) as f64);
        self.run(&self.layers, x, true, &mut st);
    }

    /// [`Net::forward_side`] that also returns the gates of its ReLU / LeakyReLU layers,
    /// for tangent passes at this input.
    pub fn forward_recording<T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &Side,
        train: bool,
    ) -> (T4<E, D, T>, Linearisation<E, D>) {
        self.forward_recording_pg(x, side, train, ParamGrads::Computed)
    }

    /// [`Net::forward_recording`] whose convolutions compute the gradients `pg` says:
    /// with [`ParamGrads::Deferred`], their weight gradients are left to a tangent pass
    /// with [`ParamGrads::Fused`] ([`super::defer`]; a net that
    /// [`Net::defers_penalties`] only).
    pub fn forward_recording_pg<T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &Side,
        train: bool,
        pg: ParamGrads,
    ) -> (T4<E, D, T>, Linearisation<E, D>) {
        let (y, lin) = self.pass(x, side, train, Lin::Record(vec![]), false, pg);
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
        self.forward_tangent_pg(dx, side, train, lin, ParamGrads::Computed)
    }

    /// [`Net::forward_tangent`] whose convolutions compute the gradients `pg` says: with
    /// [`ParamGrads::Fused`], the weight gradients of this pass and of the recording pass
    /// that deferred them, in one product each, and no input gradients
    /// ([`super::defer`]).
    pub fn forward_tangent_pg<T: Tape<E, D> + 'static>(
        &self,
        dx: T4<E, D, T>,
        side: &Side,
        train: bool,
        lin: &Linearisation<E, D>,
        pg: ParamGrads,
    ) -> T4<E, D, T> {
        assert!(
            self.is_piecewise_linear(),
            "tangent pass of a net that is not piecewise linear"
        );
        let replay = Lin::Replay {
            gates: &lin.gates,
            next: 0,
        };
        let (y, rest) = self.pass(dx, side, train, replay, true, pg);
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

    /// True when a penalty's tangent pass may complete its loss pass's convolution weight
    /// gradients ([`super::defer`]): a piecewise-linear net with convolutions, whose only
    /// parameters before a convolution on the input's path are convolutions', on a
    /// device with such ops.
    pub fn defers_penalties(&self) -> bool {
        D::DEFERS && self.is_piecewise_linear() && defers(&self.layers)
    }

    fn pass<'a, T: Tape<E, D> + 'static>(
        &self,
        x: T4<E, D, T>,
        side: &'a Side,
        train: bool,
        lin: Lin<'a, E, D>,
        tangent: bool,
        pg: ParamGrads,
    ) -> (T4<E, D, T>, Lin<'a, E, D>) {
        let mut st = self.fwd(side, lin, tangent, x.shape().0);
        st.pg = pg;
        let y = self.run(&self.layers, x, train, &mut st);
        (y, st.lin)
    }

    /// The state a pass of a batch of `batch` starts from (labels one-hot in their slot).
    fn fwd<'a>(
        &self,
        side: &'a Side,
        lin: Lin<'a, E, D>,
        tangent: bool,
        batch: usize,
    ) -> Fwd<'a, E, D> {
        let mut st = Fwd {
            ctx: vec![None; self.n_ctx],
            side,
            noise_i: 0,
            lin,
            tangent,
            pg: ParamGrads::Computed,
            bn_momentum: None,
        };
        if let Some((slot, k)) = self.label_slot {
            let labels = side
                .labels
                .as_ref()
                .expect("a conditional net needs labels (Side::labels)");
            st.ctx[slot] = Some(self.one_hot(labels, k, batch));
        }
        st
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

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.params.count()
    }
}
