//! How a pass runs each [`Layer`] kind: [`Net::run`] applies a list of layers in order,
//! [`Net::apply`] one layer (the match over every kind, with the pass state [`Fwd`]:
//! context tensors, side inputs, recording or replaying gates, tangent mode, which
//! gradients the convolutions compute).

use dfdx::prelude::*;

use super::{Fwd, Lin, Net, T3};
use crate::nn::layer::{piecewise_linear, Layer, Norm, UpMode};
use crate::nn::ops;
use crate::nn::resample;
use crate::nn::{Dev, Float, Rng, T1, T4};

impl<E: Float, D: Dev<E>> Net<E, D> {
    /// ReLU (`a = 0`) or LeakyReLU as a gated product, recording or replaying its gate.
    pub(super) fn act<T: Tape<E, D>>(
        &self,
        x: T4<E, D, T>,
        a: f64,
        st: &mut Fwd<E, D>,
    ) -> T4<E, D, T> {
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

    pub(super) fn run<T: Tape<E, D> + 'static>(
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
                st.pg.clone(),
                &self.cache,
            ),
            Layer::ConvT { w, b, stride, pad } => ops::conv_transpose2d(
                x,
                self.w4::<T>(*w, train),
                b.filter(|_| !st.tangent).map(|b| self.p::<T>(b)),
                *stride,
                *pad,
                st.pg.clone(),
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
                let m = st.bn_momentum.unwrap_or(*momentum);
                self.bn(x, g, bt, *buf, *eps, m, train)
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
                let off = st.pg.off_path();
                let pg = std::mem::replace(&mut st.pg, off);
                let e = self.run(embed, y, train, st);
                (st.tangent, st.pg) = (tangent, pg);
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
                            st.bn_momentum.unwrap_or(*momentum),
                            train,
                        )
                    }
                    Norm::Instance { eps } => crate::nn::cond::instance_norm(x, *eps),
                    Norm::Identity => x,
                };
                crate::nn::cond::modulate(xn, gn, bs)
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
}
