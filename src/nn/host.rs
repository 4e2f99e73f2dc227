//! Reading CPU tensors and allocating CPU outputs, for the custom ops ([`super::conv`],
//! [`super::act`], [`super::kernels`], [`super::fused`]).
//!
//! dfdx 0.13 keeps a tensor's storage private: its public readers (`as_vec`,
//! `copy_into`) copy. On a training step those copies were a serial pass over every
//! activation an op read, on the calling thread while the workers waited (a fifth of an
//! R3GAN step's wall time with [`zeroed`]'s serial zero-fill). [`values`] borrows instead,
//! through dfdx's public element indexing: the address of element `0` plus the checked
//! strides of the tensor give the whole storage as one slice, without a copy.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use dfdx::prelude::*;
use rayon::prelude::*;

use super::Float;

/// Values per parallel piece of [`zeroed`] (smaller vectors are zeroed serially).
const CHUNK: usize = 1 << 15;

/// The storage of `t` as one slice in logical order, when it is laid out densely as its
/// shape says (the strides are the shape's row-major strides); `None` otherwise (a
/// broadcast or permuted view).
fn dense<E: Float, S: Shape, T>(t: &Tensor<S, E, Cpu, T>) -> Option<&[E]> {
    let shape = *t.shape();
    let n = shape.num_elements();
    if n == 0 {
        return Some(&[]);
    }
    let (dims, want) = (shape.concrete(), shape.strides());
    let first: *const E = &t[S::Concrete::default()];
    let mut last = S::Concrete::default();
    for ax in 0..S::NUM_DIMS {
        if dims[ax] > 1 {
            let mut unit = S::Concrete::default();
            unit[ax] = 1;
            let p: *const E = &t[unit];
            // SAFETY: both are references to elements of the tensor's one storage vector
            if unsafe { p.offset_from(first) } != want[ax] as isize {
                return None;
            }
        }
        last[ax] = dims[ax] - 1;
    }
    // with row-major strides the last element sits at `n - 1`; indexing it checks (and
    // panics otherwise) that the storage holds at least `n` values
    let _ = &t[last];
    // SAFETY: `first` is element 0 of a vector of at least `n` initialised values (just
    // checked), borrowed for as long as `t` is; dfdx never writes a shared storage in
    // place (`IndexMut` and the in-place ops copy on write)
    Some(unsafe { std::slice::from_raw_parts(first, n) })
}

/// The values of a CPU tensor in logical order: borrowed from its storage when that is
/// dense (every op output is), else copied.
pub fn values<E: Float, S: Shape, T: Tape<E, Cpu>>(t: &Tensor<S, E, Cpu, T>) -> Cow<'_, [E]>
where
    Cpu: Device<E>,
{
    if let Some(v) = dense(t) {
        return Cow::Borrowed(v);
    }
    let c = t.retaped::<NoneTape>().contiguous();
    let mut v = vec![E::default(); t.shape().num_elements()];
    c.copy_into(&mut v);
    Cow::Owned(v)
}

/// An op's output gradient, taken out of dfdx's `Gradients` by the op's backward
/// (`take(grads.get_or_alloc_mut(&out_ghost)?)`), leaving an empty buffer in its place.
///
/// dfdx runs the backward ops in reverse creation order, so when an op's backward runs,
/// every op that read its output (and added into the output's gradient) has run already,
/// and nothing reads that gradient again. dfdx itself keeps every intermediate gradient
/// until the whole backward is done (then `alloc_grads`' gradients drop the non-leaf
/// ones); taking it frees it as soon as its one reader is done, so a backward holds the
/// gradients of the layers still to run, not of the whole net. The cost: after
/// `backward()`, an op output's gradient reads as empty (parameters and inputs, the
/// leaves, keep theirs).
pub fn take<E>(g: &mut impl std::ops::DerefMut<Target = Vec<E>>) -> Vec<E> {
    std::mem::take(&mut **g)
}

/// A vector of `n` zeros, written by all threads when it is large (`vec![0; n]` is one
/// serial pass on the calling thread, and the pages it touches first fault in there).
pub fn zeroed<E: Float>(n: usize) -> Vec<E> {
    if n < 2 * CHUNK {
        return vec![E::default(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.fill(MaybeUninit::new(E::default())));
    // SAFETY: the first `n` values were just initialised
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense tensors are borrowed (same address as dfdx's element 0) with the values
    /// `as_vec` gives; permuted and broadcast views are copied in logical order.
    #[test]
    fn values_borrow_dense_and_copy_views() {
        let dev = Cpu::default();
        let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let t: Tensor<(usize, usize, usize), f32, Cpu> = dev.tensor_from_vec(v.clone(), (2, 3, 4));
        match values(&t) {
            Cow::Borrowed(s) => {
                assert_eq!(s, &v[..]);
                assert!(std::ptr::eq(&s[0], &t[[0, 0, 0]]));
            }
            Cow::Owned(_) => panic!("a dense tensor was copied"),
        }
        // a permuted view: strides (1, 4, 12) for shape (4, 3, 2)
        let p = t.clone().permute::<_, Axes3<2, 1, 0>>();
        let got = values(&p);
        assert!(matches!(got, Cow::Owned(_)));
        assert_eq!(&got[..], &p.as_vec()[..]);
        assert_eq!(got[1], 12.0, "logical order: p[0][0][1] = t[1][0][0]");
        // a broadcast view: stride 0 on the new axis
        let r: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0], (2,));
        let b: Tensor<(usize, usize), f32, Cpu> = r.broadcast_like::<_, Axis<0>>(&(3, 2));
        let got = values(&b);
        assert!(matches!(got, Cow::Owned(_)));
        assert_eq!(&got[..], &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        // single-element and size-1 axes are dense whatever their strides say
        let one: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(vec![5.0], (1, 1));
        assert_eq!(&values(&one)[..], &[5.0]);
    }

    #[test]
    fn zeroed_is_all_zero_at_every_size() {
        for n in [0, 1, 2 * CHUNK - 1, 2 * CHUNK, 5 * CHUNK + 3] {
            let v: Vec<f64> = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
