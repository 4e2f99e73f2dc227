//! A small run-time layer graph with named parameters.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use dfdx::prelude::*;

use super::ops::{self, IdxCache};
use super::params::{NamedTensor, ParamStore};
use super::{Dev, Float, Rng, T1, T4};

/// Upsampling method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpMode {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (half-pixel centres, PyTorch's `align_corners=False`).
    Bilinear,
}

/// One layer; parameters are indices into the network's [`ParamStore`].
/// Every activation is `(B, C, H, W)`; vectors are `(B, F, 1, 1)`.
#[derive(Clone, Debug)]
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
    /// `skip(x) + body(x)` (an empty `skip` is the identity).
    Residual {
        /// Residual branch.
        body: Vec<Layer>,
        /// Shortcut branch.
        skip: Vec<Layer>,
    },
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
    fn p4<T: Tape<E, D>>(&self, i: usize) -> T4<E, D, T> {
        let s = &self.params.shapes[i];
        self.p::<T>(i).reshape_like(&(s[0], s[1], s[2], s[3]))
    }

    /// Forward pass; `train` selects batch statistics (and updates the running ones) in
    /// batch norm. Works with any tape (`NoneTape` for inference, `OwnedTape` to train).
    pub fn forward<T: Tape<E, D> + 'static>(&self, x: T4<E, D, T>, train: bool) -> T4<E, D, T> {
        self.run(&self.layers, x, train)
    }

    fn run<T: Tape<E, D> + 'static>(
        &self,
        layers: &[Layer],
        mut x: T4<E, D, T>,
        train: bool,
    ) -> T4<E, D, T> {
        for l in layers {
            x = self.apply(l, x, train);
        }
        x
    }

    fn apply<T: Tape<E, D> + 'static>(
        &self,
        l: &Layer,
        x: T4<E, D, T>,
        train: bool,
    ) -> T4<E, D, T> {
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
                let wt = self.p::<T>(*w).reshape_like(&(o, i));
                let y = ops::linear(x.reshape_like(&(bsz, i)), wt, b.map(|b| self.p::<T>(b)));
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
                self.p4::<T>(*w),
                b.map(|b| self.p::<T>(b)),
                *stride,
                *pad,
                *groups,
                &self.cache,
            ),
            Layer::ConvT { w, b, stride, pad } => ops::conv_transpose2d(
                x,
                self.p4::<T>(*w),
                b.map(|b| self.p::<T>(b)),
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
                if train {
                    let (bsz, _, h, wd) = *x.shape();
                    let n = (bsz * h * wd) as f64;
                    let (y, mean, var) = ops::batch_norm_train(x, g, bt, *eps);
                    let mut bufs = self.buffers.lock().unwrap();
                    let st = &mut bufs[*buf];
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
                    let st = &bufs[*buf];
                    ops::batch_norm_eval(x, g, bt, &st.mean, &st.var, *eps)
                }
            }
            Layer::LeakyRelu(a) => ops::leaky_relu(x, *a),
            Layer::Relu => x.relu(),
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
                let coef = ops::linear(x.reshape_like(&(bsz, i)), wt, Some(self.p::<T>(*b)));
                let s = (bsz, oc, oh, ow);
                let coef = coef.broadcast_like::<_, Axes2<2, 3>>(&s);
                let base = self
                    .p::<T>(*basis)
                    .reshape_like(&(oc, oh, ow))
                    .broadcast_like::<_, Axis<0>>(&s);
                coef * base
            }
            Layer::Residual { body, skip } => {
                let xs = x.retaped::<T>();
                let yb = self.run(body, x, train);
                let ys = self.run(skip, xs, train);
                ys + yb
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
    /// every name and shape; the first mismatch is the error.
    pub fn load_named(
        &mut self,
        map: &HashMap<String, NamedTensor<E>>,
        prefix: &str,
    ) -> Result<()> {
        self.params.load_named(map, prefix)?;
        for b in self.buffers.lock().unwrap().iter_mut() {
            for (kind, dst) in [("running_mean", &mut b.mean), ("running_var", &mut b.var)] {
                let name = format!("{prefix}{}.{kind}", b.name);
                let t = map
                    .get(&name)
                    .ok_or_else(|| anyhow!("missing tensor {name:?}"))?;
                if t.shape != vec![dst.len()] {
                    bail!(
                        "tensor {name:?}: shape {:?} in file, [{}] expected",
                        t.shape,
                        dst.len()
                    );
                }
                *dst = t.data.iter().map(|x| x.f64()).collect();
            }
        }
        Ok(())
    }

    /// `self = beta * self + (1 - beta) * src` for parameters; buffers copied from `src`.
    pub fn ema_update(&mut self, src: &Net<E, D>, beta: f64) {
        for (p, s) in self.params.tensors.iter_mut().zip(&src.params.tensors) {
            *p = p.clone() * E::of(beta) + s.clone() * E::of(1.0 - beta);
        }
        *self.buffers.lock().unwrap() = src.buffers.lock().unwrap().clone();
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
}

impl<E: Float, D: Dev<E>> NetBuilder<E, D> {
    /// New builder; `seed` drives the initialisation.
    pub fn new(dev: D, seed: u64) -> Self {
        Self {
            dev,
            rng: Rng::new(seed),
            params: ParamStore::default(),
            buffers: vec![],
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
            cin % groups == 0 && cout % groups == 0,
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
            layers,
            in_shape,
            out_shape: [0; 3],
            cache: IdxCache::default(),
            dev: self.dev,
        };
        let x: T4<E, D> = net
            .dev
            .zeros_like(&(1, in_shape[0], in_shape[1], in_shape[2]));
        let y = net.forward(x, false);
        let (_, c, h, w) = *y.shape();
        net.out_shape = [c, h, w];
        net
    }
}
