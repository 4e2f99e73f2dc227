//! [`NetBuilder`]: allocates a network's named, initialised parameters and hands back the
//! [`Layer`]s that use them; [`NetBuilder::finish`] turns the layer list into a [`Net`].
//!
//! Names are dotted paths (`blocks.0.conv.weight`) chosen by the caller; the init scheme
//! of each layer lives in its constructor, its knobs in a config struct with `Default`
//! ([`LinearConfig`], [`ConvConfig`], as candle-nn's `Conv2dConfig`; set fields or chain
//! `ConvConfig::default().pad(1).gain(2f64.sqrt())`). Every random number
//! comes from the builder's seeded [`Rng`], drawn in construction order, so the same
//! calls with the same seed give the same weights.

use std::sync::Mutex;

use dfdx::prelude::*;

use super::layer::{Layer, Norm};
use super::net::{Net, Side};
use super::ops::IdxCache;
use super::params::ParamStore;
use super::state::{normalize, BnStats, SnState};
use super::{Dev, Float, Rng, T4};

/// Knobs of a fully connected layer ([`NetBuilder::linear`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearConfig {
    /// Add a bias (initialised to 0).
    pub bias: bool,
    /// Init gain: weights N(0, gain^2 / fan_in) (`sqrt(2)` before a ReLU, 1 elsewhere).
    pub gain: f64,
}

impl LinearConfig {
    /// With or without a bias.
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
    /// With init gain `gain`.
    pub fn gain(self, gain: f64) -> Self {
        Self { gain, ..self }
    }
}

impl Default for LinearConfig {
    /// A bias, gain 1.
    fn default() -> Self {
        Self {
            bias: true,
            gain: 1.0,
        }
    }
}

/// Knobs of a convolution or transposed convolution ([`NetBuilder::conv`],
/// [`NetBuilder::conv_t`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvConfig {
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Groups (channels split into `groups` independent convolutions; 1: a plain conv).
    pub groups: usize,
    /// Add a bias (initialised to 0).
    pub bias: bool,
    /// Init gain: weights N(0, gain^2 / fan_in); 0 starts the weights at zero.
    pub gain: f64,
}

impl ConvConfig {
    /// With stride `stride`.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    /// With zero padding `pad`.
    pub fn pad(self, pad: usize) -> Self {
        Self { pad, ..self }
    }
    /// With `groups` groups.
    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
    /// With or without a bias.
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
    /// With init gain `gain`.
    pub fn gain(self, gain: f64) -> Self {
        Self { gain, ..self }
    }
}

impl Default for ConvConfig {
    /// Stride 1, no padding, one group, a bias, gain 1.
    fn default() -> Self {
        Self {
            stride: 1,
            pad: 0,
            groups: 1,
            bias: true,
            gain: 1.0,
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
        let cfg = LinearConfig::default().bias(false);
        vec![self.linear(name, classes, dim, cfg.gain(std * (classes as f64).sqrt()))]
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
            Norm::Batch {
                buf: self.bn_buffer(name, c),
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
    /// Linear `inp -> out`, weight N(0, gain^2 / inp), bias 0 (see [`LinearConfig`]).
    pub fn linear(&mut self, name: &str, inp: usize, out: usize, cfg: LinearConfig) -> Layer {
        let w = self.weight(name, vec![out, inp], cfg.gain / (inp as f64).sqrt(), out);
        let b = cfg.bias.then(|| self.bias(name, out));
        Layer::Linear { w, b }
    }
    /// A weight `{name}.weight` of `shape`, N(0, std^2), spectrally normalised over `rows`
    /// output rows when `spectral_norm` is on.
    fn weight(&mut self, name: &str, shape: Vec<usize>, std: f64, rows: usize) -> usize {
        let v = self.normal(shape.iter().product(), std);
        let w = self
            .params
            .push(&self.dev, format!("{name}.weight"), shape, v);
        self.maybe_sn(w, rows);
        w
    }
    /// A zero bias `{name}.bias` of length `n`.
    fn bias(&mut self, name: &str, n: usize) -> usize {
        self.params
            .push(&self.dev, format!("{name}.bias"), vec![n], vec![0.0; n])
    }
    /// Conv `cin -> cout` with a `k x k` kernel, weight N(0, gain^2 / fan_in) with
    /// `fan_in = cin / groups * k^2`, bias 0 (see [`ConvConfig`]).
    pub fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        cfg: ConvConfig,
    ) -> Layer {
        let ConvConfig {
            stride,
            pad,
            groups,
            bias,
            gain,
        } = cfg;
        assert!(
            cin.is_multiple_of(groups) && cout.is_multiple_of(groups),
            "{name}: groups {groups} do not divide {cin}->{cout}"
        );
        let fan_in = cin / groups * k * k;
        let std = gain / (fan_in as f64).sqrt();
        let w = self.weight(name, vec![cout, cin / groups, k, k], std, cout);
        let b = bias.then(|| self.bias(name, cout));
        Layer::Conv {
            w,
            b,
            stride,
            pad,
            groups,
        }
    }
    /// Transposed conv `cin -> cout` with a `k x k` kernel, weight
    /// N(0, gain^2 * stride^2 / (cin k^2)), bias 0 (see [`ConvConfig`]; one group only).
    pub fn conv_t(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        cfg: ConvConfig,
    ) -> Layer {
        let ConvConfig {
            stride,
            pad,
            groups,
            bias,
            gain,
        } = cfg;
        assert_eq!(groups, 1, "{name}: grouped transposed conv");
        let fan_in = (cin * k * k) as f64 / (stride * stride) as f64;
        let w = self.weight(name, vec![cin, cout, k, k], gain / fan_in.sqrt(), cin);
        let b = bias.then(|| self.bias(name, cout));
        Layer::ConvT { w, b, stride, pad }
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
        let b = self.bias(name, out);
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
            self.linear(
                &format!("{name}.linear"),
                inp,
                c,
                LinearConfig::default().bias(false),
            ),
            Layer::BasisScale { basis },
        ]
    }
    /// Batch norm over `c` channels (gamma 1, beta 0, eps 1e-5, momentum 0.1).
    pub fn batch_norm(&mut self, name: &str, c: usize) -> Layer {
        let gamma = self
            .params
            .push(&self.dev, format!("{name}.weight"), vec![c], vec![1.0; c]);
        let beta = self.bias(name, c);
        Layer::BatchNorm {
            gamma,
            beta,
            buf: self.bn_buffer(name, c),
            eps: 1e-5,
            momentum: 0.1,
        }
    }
    /// New running statistics (mean 0, variance 1) of `c` channels for batch norm `name`;
    /// returns the buffer index.
    fn bn_buffer(&mut self, name: &str, c: usize) -> usize {
        self.buffers.push(BnStats {
            name: name.to_string(),
            mean: vec![0.0; c],
            var: vec![1.0; c],
        });
        self.buffers.len() - 1
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
