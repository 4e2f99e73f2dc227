//! Convolution weight gradients that a loss pass leaves to the tangent pass after it, so
//! that both passes' weight gradients take one matrix product per convolution.
//!
//! ## Why
//!
//! With R1/R2 on a piecewise-linear D, a D step runs a loss pass over `x` (forward,
//! backward) and a tangent pass over `g = grad_x D(x)` with the loss pass's gates
//! replayed (forward, backward; see `gan::losses`). A convolution's weight gradient is
//! `dW = sum_j delta_j (x) a_j`, its output gradient times its input, per sample `j`.
//! The tangent pass's output gradients are the loss pass's, `delta_j`, each divided by
//! the loss's derivative `c_j` (both passes run the same linear maps: the tangent pass's
//! gates are the loss pass's). So when the tangent pass starts from `g'_j = s_j g_j`,
//! `s_j` the penalty's weight over `c_j`, and its output gradient is `c_j`, every layer
//! sees exactly the loss pass's output gradients, and the two weight gradients add up to
//! `sum_j delta_j (x) (a_j + t'_j)`, `t'` the tangent pass's input to the layer: one
//! product instead of two, and the tangent pass needs no input gradient (which a
//! convolution would compute by a third product). Of the six products per convolution
//! of a D step with penalties, four are left.
//!
//! ## How
//!
//! A [`Deferral`] is shared by the two passes. In the loss pass
//! ([`super::ops::ParamGrads::Deferred`]) each convolution takes a slot in forward order
//! and its backward leaves its input and output gradient there instead of computing its
//! weight gradient (input and bias gradients as usual). In the tangent pass
//! ([`super::ops::ParamGrads::Fused`]) the convolutions take the slots in the same order,
//! and each computes the weight gradient of `a + t'` against the held output gradient in
//! its forward (so that neither outlives it; the backward only adds it) and sends no
//! gradient to its input. Every other op runs as it would.
//!
//! The deferring convolutions are the first ones of the pass, as many as fit in
//! [`DEFER_MAX`] values of inputs and output gradients (which the loss pass would have
//! freed as its backward went); the rest compute their gradients as usual in both passes.
//! That order is what makes it exact: an ordinary op's backward needs its output's true
//! gradient, which only ordinary ops after it send. For the same reason no layer with
//! parameters other than convolutions may come before a convolution on the input's path:
//! [`super::Net::defers_penalties`] says when a net qualifies, on a device with these ops
//! (the CPU).

use std::any::Any;
use std::sync::{Arc, Mutex};

/// The slots of one loss pass and its tangent pass (cheap to clone: an `Arc`).
#[derive(Clone, Default)]
pub struct Deferral {
    inner: Arc<Mutex<Slots>>,
}

#[derive(Default)]
struct Slots {
    held: Vec<Option<Box<dyn Any + Send>>>,
    /// Values the slots hold.
    len: usize,
    /// An op found no room: no later op defers.
    full: bool,
    /// Slots taken by the tangent pass so far.
    fused: usize,
}

/// Most values (inputs and output gradients) one deferral holds: 512 MiB of f32. A deep
/// net at a large size defers its first layers' weight gradients and computes the rest as
/// usual, so the penalty's speed-up never costs more than this in memory.
pub const DEFER_MAX: usize = 1 << 27;

#[cfg(test)]
thread_local! {
    /// Tests lower [`DEFER_MAX`] on their thread to exercise a partial deferral.
    pub(crate) static DEFER_MAX_TEST: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

fn defer_max() -> usize {
    #[cfg(test)]
    return DEFER_MAX_TEST.with(|c| c.get()).unwrap_or(DEFER_MAX);
    #[cfg(not(test))]
    DEFER_MAX
}

impl std::fmt::Debug for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.lock().unwrap();
        write!(f, "Deferral({} slots, {} fused)", s.held.len(), s.fused)
    }
}

impl PartialEq for Deferral {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Deferral {}

impl Deferral {
    /// An empty deferral, for one loss pass and its tangent pass.
    pub fn new() -> Self {
        Self::default()
    }
    /// A deferring op's slot (loss pass, forward order) for `len` values, or `None` where
    /// they would take the deferral past [`DEFER_MAX`] values (or an earlier op's did:
    /// the deferring ops are the first ones of the pass, see the module doc).
    pub(super) fn reserve(&self, len: usize) -> Option<usize> {
        let mut s = self.inner.lock().unwrap();
        if s.full || s.len + len > defer_max() {
            s.full = true;
            return None;
        }
        s.len += len;
        s.held.push(None);
        Some(s.held.len() - 1)
    }
    /// What slot `i`'s op left for the tangent pass (loss pass, backward).
    pub(super) fn hold(&self, i: usize, v: Box<dyn Any + Send>) {
        self.inner.lock().unwrap().held[i] = Some(v);
    }
    /// The next slot's value (tangent pass, forward order), or `None` past the deferred
    /// ops (this op computes its weight gradient as usual).
    ///
    /// # Panics
    /// When the loss pass's backward has not run, or the slot holds another type (a
    /// tangent pass that does not mirror its loss pass).
    pub(super) fn next<H: Any>(&self) -> Option<H> {
        let mut s = self.inner.lock().unwrap();
        let i = s.fused;
        if i == s.held.len() {
            return None;
        }
        s.fused += 1;
        let v = s.held[i]
            .take()
            .unwrap_or_else(|| panic!("fused op {i}: the loss pass's backward has not run"));
        let v = v
            .downcast::<H>()
            .unwrap_or_else(|_| panic!("fused op {i}: another kind of op deferred it"));
        Some(*v)
    }
    /// Ops deferred and the values they hold.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let s = self.inner.lock().unwrap();
        (s.held.len(), s.len)
    }
    /// True when the tangent pass took every slot the loss pass deferred.
    pub fn settled(&self) -> bool {
        let s = self.inner.lock().unwrap();
        s.fused == s.held.len()
    }
}
