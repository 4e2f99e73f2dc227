//! [`Net`], a network as a list of [`Layer`]s over named parameters, and its interpreter:
//! the forward pass (with [`Side`] inputs: labels, noise seed, style mixing), the
//! recording pass that keeps the gates of its ReLU / LeakyReLU layers
//! ([`Linearisation`]), and the tangent pass that replays them (`J(x) dx`, used by the
//! penalties in `gan::losses`).
//!
//! Building a net is [`super::NetBuilder`]'s job; spectral-norm and batch-norm state,
//! checkpoint I/O and the EMA update live in [`super::state`].

use std::sync::Mutex;

use dfdx::prelude::*;

use super::layer::{piecewise_linear, Layer, Norm, UpMode};
use super::ops::{self, IdxCache, ParamGrads};
use super::params::ParamStore;
use super::resample;
use super::state::{BnStats, SnState};
use super::{Dev, Float, Rng, T1, T4};

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
        self.pass(x, side, train, Lin::Off, false).0
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
        let mut st = self.fwd(side, lin, tangent, x.shape().0);
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
            let (y, mean, var) = ops::batch_norm_train(x, g, bt, eps);
            self.update_running_stats(buf, &mean, &var, bsz * h * wd, momentum);
            y
        } else {
            let bufs = self.buffers.lock().unwrap();
            let st = &bufs[buf];
            ops::batch_norm_eval(x, g, bt, &st.mean, &st.var, eps)
        }
    }

    /// A fully connected layer on the flattened input: `x (B, i)` times the flat weight
    /// `wt` of parameter `w`'s shape `(o, i)`, transposed, plus `b`; output `(B, o, 1, 1)`.
    fn fully_connected<T: Tape<E, D>>(
        &self,
        x: T4<E, D, T>,
        w: usize,
        wt: T1<E, D, T>,
        b: Option<T1<E, D, T>>,
    ) -> T4<E, D, T> {
        let (bsz, c, h, wd) = *x.shape();
        let s = &self.params.shapes[w];
        let (o, i) = (s[0], s[1]);
        assert_eq!(
            i,
            c * h * wd,
            "linear {}: input {c}x{h}x{wd}",
            self.params.names[w]
        );
        let y = ops::linear(x.reshape_like(&(bsz, i)), wt.reshape_like(&(o, i)), b);
        y.reshape_like(&(bsz, o, 1, 1))
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
                let wt = self.weight::<T>(*w, train);
                let b = b.filter(|_| !st.tangent).map(|b| self.p::<T>(b));
                self.fully_connected(x, *w, wt, b)
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
                st.pg,
                &self.cache,
            ),
            Layer::ConvT { w, b, stride, pad } => ops::conv_transpose2d(
                x,
                self.w4::<T>(*w, train),
                b.filter(|_| !st.tangent).map(|b| self.p::<T>(b)),
                *stride,
                *pad,
                st.pg,
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
            Layer::Tanh => D::tanh(x),
            Layer::Scale(s) => x * E::of(*s),
            Layer::Up(UpMode::Nearest) => resample::upsample_nearest2x(x, &self.cache),
            Layer::Up(UpMode::Bilinear) => resample::upsample_bilinear2x(x, &self.cache),
            Layer::AvgPool2 => resample::avg_pool2x2(x),
            Layer::Reshape([c, h, w]) => {
                let bsz = x.shape().0;
                x.reshape_like(&(bsz, *c, *h, *w))
            }
            Layer::FirUp => resample::upsample_fir2x(x, &self.cache),
            Layer::FirDown => resample::downsample_fir2x(x, &self.cache),
            Layer::PixelNorm => ops::pixel_norm(x, 1e-8),
            Layer::ScaledLinear { w, b, w_mul, b_mul } => {
                let wt = self.p::<T>(*w) * E::of(*w_mul);
                let bt = (!st.tangent).then(|| self.p::<T>(*b) * E::of(*b_mul));
                self.fully_connected(x, *w, wt, bt)
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
                D::add(ys, yb)
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
}
