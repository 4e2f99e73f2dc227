//! Named parameter list, Adam, and safetensors I/O.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use dfdx::prelude::*;

use super::kernels::AdamStep;
use super::{Dev, Float, T1};

/// A network's trainable parameters: flat device tensors with names and logical shapes.
/// Layers refer to parameters by index and reshape them at use.
#[derive(Clone)]
pub struct ParamStore<E: Float, D: Dev<E>> {
    /// Full names, e.g. `G.blocks.0.conv.weight`.
    pub names: Vec<String>,
    /// Logical shapes (PyTorch conventions: conv weight `(Cout, Cin/g, k, k)`).
    pub shapes: Vec<Vec<usize>>,
    /// Flat values.
    pub tensors: Vec<T1<E, D>>,
    /// Bumped by every optimiser step and load (spectral norm iterates once per version).
    pub version: u64,
}

impl<E: Float, D: Dev<E>> Default for ParamStore<E, D> {
    fn default() -> Self {
        Self {
            names: vec![],
            shapes: vec![],
            tensors: vec![],
            version: 0,
        }
    }
}

impl<E: Float, D: Dev<E>> ParamStore<E, D> {
    /// Append a parameter; returns its index.
    pub fn push(&mut self, dev: &D, name: String, shape: Vec<usize>, values: Vec<f64>) -> usize {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            values.len(),
            "param {name}: {n} elements, {} values",
            values.len()
        );
        assert!(
            !self.names.contains(&name),
            "duplicate parameter name {name}"
        );
        self.names.push(name);
        self.shapes.push(shape);
        self.tensors
            .push(dev.tensor_from_vec(values.into_iter().map(E::of).collect(), (n,)));
        self.names.len() - 1
    }
    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.tensors.iter().map(|t| t.shape().0).sum()
    }
    /// A fresh leaky [`Gradients`] with a zero slot for every parameter, so every parameter
    /// has a gradient after backward even if unused.
    pub fn alloc_grads(&self) -> Gradients<E, D> {
        let mut g = Gradients::leaky();
        for t in &self.tensors {
            g.try_alloc_for(t).unwrap();
        }
        g
    }
    /// Gradients of every parameter, in order (zeros where `alloc_grads` was used and the
    /// parameter did not take part).
    pub fn grads_of(&self, grads: &Gradients<E, D>) -> Vec<T1<E, D>> {
        self.tensors.iter().map(|t| grads.get(t)).collect()
    }
    /// Named host copies of all parameters.
    pub fn to_named(&self) -> Vec<NamedTensor<E>> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&self.tensors)
            .map(|((n, s), t)| NamedTensor {
                name: n.clone(),
                shape: s.clone(),
                data: t.as_vec(),
            })
            .collect()
    }
    /// Replace all values from a name map; checks every name and shape.
    pub fn load_named(
        &mut self,
        map: &HashMap<String, NamedTensor<E>>,
        prefix: &str,
    ) -> Result<()> {
        for i in 0..self.len() {
            let name = format!("{prefix}{}", self.names[i]);
            let t = map
                .get(&name)
                .ok_or_else(|| anyhow!("missing tensor {name:?}"))?;
            if t.shape != self.shapes[i] {
                bail!(
                    "tensor {name:?}: shape {:?} in file, {:?} expected",
                    t.shape,
                    self.shapes[i]
                );
            }
            let dev = self.tensors[i].device().clone();
            let n = t.data.len();
            self.tensors[i] = dev.tensor_from_vec(t.data.clone(), (n,));
        }
        self.version += 1;
        Ok(())
    }
}

/// Sum of squares of a list of flat tensors, as f64 (for gradient norms).
pub fn sum_sq<E: Float, D: Dev<E>>(ts: &[T1<E, D>]) -> f64 {
    ts.iter()
        .map(|t| t.clone().square().sum::<(), Axis<0>>().as_vec()[0].f64())
        .sum()
}

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// (beta1, beta2).
    pub betas: (f64, f64),
    /// Denominator epsilon.
    pub eps: f64,
}

/// Adam (Kingma & Ba, with bias correction) on a [`ParamStore`]: one
/// [`Dev::adam_update`] per parameter (on the CPU an in-place parallel kernel, elsewhere
/// composed dfdx ops, [`adam_update_composed`]).
#[derive(Clone)]
pub struct Adam<E: Float, D: Dev<E>> {
    /// Hyper-parameters (lr and beta2 may be changed between steps by schedules).
    pub cfg: AdamConfig,
    /// Steps taken.
    pub t: u64,
    /// First moments.
    pub m: Vec<T1<E, D>>,
    /// Second moments.
    pub v: Vec<T1<E, D>>,
    /// Host scratch of the in-place kernels, kept so steady-state steps allocate nothing.
    scratch: Vec<E>,
}

/// One Adam update from dfdx ops (any device): `m = b1 m + (1 - b1) g`,
/// `v = b2 v + (1 - b2) g^2`, `p -= step * m / (sqrt(v / bc2) + eps)`.
pub fn adam_update_composed<E: Float, D: Dev<E>>(
    p: &mut T1<E, D>,
    g: &T1<E, D>,
    m: &mut T1<E, D>,
    v: &mut T1<E, D>,
    h: AdamStep,
) {
    let mn = m.clone() * E::of(h.b1) + g.clone() * E::of(1.0 - h.b1);
    let vn = v.clone() * E::of(h.b2) + g.clone().square() * E::of(1.0 - h.b2);
    let denom = (vn.clone() * E::of(h.inv_bc2)).sqrt() + E::of(h.eps);
    let upd = mn.clone() / denom * E::of(h.step);
    *p = p.clone() - upd;
    *m = mn;
    *v = vn;
}

impl<E: Float, D: Dev<E>> Adam<E, D> {
    /// Zero state for `params`.
    pub fn new(cfg: AdamConfig, params: &ParamStore<E, D>) -> Self {
        let m: Vec<T1<E, D>> = params
            .tensors
            .iter()
            .map(|t| t.device().zeros_like(t.shape()))
            .collect();
        Self {
            cfg,
            t: 0,
            v: m.clone(),
            m,
            scratch: vec![],
        }
    }
    /// The constants of the next step (`t` already incremented).
    fn hyper(&self) -> AdamStep {
        let (b1, b2) = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        AdamStep {
            b1,
            b2,
            inv_bc2: 1.0 / bc2,
            step: self.cfg.lr / bc1,
            eps: self.cfg.eps,
        }
    }
    /// One update with the given gradients (same order as `params`).
    pub fn step(&mut self, params: &mut ParamStore<E, D>, grads: Vec<T1<E, D>>) {
        assert_eq!(grads.len(), params.len());
        self.t += 1;
        params.version += 1;
        let h = self.hyper();
        for (i, g) in grads.iter().enumerate() {
            D::adam_update(
                &mut params.tensors[i],
                g,
                &mut self.m[i],
                &mut self.v[i],
                h,
                &mut self.scratch,
            );
        }
    }
    /// Named host copies of the state (`{prefix}m.{param}`, `{prefix}v.{param}`).
    pub fn to_named(&self, params: &ParamStore<E, D>, prefix: &str) -> Vec<NamedTensor<E>> {
        let mut out = vec![];
        for (kind, list) in [("m", &self.m), ("v", &self.v)] {
            for (i, t) in list.iter().enumerate() {
                out.push(NamedTensor {
                    name: format!("{prefix}{kind}.{}", params.names[i]),
                    shape: params.shapes[i].clone(),
                    data: t.as_vec(),
                });
            }
        }
        out
    }
    /// Restore state saved by [`Adam::to_named`].
    pub fn load_named(
        &mut self,
        params: &ParamStore<E, D>,
        map: &HashMap<String, NamedTensor<E>>,
        prefix: &str,
        t: u64,
    ) -> Result<()> {
        for (kind, list) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (i, slot) in list.iter_mut().enumerate() {
                let name = format!("{prefix}{kind}.{}", params.names[i]);
                let nt = map
                    .get(&name)
                    .ok_or_else(|| anyhow!("missing tensor {name:?}"))?;
                if nt.shape != params.shapes[i] {
                    bail!(
                        "tensor {name:?}: shape {:?} in file, {:?} expected",
                        nt.shape,
                        params.shapes[i]
                    );
                }
                let n = nt.data.len();
                *slot = slot.device().tensor_from_vec(nt.data.clone(), (n,));
            }
        }
        self.t = t;
        Ok(())
    }
}

/// A named host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor<E> {
    /// Full name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major data.
    pub data: Vec<E>,
}

/// Write tensors + string metadata as safetensors, atomically ([`crate::util::atomic_write`]).
pub fn save_safetensors<E: Float>(
    path: &Path,
    tensors: &[NamedTensor<E>],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), E::to_le_bytes_vec(&t.data), t.shape.clone()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(E::ST_DTYPE, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let buf = crate::util::safetensors_bytes(views, metadata)?;
    crate::util::atomic_write(path, &buf)
}

/// Tensors by name.
pub type NamedMap<E> = HashMap<String, NamedTensor<E>>;

/// Read every tensor (must all be of dtype `E`) and the metadata of a safetensors file.
pub fn load_safetensors<E: Float>(path: &Path) -> Result<(NamedMap<E>, HashMap<String, String>)> {
    let buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&buf)?;
    let st = safetensors::SafeTensors::deserialize(&buf)?;
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != E::ST_DTYPE {
            bail!(
                "{}: tensor {name:?} has dtype {:?}, expected {:?}",
                path.display(),
                view.dtype(),
                E::ST_DTYPE
            );
        }
        map.insert(
            name.clone(),
            NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data: E::from_le_bytes_vec(view.data()),
            },
        );
    }
    Ok((map, meta.metadata().clone().unwrap_or_default()))
}
