//! The state a [`Net`] carries besides its parameters, and its checkpoint I/O:
//! spectral-norm vectors ([`SnState`], one power iteration per parameter update),
//! batch-norm running statistics ([`BnStats`]), saving and loading every tensor by name
//! ([`Net::to_named`], [`Net::load_named`]) and the EMA update ([`Net::ema_update`]).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use dfdx::prelude::*;

use super::net::Net;
use super::params::NamedTensor;
use super::{Dev, Float, T1, T2, T4};

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

/// Scale `x` to unit Euclidean norm (a zero vector stays zero).
pub(super) fn normalize(x: &mut [f64]) {
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

impl<E: Float, D: Dev<E>> Net<E, D> {
    /// A weight, spectrally normalised when it has an [`SnState`]; in training mode the
    /// state gets one power iteration per parameter update (`ParamStore::version`).
    pub(super) fn weight<T: Tape<E, D>>(&self, i: usize, train: bool) -> T1<E, D, T> {
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
    /// [`Net::weight`] of a conv / transposed-conv weight, in its 4-D shape.
    pub(super) fn w4<T: Tape<E, D>>(&self, i: usize, train: bool) -> T4<E, D, T> {
        let s = &self.params.shapes[i];
        self.weight::<T>(i, train)
            .reshape_like(&(s[0], s[1], s[2], s[3]))
    }

    /// Fold one training batch's per-channel `mean` and (biased) `var` over `n` values per
    /// channel into the running statistics of buffer `buf` (PyTorch's convention: the
    /// running variance is unbiased, `momentum` weights the new batch).
    pub(super) fn update_running_stats(
        &self,
        buf: usize,
        mean: &[E],
        var: &[E],
        n: usize,
        momentum: f64,
    ) {
        let n = n as f64;
        let mut bufs = self.buffers.lock().unwrap();
        let st = &mut bufs[buf];
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        for (r, m) in st.mean.iter_mut().zip(mean) {
            // kept rounded to E so checkpoints (in E) restore them exactly
            *r = E::of((1.0 - momentum) * *r + momentum * m.f64()).f64();
        }
        for (r, v) in st.var.iter_mut().zip(var) {
            *r = E::of((1.0 - momentum) * *r + momentum * v.f64() * unbias).f64();
        }
    }

    /// Parameters, spectral-norm vectors (`{weight}_u`, `{weight}_v`) and batch-norm
    /// buffers (`{bn}.running_mean`, `{bn}.running_var`) as named host tensors; names are
    /// relative to the net (a checkpoint prefixes them with `G.`, `G_ema.` or `D.`).
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

    /// `self = beta * self + (1 - beta) * src` for parameters; the spectral-norm vectors
    /// are copied from `src` and count as iterated for `self`'s weights (StyleGAN2-ADA and
    /// StudioGAN copy G's buffers into G_ema the same way). Batch-norm running statistics
    /// are left alone: an averaged net gets its own ([`Net::accumulate_bn_stats`]).
    pub fn ema_update(&mut self, src: &Net<E, D>, beta: f64) {
        // in place and parallel on the CPU ([`Dev::lerp_update`]); one scratch per call
        let mut buf = vec![];
        for (p, s) in self.params.tensors.iter_mut().zip(&src.params.tensors) {
            D::lerp_update(p, s, beta, &mut buf);
        }
        let version = self.params.version;
        let from = src.sn.lock().unwrap();
        for (dst, s) in self.sn.get_mut().unwrap().iter_mut().zip(from.iter()) {
            dst.u.clone_from(&s.u);
            dst.v.clone_from(&s.v);
            dst.synced = Some(version);
        }
    }
}
